"""Reward-model training (Llama 2, section 3.2.2): the margin loss, pair batches, and the runs of
both reward models on the shared stage runner.

* :func:`pairwise_loss`: ``-log(sigmoid(r_chosen - r_rejected - m(rating)))`` with the margin
  tables :data:`MARGINS` (``small`` 1, 2/3, 1/3, 0; ``large`` 3, 2, 1, 0; ``none``).
* :func:`train_reward_model`: one RM from an HF folder (SFT or pretrained ``LlamaForCausalLM``,
  or an earlier RM), ``epochs`` passes over the pairs (paper: 1) with a :class:`PairBatches`
  stream (resumable, exact position in every checkpoint), exported as a transformers
  ``LlamaForSequenceClassification`` (:mod:`llama2_pipeline.model.reward`).
* :func:`train_reward_models`: both RMs (helpfulness, safety), each on the paper's data mix of
  the pairs (:func:`~.preferences.mix_preferences`) for its own number of passes, as the
  ``reward`` params group (:class:`RewardConfig`) says.

Pairs are preference records (:mod:`llama2_pipeline.training.preferences`). Held-out accuracy,
calibration and the baselines are :mod:`.reward_eval`'s.
Nothing here imports Kedro or MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.files import read_jsonl, write_jsonl
from ..model.reward import (
    RewardModel,
    encode_example,
    export_reward_hf,
    pad_right,
    score_sequences,
)
from ..tokenizer import chat_of
from .config import RewardConfig, TrainConfig
from .engine import RunContext
from .preferences import CATEGORIES, RATINGS, mix_preferences, validate_preferences
from .runner import Parts, run_stage

log = logging.getLogger(__name__)

#: m(rating) of the loss; the paper's two tables (its Table 28) and no margin
MARGINS: dict[str, dict[str, float]] = {
    "small": {"significantly_better": 1.0, "better": 2 / 3, "slightly_better": 1 / 3, "negligibly_better": 0.0},
    "large": {"significantly_better": 3.0, "better": 2.0, "slightly_better": 1.0, "negligibly_better": 0.0},
    "none": {r: 0.0 for r in RATINGS},
}


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def margin_of(rating: str, table: str | dict[str, float]) -> float:
    """m(rating) of a margin table (a name in :data:`MARGINS` or a dict)."""
    if isinstance(table, str):
        if table not in MARGINS:
            raise ValueError(f"unknown margin table {table!r}; expected one of {list(MARGINS)}")
        table = MARGINS[table]
    return float(table.get(rating, 0.0))


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float = 0.0,
                  reduction: str = "mean") -> torch.Tensor:
    """The paper's binary ranking loss ``-log(sigmoid(r_chosen - r_rejected - m))`` (float32)."""
    diff = r_chosen.float() - r_rejected.float() - (margin.float() if torch.is_tensor(margin) else margin)
    loss = -F.logsigmoid(diff)
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


# --------------------------------------------------------------------------------------------
# Pairs and batches
# --------------------------------------------------------------------------------------------


def encode_pairs(tokenizer, records: Sequence[dict], max_len: int, margin: str | dict) -> list[dict]:
    """Tokenised pairs: ``{"chosen": ids, "rejected": ids, "margin": m(rating), "rating": ...}``."""
    out = []
    for r in records:
        out.append({"chosen": encode_example(tokenizer, chat_of(r), r["chosen"], max_len),
                    "rejected": encode_example(tokenizer, chat_of(r), r["rejected"], max_len),
                    "margin": margin_of(r["rating"], margin), "rating": r["rating"]})
    return out


class PairBatches:
    """Endless micro-batches of preference pairs in seeded, length-bucketed epochs (resumable).

    The stream is the concatenation of one ordering of the pairs per epoch, a function of
    ``seed`` and the epoch alone, so the position ``pos`` is the whole state. An epoch's ordering:
    a seeded permutation, cut into blocks of ``length_blocks`` global batches; inside a block the
    pairs are sorted by length and cut into global batches, whose order is then shuffled (so a
    micro-batch pads little, and batch lengths still come in random order; ``length_blocks`` 0 =
    plain permutation). Each optimiser step consumes one global batch of ``micro_batch *
    grad_accum * num_ranks`` consecutive pairs; rank ``r`` takes rows ``[(a * num_ranks + r) *
    micro_batch, ... + micro_batch)`` for its accumulation micro-step ``a`` (disjoint across ranks;
    1 rank x ``grad_accum`` 2 sees what 2 ranks together see). A micro-batch is ``input_ids``
    (2B, T): the B chosen answers, then the B rejected ones, right-padded; ``last_index`` (2B,);
    ``margin`` (B,).
    """

    def __init__(self, pairs: Sequence[dict], micro_batch: int, pad_id: int, *, grad_accum: int = 1,
                 rank: int = 0, num_ranks: int = 1, seed: int = 0, length_blocks: int = 8):
        if not pairs:
            raise ValueError("no preference pairs to train on")
        self.pairs, self.micro_batch, self.pad_id = pairs, micro_batch, pad_id
        self.grad_accum, self.rank, self.num_ranks, self.seed = grad_accum, rank, num_ranks, seed
        self.global_batch = micro_batch * grad_accum * num_ranks
        self.length_blocks = length_blocks
        self.lengths = np.array([max(len(p["chosen"]), len(p["rejected"])) for p in pairs])
        self.pos, self.micro = 0, 0
        self._order: tuple[int, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The pair indices of one epoch, in stream order."""
        rng = np.random.default_rng([self.seed, epoch, 0x9A1])
        perm = rng.permutation(len(self.pairs))
        if self.length_blocks <= 0:
            return perm
        G, block = self.global_batch, self.global_batch * self.length_blocks
        batches = []
        for start in range(0, len(perm), block):
            chunk = perm[start:start + block]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + G] for i in range(0, len(chunk), G)]
        return np.concatenate([batches[i] for i in rng.permutation(len(batches))])

    def _index(self, i: int) -> int:
        epoch, k = divmod(i, len(self.pairs))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.epoch_order(epoch))
        return int(self._order[1][k])

    def __iter__(self) -> PairBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        first = self.pos + (self.micro * self.num_ranks + self.rank) * self.micro_batch
        rows = [self.pairs[self._index(i)] for i in range(first, first + self.micro_batch)]
        self.micro += 1
        if self.micro == self.grad_accum:
            self.micro = 0
            self.pos += self.global_batch
        ids, last = pad_right([r["chosen"] for r in rows] + [r["rejected"] for r in rows], self.pad_id)
        return {"input_ids": ids, "last_index": last,
                "margin": torch.tensor([r["margin"] for r in rows], dtype=torch.float32)}

    def state_dict(self) -> dict[str, Any]:
        return {"pos": self.pos, "micro": self.micro, "n_pairs": len(self.pairs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("n_pairs", len(self.pairs)) != len(self.pairs):
            raise ValueError(f"the checkpoint's pair stream had {state['n_pairs']} pairs, this run has "
                             f"{len(self.pairs)}: resume with the same data")
        self.pos, self.micro = int(state["pos"]), int(state["micro"])


def reward_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The loop's ``loss_fn``: mean margin loss of the micro-batch's pairs."""
    scores = model(batch["input_ids"], last_index=batch["last_index"])
    b = batch["margin"].numel()
    return pairwise_loss(scores[:b], scores[b:], batch["margin"]), b


def pair_scores(model, pairs: Sequence[dict], batch_size: int, pad_id: int) -> tuple[list[float], list[float]]:
    """(chosen scores, rejected scores) of tokenised pairs under ``model`` (an RM or its engine)."""
    out = score_sequences(model, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], batch_size, pad_id)
    return out[:len(pairs)], out[len(pairs):]


def reward_train_config(train_cfg: TrainConfig | dict, n_pairs: int, epochs: float = 1.0,
                        warmup_fraction: float = 0.03, min_warmup_steps: int = 5) -> TrainConfig:
    """The :class:`TrainConfig` of an RM run: ``max_steps`` covers ``epochs`` passes over
    ``n_pairs`` (rounded up); unless given (not null), ``warmup_steps`` is the paper's 3 % of the
    steps, at least 5 (never more than the run). ``max_steps`` must not be given."""
    d = train_cfg.to_dict() if isinstance(train_cfg, TrainConfig) else dict(train_cfg)
    if d.get("max_steps") is not None:
        raise ValueError("reward.train.max_steps is derived from reward.epochs and the number of pairs; "
                         "remove it")
    if not epochs > 0:
        raise ValueError(f"reward epochs must be > 0, got {epochs!r}")
    probe = TrainConfig.from_dict({**d, "max_steps": 1})
    steps = max(1, math.ceil(epochs * n_pairs / probe.global_batch))
    d["max_steps"] = steps
    if d.get("warmup_steps") is None:
        d["warmup_steps"] = min(steps, max(min_warmup_steps, math.ceil(warmup_fraction * steps)))
    return TrainConfig.from_dict(d)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

TRAIN_PAIRS, EVAL_PAIRS = "pairs_train.jsonl", "pairs_eval.jsonl"


@dataclass
class RewardStage:
    """One reward model's run as a :class:`~.runner.Stage`."""

    init_dir: Path
    pairs: list[dict]  # validated preference records
    evals: list[dict]  # held-out records watched during training (may be empty)
    margin: str = "small"
    name: str = "rm"

    def to_json(self, run_dir: Path) -> dict[str, Any]:
        write_jsonl(run_dir / TRAIN_PAIRS, self.pairs, sort_keys=True)
        write_jsonl(run_dir / EVAL_PAIRS, self.evals, sort_keys=True)
        return {"init_dir": str(Path(self.init_dir).resolve()), "pairs": str((run_dir / TRAIN_PAIRS).resolve()),
                "evals": str((run_dir / EVAL_PAIRS).resolve()), "margin": self.margin, "name": self.name}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RewardStage:
        return cls(Path(data["init_dir"]), read_jsonl(data["pairs"])[0], read_jsonl(data["evals"])[0], data["margin"],
                   data["name"])

    def parts(self, cfg: TrainConfig, ctx: RunContext) -> Parts:
        rm = RewardModel.from_pretrained(self.init_dir)  # its head drawn from the seeded torch RNG
        if rm.tokenizer is None:
            raise FileNotFoundError(f"{self.init_dir}: no tokenizer.model next to the model (needed to encode pairs)")
        if cfg.seq_len > rm.config.max_seq_len:
            raise ValueError(f"reward train seq_len {cfg.seq_len} exceeds the model's max_seq_len "
                             f"{rm.config.max_seq_len}")
        tok, pad = rm.tokenizer, rm.config.pad_id
        train_pairs = encode_pairs(tok, self.pairs, cfg.seq_len, self.margin)
        n_eval = len(self.evals) if not cfg.eval_batches else min(len(self.evals), cfg.eval_batches * cfg.micro_batch)
        eval_tok = encode_pairs(tok, self.evals[:n_eval], cfg.seq_len, self.margin) if n_eval else []

        def eval_fn(model) -> dict[str, float]:
            chosen, rejected = pair_scores(model, eval_tok, 2 * cfg.micro_batch, pad)
            c, r = torch.tensor(chosen), torch.tensor(rejected)
            m = torch.tensor([p["margin"] for p in eval_tok])
            return {"val_acc": float((c > r).float().mean()), "val_loss": float(pairwise_loss(c, r, m))}

        def metrics(result, common: dict[str, Any]) -> dict[str, Any]:
            out = {"train_loss": common["train_loss"], "train_pairs": len(train_pairs), "steps": common["steps"],
                   "seconds": common["seconds"], "tokens_per_s": common["tokens_per_s"]}
            if eval_tok:
                out.update(val_acc=result.eval.get("val_acc"), val_loss=result.eval.get("val_loss"))
            return {f"{self.name}_{k}": v for k, v in out.items()}

        if ctx.is_main:
            log.info("%s: %d pairs, %d steps of %d pairs, margin %s", self.name, len(train_pairs), cfg.max_steps,
                     cfg.global_batch, self.margin)
        digest = hashlib.sha256(json.dumps([[p["chosen"], p["rejected"], p["margin"]] for p in train_pairs]).encode())
        return Parts(
            model=rm,
            data=PairBatches(train_pairs, cfg.micro_batch, pad, grad_accum=cfg.grad_accum, rank=ctx.rank,
                             num_ranks=ctx.world_size, seed=cfg.seed),
            loss_fn=reward_loss, eval_fn=eval_fn if eval_tok else None,
            export=lambda module, out: export_reward_hf(module, out, tokenizer_model=tok.path),
            metrics=metrics,
            checkpoint_meta={"init_dir": str(self.init_dir), "pairs_sha256": digest.hexdigest(),
                             "margin": self.margin})


def train_reward_model(
    pairs: Sequence[dict],
    init_dir: str | os.PathLike,
    train_cfg: TrainConfig | dict,
    run_dir: str | os.PathLike,
    *,
    margin: str = "small",
    epochs: float = 1.0,
    warmup_fraction: float = 0.03,
    eval_pairs: Sequence[dict] | None = None,
    out_dir: str | os.PathLike | None = None,
    log_fn=None,
    progress: bool = True,
    name: str = "rm",
) -> dict[str, float]:
    """Train one reward model on preference records; export it; return flat ``<name>_*`` metrics.

    Args:
        pairs: preference records (validated with :func:`validate_preferences`).
        init_dir: HF folder to start from (SFT/pretrained ``LlamaForCausalLM`` or an RM) with its
            ``tokenizer.model``.
        train_cfg: :class:`TrainConfig` or its dict without ``max_steps`` (derived from ``epochs``);
            ``seq_len`` is the longest RM input (longer ones lose their oldest tokens).
        run_dir: checkpoints, ``metrics.jsonl``, ``result.json``; a rerun resumes from its last
            checkpoint (bit-identical weights on CPU).
        margin: a :data:`MARGINS` table name. epochs: passes over the pairs (paper: 1).
        eval_pairs: held-out records for ``val_loss``/``val_acc`` every ``eval_every`` steps
            (monitoring only; at most ``eval_batches * micro_batch`` pairs, 0 = all).
        out_dir: the exported ``LlamaForSequenceClassification`` folder (default ``run_dir/hf``).
        log_fn: ``log_fn(metrics, step)`` for every log/eval record (rank 0).

    Returns: ``<name>_train_loss``, ``_train_pairs``, ``_steps``, ``_seconds``, ``_tokens_per_s``
    and, with ``eval_pairs``, ``_val_acc`` / ``_val_loss``.
    """
    if margin not in MARGINS:
        raise ValueError(f"unknown margin table {margin!r}; expected one of {list(MARGINS)}")
    records = validate_preferences(pairs, source=f"{name} training pairs")
    evals = validate_preferences(eval_pairs, source=f"{name} eval pairs") if eval_pairs else []
    cfg = reward_train_config(train_cfg, len(records), epochs, warmup_fraction)
    run_dir = Path(run_dir)
    stage = RewardStage(Path(init_dir), records, evals, margin, name)
    return run_stage(stage, cfg, run_dir, Path(out_dir) if out_dir is not None else run_dir / "hf", log_fn=log_fn,
                     progress=progress)


def train_reward_models(pairs: Sequence[dict], init_dir: str | os.PathLike | dict[str, str | os.PathLike],
                        cfg: RewardConfig, run_dir: str | os.PathLike, out_dirs: dict[str, Path], *,
                        heldout: Sequence[dict] | None = None,
                        log_fn: Callable[[str], Callable[[dict, int], Any]] | None = None,
                        progress: bool = True) -> dict[str, float]:
    """Both RMs from ``init_dir`` (the SFT model, or ``{category: folder}`` to continue from earlier
    RMs), each on its data mix of ``pairs`` for ``cfg.epochs_of(category)`` passes, trained in
    ``run_dir/<category>`` and exported to ``out_dirs[category]``; returns their metrics
    (``rm_<category>_train_loss``, ...). ``heldout`` pairs of the RM's own category are watched
    during training when ``cfg.train.eval_every`` is set; ``log_fn(category)`` gives each run's
    metrics callback."""
    if not pairs:
        raise ValueError("no training preference pairs (reward_preferences_train is empty)")
    train_cfg = cfg.train.replace(num_threads=cfg.num_threads)
    metrics: dict[str, float] = {}
    for name in CATEGORIES:
        records = mix_preferences(pairs, cfg.mix(name), train_cfg.seed)
        if not records:
            raise ValueError(f"the {name} RM's data mix {cfg.mix(name)} selects no training pairs")
        evals = [r for r in heldout or [] if r["category"] == name] if cfg.train.eval_every else []
        metrics.update(train_reward_model(
            records, init_dir[name] if isinstance(init_dir, dict) else init_dir, train_cfg, Path(run_dir) / name, margin=cfg.margin, epochs=cfg.epochs_of(name),
            warmup_fraction=cfg.warmup_fraction, eval_pairs=evals or None, out_dir=out_dirs[name],
            log_fn=log_fn(name) if log_fn else None, progress=progress, name=f"rm_{name}"))
    return metrics
