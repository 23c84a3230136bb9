"""The reward models judged on held-out preference pairs (the paper's Table 8 layout).

* :func:`evaluate_reward_models`: both RMs on the held-out pairs of their own and of the other
  category: accuracy overall and per rating level, calibration (ECE) and score histograms; next to
  them the same table for the world's noise-free judgement, for an oracle of the world's scores
  (the ceiling the annotator's noise leaves) and for a baseline with no reward training (the
  initial model's answer likelihood decides).
* :func:`accuracy_by_rating` (with its intervals over resamples of the held-out prompts),
  :func:`calibration`, :func:`likelihood_scores`, :func:`evaluate_scores`: the pieces, on (chosen,
  rejected) scores.

Beside :mod:`.reward`, whose pair encoding and scoring it uses, as :mod:`.gatt_eval` stands beside
:mod:`.gatt`. No Kedro or MLflow imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..model import Llama
from ..model.reward import RewardModel, encode_example, length_batches
from ..tokenizer import chat_of, encode_chat_prompt
from .ppo import logprobs_of
from .preferences import CATEGORIES, RATINGS, pair_key
from .reward import encode_pairs, pair_scores

#: the paper's per-rating accuracy (Table 8), for reports next to ours
PAPER_TABLE_8 = {
    "safety": {"test_set": "Meta Safety", "significantly_better": 0.943, "better": 0.763,
               "slightly_better": 0.657, "negligibly_better": 0.553, "avg": 0.645},
    "helpfulness": {"test_set": "Meta Helpful.", "significantly_better": 0.899, "better": 0.732,
                    "slightly_better": 0.638, "negligibly_better": 0.545, "avg": 0.628},
}

def evaluate_reward_models(helpfulness_dir: Path, safety_dir: Path, heldout: list[dict], *, batch_size: int = 32,
                           calibration_bins: int = 10, margin: str = "small", world=None,
                           init_model_dir: Path | None = None, device: str = "cpu",
                           new: Sequence[dict] | None = None
                           ) -> tuple[dict[str, float], dict[str, Any], dict, dict]:
    """Held-out accuracy of both RMs; returns (flat metrics, the per-rating table, the chosen and
    rejected scores per RM (for the histograms), the calibration curves per RM).

    Each RM is scored on the held-out pairs of its own category: ``rm_<name>_acc`` and
    ``rm_<name>_acc_<rating>`` (the paper's Table 8), ``rm_<name>_ece`` (calibration), and on the
    other category (``rm_<name>_acc_on_<other>``). With a ``world`` (a World) it re-judges each
    held-out pair without annotator noise: ``rm_<name>_acc_noise_free[_<rating>]`` is the RM's
    accuracy against that judgement (pairs the world scores equal left out), and
    ``rm_<name>_acc_ceiling[_<rating>]`` the accuracy an oracle of the world's scores gets on the
    annotated labels (a flipped label counts 0, a tie 0.5): what ``disagreement_rate`` and ties
    leave reachable. With ``init_model_dir`` (the model the RMs start from) a baseline judge with
    no reward training: the answer that model finds likelier per token wins
    (``reward_likelihood_<name>_acc[_<rating>]``; what the RM's training adds to, or loses of, the
    knowledge it starts with). The table has a row for each. With ``new`` (an RLHF round's new
    pairs) the held-out pairs of its own category split in two: ``rm_<name>_acc_new``, on the
    round's new pairs (the current policy's answers), and ``rm_<name>_acc_earlier``, on every
    earlier stage's (what continued training may forget), each with ``..._pairs``.
    """
    heldout = list(heldout or [])
    if not heldout:
        raise ValueError("no held-out preference pairs to evaluate the reward models on")
    w = world
    batch = batch_size
    dirs = {"helpfulness": helpfulness_dir, "safety": safety_dir}
    metrics: dict[str, float] = {}
    rows, noise_free_rows, ceiling_rows, likelihood_rows, hists, curves = [], [], [], [], {}, {}
    scored = {name: _score_heldout(RewardModel.load(dirs[name], device=device), heldout, batch)
              for name in CATEGORIES}
    likely = None
    if init_model_dir is not None:
        from ..model import load_hf
        from ..tokenizer import Tokenizer

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
        table = accuracy_by_rating(chosen, rejected, [x["rating"] for x in own], prompt_groups(own))
        rows.append({"rm": name, "test_set": f"held-out {name} pairs", **table})
        metrics[f"rm_{name}_acc"] = table["avg"]
        for level in RATINGS:
            if table[level] is not None:
                metrics[f"rm_{name}_acc_{level}"] = table[level]
            metrics[f"rm_{name}_heldout_pairs_{level}"] = table[f"n_{level}"]
        metrics.update(interval_metrics(f"rm_{name}_acc", table))
        if new is not None:
            metrics.update(_new_and_earlier(f"rm_{name}", own, chosen, rejected, {pair_key(r) for r in new}))
        if likely is not None:
            baseline = accuracy_by_rating(*likely[name], [x["rating"] for x in own], prompt_groups(own))
            likelihood_rows.append({"rm": f"baseline: the initial model's answer likelihood ({name})",
                                    "test_set": f"held-out {name} pairs", **baseline})
            metrics[f"reward_likelihood_{name}_acc"] = baseline["avg"]
            for level in RATINGS:
                metrics[f"reward_likelihood_{name}_acc_{level}"] = baseline[level]
        curves[name] = calibration(chosen, rejected, calibration_bins)
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
            if name == "helpfulness":
                more, kind_rows = kind_tables(w, own, chosen, rejected, likely[name] if likely else None)
                metrics.update(more)
                rows += kind_rows
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
        "margin": margin,
        "note": "accuracy = share of held-out pairs whose chosen answer the RM scores higher; rows: the RM on "
                "its own category's held-out pairs, columns: the annotator's rating of the pair. noise_free_rows: "
                "the same against the world's noiseless judgement (ties left out); ci_<level>: the 95 % interval "
                "over resamples of the held-out prompts; ceiling_rows: what an oracle "
                "of the world's scores gets on the annotated labels (flips count 0, ties 0.5); likelihood_rows: a "
                "baseline with no reward training, the answer the RMs' initial model finds likelier per token "
                "wins",
    }
    return metrics, report, hists, curves


#: what a helpfulness pair's two answers differ in, by the world's components
PAIR_KINDS = ("correctness", "style", "mixed", "other")
STYLE = ("restate", "explain", "concise", "form", "filler", "hedge")
#: the helpfulness pairs reported on their own, by :func:`pair_kind`
PAIR_SUBSETS = {"beyond_correctness": lambda kind: kind != "correctness", "style": lambda kind: kind == "style",
                "correctness": lambda kind: kind == "correctness"}


def pair_kind(world, record: dict) -> str:
    """``correctness`` when the world scores a pair's answers apart only for being right,
    ``style`` when only for how they say it (restate, explain, concise, form, filler, hedge),
    ``mixed`` for both, ``other`` for the rest (a refusal or a blank on either side, unsafe
    prompts, prompts the world does not know, equal components)."""
    prompt = record.get("prompt")
    task = world.task(prompt) if isinstance(prompt, str) else None
    if task is None or task.category == "unsafe":
        return "other"
    a, b = record["chosen"].strip(), record["rejected"].strip()
    da, db = world.dimensions(prompt, a), world.dimensions(prompt, b)
    if not a or not b or da["refusal"] or db["refusal"]:
        return "other"
    correct = da.get("correct") != db.get("correct")
    style = any(da.get(k) != db.get(k) for k in STYLE)
    return "mixed" if correct and style else "correctness" if correct else "style" if style else "other"


def kind_tables(world, records: list[dict], chosen: list[float], rejected: list[float],
                likely: tuple[list[float], list[float]] | None) -> tuple[dict[str, float], list[dict]]:
    """The helpfulness RM's (and the likelihood baseline's) accuracy per rating on the pairs that
    differ beyond correctness (style, mixed or other), on style-only pairs and on correctness-only
    pairs (:func:`pair_kind`): metrics ``rm_helpfulness_acc_<subset>[_<rating>]`` and
    ``reward_likelihood_helpfulness_acc_<subset>``, and a table row for each."""
    kinds = np.asarray([pair_kind(world, r) for r in records])
    ratings = np.asarray([r["rating"] for r in records])
    groups = prompt_groups(records)
    metrics: dict[str, float] = {}
    rows = []
    for subset, of_subset in PAIR_SUBSETS.items():
        sel = np.asarray([of_subset(k) for k in kinds], dtype=bool)
        pick = lambda xs: [x for x, s in zip(xs, sel) if s]
        table = accuracy_by_rating(pick(chosen), pick(rejected), ratings[sel].tolist(), pick(groups))
        rows.append({"rm": "helpfulness", "test_set": f"held-out pairs, {subset.replace('_', ' ')}", **table})
        metrics[f"rm_helpfulness_pairs_{subset}"] = table["n"]
        metrics[f"rm_helpfulness_acc_{subset}"] = table["avg"]
        for level in RATINGS:
            metrics[f"rm_helpfulness_acc_{subset}_{level}"] = table[level]
        metrics.update(interval_metrics(f"rm_helpfulness_acc_{subset}", table))
        if likely is not None:
            base = accuracy_by_rating(pick(likely[0]), pick(likely[1]), ratings[sel].tolist())
            metrics[f"reward_likelihood_helpfulness_acc_{subset}"] = base["avg"]
    return metrics, rows


def interval_metrics(prefix: str, table: dict) -> dict[str, float]:
    """``<prefix>[_<rating>]_ci_low`` / ``_ci_high`` from a table's intervals (``ci_avg`` names
    the prefix itself)."""
    out = {}
    for key, (low, high) in ((k, v) for k, v in table.items() if k.startswith("ci_")):
        level = key.removeprefix("ci_")
        name = prefix if level == "avg" else f"{prefix}_{level}"
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    return out


def _new_and_earlier(prefix: str, records: list[dict], chosen: list[float], rejected: list[float],
                     new: set) -> dict[str, float]:
    """Accuracy on the records whose pair is in ``new`` (``<prefix>_acc_new``) and on the rest
    (``_acc_earlier``), with their counts; a side with no records has no accuracy."""
    out = {}
    for side, want in (("new", True), ("earlier", False)):
        idx = [i for i, r in enumerate(records) if (pair_key(r) in new) == want]
        out[f"{prefix}_heldout_pairs_{side}"] = len(idx)
        if idx:
            out[f"{prefix}_acc_{side}"] = accuracy_by_rating([chosen[i] for i in idx], [rejected[i] for i in idx],
                                                             [records[i]["rating"] for i in idx])["avg"]
    return out


def _score_heldout(rm, heldout: list[dict], batch: int) -> dict[str, tuple[list[float], list[float]]]:
    """(chosen, rejected) scores of ``rm`` on the held-out pairs of each category."""
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


def likelihood_scores(model: Llama, tokenizer, records: Sequence[dict], batch_size: int = 32,
                      max_len: int | None = None) -> tuple[list[float], list[float]]:
    """A baseline judge for the RMs: (chosen, rejected) mean log-probability per token that
    ``model`` (a language model, e.g. the SFT model the RMs start from, untrained for the task)
    gives each answer after its chat prompt (:func:`answer_likelihoods`)."""
    both = answer_likelihoods(model, tokenizer, [*records, *records],
                              [r["chosen"] for r in records] + [r["rejected"] for r in records], batch_size, max_len)
    return both[:len(records)], both[len(records):]


@torch.no_grad()
def answer_likelihoods(model: Llama, tokenizer, records: Sequence[dict | str], answers: Sequence[str],
                       batch_size: int = 32, max_len: int | None = None) -> list[float]:
    """The mean log-probability per token ``model`` gives each answer after its record's chat prompt
    (a preference record, a prompt text or a message list: :func:`chat_of`): the answer's tokens and
    EOS, as SFT trains them. Longer than ``max_len`` (default: the model's context): the oldest prompt
    tokens are dropped."""
    if len(records) != len(answers):
        raise ValueError(f"answer_likelihoods got {len(records)} prompts and {len(answers)} answers")
    max_len = max_len or model.config.max_seq_len
    device = next(model.parameters()).device
    seqs: list[tuple[list[int], int]] = []  # (ids, index of the first answer token)
    for r, answer in zip(records, answers):
        messages = chat_of(r)
        full = encode_example(tokenizer, messages, answer)
        answer_len = len(full) - len(encode_chat_prompt(tokenizer, messages))
        ids = full[-max_len:]
        seqs.append((ids, max(1, len(ids) - answer_len)))
    pad = model.config.pad_id if model.config.pad_id is not None else 0
    was_training = model.training
    model.eval()
    out = [0.0] * len(seqs)
    for chunk, ids, _ in length_batches([ids for ids, _ in seqs], batch_size, pad):
        ids = ids.to(device)
        logp = logprobs_of(model(ids)[:, :-1], ids[:, 1:])
        for row, i in enumerate(chunk):
            ids_i, first = seqs[i]
            out[i] = float(logp[row, first - 1:len(ids_i) - 1].mean())
    model.train(was_training)
    return out


#: resamples of the held-out prompts behind each accuracy's interval, and the interval's coverage
BOOTSTRAP_RESAMPLES, INTERVAL = 1000, 0.95


def accuracy_by_rating(chosen: Sequence[float], rejected: Sequence[float], ratings: Sequence[str],
                       groups: Sequence[str] | None = None, resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """Accuracy (chosen scored strictly higher) overall (``avg``) and per rating level, with counts;
    a level without pairs has accuracy None.

    With ``groups`` (each pair's prompt) also ``ci_avg`` and ``ci_<rating>``: the :data:`INTERVAL`
    interval of that accuracy over ``resamples`` resamples of the prompts (percentile bootstrap,
    seed 0, so the same scores give the same interval). The pairs of one prompt are drawn together:
    they compare the same few answers, so they are not independent draws."""
    c, r = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    ok = c > r
    out: dict[str, Any] = {"avg": float(ok.mean()) if len(ok) else None, "n": int(len(ok))}
    ratings = np.asarray(ratings)
    for level in RATINGS:
        sel = ratings == level
        out[level] = float(ok[sel].mean()) if sel.any() else None
        out[f"n_{level}"] = int(sel.sum())
    if groups is not None:
        if len(groups) != len(ok):
            raise ValueError(f"accuracy_by_rating got {len(groups)} groups for {len(ok)} pairs")
        out.update(_intervals(ok, ratings, groups, resamples))
    return out


def _intervals(ok: np.ndarray, ratings: np.ndarray, groups: Sequence[str], resamples: int) -> dict[str, list[float]]:
    """``ci_<avg|rating>`` -> [low, high] by a prompt-clustered percentile bootstrap (empty with
    fewer than two prompts: nothing to resample)."""
    keys, index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    if len(keys) < 2 or not len(ok):
        return {}
    counts = np.random.default_rng(0).multinomial(len(keys), np.full(len(keys), 1.0 / len(keys)), size=resamples)
    weights = counts[:, index].astype(np.float64)  # (resamples, pairs): how often each pair is drawn
    tail = 100.0 * (1.0 - INTERVAL) / 2.0
    out = {}
    for level, sel in (("avg", np.ones(len(ok), bool)), *((level, ratings == level) for level in RATINGS)):
        if not sel.any():
            continue
        w = weights[:, sel]
        drawn = w.sum(axis=1)
        acc = (w * ok[sel]).sum(axis=1)[drawn > 0] / drawn[drawn > 0]
        out[f"ci_{level}"] = [round(float(x), 6) for x in np.percentile(acc, [tail, 100.0 - tail])]
    return out


def prompt_groups(records: Sequence[dict]) -> list[str]:
    """Each preference record's prompt, the unit the held-out split and the intervals draw:
    ``prompt_id`` where the record has one, else its prompt (or conversation) as text."""
    return [str(r.get("prompt_id") or r.get("prompt") or r.get("dialogue") or "") for r in records]


def calibration(chosen: Sequence[float], rejected: Sequence[float], bins: int = 10) -> dict[str, Any]:
    """Score gap vs. the probability that the annotator prefers the first answer.

    Each pair counts in both orientations (gap ``d`` with outcome 1, ``-d`` with outcome 0), so
    the curve is symmetric; pairs are binned by gap quantiles. Returns bin centres (mean gap),
    empirical probability, the Bradley-Terry prediction ``mean(sigmoid(gap))`` per bin, counts,
    and ``ece``: the count-weighted mean |empirical - predicted|.
    """
    d = np.asarray(chosen, dtype=np.float64) - np.asarray(rejected, dtype=np.float64)
    gaps, y = np.concatenate([d, -d]), np.concatenate([np.ones_like(d), np.zeros_like(d)])
    if not len(gaps):
        return {"gap": [], "p_annotator": [], "p_model": [], "count": [], "ece": None}
    order = np.argsort(gaps, kind="stable")
    gaps, y = gaps[order], y[order]
    edges = np.linspace(0, len(gaps), min(bins, len(gaps)) + 1).round().astype(int)
    out = {"gap": [], "p_annotator": [], "p_model": [], "count": []}
    err = 0.0
    for a, b in zip(edges[:-1], edges[1:]):
        if b <= a:
            continue
        g, yy = gaps[a:b], y[a:b]
        p_model = float((1 / (1 + np.exp(-g))).mean())
        out["gap"].append(float(g.mean()))
        out["p_annotator"].append(float(yy.mean()))
        out["p_model"].append(p_model)
        out["count"].append(int(b - a))
        err += (b - a) * abs(float(yy.mean()) - p_model)
    out["ece"] = err / len(gaps)
    return out


def evaluate_scores(rm: RewardModel, records: Sequence[dict], batch_size: int = 64) -> tuple[list[float], list[float]]:
    """(chosen scores, rejected scores) of preference records under ``rm`` (eval mode)."""
    if rm.tokenizer is None:
        raise ValueError("evaluate_scores needs an RM loaded with its tokenizer")
    pairs = encode_pairs(rm.tokenizer, records, rm.config.max_seq_len, "none")
    return pair_scores(rm.eval(), pairs, batch_size, rm.config.pad_id if rm.config.pad_id is not None else 0)
