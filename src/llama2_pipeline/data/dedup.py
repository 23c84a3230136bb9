"""Exact and near-duplicate detection: 64-bit content hashes and MinHash + LSH.

Per-document work (run in the worker processes):

* :func:`exact_hash` - 64-bit BLAKE2b of the UTF-8 text.
* :class:`MinHasher` - word shingles -> MinHash signature -> LSH band keys, all in numpy:
  the word hashes of :class:`~llama2_pipeline.data.words.Words` (lower-cased, punctuation
  stripped, deterministic across processes and runs) are combined into one 64-bit hash per
  shingle of ``shingle_size`` consecutive words (finalised with the murmur3 mixer), and the
  ``num_perm`` permutations are affine maps ``a*x + b (mod 2**32)`` (``a`` odd, so each is a
  bijection) of the top 32 bits ``x`` of those already well-mixed hashes, evaluated by
  broadcasting over blocks of shingles in native 32-bit SIMD arithmetic (AVX2 has no 64-bit
  multiply); the signature is the minimum per permutation. Estimates checked against exact
  Jaccard similarities are unbiased with the textbook variance ``J(1-J)/num_perm``.

Global work (in the parent, in corpus order): :class:`Deduplicator` keeps the first document
of each cluster. A document is an exact duplicate if its hash was kept before; otherwise it is
a near duplicate if it shares an LSH band with a kept document whose signatures agree on at
least ``threshold`` of the positions (the estimated Jaccard similarity of the shingle sets).
Clustering is greedy: a document is compared with kept documents only, so the result depends
only on the order of the corpus, never on the number of workers.

Oversized buckets (the rule both engines share): every document that reaches dedup (passed the
quality rules; exact duplicates included) takes a slot in each of its LSH buckets, in corpus
order, until the bucket holds ``max_bucket`` documents; a document is compared only with the
kept documents among the slot holders of its buckets. The slots are fixed by corpus order
alone, never by which documents were kept, which is what lets the Ray engine
(:mod:`llama2_pipeline.data.ray_engine`) find every comparison with one shuffle and a bounded
number of pairs per bucket (``max_bucket`` per member) and still give the same bytes.
``max_bucket: null`` compares with every kept document of a bucket (quadratic in a bucket).

Memory: per kept document about ``4 * num_perm`` bytes of signature (a growing numpy array),
``bands`` dict entries (~100 bytes each) and one exact-hash entry (~100 bytes): for the
defaults (128 permutations, 16 bands) about 2.2 KB per unique document; a removed document
holds the slots it takes in buckets that are not yet full (at most ``bands`` entries).

The same decisions as edges (the Ray engine): see :mod:`llama2_pipeline.data.dedup_edges`.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .config import DedupConfig
from .words import Words, fmix64

_M32 = np.uint32(0xFFFFFFFF)
_POLY = np.uint64(0x100000001B3)
_BAND_MIX = np.uint64(0x9E3779B97F4A7C15)
_BLOCK = 1024
EMPTY_SIGNATURE_VALUE = np.uint32(0xFFFFFFFF)


def exact_hash(text: str) -> int:
    """64-bit content hash of ``text`` (BLAKE2b of its UTF-8 bytes)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class MinHasher:
    """MinHash signatures and LSH band keys of word shingles (deterministic given ``seed``)."""

    def __init__(self, num_perm: int = 128, shingle_size: int = 5, bands: int = 16,
                 seed: int = 1234):
        if num_perm % bands:
            raise ValueError(f"bands ({bands}) must divide num_perm ({num_perm})")
        self.num_perm, self.shingle_size, self.bands = num_perm, shingle_size, bands
        self.rows = num_perm // bands
        rng = np.random.default_rng(seed)
        self.a = np.frombuffer(rng.bytes(4 * num_perm), dtype="<u4").astype(np.uint32) | np.uint32(1)
        self.b = np.frombuffer(rng.bytes(4 * num_perm), dtype="<u4").astype(np.uint32)
        self.band_salt = np.frombuffer(rng.bytes(8 * bands), dtype="<u8").astype(np.uint64)

    @classmethod
    def from_config(cls, cfg: DedupConfig) -> "MinHasher":
        return cls(cfg.num_perm, cfg.shingle_size, cfg.bands, cfg.seed)

    def shingles(self, words: Words) -> tuple[np.ndarray, np.ndarray]:
        """(64-bit shingle hashes, document index of each), documents in order.

        A shingle is ``shingle_size`` consecutive words of one document (repeats kept: they do
        not change a minimum); a document with fewer words is one shingle of all its words.
        """
        h, doc = words.hashes, words.doc
        k = self.shingle_size
        m = max(len(h) - k + 1, 0)
        with np.errstate(over="ignore"):
            g = h[:m] + np.uint64(k)
            for j in range(1, k):
                g *= _POLY
                g += h[j:j + m]
        inside = doc[:m] == doc[k - 1:] if m else np.empty(0, dtype=bool)
        sh, sd = g[inside], doc[:m][inside]
        short = np.flatnonzero((words.n_words > 0) & (words.n_words < k))
        if len(short):  # documents shorter than one shingle: hash all their words
            extra = []
            for d in short.tolist():
                ww = h[words.lo[d]:words.hi[d]]
                with np.errstate(over="ignore"):
                    v = ww[0] + np.uint64(len(ww))
                    for x in ww[1:]:
                        v = v * _POLY + x
                extra.append(v)
            sh = np.concatenate((sh, np.array(extra, dtype=np.uint64)))
            sd = np.concatenate((sd, short))
            order = np.argsort(sd, kind="stable")
            sh, sd = sh[order], sd[order]
        return fmix64(sh), sd

    def signatures(self, texts: list[str] | Words, select: np.ndarray | None = None) -> np.ndarray:
        """MinHash signatures ``uint32[n_docs, num_perm]`` of a batch (a document without words
        gets all 0xFFFFFFFF); with a boolean ``select`` only those documents' rows."""
        words = texts if isinstance(texts, Words) else Words(texts)
        sh, sd = self.shingles(words)
        if select is not None:
            sh, sd = sh[select[sd]], sd[select[sd]]
        x = (sh >> np.uint64(32)).astype(np.uint32)
        mins = np.full((self.num_perm, words.n_docs), _M32, dtype=np.uint32)
        if len(x):
            # layout (permutation, shingle): contiguous rows, so every op is a plain SIMD loop
            width = min(_BLOCK, len(x))
            a_tile = np.ascontiguousarray(np.broadcast_to(self.a[:, None], (self.num_perm, width)))
            b_tile = np.ascontiguousarray(np.broadcast_to(self.b[:, None], (self.num_perm, width)))
            buf = np.empty((self.num_perm, width), dtype=np.uint32)
            with np.errstate(over="ignore"):
                for lo in range(0, len(x), width):
                    blk, d = x[lo:lo + width], sd[lo:lo + width]
                    w = len(blk)
                    out = buf[:, :w]
                    np.multiply(a_tile[:, :w], blk, out=out)
                    np.add(out, b_tile[:, :w], out=out)
                    if d[0] == d[-1]:  # the whole block belongs to one document
                        col = mins[:, d[0]]
                        mins[:, d[0]] = np.minimum(col, out.min(axis=1))
                        continue
                    seg = np.flatnonzero(np.concatenate(([True], d[1:] != d[:-1])))
                    docs = d[seg]
                    mins[:, docs] = np.minimum(mins[:, docs], np.minimum.reduceat(out, seg, axis=1))
        mins = np.ascontiguousarray(mins.T)
        return mins[select] if select is not None else mins

    def signature(self, text: str) -> np.ndarray:
        """MinHash signature ``uint32[num_perm]`` of one text."""
        return self.signatures([text])[0]

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """LSH band keys ``uint64[n, bands]`` of signatures ``uint32[n, num_perm]``.

        Each band's ``rows`` values are folded into one 64-bit key salted with the band index,
        so all bands can share one hash table.
        """
        sigs = np.atleast_2d(sigs)
        r = sigs.reshape(len(sigs), self.bands, self.rows).astype(np.uint64)
        with np.errstate(over="ignore"):
            k = np.broadcast_to(self.band_salt, (len(sigs), self.bands)).copy()
            for j in range(self.rows):
                k ^= r[:, :, j]
                k *= _BAND_MIX
                k ^= k >> np.uint64(29)
        return k


class Deduplicator:
    """Streaming exact + near-duplicate filter; feed documents in corpus order.

    :meth:`check` returns ``(kind, kept_index)`` where ``kind`` is ``"exact"``, ``"near"`` or
    ``None`` (the document is new and is added to the index) and ``kept_index`` is the index,
    among kept documents, of the one it duplicates (or of itself when new).
    """

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.exact: dict[int, int] = {}
        self.buckets: dict[int, int | list[int]] = {}
        self.sigs = np.empty((1024 if cfg.near else 0, cfg.num_perm), dtype=np.uint32)
        self.n_kept = 0
        self.min_agree = min_agreement(cfg)

    def check(self, h: int, sig: np.ndarray | None, keys: np.ndarray | None) -> tuple[str | None, int]:
        near = self.cfg.near and sig is not None
        kind, idx = self._decide(h, sig, keys, near)
        if kind is None:
            idx = self._keep(h, sig)
        if near:  # the document takes its slots whatever its fate (see the module docstring)
            self._take_slots(keys, idx if kind is None else -1)
        return kind, idx

    def _decide(self, h: int, sig: np.ndarray | None, keys: np.ndarray | None,
                near: bool) -> tuple[str | None, int]:
        if self.cfg.exact:
            prev = self.exact.get(h)
            if prev is not None:
                return "exact", prev
        if near:
            cands: set[int] = set()
            for k in keys.tolist():
                v = self.buckets.get(k)
                if v is not None:
                    if isinstance(v, int):
                        cands.add(v)
                    else:
                        cands.update(v)
            cands.discard(-1)  # slots held by removed documents
            for c in sorted(cands):  # earliest kept document first: deterministic
                if int(np.count_nonzero(self.sigs[c] == sig)) >= self.min_agree:
                    return "near", c
        return None, -1

    def _keep(self, h: int, sig: np.ndarray | None) -> int:
        idx = self.n_kept
        self.n_kept += 1
        if self.cfg.exact:
            self.exact[h] = idx
        if self.cfg.near and sig is not None:
            if idx >= len(self.sigs):
                grown = np.empty((2 * len(self.sigs), self.cfg.num_perm), dtype=np.uint32)
                grown[: len(self.sigs)] = self.sigs
                self.sigs = grown
            self.sigs[idx] = sig
        return idx

    def _take_slots(self, keys: np.ndarray, idx: int) -> None:
        """Append ``idx`` (a kept index, or -1 for a removed document) to every bucket of
        ``keys`` that holds fewer than ``max_bucket`` documents."""
        cap = self.cfg.max_bucket
        if idx < 0 and cap is None:
            return  # without a cap a removed document's slot changes nothing
        for k in keys.tolist():
            v = self.buckets.get(k)
            if v is None:
                self.buckets[k] = idx
            elif isinstance(v, int):
                if cap is None or cap > 1:
                    self.buckets[k] = [v, idx]
            elif cap is None or len(v) < cap:
                v.append(idx)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of equal MinHash positions: an unbiased estimate of the Jaccard similarity."""
    return float(np.mean(np.asarray(sig_a) == np.asarray(sig_b)))


def min_agreement(cfg: DedupConfig) -> int:
    """Equal signature positions that make a near duplicate (``threshold`` of ``num_perm``)."""
    return int(np.ceil(cfg.threshold * cfg.num_perm - 1e-9))
