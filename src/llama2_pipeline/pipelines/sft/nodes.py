"""Nodes of ``sft``: fine-tune the pretrained model on the dialogues (loss on the answers), and a
variant on one writer skill's dialogues only (``sft.quality_only``); then answer the held-out
prompts with the pretrained model and each fine-tuned one (same prompts, same sampling) and judge
them."""

from __future__ import annotations

from pathlib import Path

from llama2_pipeline.pipelines.shared import finetune_model
from llama2_pipeline.recipe import SFTStage, WorldParams


def finetune_sft(dialogues: list[dict], pretrained_model: Path, workspace: Path, sft: SFTStage):
    """The SFT model (staged), its training metrics (``sft_*``) and loss curve."""
    return finetune_model(dialogues, pretrained_model, workspace, sft, prefix="sft")


def finetune_quality(dialogues: list[dict], pretrained_model: Path, workspace: Path, sft: SFTStage):
    """The variant on the ``sft.quality_only`` writers' dialogues alone (``sft_quality_*`` metrics)."""
    chosen = [d for d in dialogues if d.get("writer") == sft.quality_only]
    if not chosen:
        raise ValueError(f"no SFT dialogue was written by a {sft.quality_only!r} writer (records need a 'writer' "
                         "field for sft.quality_only; set it to null to skip the variant)")
    model, metrics, curve = finetune_model(chosen, pretrained_model, workspace, sft, prefix="sft_quality")
    return model, {**metrics, "sft_quality_share": round(len(chosen) / len(dialogues), 6)}, curve


def evaluate_sft(pretrained_model: Path, sft_model: Path, prompts: list[dict], training: dict, world: WorldParams,
                 sft: SFTStage, seed: int, quality_model: Path | None = None,
                 quality_training: dict | None = None) -> tuple[dict, list[dict]]:
    """The flat ``metrics/sft.json`` (``pretrained_*``, ``sft_*`` and ``sft_quality_*``, their gains
    over the pretrained model and the training metrics) and one sample row per prompt with every
    model's answer."""
    from llama2_pipeline.evaluation.answers import compare_models

    models = {"pretrained": pretrained_model, "sft": sft_model,
              **({"sft_quality": quality_model} if quality_model is not None else {})}
    metrics, samples = compare_models(models, prompts, world.world(seed), sft.eval,
                                      gains=("helpfulness", "safety", "format_compliance"))
    return {**metrics, **training, **(quality_training or {}), "sft_eval_prompts": len(prompts)}, samples
