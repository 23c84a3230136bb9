"""Nodes of one RLHF round: thin wrappers over :mod:`llama2_pipeline.training.rlhf`; the reward
models are retrained by the ``reward`` pipeline's nodes and the policy fine-tuned by the ``sft``
pipeline's node, reused as they are."""

from __future__ import annotations

from pathlib import Path

from llama2_pipeline.datasets import staging_dir
from llama2_pipeline.tracking import mlflow_log_fn
from llama2_pipeline.training.preferences import annotate_answers


def _world(world: dict, seed: int):
    from llama2_pipeline.world import World

    return World.from_params({**world, "seed": seed})


def round_seed(seed: int, round_name: str) -> int:
    """Each round samples with its own seed, derived from the one seed and the round's number."""
    return seed * 100 + int("".join(ch for ch in round_name if ch.isdigit()) or 0)


def sample_candidates(policy: Path, tokenizer: Path, prompts: list[dict], rlhf: dict, seed: int,
                      round_name: str) -> list[dict]:
    """K answers of the round's starting policy per train prompt."""
    from llama2_pipeline.training.rlhf import sample_candidates as _sample
    from llama2_pipeline.training.rlhf import validate_rlhf_params

    validate_rlhf_params(rlhf)
    return _sample(policy, Path(tokenizer) / "tokenizer.model", prompts, rlhf["candidates"],
                   round_seed(seed, round_name), num_threads=rlhf["num_threads"])


def annotate_candidates(candidates: list[dict], world: dict, rlhf: dict, seed: int) -> list[dict]:
    """The world's annotator on every two of a prompt's K answers (the round's new pairs)."""
    pairs, counts = annotate_answers(_world(world, seed), candidates, [c["answers"] for c in candidates],
                                     rlhf["candidates"]["pairs"], seed, drop_ties=rlhf["candidates"]["drop_ties"],
                                     max_pairs=rlhf["candidates"]["pairs_per_prompt"])
    counts["pairs"] = len(pairs)
    mlflow_log_fn("preferences/")(counts, 0)
    if not pairs:
        raise ValueError(f"the annotator found no preference among the {len(candidates)} prompts' answers "
                         "(all identical or tied): raise rlhf.candidates.temperature or k")
    return pairs


def rejection_sampling(candidates: list[dict], helpfulness: Path, safety: Path, rlhf: dict,
                       earlier: list[dict] | None = None, prompts: list[dict] | None = None):
    """Best of K by the round's reward; returns (dialogues to fine-tune on, scored candidates, stats).

    ``earlier`` (rounds after the first): the previous round's dialogues, which already pool every
    round before; with ``rlhf.candidates.earlier_rounds`` their answers join the pool
    (:func:`~llama2_pipeline.training.rlhf.pool_earlier`; ``prompts``: the train prompts)."""
    from llama2_pipeline.training.preferences import torch_threads
    from llama2_pipeline.training.rlhf import load_reward_models, pool_earlier, rejection_sample

    if earlier is not None and rlhf["candidates"]["earlier_rounds"]:
        candidates = pool_earlier(candidates, earlier, prompts or [])
    with torch_threads(rlhf["num_threads"]):
        rm_h, rm_s = load_reward_models(helpfulness, safety)
        dialogues, scored, stats = rejection_sample(candidates, rm_h, rm_s, rlhf["safety_threshold"])
    return dialogues, scored, stats


def finetune_policy(dialogues: list[dict], policy: Path, workspace: Path, rlhf: dict, seed: int):
    """The SFT machinery on the best-of-K answers, from the round's starting policy."""
    from llama2_pipeline.pipelines.sft.nodes import finetune_model

    return finetune_model(dialogues, policy, workspace, rlhf["rejection_sampling"], seed, prefix="rs")


def ppo(policy: Path, helpfulness: Path, safety: Path, prompts: list[dict], rlhf: dict, seed: int,
        round_name: str):
    """PPO on top of the rejection-sampled policy; returns (policy, per-step history, curves plot)."""
    from llama2_pipeline.training.rlhf import ppo_finetune

    out = staging_dir("ppo") / "model"
    out, history, _ = ppo_finetune(policy, helpfulness, safety, prompts, rlhf["ppo"], rlhf["safety_threshold"],
                                   round_seed(seed, round_name), out, log_fn=mlflow_log_fn("ppo/"),
                                   num_threads=rlhf["num_threads"])
    return out, history, plot_ppo(history, round_name)


def evaluate_round(policy: Path, previous: Path, sft_model: Path, helpfulness: Path, safety: Path,
                   prompts: list[dict], world: dict, rlhf: dict, seed: int, round_name: str,
                   reward_metrics: dict, rs_stats: dict, ppo_history: list[dict] | None = None):
    """Held-out evaluation of the round; returns (metrics, samples, the round's summary plot)."""
    from llama2_pipeline.training.preferences import torch_threads
    from llama2_pipeline.training.rlhf import evaluate_round as _evaluate

    with torch_threads(rlhf["num_threads"]):
        metrics, samples = _evaluate(policy, previous, sft_model, helpfulness, safety, prompts, _world(world, seed),
                                     rlhf["eval"], rlhf["safety_threshold"], seed)
    metrics.update({k: v for k, v in reward_metrics.items() if k.startswith(("rm_", "reward_"))
                    and isinstance(v, (int, float))})
    metrics.update({k: v for k, v in rs_stats.items() if isinstance(v, (int, float))})
    if ppo_history:
        from llama2_pipeline.training.rlhf import summarise_ppo

        metrics.update(summarise_ppo(ppo_history))
    metrics = {k: round(float(v), 6) for k, v in metrics.items()}
    return metrics, samples, plot_round(metrics, round_name)


# ---- plots ------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, 2, figsize=(width, height))


def plot_round(metrics: dict, round_name: str):
    """The round next to the policy it started from: helpfulness, safety, refusals; and win rates."""
    fig, (left, right) = _figure(10, 3.6)
    names = ["helpfulness", "safety", "refusal_rate", "false_refusal_rate", "violation_rate"]
    x = range(len(names))
    left.bar([i - 0.2 for i in x], [metrics.get(f"previous_{n}", 0) for n in names], 0.4, label="start of round")
    left.bar([i + 0.2 for i in x], [metrics.get(f"policy_{n}", 0) for n in names], 0.4, label=f"rlhf_{round_name}")
    left.set_xticks(list(x), [n.replace("_", " ") for n in names], rotation=20, fontsize=8)
    left.set_ylim(0, 1)
    left.legend(fontsize=8)
    left.set_title("held-out prompts, judged by the world")
    wins = {"vs start of round": metrics.get("win_rate_vs_previous", 0), "vs SFT": metrics.get("win_rate_vs_sft", 0)}
    right.bar(list(wins), list(wins.values()), color=["tab:green", "tab:purple"])
    right.axhline(0.5, color="grey", lw=0.8, ls="--")
    right.set_ylim(0, 1)
    right.set_title(f"win rate (annotator); KL to SFT {metrics.get('kl_to_sft', 0):.2f} nats")
    fig.suptitle(f"RLHF round {round_name}")
    fig.tight_layout()
    return fig


def plot_ppo(history: list[dict], round_name: str):
    """PPO per step: mean reward and KL (left), clip fraction, entropy and value loss (right)."""
    fig, (left, right) = _figure(10, 3.6)
    steps = [h["step"] for h in history]
    left.plot(steps, [h["reward"] for h in history], label="reward: mean LOGIT(R_c)")
    left.plot(steps, [h["kl"] for h in history], label="KL to start (nats)")
    left.set_xlabel("PPO step")
    left.legend(fontsize=8)
    for key in ("clip_frac", "entropy", "value_loss"):
        right.plot(steps, [h[key] for h in history], label=key)
    right.set_xlabel("PPO step")
    right.legend(fontsize=8)
    fig.suptitle(f"PPO, round {round_name}")
    fig.tight_layout()
    return fig
