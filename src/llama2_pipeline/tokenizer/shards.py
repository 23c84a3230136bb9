"""Encode the clean corpus into packed token shards for pretraining, and read them back.

Layout of the output folder (written atomically, as a whole)::

    index.json          dtype, tokenizer digest, per-split shard names / token and doc counts
    train_00000.bin     the train token stream: <s> doc </s> <s> doc </s> ... as raw
    train_00001.bin     little-endian uint16 (vocab <= 65536) or uint32 ids, at most
    val_00000.bin       ``tokens_per_shard`` ids per file; documents may span two shards

A document goes to ``val`` when ``blake2b(f"{seed}:{id}")`` read as a number in [0, 1) is below
``val_fraction``: a property of the document, not of its position, so the split is stable when
the corpus grows. The encoder is parallel over processes (each encodes whole batches of
documents); results are written in corpus order, so the bytes are the same for any
``workers``. Documents with empty text are skipped (counted in ``docs_skipped_empty``).
Workers are forked on Linux and spawned elsewhere (there, call from under
``if __name__ == "__main__":``).
"""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import sentencepiece as spm
from tqdm.auto import tqdm

from ..core.files import atomic_path, write_json
from .corpus import corpus_files, corpus_num_docs, iter_documents
from .spm import Tokenizer, resolve_workers

INDEX_FILE = "index.json"
INDEX_FORMAT = "llama2-pipeline/token-shards"
INDEX_VERSION = 1
SPLITS = ("train", "val")
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}

_BATCH_BYTES = 1 << 20  # text handed to a worker at a time: big enough to amortise IPC


class TokenShardsError(ValueError):
    """A token-shard folder that is incomplete or inconsistent with its index."""


def token_dtype(vocab_size: int) -> str:
    """``uint16`` when every id fits (vocab <= 65536), else ``uint32``."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def is_val_doc(doc_id: str, val_fraction: float, seed: int = 0) -> bool:
    """Deterministic document-level split: True if ``doc_id`` belongs to the validation split."""
    if val_fraction <= 0:
        return False
    h = hashlib.blake2b(f"{seed}:{doc_id}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") < val_fraction * 2.0**64


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------

_worker_sp: spm.SentencePieceProcessor | None = None
_worker_cfg: tuple = ()


def _init_worker(model_proto: bytes, dtype: str, val_fraction: float, seed: int) -> None:
    global _worker_sp, _worker_cfg
    _worker_sp = spm.SentencePieceProcessor(model_proto=model_proto)
    _worker_cfg = (DTYPES[dtype], val_fraction, seed)


def _encode_batch(ids: list[str], texts: list[str]) -> tuple[bytes, bytes, int, int, int]:
    """Encode one batch of documents: (train bytes, val bytes, train docs, val docs, text bytes)."""
    dtype, val_fraction, seed = _worker_cfg
    encoded = _worker_sp.encode(texts, add_bos=True, add_eos=True, num_threads=1,
                                return_type="numpy")
    parts: dict[bool, list[np.ndarray]] = {False: [], True: []}
    for doc_id, arr in zip(ids, encoded):
        parts[is_val_doc(doc_id, val_fraction, seed)].append(arr)
    out = []
    for is_val in (False, True):
        arrs = parts[is_val]
        out.append(np.concatenate(arrs).astype(dtype).tobytes() if arrs else b"")
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return out[0], out[1], len(parts[False]), len(parts[True]), n_bytes


def _batches(corpus_dir, counts: dict, bar) -> Iterator[tuple[list[str], list[str]]]:
    """Batches of about ``_BATCH_BYTES`` characters of non-empty documents, in corpus order."""
    ids_buf: list[str] = []
    texts_buf: list[str] = []
    size = 0
    for ids, texts in iter_documents(corpus_dir):
        for doc_id, text in zip(ids, texts):
            if not text:
                counts["empty"] += 1
                continue
            ids_buf.append(doc_id)
            texts_buf.append(text)
            size += len(text)
            if size >= _BATCH_BYTES:
                yield ids_buf, texts_buf
                ids_buf, texts_buf, size = [], [], 0
        bar.update(len(texts))
    if ids_buf:
        yield ids_buf, texts_buf


class _ShardWriter:
    """Append token bytes to ``{split}_{k:05d}.bin`` files of at most ``tokens_per_shard`` ids."""

    def __init__(self, folder: Path, split: str, itemsize: int, tokens_per_shard: int):
        self.folder, self.split = folder, split
        self.itemsize, self.cap = itemsize, tokens_per_shard
        self.shards: list[dict] = []
        self.f = None
        self.docs = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view):
            if self.f is None or self.shards[-1]["tokens"] == self.cap:
                self._roll()
            room = (self.cap - self.shards[-1]["tokens"]) * self.itemsize
            chunk = view[:room]
            self.f.write(chunk)
            self.shards[-1]["tokens"] += len(chunk) // self.itemsize
            view = view[room:]

    def _roll(self) -> None:
        if self.f is not None:
            self.f.close()
        name = f"{self.split}_{len(self.shards):05d}.bin"
        self.f = open(self.folder / name, "wb")
        self.shards.append({"name": name, "tokens": 0})

    def close(self) -> dict:
        if self.f is not None:
            self.f.close()
        return {"shards": self.shards, "tokens": sum(s["tokens"] for s in self.shards),
                "docs": self.docs}


def encode_corpus(
    corpus_dir: str | os.PathLike,
    tokenizer: str | os.PathLike | Tokenizer,
    out_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.01,
    seed: int = 0,
    workers: int = 0,
    tokens_per_shard: int = 100_000_000,
    progress: bool = True,
) -> dict:
    """Encode the clean corpus into packed train/val token shards in ``out_dir``.

    Args:
        corpus_dir: folder of clean Parquet shards (``id``, ``text``, ``source``).
        tokenizer: a :class:`Tokenizer`, a ``tokenizer.model`` file or its folder.
        out_dir: output folder, replaced as a whole and atomically.
        val_fraction: expected share of documents in the validation split, in [0, 1).
        seed: salt of the document hash that decides the split.
        workers: encoding processes; ``0`` = all cores. The output does not depend on it.
        tokens_per_shard: most token ids in one ``.bin`` file.
        progress: show a tqdm bar (documents).

    Returns:
        flat stats: ``tokens_train``, ``tokens_val``, ``docs_train``, ``docs_val``,
        ``docs_skipped_empty``, ``shards_train``, ``shards_val``, ``text_bytes``,
        ``bytes_per_token``, ``vocab_size``, ``workers``, ``encode_seconds``, ``mib_per_second``.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if tokens_per_shard < 1:
        raise ValueError(f"tokens_per_shard must be >= 1, got {tokens_per_shard}")
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer)
    corpus_dir = Path(corpus_dir)
    files = corpus_files(corpus_dir)
    n_workers = resolve_workers(workers)
    dtype = token_dtype(tok.vocab_size)
    itemsize = DTYPES[dtype].itemsize
    init_args = (tok.model_proto, dtype, val_fraction, seed)

    t0 = time.perf_counter()
    counts = {"empty": 0}
    text_bytes = 0
    bar = tqdm(total=corpus_num_docs(corpus_dir), unit="doc", desc="encoding corpus",
               disable=not progress)
    with atomic_path(out_dir, is_dir=True) as tmp, bar:
        writers = {s: _ShardWriter(tmp, s, itemsize, tokens_per_shard) for s in SPLITS}

        def consume(result) -> None:
            nonlocal text_bytes
            train_b, val_b, n_train, n_val, n_bytes = result
            writers["train"].write(train_b)
            writers["val"].write(val_b)
            writers["train"].docs += n_train
            writers["val"].docs += n_val
            text_bytes += n_bytes

        batches = _batches(corpus_dir, counts, bar)
        if n_workers == 1:
            _init_worker(*init_args)
            for ids, texts in batches:
                consume(_encode_batch(ids, texts))
        else:
            # Ordered, bounded pipeline: at most 2 batches in flight per worker, results
            # consumed in submission order (so output bytes do not depend on scheduling).
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with ctx.Pool(n_workers, initializer=_init_worker, initargs=init_args) as pool:
                pending: collections.deque = collections.deque()
                for ids, texts in batches:
                    pending.append(pool.apply_async(_encode_batch, (ids, texts)))
                    if len(pending) >= 2 * n_workers:
                        consume(pending.popleft().get())
                while pending:
                    consume(pending.popleft().get())
        splits = {s: w.close() for s, w in writers.items()}
        seconds = time.perf_counter() - t0
        index = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "dtype": dtype,
            "byteorder": "little",
            "vocab_size": tok.vocab_size,
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "pad_id": tok.pad_id,
            "tokenizer_sha256": tok.digest,
            "val_fraction": val_fraction,
            "seed": seed,
            "corpus_files": [p.name for p in files],
            "docs_skipped_empty": counts["empty"],
            "text_bytes": text_bytes,
            "splits": splits,
        }
        write_json(tmp / INDEX_FILE, index)

    tokens = splits["train"]["tokens"] + splits["val"]["tokens"]
    docs = splits["train"]["docs"] + splits["val"]["docs"]
    return {
        "tokens_train": splits["train"]["tokens"],
        "tokens_val": splits["val"]["tokens"],
        "docs_train": splits["train"]["docs"],
        "docs_val": splits["val"]["docs"],
        "docs_skipped_empty": counts["empty"],
        "shards_train": len(splits["train"]["shards"]),
        "shards_val": len(splits["val"]["shards"]),
        "text_bytes": text_bytes,
        # text bytes per token, BOS/EOS not counted
        "bytes_per_token": round(text_bytes / max(1, tokens - 2 * docs), 4),
        "vocab_size": tok.vocab_size,
        "workers": n_workers,
        "encode_seconds": round(seconds, 3),
        "mib_per_second": round(text_bytes / 2**20 / max(seconds, 1e-9), 3),
    }


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class TokenShards:
    """One split of a token-shard folder, as a single token stream.

    ``len(shards)`` is the number of tokens; ``shards[i:j]`` reads across file boundaries;
    ``tokens`` is the whole stream as a read-only numpy memmap (a zero-copy view when the split
    has a single shard; several shards are concatenated into memory). The index is validated
    on open: a missing or truncated shard, an unknown dtype or a tokenizer mismatch raise
    :class:`TokenShardsError` naming the file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        *,
        expected_tokenizer_sha256: str | None = None,
    ):
        self.path = Path(path)
        index_file = self.path / INDEX_FILE
        if not index_file.is_file():
            raise TokenShardsError(f"{index_file} does not exist: not a token-shard folder")
        try:
            index = json.loads(index_file.read_text())
        except json.JSONDecodeError as e:
            raise TokenShardsError(f"{index_file} is not valid JSON: {e}") from e
        if index.get("format") != INDEX_FORMAT or index.get("version") != INDEX_VERSION:
            raise TokenShardsError(
                f"{index_file}: expected format {INDEX_FORMAT!r} version {INDEX_VERSION}, got "
                f"{index.get('format')!r} version {index.get('version')!r}"
            )
        if index.get("dtype") not in DTYPES:
            raise TokenShardsError(
                f"{index_file}: dtype {index.get('dtype')!r} is not one of {sorted(DTYPES)}"
            )
        if split not in index.get("splits", {}):
            raise TokenShardsError(
                f"{index_file}: no split {split!r} (has {sorted(index.get('splits', {}))})"
            )
        if expected_tokenizer_sha256 and index.get("tokenizer_sha256") != expected_tokenizer_sha256:
            raise TokenShardsError(
                f"{index_file}: shards were encoded with tokenizer sha256 "
                f"{index.get('tokenizer_sha256')}, expected {expected_tokenizer_sha256}"
            )
        self.index = index
        self.split = split
        self.dtype = DTYPES[index["dtype"]]
        self.vocab_size: int = index["vocab_size"]
        self.bos_id: int = index["bos_id"]
        self.eos_id: int = index["eos_id"]
        self.num_docs: int = index["splits"][split]["docs"]
        self._maps: list[np.ndarray] = []
        for shard in index["splits"][split]["shards"]:
            f = self.path / shard["name"]
            if not f.is_file():
                raise TokenShardsError(f"shard {f} listed in {index_file} is missing")
            want = shard["tokens"] * self.dtype.itemsize
            if f.stat().st_size != want:
                raise TokenShardsError(
                    f"shard {f}: {f.stat().st_size} bytes, expected {want} "
                    f"({shard['tokens']} tokens of {index['dtype']}); truncated or wrong dtype"
                )
            if shard["tokens"]:
                self._maps.append(np.memmap(f, dtype=self.dtype, mode="r"))
        self._ends = np.cumsum([len(m) for m in self._maps], dtype=np.int64)
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __repr__(self) -> str:
        return f"TokenShards({str(self.path)!r}, {self.split!r}, tokens={len(self)})"

    @property
    def tokens(self) -> np.ndarray:
        """The split's whole token stream (memmap view if one shard, else an in-memory copy)."""
        if self._tokens is None:
            if len(self._maps) == 1:
                self._tokens = self._maps[0]
            elif not self._maps:
                self._tokens = np.empty(0, dtype=self.dtype)
            else:
                self._tokens = np.concatenate(self._maps)
        return self._tokens

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("TokenShards supports contiguous slices only, e.g. shards[i:j]")
        start, stop, _ = key.indices(len(self))
        return self.read(start, max(0, stop - start))

    def read(self, start: int, length: int) -> np.ndarray:
        """``length`` consecutive tokens from position ``start`` (copied, may span shards)."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"tokens [{start}, {start + length}) outside [0, {len(self)})")
        k = int(np.searchsorted(self._ends, start, side="right"))
        out = np.empty(length, dtype=self.dtype)
        filled = 0
        while filled < length:
            begin = int(self._ends[k - 1]) if k else 0
            lo = start + filled - begin
            take = min(length - filled, len(self._maps[k]) - lo)
            out[filled:filled + take] = self._maps[k][lo:lo + take]
            filled += take
            k += 1
        return out

    def num_blocks(self, seq_len: int) -> int:
        """How many full blocks :meth:`iter_blocks` yields."""
        return max(0, (len(self) - 1) // seq_len)

    def _check_len(self, seq_len: int) -> None:
        if len(self) < seq_len + 1:
            raise ValueError(
                f"{self.path} split {self.split!r} has {len(self)} tokens, fewer than one block "
                f"of seq_len+1={seq_len + 1}"
            )

    def sample_batch(
        self, batch_size: int, seq_len: int, rng: np.random.Generator
    ) -> np.ndarray:
        """``(batch_size, seq_len + 1)`` int64 windows at uniform random offsets: inputs are
        ``[:, :-1]``, targets ``[:, 1:]``."""
        self._check_len(seq_len)
        starts = rng.integers(0, len(self) - seq_len, size=batch_size)
        return np.stack([self.read(int(s), seq_len + 1) for s in starts]).astype(np.int64)

    def iter_blocks(self, seq_len: int) -> Iterator[np.ndarray]:
        """Consecutive int64 blocks of ``seq_len + 1`` tokens with stride ``seq_len`` (each token
        is a target exactly once), for evaluation; a final partial block is dropped."""
        self._check_len(seq_len)
        for b in range(self.num_blocks(seq_len)):
            yield self.read(b * seq_len, seq_len + 1).astype(np.int64)

    def iter_batches(self, batch_size: int, seq_len: int) -> Iterator[np.ndarray]:
        """:meth:`iter_blocks` grouped into ``(<=batch_size, seq_len + 1)`` arrays."""
        buf: list[np.ndarray] = []
        for block in self.iter_blocks(seq_len):
            buf.append(block)
            if len(buf) == batch_size:
                yield np.stack(buf)
                buf = []
        if buf:
            yield np.stack(buf)
