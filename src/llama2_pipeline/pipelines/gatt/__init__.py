"""Pipeline ``gatt``: Ghost Attention on top of the last RLHF round, and adherence by turn."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
