"""The recipe's figures, each a function of the numbers it shows (matplotlib, Agg; no global
backend change where the figure is written here): training loss curves, reward-model score
histograms and calibration, an RLHF round next to its start, PPO per step, GAtt adherence by turn.
Nodes save the returned figures through the catalog; no Kedro or MLflow imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.files import atomic_path


def plot_loss_curve(history: list[dict[str, Any]], path: Path, baseline: float | None = None,
                    title: str = "pretraining", baseline_label: str = "unigram (val)") -> Path:
    """Train and val loss vs step as a PNG (matplotlib's Agg canvas; no global backend change), with a
    dashed ``baseline`` loss (pretraining: the unigram model's)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    train = [(r["step"], r["train_loss"]) for r in history if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", lw=1.2, ms=3)
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls="--", lw=1, label=baseline_label)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_score_histograms(scores: dict[str, tuple[Sequence[float], Sequence[float]]], title: str = ""):
    """One panel per RM: histograms of chosen vs rejected scores (a matplotlib Figure)."""
    fig = _figure(5.2 * max(1, len(scores)), 3.8)
    for k, (name, (chosen, rejected)) in enumerate(scores.items()):
        ax = fig.add_subplot(1, max(1, len(scores)), k + 1)
        both = np.concatenate([np.asarray(chosen, float), np.asarray(rejected, float)]) if len(chosen) else np.zeros(1)
        bins = np.linspace(both.min(), both.max() + 1e-9, 31)
        ax.hist(chosen, bins=bins, alpha=0.6, label=f"chosen (n={len(chosen)})", color="tab:green")
        ax.hist(rejected, bins=bins, alpha=0.6, label=f"rejected (n={len(rejected)})", color="tab:red")
        ax.set_title(f"{name} RM: held-out scores")
        ax.set_xlabel("reward score")
        ax.set_ylabel("pairs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_calibration(curves: dict[str, dict], title: str = ""):
    """Score gap vs. P(annotator prefers), one line per RM, with the logistic curve sigmoid(gap)."""
    fig = _figure(6.2, 4.4)
    ax = fig.add_subplot()
    lo = min([min(c["gap"]) for c in curves.values() if c["gap"]] + [-4.0])
    hi = max([max(c["gap"]) for c in curves.values() if c["gap"]] + [4.0])
    xs = np.linspace(lo, hi, 200)
    ax.plot(xs, 1 / (1 + np.exp(-xs)), color="grey", ls="--", lw=1, label="sigmoid(gap) (Bradley-Terry)")
    for name, c in curves.items():
        ece = f", ECE {c['ece']:.3f}" if c.get("ece") is not None else ""
        ax.plot(c["gap"], c["p_annotator"], "o-", ms=4, lw=1.2, label=f"{name} RM{ece}")
    ax.set_xlabel("score gap r(a) - r(b)")
    ax.set_ylabel("P(annotator prefers a)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "reward model calibration (held-out pairs)")
    fig.tight_layout()
    return fig


def _pyplot_pair(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, 2, figsize=(width, height))


def plot_round(metrics: dict, round_name: str):
    """The round next to the policy it started from: helpfulness, safety, refusals; and win rates."""
    fig, (left, right) = _pyplot_pair(10, 3.6)
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
    fig, (left, right) = _pyplot_pair(10, 3.6)
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


def plot_adherence(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    turns = report["turns"]
    for name, label in (("before", "before GAtt (last RLHF round)"), ("after", "after GAtt")):
        ax.plot(turns, report[name]["turn"], marker="o", label=label)
    ax.set_xlabel("dialogue turn")
    ax.set_ylabel("answers following the system instruction")
    ax.set_ylim(0, 1)
    ax.set_xticks(turns)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Ghost Attention: instruction adherence by turn (held-out prompts)")
    fig.tight_layout()
    return fig
