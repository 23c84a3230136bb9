"""Supervised fine-tuning (SFT): a pretrained Llama on chat dialogues, loss on answer tokens only.

``finetune(init, tokenizer, dialogues, train_cfg, run_dir)`` is the one SFT routine of the recipe:
the SFT stage calls it on the reference dialogues, rejection sampling and GAtt call it later on
their own. It runs through the shared engine and loop (:func:`~.engine.build_engine`,
:func:`~.loop.train`), so checkpoints, exact resume, metrics and multi-rank launch are those of
pretraining.

Data, step by step:

1. **Encode** (:func:`encode_examples`): each ``{"messages": [...]}`` record becomes token ids
   and an answer mask through the tokenizer's chat template (:func:`~llama2_pipeline.tokenizer.encode_chat`;
   roles are validated and a bad record raises :class:`~llama2_pipeline.tokenizer.ChatFormatError`
   naming its ``id`` or index). ``only_last_answer`` (for all records, or per record) keeps the
   loss on the last answer only (GAtt); already-encoded ``(ids, mask)`` examples pass through.
2. **Split**: a seeded ``val_fraction`` of the dialogues is held out for the answer-loss curve.
3. **Pack** (:func:`pack_examples`): a dialogue of ``n`` tokens gives ``n - 1`` (input, target)
   positions. With ``pack=True`` they are placed greedily first-fit, in a seeded shuffled order,
   into rows of ``seq_len`` positions, each tagged with its document index (``doc_ids``), so
   attention is block-diagonal and positions restart per dialogue: a packed row computes
   exactly what each dialogue computes alone. With ``pack=False`` each dialogue gets its own
   right-padded row. Targets outside the answers (prompts, system prompts, padding) are
   ``IGNORE``. Dialogues longer than ``seq_len + 1`` tokens are truncated or dropped
   (``overlong``) and counted.
4. **Batches** (:class:`PackedBatches`): epochs over the rows, each in the order of a
   permutation drawn from a numpy Generator seeded with ``(seed, epoch)``; the position
   (epoch, index, micro-step) is checkpointed, so a resumed run sees exactly the same batches.
   ``epochs`` sets ``max_steps = ceil(epochs * rows / global_batch)``.

Run folder: ``checkpoints/``, ``metrics.jsonl``, ``loss_curve.png``, ``result.json``, ``hf/``
(the exported model, with tokenizer files), and for multi-rank runs ``run_config.json`` +
``examples.npz``. CLI (what the launcher starts on each rank):
``python -m llama2_pipeline.training.sft --config run_dir/run_config.json``.

Knows nothing of Kedro or MLflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..io_utils import atomic_path, write_json
from ..model import Llama, export_hf, load_hf
from ..model.hf import config_from_hf
from ..tokenizer import ChatFormatError, encode_chat, save_hf_tokenizer
from .config import TrainConfig
from .engine import (META_FILE, CheckpointMismatchError, Checkpointer, RunContext, barrier, build_engine,
                     gathered_module, setup_run)
from .launcher import launch, rank_main, read_run_config
from .loop import flops_per_token, train
from .pretrain import plot_loss_curve, weights_digest

log = logging.getLogger(__name__)

MODULE = "llama2_pipeline.training.sft"  # the CLI module the launcher starts on every rank
RUN_CONFIG = "run_config.json"
RESULT_FILE = "result.json"
EXAMPLES_FILE = "examples.npz"
IGNORE = -100  # target id that carries no loss (F.cross_entropy's ignore_index)
OVERLONG = ("truncate", "drop")
_RUN_CONFIG_KEYS = {"init", "examples", "train", "sft", "run_dir", "hf_dir", "tokenizer_model", "progress",
                    "prefix"}


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@dataclass
class SFTConfig:
    """How dialogues become training rows (the optimiser and batch live in :class:`TrainConfig`)."""

    pack: bool = True  # pack dialogues into full rows (block-diagonal attention); False: one padded dialogue per row
    overlong: str = "truncate"  # dialogues longer than seq_len + 1 tokens: "truncate" (keep the start) or "drop"
    epochs: float | None = 2.0  # passes over the rows (paper: 2); sets max_steps. None: TrainConfig.max_steps
    val_fraction: float = 0.05  # dialogues held out for the validation answer loss (0 = none)
    only_last_answer: bool = False  # loss on each dialogue's last answer only (GAtt); records may override
    shuffle: bool = True  # pack in a seeded shuffled order (False: the given order)

    def __post_init__(self) -> None:
        if self.overlong not in OVERLONG:
            raise ValueError(f"SFTConfig.overlong must be one of {OVERLONG}, got {self.overlong!r}")
        if self.epochs is not None and not (isinstance(self.epochs, (int, float)) and self.epochs > 0):
            raise ValueError(f"SFTConfig.epochs must be a number > 0 or null, got {self.epochs!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"SFTConfig.val_fraction must be in [0, 1), got {self.val_fraction!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SFTConfig:
        """Build from plain data; unknown keys or wrongly typed values raise a ValueError naming the key."""
        d = dict(d or {})
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown SFT key(s) {unknown}; expected some of {sorted(fields)}")
        for key in ("pack", "only_last_answer", "shuffle"):
            if key in d and not isinstance(d[key], bool):
                raise ValueError(f"SFTConfig.{key} must be true or false, got {d[key]!r}")
        for key in ("epochs", "val_fraction"):
            if key in d and (isinstance(d[key], bool) or not isinstance(d[key], (int, float, type(None)))
                             or (key == "val_fraction" and d[key] is None)):
                raise ValueError(f"SFTConfig.{key} must be a number, got {d[key]!r}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Encoding and packing
# --------------------------------------------------------------------------------------------


def _record_name(record: Any, index: int) -> Any:
    return record.get("id", index) if isinstance(record, dict) else index


def encode_examples(tokenizer, dialogues: Iterable[Any], *, only_last_answer: bool = False,
                    vocab_size: int | None = None) -> list[tuple[list[int], list[int]]]:
    """``(ids, mask)`` per dialogue.

    A dialogue is ``{"messages": [...], "id"?: ..., "only_last_answer"?: bool}`` (encoded with the
    chat template; the per-record flag overrides ``only_last_answer``), an already encoded
    ``(ids, mask)`` pair (e.g. a :class:`~llama2_pipeline.tokenizer.ChatEncoding`), or
    ``{"ids": [...], "mask": [...]}``. Problems raise :class:`ChatFormatError` naming the record
    (its ``id``, else its 0-based index).
    """
    out = []
    for i, d in enumerate(dialogues):
        name = _record_name(d, i)
        if isinstance(d, dict) and "messages" in d:
            if tokenizer is None:
                raise ChatFormatError("a messages record needs a tokenizer to encode it", name)
            flag = d.get("only_last_answer", only_last_answer)
            if not isinstance(flag, bool):
                raise ChatFormatError(f"'only_last_answer' must be true or false, got {flag!r}", name)
            enc = encode_chat(tokenizer, d["messages"], only_last_answer=flag, record=name)
            ids, mask = list(enc.ids), list(enc.mask)
        elif isinstance(d, dict) and "ids" in d and "mask" in d:
            ids, mask = list(d["ids"]), list(d["mask"])
        elif isinstance(d, (tuple, list)) and len(d) == 2 and not isinstance(d[0], dict):
            ids, mask = list(d[0]), list(d[1])
        else:
            raise ChatFormatError("expected an object with a 'messages' list (or an encoded (ids, mask) "
                                  f"pair), got {str(d)[:80]!r}", name)
        if len(ids) != len(mask) or len(ids) < 2:
            raise ChatFormatError(f"ids and mask must have the same length >= 2, got {len(ids)} and {len(mask)}",
                                  name)
        if any(m not in (0, 1) for m in mask):
            raise ChatFormatError("the answer mask must hold only 0 and 1", name)
        if vocab_size is not None and any(not 0 <= t < vocab_size for t in ids):
            raise ChatFormatError(f"token ids outside the model's vocabulary [0, {vocab_size})", name)
        out.append((ids, mask))
    return out


def examples_digest(examples: Sequence[tuple[Sequence[int], Sequence[int]]]) -> str:
    """sha256 of the encoded examples (what a checkpoint is resumed against)."""
    h = hashlib.sha256()
    for ids, mask in examples:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"|")
        h.update(np.asarray(mask, dtype=np.uint8).tobytes())
        h.update(b"\n")
    return h.hexdigest()


def split_examples(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices) of ``n`` examples: a seeded ``val_fraction`` held out (at
    least one and never all when ``val_fraction > 0`` and ``n >= 2``); both sorted."""
    n_val = 0 if val_fraction <= 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
    perm = np.random.default_rng([seed, 0x5F7, 1]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@dataclass
class PackedRows:
    """Training rows: ``input_ids``/``labels`` (R, seq_len) and ``doc_ids`` (packed rows only)."""

    input_ids: np.ndarray  # int32 token ids (padding: pad_id)
    labels: np.ndarray  # int32 next-token targets; IGNORE where there is no loss
    doc_ids: np.ndarray | None  # int32 document index within the row (-1: padding); None without packing
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, rows: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        rows = np.asarray(rows, dtype=np.int64)
        out = {"input_ids": torch.from_numpy(self.input_ids[rows].astype(np.int64)),
               "labels": torch.from_numpy(self.labels[rows].astype(np.int64))}
        if self.doc_ids is not None:
            out["doc_ids"] = torch.from_numpy(self.doc_ids[rows].astype(np.int64))
        return out


def _first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Greedy first-fit bin packing in the given order: item k goes into the first row with
    room for it, else into a new row. Returns the item indices of each row, in placement order."""
    room = np.empty(max(1, len(lengths)), dtype=np.int64)
    rows: list[list[int]] = []
    for k, n in enumerate(lengths):
        fits = np.flatnonzero(room[:len(rows)] >= n) if rows else ()
        if len(fits):
            r = int(fits[0])
        else:
            r = len(rows)
            rows.append([])
            room[r] = capacity
        rows[r].append(k)
        room[r] -= n
    return rows


def pack_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], seq_len: int, *, pack: bool = True,
                  overlong: str = "truncate", pad_id: int = 0, seed: int = 0, shuffle: bool = True) -> PackedRows:
    """Training rows of ``seq_len`` positions from ``(ids, mask)`` examples.

    A dialogue of ``n`` ids gives inputs ``ids[:-1]`` and targets ``ids[1:]``, the target kept
    where ``mask[1:]`` is 1 (else ``IGNORE``). Dialogues with ``n - 1 > seq_len`` are truncated
    to their first ``seq_len + 1`` ids or dropped (``overlong``); a dialogue left without any
    answer target is dropped too. ``pack``: greedy first-fit into shared rows, in a seeded
    shuffled order (``shuffle``) or the given one; else one dialogue per row.

    ``stats``: dialogues, used, truncated, dropped_overlong, dropped_no_answer, rows, tokens
    (real positions), answer_tokens, packing_efficiency (real positions / row positions).
    """
    if overlong not in OVERLONG:
        raise ValueError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    truncated = dropped_long = dropped_empty = 0
    for ids, mask in examples:
        ids, mask = np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool)
        if len(ids) - 1 > seq_len:
            if overlong == "drop":
                dropped_long += 1
                continue
            ids, mask = ids[:seq_len + 1], mask[:seq_len + 1]
            truncated += 1
            if not mask[1:].any():
                dropped_long += 1  # the cut removed every answer token
                continue
        if not mask[1:].any():
            dropped_empty += 1
            continue
        kept.append((ids, mask))
    order = (np.random.default_rng([seed, 0x5F7, 2]).permutation(len(kept)) if shuffle
             else np.arange(len(kept)))
    kept = [kept[i] for i in order]
    if pack:
        rows = _first_fit([len(ids) - 1 for ids, _ in kept], seq_len)
    else:
        rows = [[k] for k in range(len(kept))]
    R = len(rows)
    input_ids = np.full((R, seq_len), pad_id, dtype=np.int32)
    labels = np.full((R, seq_len), IGNORE, dtype=np.int32)
    doc_ids = np.full((R, seq_len), -1, dtype=np.int32) if pack else None
    tokens = answer = 0
    for r, items in enumerate(rows):
        pos = 0
        for d, k in enumerate(items):
            ids, mask = kept[k]
            n = len(ids) - 1
            input_ids[r, pos:pos + n] = ids[:-1]
            labels[r, pos:pos + n] = np.where(mask[1:], ids[1:], IGNORE)
            if doc_ids is not None:
                doc_ids[r, pos:pos + n] = d
            pos += n
            tokens += n
            answer += int(mask[1:].sum())
    stats = {"dialogues": len(examples), "used": len(kept), "truncated": truncated,
             "dropped_overlong": dropped_long, "dropped_no_answer": dropped_empty, "rows": R,
             "tokens": tokens, "answer_tokens": answer,
             "packing_efficiency": tokens / (R * seq_len) if R else 0.0}
    return PackedRows(input_ids, labels, doc_ids, stats)


class PackedBatches:
    """Endless micro-batches of packed rows, epoch after epoch, resumable exactly.

    Epoch ``e`` visits the rows in the order of ``default_rng([seed, 0x5F7, e]).permutation``;
    each optimiser step takes the next ``micro_batch * grad_accum * num_ranks`` rows of that
    stream (running on into the next epoch at the end of one), and rank ``r`` takes rows
    ``[(a * num_ranks + r) * micro_batch, ... + micro_batch)`` for accumulation micro-step ``a``
    (so 1 rank with ``grad_accum=2`` sees what 2 ranks with ``grad_accum=1`` see together).
    ``state_dict()``: epoch, index in the epoch, micro-step and the current global batch.
    """

    def __init__(self, rows: PackedRows, micro_batch: int, *, grad_accum: int = 1, rank: int = 0,
                 num_ranks: int = 1, seed: int = 0):
        if len(rows) == 0:
            raise ValueError("no training rows: every dialogue was dropped (see the packing stats)")
        self.rows, self.micro_batch, self.grad_accum = rows, micro_batch, grad_accum
        self.rank, self.num_ranks, self.seed = rank, num_ranks, seed
        self.epoch, self.index, self.micro = 0, 0, 0
        self.current: list[int] | None = None  # row indices of the current global batch
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, 0x5F7, epoch]).permutation(len(self.rows)))
        return self._order[1]

    def __iter__(self) -> PackedBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.micro == 0:
            need, take = self.micro_batch * self.grad_accum * self.num_ranks, []
            while len(take) < need:
                k = min(need - len(take), len(self.rows) - self.index)
                take += self.order(self.epoch)[self.index:self.index + k].tolist()
                self.index += k
                if self.index == len(self.rows):
                    self.epoch, self.index = self.epoch + 1, 0
            self.current = take
        first = (self.micro * self.num_ranks + self.rank) * self.micro_batch
        rows = self.current[first:first + self.micro_batch]
        self.micro = (self.micro + 1) % self.grad_accum
        return self.rows.batch(rows)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "micro": self.micro, "current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.index, self.micro = state["epoch"], state["index"], state["micro"]
        self.current = state["current"]


# --------------------------------------------------------------------------------------------
# Loss and evaluation
# --------------------------------------------------------------------------------------------


def answer_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over the answer targets of the micro-batch (prompts and
    padding carry ``IGNORE``), and how many targets that is (a tensor: no host sync).

    The output head runs on the answer positions only (a third of the tokens in the world's
    dialogues): the same loss as full logits, at a fraction of the head's cost.
    """
    labels = batch["labels"]
    keep = labels != IGNORE
    hidden = model(batch["input_ids"], doc_ids=batch.get("doc_ids"), return_hidden=True)
    # through a DeepSpeed engine: its module's head (ZeRO-3 gathers it through the submodule's
    # own forward hooks; tested here under ZeRO 0 and 2 only)
    head = getattr(model, "module", model).output
    logits = head(hidden[keep])
    n = keep.sum()
    total = F.cross_entropy(logits.float(), labels[keep], reduction="sum")
    return total / n.clamp(min=1), n


def evaluate_rows(model, rows: PackedRows, micro_batch: int, ctx: RunContext,
                  max_rows: int = 0) -> dict[str, float]:
    """Answer-token-mean loss (``val_loss``) and perplexity over the first ``max_rows`` rows (0 =
    all); ranks split the rows round-robin with equal forward counts and sum."""
    idx = np.arange(len(rows) if max_rows <= 0 else min(max_rows, len(rows)))
    mine = idx[ctx.rank::ctx.world_size]
    per_rank = -(-len(idx) // ctx.world_size)
    totals = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    for b in range(-(-per_rank // micro_batch)):
        sel, weight = mine[b * micro_batch:(b + 1) * micro_batch], 1.0
        if len(sel) == 0:  # keep forward counts equal across ranks (ZeRO-3); contributes nothing
            sel, weight = idx[:1], 0.0
        batch = {k: v.to(ctx.device) for k, v in rows.batch(sel).items()}
        loss, n = answer_loss(model, batch)
        totals[0] += loss.double() * n * weight
        totals[1] += n * weight
    if ctx.world_size > 1:
        torch.distributed.all_reduce(totals)
    loss = float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}


# --------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------


def _inside_launch() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _model_config(init):
    if isinstance(init, Llama):
        return init.config
    path = Path(init)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json (the starting model must be a Hugging Face folder)")
    return config_from_hf(json.loads((path / "config.json").read_text()), str(path / "config.json"))


def _tokenizer_file(init, tokenizer, tokenizer_model) -> Path | None:
    for candidate in (tokenizer_model, getattr(tokenizer, "path", None),
                      None if isinstance(init, Llama) else Path(init) / "tokenizer.model"):
        if candidate is not None:
            p = Path(candidate)
            p = p / "tokenizer.model" if p.is_dir() else p
            if p.is_file():
                return p
    return None


def plan_steps(n_rows: int, cfg: TrainConfig, epochs: float | None) -> int:
    """Optimiser steps of ``epochs`` passes over ``n_rows`` rows (``cfg.max_steps`` if None)."""
    if epochs is None:
        return cfg.max_steps
    return max(1, math.ceil(epochs * n_rows / cfg.global_batch))


def finetune(
    init: str | os.PathLike | Llama,
    tokenizer,
    dialogues: Sequence[Any],
    train_cfg: TrainConfig | dict,
    run_dir: str | os.PathLike,
    *,
    sft: SFTConfig | dict | None = None,
    hf_dir: str | os.PathLike | None = None,
    tokenizer_model: str | os.PathLike | None = None,
    log_fn=None,
    progress: bool = True,
    prefix: str = "sft",
) -> dict[str, float]:
    """Fine-tune ``init`` on ``dialogues`` with the loss on answer tokens; return flat metrics.

    Args:
        init: the starting model: a Hugging Face folder (:func:`~llama2_pipeline.model.load_hf`),
            or a :class:`Llama` (trained in place; single process only).
        tokenizer: a :class:`~llama2_pipeline.tokenizer.Tokenizer` (``None`` if every dialogue is
            already encoded).
        dialogues: ``{"messages": [...]}`` records and/or encoded ``(ids, mask)`` pairs (see
            :func:`encode_examples`).
        train_cfg: :class:`TrainConfig` or its dict; ``max_steps`` is replaced by the one
            ``sft.epochs`` gives (unless ``epochs`` is None).
        run_dir: checkpoints, metrics.jsonl, loss_curve.png, result.json; a rerun with the same
            data and config resumes from the newest checkpoint.
        sft: :class:`SFTConfig` or its dict (pack, overlong, epochs, val_fraction, only_last_answer, shuffle).
        hf_dir: where to export the model (default ``run_dir/hf``), with the tokenizer files of
            ``tokenizer_model`` (a ``tokenizer.model`` or its folder; default: the tokenizer's
            file, else ``init/tokenizer.model``).
        log_fn: ``log_fn(metrics, step)`` for every log/eval record (rank 0).
        prefix: prefix of the returned metric names (``sft_train_loss``, ...).

    Returns ``<prefix>_``: ``train_loss``, ``val_loss``, ``val_loss_initial`` (with a validation
    split), ``steps``, ``epochs``, ``tokens`` (positions trained, padding included),
    ``answer_tokens`` (per epoch), ``dialogues``, ``dialogues_val``, ``truncated``, ``dropped``,
    ``rows``, ``packing_efficiency``, ``tokens_per_s``, ``step_time_s``, ``seconds``.
    """
    cfg = train_cfg if isinstance(train_cfg, TrainConfig) else TrainConfig.from_dict(train_cfg)
    opts = sft if isinstance(sft, SFTConfig) else SFTConfig.from_dict(sft)
    run_dir = Path(run_dir)
    hf_dir = Path(hf_dir) if hf_dir is not None else run_dir / "hf"
    model_config = _model_config(init)
    if cfg.seq_len > model_config.max_seq_len:
        raise ValueError(f"TrainConfig.seq_len {cfg.seq_len} exceeds the model's max_seq_len "
                         f"{model_config.max_seq_len}")
    if tokenizer is not None and tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                         f"{model_config.vocab_size}: not the tokenizer this model was trained with")
    examples = encode_examples(tokenizer, dialogues, only_last_answer=opts.only_last_answer,
                               vocab_size=model_config.vocab_size)
    tok_file = _tokenizer_file(init, tokenizer, tokenizer_model)
    if cfg.multi_process and not _inside_launch():
        if isinstance(init, Llama):
            raise ValueError("a multi-rank fine-tuning run needs `init` as a model folder, not a Llama object")
        run_dir.mkdir(parents=True, exist_ok=True)
        save_examples(run_dir / EXAMPLES_FILE, examples)
        write_json(run_dir / RUN_CONFIG, {
            "init": str(Path(init).resolve()), "examples": str((run_dir / EXAMPLES_FILE).resolve()),
            "train": cfg.to_dict(), "sft": opts.to_dict(), "run_dir": str(run_dir.resolve()),
            "hf_dir": str(hf_dir.resolve()), "tokenizer_model": str(tok_file) if tok_file else None,
            "progress": progress, "prefix": prefix})
        (run_dir / RESULT_FILE).unlink(missing_ok=True)
        launch(MODULE, run_dir / RUN_CONFIG, cfg, run_dir, log_fn=log_fn)
        return json.loads((run_dir / RESULT_FILE).read_text())["metrics"]
    return _finetune_rank(init, examples, cfg, opts, run_dir, hf_dir=hf_dir, tok_file=tok_file, log_fn=log_fn,
                          progress=progress, prefix=prefix, model_config=model_config)


def prepare_rows(examples, cfg: TrainConfig, opts: SFTConfig, pad_id: int) -> tuple[PackedRows, PackedRows | None]:
    """Split ``examples`` (seeded) and pack the train and validation parts."""
    train_idx, val_idx = split_examples(len(examples), opts.val_fraction, cfg.seed)
    kw = dict(pack=opts.pack, overlong=opts.overlong, pad_id=pad_id, seed=cfg.seed, shuffle=opts.shuffle)
    train_rows = pack_examples([examples[i] for i in train_idx], cfg.seq_len, **kw)
    val_rows = pack_examples([examples[i] for i in val_idx], cfg.seq_len, **kw) if len(val_idx) else None
    return train_rows, (val_rows if val_rows is not None and len(val_rows) else None)


def _finetune_rank(init, examples, cfg: TrainConfig, opts: SFTConfig, run_dir: Path, *, hf_dir: Path,
                   tok_file: Path | None, log_fn, progress: bool, prefix: str, model_config) -> dict[str, float]:
    """One rank's share of :func:`finetune` (the whole of it for a single process)."""
    pad_id = model_config.pad_id if model_config.pad_id is not None else 0
    train_rows, val_rows = prepare_rows(examples, cfg, opts, pad_id)
    steps = plan_steps(len(train_rows), cfg, opts.epochs)
    if steps != cfg.max_steps:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "max_steps": steps})
    digest = examples_digest(examples)
    _check_resumable(run_dir, digest)

    ctx = setup_run(cfg)
    model = init if isinstance(init, Llama) else load_hf(init)
    engine = build_engine(model, cfg, ctx)
    data = PackedBatches(train_rows, cfg.micro_batch, grad_accum=cfg.grad_accum, rank=ctx.rank,
                         num_ranks=ctx.world_size, seed=cfg.seed)
    stats = train_rows.stats
    if ctx.is_main:
        log.info("fine-tuning on %d dialogues (%d truncated, %d dropped) packed into %d rows of %d tokens "
                 "(%.0f %% filled): %d steps of %d rows", stats["used"], stats["truncated"],
                 stats["dropped_overlong"] + stats["dropped_no_answer"], len(train_rows), cfg.seq_len,
                 100 * stats["packing_efficiency"], steps, cfg.global_batch)
    eval_fn = None
    if val_rows is not None:
        eval_fn = lambda m: evaluate_rows(m, val_rows, cfg.micro_batch, ctx, cfg.eval_batches * cfg.micro_batch)
    result = train(engine, cfg, data, answer_loss, run_dir, eval_fn=eval_fn, log_fn=log_fn, progress=progress,
                   checkpoint_meta={"sft_data_sha256": digest, "sft": opts.to_dict(),
                                    "init": None if isinstance(init, Llama) else str(init)})

    weights = None
    with gathered_module(engine) as module:
        if ctx.is_main:
            export_hf(module, hf_dir, tokenizer_model_path=tok_file)
            if tok_file is not None:
                save_hf_tokenizer(tok_file, hf_dir, model_max_length=model_config.max_seq_len)
            weights = weights_digest(module.state_dict())
    history = result.history
    p = prefix
    metrics: dict[str, Any] = {
        f"{p}_train_loss": result.train_loss,
        f"{p}_steps": result.steps,
        f"{p}_epochs": result.steps * cfg.global_batch / len(train_rows),
        f"{p}_tokens": result.tokens,
        f"{p}_global_batch_tokens": cfg.global_batch_tokens,
        f"{p}_answer_tokens": stats["answer_tokens"],
        f"{p}_dialogues": stats["used"],
        f"{p}_dialogues_val": val_rows.stats["used"] if val_rows is not None else 0,
        f"{p}_truncated": stats["truncated"] + (val_rows.stats["truncated"] if val_rows is not None else 0),
        f"{p}_dropped": sum(r.stats[k] for r in (train_rows, val_rows) if r is not None
                            for k in ("dropped_overlong", "dropped_no_answer")),
        f"{p}_rows": len(train_rows),
        f"{p}_packing_efficiency": stats["packing_efficiency"],
        f"{p}_tokens_per_s": result.tokens_per_s or _last(history, "tokens_per_s"),
        f"{p}_step_time_s": result.step_time_s or _last(history, "step_time_s"),
        f"{p}_flops_per_token": flops_per_token(engine.module, cfg.seq_len),
        f"{p}_seconds": round(result.train_seconds if result.train_seconds is not None else result.seconds, 3),
    }
    if "val_loss" in result.eval:
        metrics[f"{p}_val_loss"] = result.eval["val_loss"]
        initial = next((r["val_loss"] for r in history if r.get("step") == 0 and "val_loss" in r), None)
        if initial is not None:
            metrics[f"{p}_val_loss_initial"] = initial
    metrics = {k: v for k, v in metrics.items() if v is not None}
    if ctx.is_main:
        plot_loss_curve(history, run_dir / "loss_curve.png",
                        title=f"{prefix}: answer-token loss, {len(train_rows)} rows x {cfg.seq_len} tokens")
        write_json(run_dir / RESULT_FILE, {
            "metrics": metrics, "weights_sha256": weights, "hf_dir": str(hf_dir),
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "resumed_from": result.resumed_from, "data_sha256": digest, "packing": stats,
            "model_config": model_config.to_dict(), "train_config": cfg.to_dict(), "sft": opts.to_dict()})
    barrier()
    return metrics


def _check_resumable(run_dir: Path, digest: str) -> None:
    """Refuse to resume a checkpoint trained on other data (it would silently mix two runs)."""
    try:
        latest = Checkpointer(run_dir / "checkpoints").latest()
    except FileNotFoundError:
        return  # the loop reports an incomplete checkpoint itself
    if latest is None:
        return
    saved = json.loads((latest / META_FILE).read_text()).get("sft_data_sha256")
    if saved is not None and saved != digest:
        raise CheckpointMismatchError(
            f"checkpoint {latest} was trained on other SFT data (sha256 {saved[:12]}..., this run "
            f"{digest[:12]}...); use another run folder or remove {run_dir / 'checkpoints'}")


def _last(history: list[dict[str, Any]], key: str) -> Any:
    return next((r[key] for r in reversed(history) if key in r), None)


# --------------------------------------------------------------------------------------------
# Examples on disk (for multi-rank runs) and the CLI
# --------------------------------------------------------------------------------------------


def save_examples(path: str | os.PathLike, examples: Sequence[tuple[Sequence[int], Sequence[int]]]) -> None:
    """Encoded examples as one ``.npz`` (concatenated ids and masks + offsets), written atomically."""
    lengths = np.array([len(ids) for ids, _ in examples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for i, _ in examples]) if examples else np.zeros(0)
    mask = np.concatenate([np.asarray(m, dtype=np.uint8) for _, m in examples]) if examples else np.zeros(0)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=ids, mask=mask, offsets=offsets)


def load_examples(path: str | os.PathLike) -> list[tuple[list[int], list[int]]]:
    with np.load(path) as z:
        ids, mask, off = z["ids"], z["mask"], z["offsets"]
    return [(ids[a:b].tolist(), mask[a:b].tolist()) for a, b in zip(off[:-1], off[1:])]


def load_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ``run_config.json`` (unknown or missing keys raise, naming the file)."""
    return read_run_config(path, _RUN_CONFIG_KEYS, {"init", "examples", "run_dir"})


def main(argv: list[str] | None = None) -> int:
    def run(config: str) -> dict:
        rc = load_run_config(config)
        return finetune(rc["init"], None, load_examples(rc["examples"]), rc.get("train") or {}, rc["run_dir"],
                        sft=rc.get("sft"), hf_dir=rc.get("hf_dir"), tokenizer_model=rc.get("tokenizer_model"),
                        progress=rc.get("progress", True), prefix=rc.get("prefix", "sft"))

    return rank_main(argv, f"python -m {MODULE}", "Fine-tune (or resume) a model on encoded SFT examples.",
                     "run_config.json written by finetune()", run)


if __name__ == "__main__":
    sys.exit(main())
