"""The decisions of :class:`~llama2_pipeline.data.dedup.Deduplicator` as edges (the Ray engine,
:mod:`llama2_pipeline.data.ray_engine`): :func:`group_edges` turns whole exact-hash groups and
LSH buckets into edges from a document to earlier ones (the first document of its exact group;
the slot holders whose signatures agree with its own) with no knowledge of what is kept, and
:func:`walk_edges` applies the greedy rule to those edges in corpus order. Same rules as the
module docstring of :mod:`llama2_pipeline.data.dedup` (slots, oversized buckets).
"""

from __future__ import annotations

import functools
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator

import numpy as np

from .config import DedupConfig
from .dedup import _BAND_MIX, min_agreement

EXACT, NEAR = 0, 1  # kinds of dedup rows and edges
_EDGE_BLOCK = 1 << 22  # agreement checks are done over about this many signature values at once
_PAIR_BLOCK = 1 << 22  # buckets done together in array operations: about this many pairs at once


def group_edges(part: np.ndarray, key: np.ndarray, pos: np.ndarray, hashes: np.ndarray,
                sigs: np.ndarray | None, cfg: DedupConfig, sig_row: np.ndarray | None = None,
                small: int = 256) -> dict[str, np.ndarray]:
    """Edges of whole dedup groups (the rows of one shuffle partition), for :func:`walk_edges`.

    Every document that reaches dedup has one ``EXACT`` row (``key`` = its exact hash; with
    exact dedup) and one ``NEAR`` row per LSH band (``key`` = the band key; with near dedup),
    each with its corpus position ``pos``, exact hash and signature (``sigs`` uint32
    ``[rows, num_perm]``, or ``sigs[sig_row]`` when ``sig_row`` is given: one signature per
    document, not per row; None without near dedup). A group is all rows of one
    ``(part, key)`` and must be whole in the rows given. Returns columns ``j, kind, i, ref``
    (int64, int8, int64, int64), one row per edge from document ``j`` to an earlier document
    ``i``, in no particular order:

    * ``EXACT``: ``i`` is the first document of ``j``'s exact-hash group; ``ref`` is the first
      earlier document of the group with ``j``'s signature (-1 if none or without near dedup).
    * ``NEAR``: ``i`` holds a slot (is one of the first ``max_bucket`` documents) of a bucket of
      ``j`` and the signatures agree on at least :func:`min_agreement` positions. With exact
      dedup, a document whose (hash, signature) occurs earlier in the bucket is left out at both
      ends (it is never kept, and its fate follows its ``ref``) but still holds its slot.

    Exact groups and buckets of at most ``small`` rows (nearly all of them) are done together
    in array operations (a 64-bit digest of each signature finds equal ones, and every match it
    finds is checked on the signatures themselves); larger buckets one by one, as are groups
    where two different signatures share a digest.
    """
    order = np.lexsort((pos, key, part))
    order = order[shared_keys(part[order], key[order])]  # groups of one have no edges
    part, key, pos, hashes = part[order], key[order], pos[order], hashes[order]
    if sigs is not None:
        sig_row = order if sig_row is None else sig_row[order]
    starts = np.flatnonzero(_firsts(part, key))
    ends = np.append(starts[1:], len(pos))
    groups = _Groups(starts, ends, pos, hashes, sigs, sig_row)
    out: list[tuple] = []
    exact = part[starts] == EXACT
    if exact.any():
        out.append(groups.exact_edges(np.flatnonzero(exact)))
    near = np.flatnonzero(~exact)
    size = ends[near] - starts[near]
    batch, n = near[size <= small], size[size <= small]
    block = np.cumsum(n * (n - 1) // 2) // _PAIR_BLOCK  # slices of about _PAIR_BLOCK pairs
    cuts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]]) if len(block) else block
    for lo, hi in zip(cuts.tolist(), np.append(cuts[1:], len(batch)).tolist()):
        out.append(groups.small_bucket_edges(batch[lo:hi], cfg))
    for g in near[size > small].tolist():
        out.append(groups.one_by_one(g, False, cfg))
    for g in groups.collided:  # two different signatures with one digest: the plain way
        out.append(groups.one_by_one(g, bool(exact[g]), cfg))
    cols = {"j": np.int64, "kind": np.int8, "i": np.int64, "ref": np.int64}
    return {c: np.concatenate([o[k] for o in out] or [np.empty(0)]).astype(t)
            for k, (c, t) in enumerate(cols.items())}


class _Groups:
    """The rows of :func:`group_edges`, sorted by group and position, and its edge makers."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray, pos: np.ndarray,
                 hashes: np.ndarray, sigs: np.ndarray | None, sig_row: np.ndarray | None):
        self.starts, self.ends, self.pos, self.hashes = starts, ends, pos, hashes
        self.sigs, self.sig_row = sigs, sig_row
        self.collided: list[int] = []

    @functools.cached_property
    def digest(self) -> np.ndarray:
        """:func:`signature_digest` of every signature (only when equal signatures are looked
        for: exact groups, and buckets with exact dedup)."""
        return signature_digest(self.sigs)

    def _rows(self, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, group of each, index of each within its group) of ``groups``, in order."""
        size = self.ends[groups] - self.starts[groups]
        gid = np.repeat(groups, size)
        local = np.arange(len(gid)) - np.repeat(np.cumsum(size) - size, size)
        return self.starts[gid] + local, gid, local

    def _first_equal(self, rows: np.ndarray, gid: np.ndarray, same: list[np.ndarray]) -> np.ndarray:
        """For each of ``rows`` (sorted by group, then position): the first row of its group
        with equal values in every array of ``same`` (per row) and an equal signature. Groups
        where the digests match but the signatures differ go to ``collided``; their answer is
        then meaningless."""
        order = np.lexsort([*(a for a in reversed(same)), gid])  # stable: position breaks ties
        keys = [gid[order], *(a[order] for a in same)]
        new = np.zeros(len(order), dtype=bool)
        new[:1] = True
        for k in keys:
            new[1:] |= k[1:] != k[:-1]
        first = np.empty(len(order), dtype=np.int64)
        first[order] = order[np.flatnonzero(new)[np.cumsum(new) - 1]]
        first = rows[first]
        if self.sigs is not None:
            dup = np.flatnonzero(first != rows)
            for lo in range(0, len(dup), _EDGE_BLOCK // self.sigs.shape[1]):
                d = dup[lo:lo + _EDGE_BLOCK // self.sigs.shape[1]]
                bad = (self.sigs[self.sig_row[rows[d]]] != self.sigs[self.sig_row[first[d]]]).any(1)
                self.collided += np.unique(gid[d[bad]]).tolist()
        return first

    def exact_edges(self, groups: np.ndarray) -> tuple:
        rows, gid, local = self._rows(groups)
        ref = np.full(len(rows), -1, dtype=np.int64)
        if self.sigs is not None:
            first = self._first_equal(rows, gid, [self.digest[self.sig_row[rows]]])
            ref = np.where(first == rows, -1, self.pos[first])
        keep = (local > 0) & ~np.isin(gid, self.collided)
        j, i = self.pos[rows[keep]], self.pos[self.starts[gid[keep]]]
        return j, np.full(len(j), EXACT), i, ref[keep]

    def small_bucket_edges(self, groups: np.ndarray, cfg: DedupConfig) -> tuple:
        """Every bucket of ``groups`` at once: all (member, earlier slot holder) pairs, checked
        in blocks."""
        rows, gid, local = self._rows(groups)
        unsettled = np.ones(len(rows), dtype=bool)
        if cfg.exact:
            first = self._first_equal(rows, gid, [self.hashes[rows],
                                                  self.digest[self.sig_row[rows]]])
            unsettled = first == rows
        # pairs (a, b), a before b in one bucket: b pairs with each of the local[b] rows before it
        b = np.repeat(np.arange(len(rows)), local)
        a = b - (np.arange(len(b)) - np.repeat(np.cumsum(local) - local, local)) - 1
        slots = len(rows) if cfg.max_bucket is None else cfg.max_bucket
        ok = unsettled[a] & unsettled[b] & (local[a] < slots) & ~np.isin(gid[b], self.collided)
        a, b = a[ok], b[ok]
        need, step = min_agreement(cfg), max(1, _EDGE_BLOCK // self.sigs.shape[1])
        hit = np.zeros(len(a), dtype=bool)
        sa, sb = self.sig_row[rows[a]], self.sig_row[rows[b]]
        for lo in range(0, len(a), step):
            agree = (self.sigs[sa[lo:lo + step]] == self.sigs[sb[lo:lo + step]]).sum(axis=1)
            hit[lo:lo + step] = agree >= need
        j, i = self.pos[rows[b[hit]]], self.pos[rows[a[hit]]]
        return j, np.full(len(j), NEAR), i, np.full(len(j), -1)

    def one_by_one(self, g: int, exact: bool, cfg: DedupConfig) -> tuple:
        """Group ``g`` on its own (a large bucket, or a group where a digest collided)."""
        lo, hi = int(self.starts[g]), int(self.ends[g])
        sigs = None if self.sigs is None else self.sigs[self.sig_row[lo:hi]]
        if exact:
            return _exact_group_edges(self.pos[lo:hi], sigs)
        return _bucket_edges(self.pos[lo:hi], self.hashes[lo:hi], sigs, cfg)


def signature_digest(sigs: np.ndarray) -> np.ndarray:
    """A 64-bit digest ``uint64[n]`` of each signature row (finds equal signatures; a match is
    then checked on the signatures)."""
    sigs = np.atleast_2d(sigs)
    if sigs.shape[1] % 2:  # an odd number of permutations: pad to whole 64-bit words
        sigs = np.pad(sigs, ((0, 0), (0, 1)))
    words = np.ascontiguousarray(sigs, dtype=np.uint32).view(np.uint64)
    with np.errstate(over="ignore"):
        k = np.full(len(sigs), 0x243F6A8885A308D3, dtype=np.uint64)
        for j in range(words.shape[1]):
            k ^= words[:, j]
            k *= _BAND_MIX
            k ^= k >> np.uint64(29)
    return k


def shared_keys(part: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Which rows share their ``(part, key)`` with another row (the rows that can have edges)."""
    order = np.lexsort((key, part))
    first = _firsts(part[order], key[order])
    size = np.diff(np.append(np.flatnonzero(first), len(order)))
    mask = np.empty(len(order), dtype=bool)
    mask[order] = np.repeat(size >= 2, size)
    return mask


def _firsts(part: np.ndarray, key: np.ndarray) -> np.ndarray:
    """For rows sorted by (part, key): which ones start a group."""
    first = np.ones(len(key), dtype=bool)
    first[1:] = (part[1:] != part[:-1]) | (key[1:] != key[:-1])
    return first


def _exact_group_edges(pos: np.ndarray, sigs: np.ndarray | None) -> tuple:
    j = pos[1:]
    ref = np.full(len(j), -1, dtype=np.int64)
    if sigs is not None:
        first: dict[bytes, int] = {sigs[0].tobytes(): int(pos[0])}
        for m in range(1, len(pos)):
            ref[m - 1] = first.setdefault(sigs[m].tobytes(), int(pos[m]))
        ref[ref == j] = -1  # the first of its signature in the group
    return j, np.full(len(j), EXACT), np.full(len(j), pos[0]), ref


def _bucket_edges(pos: np.ndarray, hashes: np.ndarray, sigs: np.ndarray, cfg: DedupConfig) -> tuple:
    n = len(pos)
    settled = np.zeros(n, dtype=bool)  # (hash, signature) seen earlier in the bucket
    if cfg.exact:
        seen: set[tuple[int, bytes]] = set()
        for m in range(n):
            k = (int(hashes[m]), sigs[m].tobytes())
            settled[m] = k in seen
            seen.add(k)
    slots = n if cfg.max_bucket is None else min(n, cfg.max_bucket)
    heads = np.flatnonzero(~settled[:slots])
    members = np.flatnonzero(~settled)
    members = members[members > heads[0]] if len(heads) else members[:0]
    js, is_ = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    if len(members):
        head_sigs = sigs[heads]
        need = min_agreement(cfg)
        step = max(1, _EDGE_BLOCK // (len(heads) * sigs.shape[1]))
        for lo in range(0, len(members), step):
            m = members[lo:lo + step]
            agree = (sigs[m][:, None, :] == head_sigs[None, :, :]).sum(axis=2)
            a, b = np.nonzero((agree >= need) & (heads[None, :] < m[:, None]))
            js.append(pos[m[a]])
            is_.append(pos[heads[b]])
    j, i = np.concatenate(js), np.concatenate(is_)
    return j, np.full(len(j), NEAR), i, np.full(len(j), -1)


def walk_edges(batches: Iterable[dict[str, np.ndarray]]) -> Iterator[tuple[int, str, int]]:
    """The greedy rule over edges from :func:`group_edges`, given as batches of columns
    ``j, kind, i, ref`` sorted by ``(j, kind, i)`` (repeated edges are fine).

    Yields ``(j, "exact" | "near", kept)`` for every removed document, in corpus order, with the
    kept document it duplicates: the decisions :class:`Deduplicator` takes when it is fed the
    documents in corpus order (a document without edges is kept). Memory: 16 bytes per removed
    document (two arrays in corpus order, searched by bisection).
    """
    removed, dup_of = array("q"), array("q")  # removed documents, the kept one each duplicates
    group_kept: dict[int, int] = {}  # first document of an exact group, if removed -> kept one

    def duplicated(i: int) -> int | None:
        k = bisect_left(removed, i)
        return dup_of[k] if k < len(removed) and removed[k] == i else None

    def decide(j: int, edges: list) -> tuple[str, int] | None:
        head = None
        if edges[0][0] == EXACT:
            _, head, ref = edges[0]
            kept = head if duplicated(head) is None else group_kept.get(head)
            if kept is not None:
                return "exact", kept
            if ref >= 0:  # same text and signature as ref, removed as a near duplicate
                return "near", duplicated(ref)
        for kind, i, _ in edges:
            if kind == NEAR and duplicated(i) is None:
                return "near", i
        if head is not None:
            group_kept.setdefault(head, j)
        return None

    cur, edges = -1, []
    for b in batches:
        for j, kind, i, ref in zip(b["j"].tolist(), b["kind"].tolist(), b["i"].tolist(),
                                   b["ref"].tolist()):
            if j != cur:
                if j < cur:
                    raise ValueError(f"dedup edges are not sorted by document ({j} after {cur})")
                if edges and (d := decide(cur, edges)) is not None:
                    removed.append(cur)
                    dup_of.append(d[1])
                    yield cur, d[0], d[1]
                cur, edges = j, []
            edges.append((kind, i, ref))
    if edges and (d := decide(cur, edges)) is not None:
        yield cur, d[0], d[1]
