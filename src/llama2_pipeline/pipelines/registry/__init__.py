"""``registry``: the recipe's models in the MLflow Model Registry (``llama2-chat`` with a stage alias
per policy and ``champion``; the two reward models), each version a loadable MLflow model."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
