"""Pipeline ``reward``: preference pairs from the world's annotator, the helpfulness and safety
reward models, and their held-out accuracy per rating level."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
