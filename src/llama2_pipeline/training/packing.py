"""Dialogues to training rows: the data side of supervised fine-tuning (:mod:`.sft`).

1. **Encode** (:func:`encode_examples`): each ``{"messages": [...]}`` record becomes token ids
   and an answer mask through the tokenizer's chat template (:func:`~llama2_pipeline.tokenizer.encode_chat`;
   roles are validated and a bad record raises :class:`~llama2_pipeline.tokenizer.ChatFormatError`
   naming its ``id`` or position, counting from 1). ``only_last_answer`` (for all records, or per record) keeps the
   loss on the last answer only (GAtt), a record's ``first_answer`` keeps it off the answers before that one;
   already-encoded ``(ids, mask)`` examples pass through.
2. **Split** (:func:`split_examples`): a seeded ``val_fraction`` of the dialogues is held out.
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

Encoded examples travel to launched ranks as one ``.npz`` (:func:`save_examples`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..core.files import atomic_path
from ..tokenizer import ChatFormatError, encode_chat

IGNORE = -100  # target id that carries no loss (F.cross_entropy's ignore_index)
OVERLONG = ("truncate", "drop")


def _record_name(record: Any, index: int) -> Any:
    """A record's ``id``, else its position counting from 1."""
    return record.get("id", index + 1) if isinstance(record, dict) else index + 1


def encode_examples(tokenizer, dialogues: Iterable[Any], *, only_last_answer: bool = False,
                    vocab_size: int | None = None) -> list[tuple[list[int], list[int]]]:
    """``(ids, mask)`` per dialogue.

    A dialogue is ``{"messages": [...], "id"?: ..., "only_last_answer"?: bool, "first_answer"?: int}``
    (encoded with the chat template; the per-record flag overrides ``only_last_answer``;
    ``first_answer``: the answer, counting from 0, the loss starts at), an already encoded
    ``(ids, mask)`` pair (e.g. a :class:`~llama2_pipeline.tokenizer.ChatEncoding`), or
    ``{"ids": [...], "mask": [...]}``. Problems raise :class:`ChatFormatError` naming the record
    (its ``id``, else its position counting from 1).
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
            first = d.get("first_answer", 0)
            if isinstance(first, bool) or not isinstance(first, int) or first < 0:
                raise ChatFormatError(f"'first_answer' must be an answer's index >= 0, got {first!r}", name)
            enc = encode_chat(tokenizer, d["messages"], only_last_answer=flag, first_answer=first, record=name)
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
