"""Nodes of ``sft``: fine-tune the pretrained model on the dialogues (loss on the answers), then
answer the held-out prompts with the pretrained and the SFT model (same prompts, same sampling)
and judge both."""

from __future__ import annotations

from pathlib import Path

from llama2_pipeline.pipelines.shared import finetune_model
from llama2_pipeline.recipe import SFTStage, WorldParams


def finetune_sft(dialogues: list[dict], pretrained_model: Path, workspace: Path, sft: SFTStage):
    """The SFT model (staged), its training metrics (``sft_*``) and loss curve."""
    return finetune_model(dialogues, pretrained_model, workspace, sft, prefix="sft")


def evaluate_sft(pretrained_model: Path, sft_model: Path, prompts: list[dict], training: dict, world: WorldParams,
                 sft: SFTStage, seed: int) -> tuple[dict, list[dict]]:
    """The flat ``metrics/sft.json`` (``pretrained_*``, ``sft_*``, ``sft_*_gain`` and the training
    metrics) and one sample row per prompt with both models' answers."""
    from llama2_pipeline.evaluation.answers import compare_models

    metrics, samples = compare_models({"pretrained": pretrained_model, "sft": sft_model}, prompts, world.world(seed),
                                      sft.eval, gains=("helpfulness", "safety", "format_compliance"))
    return {**metrics, **training, "sft_eval_prompts": len(prompts)}, samples
