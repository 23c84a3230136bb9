"""Per-document cleaning work, run in worker processes over chunks of documents.

Order of the per-document stages and why:

1. **decode / faults** - null, non-string, oversize and undecodable values are counted drops.
2. **normalise** - everything after works on the normalised text.
3. **PII** - spans are found on the normalised text; a document whose PII density is over
   ``pii.max_density`` is dropped (the paper removes PII-heavy sources instead of keeping them
   redacted), otherwise the spans are replaced by typed placeholders. PII goes before the quality
   rules so that rule statistics and the output columns describe the text that is written.
4. **quality** - Gopher rules on the redacted text.
5. **dedup signatures** - exact hash and MinHash of the redacted text: two documents that differ
   only in their PII become byte-identical after redaction and must count as duplicates.

The global dedup decision needs all earlier documents and is taken in the parent
(:mod:`llama2_pipeline.data.pipeline`), in corpus order. Nothing here depends on the process
it runs in, so the output is identical for any number of workers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from .config import CleaningConfig
from .dedup import MinHasher, exact_hash
from .normalise import decode_utf8, normalise_text
from .pii import digit_clusters, find_pii, pii_density, redact_pii
from .quality import quality_batch
from .words import Words

BATCH_CHARS = 1 << 18  # numpy work is batched over about this many characters of text
STAT_COLUMNS = ("n_chars", "n_bytes", "n_words", "n_lines", "mean_word_length", "pii_redacted")


@dataclass
class Chunk:
    """Rows ``row0 ..`` of one input file, as an Arrow record batch (cheap to send to a worker)
    with a ``text`` column and optionally ``id`` and ``source``."""

    file: str
    row0: int
    batch: pa.RecordBatch

    @property
    def n(self) -> int:
        return self.batch.num_rows

    def columns(self) -> tuple[list[str], list, list[str]]:
        """(ids, raw text values, sources) as Python lists; missing ids are ``<stem>:<row>``."""
        b, n = self.batch, self.batch.num_rows
        names = b.schema.names
        stem = self.file.rsplit(".", 1)[0]
        ids = _str_values(b.column("id") if "id" in names else None,
                          [f"{stem}:{self.row0 + i}" for i in range(n)])
        sources = _str_values(b.column("source") if "source" in names else None, [""] * n)
        return ids, _text_values(b.column("text")), sources


def _text_values(col: pa.Array) -> list:
    """Raw text values: bytes for string columns (decoded and validated by us), None for nulls,
    other Python objects for non-string columns (counted as ``non_string``)."""
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.dictionary_decode(), t.value_type
    if pa.types.is_string(t):
        return col.view(pa.binary()).to_pylist()
    if pa.types.is_large_string(t):
        return col.view(pa.large_binary()).to_pylist()
    if hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t):
        return col.cast(pa.binary()).to_pylist()
    return col.to_pylist()


def _str_values(col: pa.Array | None, default: list[str]) -> list[str]:
    if col is None:
        return default
    return [default[i] if v is None else (v if isinstance(v, str) else str(v))
            for i, v in enumerate(col.to_pylist())]


@dataclass
class ChunkResult:
    """Outcome of one chunk, documents in input order.

    ``docs[i]`` is ``(rule_or_None, id, source, text_or_snippet, stats, exact_hash)``; for
    candidates (rule None) ``text`` is the cleaned text and ``stats`` the output-column tuple,
    for removed documents it is a PII-redacted snippet. ``sigs``/``keys`` hold the MinHash
    signatures and LSH band keys of the candidates, in order.
    """

    file: str
    row0: int
    docs: list
    sigs: np.ndarray | None
    keys: np.ndarray | None
    counters: Counter = field(default_factory=Counter)


class Processor:
    """Holds the config and the MinHasher; ``process(chunk)`` is the worker's unit of work.

    Python-level steps (decode, normalise, PII regexes, line rules) run per document; the
    numpy steps (digit clusters, words, n-gram rules, MinHash) run once per chunk over all its
    documents, so short documents do not pay numpy's per-call overhead.
    """

    def __init__(self, cfg: CleaningConfig):
        self.cfg = cfg
        self.minhasher = MinHasher.from_config(cfg.dedup) if cfg.dedup.near else None
        self.kinds = tuple(cfg.pii.kinds) if cfg.pii.enabled else ()

    def snippet(self, text: str) -> str:
        """A PII-redacted prefix of ``text`` for the report's examples."""
        n = self.cfg.snippet_chars
        return redact_pii(text[: 2 * n + 64])[:n]

    def process(self, chunk: Chunk) -> ChunkResult:
        counters: Counter = Counter()
        docs: list = [None] * chunk.n
        try:
            ids, raw_texts, sources = chunk.columns()
            # 1. faults, decoding, normalisation (per document)
            texts: list[str] = []
            where: list[int] = []
            for i, raw in enumerate(raw_texts):
                rule, text, snippet = self._prepare(raw, counters)
                if rule is not None:
                    docs[i] = (rule, ids[i], sources[i], snippet, None, None)
                else:
                    texts.append(text)
                    where.append(i)
            # 2. PII: drop dense documents, redact the others
            texts, where, n_pii = self._pii(ids, sources, texts, where, docs, counters)
            # 3. quality rules and 4. MinHash, in batches of about BATCH_CHARS characters
            sig_parts = []
            for lo, hi in _batches([len(t) for t in texts], BATCH_CHARS):
                sig_parts.append(self._quality_and_minhash(
                    ids, sources, texts[lo:hi], where[lo:hi], n_pii[lo:hi], docs))
            sigs = keys = None
            if self.minhasher is not None:
                sigs = (np.concatenate(sig_parts) if sig_parts else
                        np.empty((0, self.minhasher.num_perm), dtype=np.uint32))
                keys = self.minhasher.band_keys(sigs)
        except Exception as exc:  # a bug, not bad input: say where it happened
            raise RuntimeError(f"rows {chunk.row0}..{chunk.row0 + chunk.n - 1}: "
                               f"{type(exc).__name__}: {exc}") from exc
        return ChunkResult(chunk.file, chunk.row0, docs, sigs, keys, counters)

    def _quality_and_minhash(self, ids: list[str], sources: list[str], texts: list[str],
                             where: list[int], n_pii: list[int], docs: list) -> np.ndarray | None:
        words = Words(texts)
        keep = np.zeros(len(texts), dtype=bool)
        for j, (rule, qstats) in enumerate(quality_batch(texts, self.cfg.quality, words)):
            i, t = where[j], texts[j]
            if rule is not None:
                docs[i] = (rule, ids[i], sources[i], t[: self.cfg.snippet_chars], None, None)
                continue
            stats = (len(t), len(t.encode("utf-8")), qstats["n_words"], t.count("\n") + 1,
                     qstats["mean_word_length"], n_pii[j])
            docs[i] = (None, ids[i], sources[i], t, stats, exact_hash(t))
            keep[j] = True
        if self.minhasher is None:
            return None
        return self.minhasher.signatures(words, keep)

    def _pii(self, ids: list[str], sources: list[str], texts: list[str], where: list[int],
             docs: list, counters: Counter) -> tuple[list[str], list[int], list[int]]:
        cfg = self.cfg.pii
        if not self.kinds:
            return texts, where, [0] * len(texts)
        out_t, out_w, out_n = [], [], []
        for text, i, clusters in zip(texts, where, digit_clusters(texts)):
            spans = find_pii(text, self.kinds, clusters)
            if spans:
                counters["pii_docs"] += 1
                for sp in spans:
                    counters[f"pii_{sp.kind}"] += 1
                if (cfg.max_density is not None and len(spans) >= cfg.min_matches_for_drop
                        and pii_density(len(spans), len(text)) > cfg.max_density):
                    docs[i] = ("pii_density", ids[i], sources[i], self.snippet(text), None, None)
                    continue
                text = redact_pii(text, spans)
            out_t.append(text)
            out_w.append(i)
            out_n.append(len(spans))
        return out_t, out_w, out_n

    def _prepare(self, raw: Any, counters: Counter) -> tuple[str | None, str | None, str]:
        """Raw value -> (fault rule or None, normalised text, PII-redacted snippet of a fault)."""
        cfg = self.cfg
        if raw is None:
            return "null_text", None, ""
        if isinstance(raw, (bytes, bytearray, memoryview)):
            raw = bytes(raw)
            counters["bytes_in"] += len(raw)
            if len(raw) > 4 * cfg.max_doc_chars:  # cannot fit, whatever the encoding
                head = raw[: 4 * cfg.snippet_chars].decode("utf-8", "ignore")
                return "oversize", None, self.snippet(head)
            text, n_bad = decode_utf8(raw, cfg.normalise.max_invalid_utf8_frac)
            if text is None:
                return "invalid_utf8", None, self.snippet(raw.decode("utf-8", "replace"))
            if n_bad:
                counters["utf8_repaired_docs"] += 1
        elif isinstance(raw, str):
            text = raw
            counters["bytes_in"] += len(raw.encode("utf-8", "surrogatepass"))
        else:
            return "non_string", None, self.snippet(repr(raw))
        if len(text) > cfg.max_doc_chars:
            return "oversize", None, self.snippet(text)
        norm = normalise_text(text, cfg.normalise)
        if norm != text:
            counters["normalised_docs"] += 1
        if len(norm) < max(cfg.normalise.min_chars, 1):
            return "empty", None, ""
        return None, norm, ""

def _batches(sizes: list[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive index ranges whose sizes add up to at most ``limit`` (at least one item)."""
    out, lo, acc = [], 0, 0
    for i, n in enumerate(sizes):
        if i > lo and acc + n > limit:
            out.append((lo, i))
            lo, acc = i, 0
        acc += n
    if lo < len(sizes):
        out.append((lo, len(sizes)))
    return out


_WORKER: Processor | None = None


def init_worker(cfg_dict: dict) -> None:
    """Process-pool initializer: build the worker's :class:`Processor` once."""
    global _WORKER
    _WORKER = Processor(CleaningConfig.from_dict(cfg_dict))


def process_chunk(chunk: Chunk) -> ChunkResult:
    """Process-pool task: clean one chunk with the worker's processor."""
    assert _WORKER is not None, "init_worker was not called"
    return _WORKER.process(chunk)
