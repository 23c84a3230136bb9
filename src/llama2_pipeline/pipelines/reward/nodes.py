"""Nodes of ``reward``: thin wrappers over :mod:`llama2_pipeline.training.preferences` and
:mod:`llama2_pipeline.training.reward`. The RLHF rounds reuse these five functions as they are:
each round collects a new batch with its newest policy, merges it into the earlier rounds' data,
splits, trains both RMs and evaluates them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llama2_pipeline.datasets import staging_dir
from llama2_pipeline.io_utils import sha256_path
from llama2_pipeline.pipelines.pretrain.nodes import run_folder
from llama2_pipeline.tracking import mlflow_log_fn
from llama2_pipeline.training.preferences import (CATEGORIES, RATINGS, merge_preferences, mix_preferences,
                                                  split_preferences, torch_threads)
from llama2_pipeline.training.preferences import collect_preferences as _collect

__all__ = ["collect_preferences", "merge_preferences", "split_preferences", "train_reward_models",
           "evaluate_reward_models"]


def collect_preferences(policy_dir: Path, tokenizer: Path, prompts: list[dict], world: dict, sampling: dict,
                        seed: int, num_threads: int = 0, variant_dir: Path | None = None) -> list[dict]:
    """A new batch of annotated pairs from the policy and the variant model (none when
    ``reward.preferences.collect`` is false); the counts (pairs per kind, ties dropped) go to
    MLflow as ``preferences/...``."""
    stats: dict = {}
    pairs = _collect(policy_dir, tokenizer, prompts, world, sampling, seed, variant_dir=variant_dir,
                     num_threads=num_threads, stats=stats)
    mlflow_log_fn("preferences/")(stats, 0)
    return pairs


def train_reward_models(train_prefs: list[dict], init_model_dir: Path, params: dict, workspace: Path, seed: int,
                        heldout: list[dict] | None = None) -> tuple[Path, Path, dict]:
    """Both RMs from ``init_model_dir`` (the SFT model), each on its data mix; returns the staged
    helpfulness and safety model folders and the training metrics (``rm_<name>_train_loss``, ...).

    ``heldout`` (optional) is only monitored during training: ``val_acc``/``val_loss`` every
    ``reward.train.eval_every`` steps (0: not at all; the final evaluation is its own node).
    """
    from llama2_pipeline.training.reward import train_reward_model, validate_reward_params

    validate_reward_params(params)
    if not train_prefs:
        raise ValueError("no training preference pairs (reward_preferences_train is empty)")
    train_cfg = {"num_threads": params["num_threads"], **params["train"], "seed": seed}
    identity = {"params": {k: v for k, v in params.items() if k != "eval"}, "seed": seed,
                "init": sha256_path(init_model_dir),
                "prefs": hashlib.sha256(json.dumps(train_prefs, sort_keys=True).encode()).hexdigest()}
    root = run_folder(Path(workspace), identity)
    out, metrics = {}, {}
    for name in CATEGORIES:
        records = mix_preferences(train_prefs, params[f"{name}_mix"], seed)
        if not records:
            raise ValueError(f"the {name} RM's data mix {params[f'{name}_mix']} selects no training pairs")
        evals = [r for r in heldout or [] if r["category"] == name] if params["train"].get("eval_every") else []
        out[name] = staging_dir(f"reward_{name}") / "model"
        metrics.update(train_reward_model(
            records, init_model_dir, train_cfg, root / name, margin=params["margin"], epochs=params["epochs"],
            warmup_fraction=params["warmup_fraction"], eval_pairs=evals or None, out_dir=out[name],
            log_fn=mlflow_log_fn(f"reward/{name}/"), name=f"rm_{name}"))
    return out["helpfulness"], out["safety"], metrics


def evaluate_reward_models(helpfulness_dir: Path, safety_dir: Path, heldout: list[dict], params: dict,
                           world: dict | None = None, seed: int = 0, train_metrics: dict | None = None,
                           init_model_dir: Path | None = None):
    """Held-out accuracy of both RMs; returns (flat metrics, the per-rating table, the score
    histogram figure, the calibration figure).

    Each RM is scored on the held-out pairs of its own category: ``rm_<name>_acc`` and
    ``rm_<name>_acc_<rating>`` (the paper's Table 8), ``rm_<name>_ece`` (calibration), and on the
    other category (``rm_<name>_acc_on_<other>``). With ``world`` params the world re-judges each
    held-out pair without annotator noise: ``rm_<name>_acc_noise_free[_<rating>]`` is the RM's
    accuracy against that judgement (pairs the world scores equal left out), and
    ``rm_<name>_acc_ceiling[_<rating>]`` the accuracy an oracle of the world's scores gets on the
    annotated labels (a flipped label counts 0, a tie 0.5): what ``disagreement_rate`` and ties
    leave reachable. With ``init_model_dir`` (the model the RMs start from) a baseline judge with
    no reward training: the answer that model finds likelier per token wins
    (``reward_likelihood_<name>_acc[_<rating>]``; what the RM's training adds to, or loses of, the
    knowledge it starts with). The table has a row for each.
    """
    from llama2_pipeline.model import default_device
    from llama2_pipeline.training.reward import (PAPER_TABLE_8, RewardModel, accuracy_by_rating, calibration,
                                                 plot_calibration, plot_score_histograms, validate_reward_params)

    validate_reward_params(params)
    heldout = list(heldout or [])
    if not heldout:
        raise ValueError("no held-out preference pairs to evaluate the reward models on")
    w = None
    if world is not None:
        from llama2_pipeline.world import World

        w = World.from_params({**world, "seed": seed})
    batch = params["eval"]["batch_size"]
    dirs = {"helpfulness": helpfulness_dir, "safety": safety_dir}
    metrics: dict[str, float] = dict(train_metrics or {})
    rows, noise_free_rows, ceiling_rows, likelihood_rows, hists, curves = [], [], [], [], {}, {}
    device = default_device()
    with torch_threads(params["num_threads"]):
        scored = {name: _score_heldout(RewardModel.load(dirs[name], device=device), heldout, batch)
                  for name in CATEGORIES}
        likely = None
        if init_model_dir is not None:
            from llama2_pipeline.model import load_hf
            from llama2_pipeline.tokenizer import Tokenizer
            from llama2_pipeline.training.reward import likelihood_scores

            lm, tok = load_hf(init_model_dir, device=device), Tokenizer(Path(init_model_dir) / "tokenizer.model")
            likely = {name: likelihood_scores(lm, tok, [r for r in heldout if r["category"] == name], batch)
                      for name in CATEGORIES}
    for name in CATEGORIES:
        own = [r for r in heldout if r["category"] == name]
        other_name = next(c for c in CATEGORIES if c != name)
        other = [r for r in heldout if r["category"] == other_name]
        metrics[f"rm_{name}_heldout_pairs"] = len(own)
        if other:
            c, r = scored[name][other_name]
            metrics[f"rm_{name}_acc_on_{other_name}"] = accuracy_by_rating(c, r, [x["rating"] for x in other])["avg"]
        if not own:
            continue
        chosen, rejected = scored[name][name]
        table = accuracy_by_rating(chosen, rejected, [x["rating"] for x in own])
        rows.append({"rm": name, "test_set": f"held-out {name} pairs", **table})
        metrics[f"rm_{name}_acc"] = table["avg"]
        for level in RATINGS:
            if table[level] is not None:
                metrics[f"rm_{name}_acc_{level}"] = table[level]
            metrics[f"rm_{name}_heldout_pairs_{level}"] = table[f"n_{level}"]
        if likely is not None:
            baseline = accuracy_by_rating(*likely[name], [x["rating"] for x in own])
            likelihood_rows.append({"rm": f"baseline: the initial model's answer likelihood ({name})",
                                    "test_set": f"held-out {name} pairs", **baseline})
            metrics[f"reward_likelihood_{name}_acc"] = baseline["avg"]
            for level in RATINGS:
                metrics[f"reward_likelihood_{name}_acc_{level}"] = baseline[level]
        curves[name] = calibration(chosen, rejected, params["eval"]["calibration_bins"])
        metrics[f"rm_{name}_ece"] = curves[name]["ece"]
        hists[name] = (chosen, rejected)
        if w is not None:
            noise_free, ceiling = _world_tables(w, own, chosen, rejected)
            noise_free_rows.append({"rm": name, "test_set": f"held-out {name} pairs, noise-free labels", **noise_free})
            ceiling_rows.append({"rm": f"oracle of the world's scores ({name})", "test_set": f"held-out {name} pairs",
                                 **ceiling})
            for key, table_ in (("noise_free", noise_free), ("ceiling", ceiling)):
                metrics[f"rm_{name}_acc_{key}"] = table_["avg"]
                for level in RATINGS:
                    metrics[f"rm_{name}_acc_{key}_{level}"] = table_[level]
    if w is not None:
        metrics["reward_disagreement_rate"] = w.config.disagreement_rate
    metrics["reward_heldout_pairs"] = len(heldout)
    metrics = {k: round(float(v), 6) for k, v in metrics.items() if v is not None}
    disagreement = metrics.get("reward_disagreement_rate")
    report = {
        "columns": list(RATINGS) + ["avg"],
        "rows": rows,
        "noise_free_rows": noise_free_rows,
        "ceiling_rows": ceiling_rows,
        "likelihood_rows": likelihood_rows,
        "paper_table_8": [{"rm": k, **v} for k, v in PAPER_TABLE_8.items()],
        "annotator_disagreement_rate": disagreement,
        "margin": params["margin"],
        "note": "accuracy = share of held-out pairs whose chosen answer the RM scores higher; rows: the RM on "
                "its own category's held-out pairs, columns: the annotator's rating of the pair. noise_free_rows: "
                "the same against the world's noiseless judgement (ties left out); ceiling_rows: what an oracle "
                "of the world's scores gets on the annotated labels (flips count 0, ties 0.5); likelihood_rows: a "
                "baseline with no reward training, the answer the RMs' initial model finds likelier per token "
                "wins",
    }
    suffix = f" (annotator disagreement {disagreement:.0%})" if disagreement is not None else ""
    hist = plot_score_histograms(hists, title=f"reward scores, chosen vs rejected{suffix}")
    calib = plot_calibration(curves, title=f"reward model calibration, held-out pairs{suffix}")
    return metrics, report, hist, calib


def _score_heldout(rm, heldout: list[dict], batch: int) -> dict[str, tuple[list[float], list[float]]]:
    """(chosen, rejected) scores of ``rm`` on the held-out pairs of each category."""
    from llama2_pipeline.training.reward import evaluate_scores

    out = {}
    for category in CATEGORIES:
        records = [r for r in heldout if r["category"] == category]
        out[category] = evaluate_scores(rm, records, batch) if records else ([], [])
    return out


def _world_tables(world, records: list[dict], chosen: list[float], rejected: list[float]) -> tuple[dict, dict]:
    """Per-rating tables against the world's noiseless judgement of each pair (the annotator's
    scores, no flips; pairs whose prompt the world does not know are left out): the RM's
    accuracy on the pairs the world does not score equal, and the oracle's expected accuracy on
    the annotated labels (agreeing label 1, tie 0.5, flipped label 0)."""
    import numpy as np

    hits: dict[str, list[float]] = {level: [] for level in RATINGS}
    oracle: dict[str, list[float]] = {level: [] for level in RATINGS}
    for rec, c, r in zip(records, chosen, rejected):
        task = world.task(rec["prompt"]) if rec.get("prompt") else None
        if task is None:
            continue
        gap = world.annotator.score(task, rec["chosen"], rec["category"]) - \
            world.annotator.score(task, rec["rejected"], rec["category"])
        gap = round(gap, 6)
        oracle[rec["rating"]].append(1.0 if gap > 0 else 0.5 if gap == 0 else 0.0)
        if gap != 0:
            hits[rec["rating"]].append(float((c > r) == (gap > 0)))

    def table(values: dict[str, list[float]]) -> dict:
        every = [v for level in RATINGS for v in values[level]]
        out = {"avg": float(np.mean(every)) if every else None, "n": len(every)}
        for level in RATINGS:
            out[level] = float(np.mean(values[level])) if values[level] else None
            out[f"n_{level}"] = len(values[level])
        return out

    return table(hits), table(oracle)
