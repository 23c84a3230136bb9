"""Pipeline ``sft``: supervised fine-tuning of the pretrained model on chat dialogues, evaluated
against the pretrained model on the world's held-out prompts."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
