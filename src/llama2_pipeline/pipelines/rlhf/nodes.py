"""Nodes of one RLHF round: thin wrappers over :mod:`llama2_pipeline.training.rlhf`; the reward
models are trained by the shared reward node and the policy fine-tuned by the shared SFT node
(:mod:`llama2_pipeline.pipelines.shared`)."""

from __future__ import annotations

from pathlib import Path

from llama2_pipeline.pipelines.shared import finetune_model, train_reward_models
from llama2_pipeline.project.datasets import staging_dir
from llama2_pipeline.project.tracking import mlflow_log_fn
from llama2_pipeline.recipe import WorldParams
from llama2_pipeline.training.config import RewardConfig, RLHFConfig, round_seed
from llama2_pipeline.training.preferences import pair_key, pairs_among, replay_pairs


def sample_candidates(policy: Path, tokenizer: Path, prompts: list[dict], rlhf: RLHFConfig, seed: int,
                      round_name: str) -> list[dict]:
    """K answers of the round's starting policy per train prompt."""
    from llama2_pipeline.training.rlhf import sample_candidates as sample

    return sample(policy, Path(tokenizer) / "tokenizer.model", prompts, rlhf.candidates, round_seed(seed, round_name),
                  num_threads=rlhf.num_threads)


def annotate_candidates(candidates: list[dict], world: WorldParams, rlhf: RLHFConfig, seed: int) -> list[dict]:
    """The world's annotator on pairs of a prompt's K answers (the round's new pairs)."""
    from llama2_pipeline.training.rlhf import annotate_candidates as annotate

    pairs, counts = annotate(candidates, world.world(seed), rlhf.candidates, seed)
    mlflow_log_fn("preferences/")(counts, 0)
    return pairs


def train_round_reward_models(train_prefs: list[dict], new_prefs: list[dict], start_helpfulness: Path,
                              start_safety: Path, sft_model: Path, rlhf: RLHFConfig, reward: RewardConfig,
                              workspace: Path, heldout: list[dict], seed: int, round_name: str):
    """The round's RMs. ``rlhf.reward_models: continue``: the previous RMs trained
    ``rlhf.reward_epochs`` passes (both RMs) on this round's new train pairs, with
    ``rlhf.reward_replay`` times as many earlier train pairs per category beside them (a seeded
    sample); ``retrain``: from SFT on every train pair so far (``train_prefs``), as the reward stage
    trains them (``reward.epochs``)."""
    if rlhf.reward_models == "retrain":
        return train_reward_models(train_prefs, sft_model, reward, workspace, heldout)
    new = pairs_among(train_prefs, new_prefs)  # this round's new pairs that are train pairs
    fresh = {pair_key(r) for r in new}
    earlier = [r for r in train_prefs if pair_key(r) not in fresh]
    pairs = replay_pairs(new, earlier, rlhf.reward_replay, round_seed(seed, round_name))
    hf, safety, metrics = train_reward_models(pairs, {"helpfulness": start_helpfulness, "safety": start_safety},
                                              reward.replace(epochs=rlhf.reward_epochs), workspace, heldout)
    return hf, safety, {**metrics, "rm_new_pairs": len(new), "rm_replayed_pairs": len(pairs) - len(new)}


def rejection_sampling(candidates: list[dict], helpfulness: Path, safety: Path, policy: Path, tokenizer: Path,
                       rlhf: RLHFConfig, seed: int, round_name: str, earlier: list[dict] | None = None,
                       prompts: list[dict] | None = None):
    """Best of K by the round's reward (and the starting ``policy``'s likelihood:
    ``rlhf.candidates.likelihood_weight``); returns (dialogues to fine-tune on, with the instructed
    copies of ``rlhf.candidates.instructed_safety`` at their end, scored candidates, stats).
    ``earlier``: the previous round's dialogues (rounds after the first)."""
    from llama2_pipeline.training.rejection import best_of_k

    return best_of_k(candidates, helpfulness, safety, rlhf, earlier=earlier, prompts=prompts, policy_dir=policy,
                     tokenizer_path=Path(tokenizer) / "tokenizer.model", seed=round_seed(seed, round_name))


def finetune_policy(dialogues: list[dict], policy: Path, workspace: Path, rlhf: RLHFConfig):
    """The SFT machinery on the best-of-K answers, from the round's starting policy."""
    return finetune_model(dialogues, policy, workspace, rlhf.rejection_sampling, prefix="rs")


def ppo(policy: Path, helpfulness: Path, safety: Path, prompts: list[dict], rlhf: RLHFConfig, seed: int,
        round_name: str):
    """PPO on top of the rejection-sampled policy; returns (policy, per-step history, curves plot)."""
    from llama2_pipeline.evaluation.plots import plot_ppo
    from llama2_pipeline.training.rlhf import ppo_finetune

    cfg = rlhf.ppo.replace(seed=round_seed(seed, round_name))
    out, history, _ = ppo_finetune(policy, helpfulness, prompts, cfg, rlhf.safety_threshold, safety_dir=safety,
                                   out_dir=staging_dir("ppo") / "model", log_fn=mlflow_log_fn("ppo/"),
                                   num_threads=rlhf.num_threads)
    return out, history, plot_ppo(history, round_name)


def evaluate_round(policy: Path, previous: Path, sft_model: Path, helpfulness: Path, safety: Path,
                   prompts: list[dict], world: WorldParams, rlhf: RLHFConfig, seed: int, round_name: str,
                   reward_metrics: dict, rs_stats: dict, ppo_history: list[dict] | None = None):
    """Held-out evaluation of the round; returns (metrics, samples, the round's summary plot)."""
    from llama2_pipeline.evaluation.plots import plot_round
    from llama2_pipeline.training.rlhf import round_metrics

    metrics, samples = round_metrics(policy, previous, sft_model, helpfulness, safety, prompts, world.world(seed),
                                     rlhf, seed, reward_metrics=reward_metrics, rs_stats=rs_stats,
                                     ppo_history=ppo_history)
    return metrics, samples, plot_round(metrics, round_name)
