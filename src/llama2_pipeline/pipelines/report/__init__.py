"""``report``: the final report of the recipe (Markdown + self-contained HTML) from every stage's outputs."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
