"""Pipeline ``tokenizer``: train the sentencepiece BPE tokenizer (tag ``train``) and pack the clean
corpus into token shards (tag ``encode``); DVC runs the two as separate stages."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
