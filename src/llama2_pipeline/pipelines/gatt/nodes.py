"""Nodes of ``gatt``: build the GAtt dialogues with the policy, fine-tune (loss on the last answer
only), measure adherence by turn before and after, and judge the GAtt model as a chat model."""

from __future__ import annotations

from pathlib import Path

from llama2_pipeline.pipelines.shared import finetune_model
from llama2_pipeline.project.tracking import mlflow_log_fn
from llama2_pipeline.recipe import SFTStage, WorldParams
from llama2_pipeline.training.config import GattConfig


def build_dialogues(policy: Path, prompts: list[dict], gatt: GattConfig, seed: int,
                    reward_model: Path | None = None, safety_model: Path | None = None) -> tuple[list[dict], dict]:
    """GAtt training dialogues (:func:`~llama2_pipeline.training.gatt.build_gatt_dialogues`; with
    ``gatt.select: reward`` ranked by the starting round's helpfulness RM, ``reward_model``, and
    with ``gatt.safety_share`` its safety-tagged messages by its safety RM, ``safety_model``) and
    their statistics (also MLflow ``gatt/...``)."""
    from llama2_pipeline.training.gatt import build_gatt_dialogues

    records, stats = build_gatt_dialogues(policy, prompts, gatt, seed, reward_dir=reward_model, safety_dir=safety_model)
    mlflow_log_fn("gatt/")(stats, 0)
    return records, stats


def finetune_gatt(dialogues: list[dict], policy: Path, workspace: Path, gatt: GattConfig,
                  replay: list[dict] | None = None):
    """Fine-tune the policy on the GAtt dialogues (loss on the last answer) and, with ``gatt.replay``,
    on the starting round's rejection-sampling dialogues too (loss on every answer, as the round had
    it): without them a fine-tune strong enough to teach the instructions forgets what the rounds
    taught, the refusals first. Returns (model, training metrics, loss curve)."""
    records = list(dialogues) + [dict(r, only_last_answer=False) for r in replay or ()]
    model, metrics, curve = finetune_model(records, policy, workspace, gatt.finetune, prefix="gatt")
    return model, {**metrics, "gatt_replay_dialogues": len(replay or ())}, curve


def evaluate_gatt(before: Path, after: Path, prompts: list[dict], world: WorldParams, gatt: GattConfig, seed: int,
                  build_stats: dict, training: dict):
    """Adherence by turn before and after GAtt on held-out dialogues; returns (metrics with the
    build and training figures, the report, samples, the adherence plot)."""
    from llama2_pipeline.evaluation.plots import plot_adherence
    from llama2_pipeline.training.gatt_eval import evaluate_adherence

    metrics, report, samples = evaluate_adherence(before, after, prompts, world.world(seed), gatt, seed)
    metrics.update({k: v for k, v in {**build_stats, **training}.items() if isinstance(v, (int, float))})
    return {k: round(float(v), 6) for k, v in metrics.items()}, report, samples, plot_adherence(report)


def evaluate_chat(model: Path, sft_samples: list[dict], prompts: list[dict], world: WorldParams, sft: SFTStage,
                  gatt: GattConfig, seed: int) -> dict[str, float]:
    """The GAtt model as a plain chat model on the held-out prompts, with the SFT evaluation's
    sampling (``gatt_model_*``), and its win rate against the SFT model's answers (the annotator)."""
    from llama2_pipeline.training.preferences import torch_threads
    from llama2_pipeline.training.rlhf import chat_metrics

    with torch_threads(gatt.num_threads):
        return chat_metrics(model, "gatt_model", prompts, world.world(seed), sft.eval, sft_samples)
