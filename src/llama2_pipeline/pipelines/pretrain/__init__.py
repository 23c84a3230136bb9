"""Pipeline ``pretrain``: a Llama from scratch on the token shards, under DeepSpeed."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
