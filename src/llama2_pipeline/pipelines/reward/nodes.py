"""Nodes of ``reward``: collect preference pairs with the policy and the variant model and let the
world's annotator label them; the merge, split, training and evaluation nodes are shared with the
RLHF rounds (:mod:`llama2_pipeline.pipelines.shared`)."""

from __future__ import annotations

from pathlib import Path

from llama2_pipeline.project.tracking import mlflow_log_fn
from llama2_pipeline.recipe import WorldParams
from llama2_pipeline.training.config import RewardConfig


def collect_preferences(policy_dir: Path, tokenizer: Path, prompts: list[dict], world: WorldParams,
                        reward: RewardConfig, seed: int, variant_dir: Path | None = None) -> list[dict]:
    """A new batch of annotated pairs (none when ``reward.preferences.collect`` is false); the
    counts (pairs per kind, ties dropped) go to MLflow as ``preferences/...``."""
    from llama2_pipeline.training.preferences import collect_preferences as collect

    stats: dict = {}
    pairs = collect(policy_dir, tokenizer, prompts, world.world(seed), reward.preferences, seed,
                    variant_dir=variant_dir, num_threads=reward.num_threads, stats=stats)
    mlflow_log_fn("preferences/")(stats, 0)
    return pairs
