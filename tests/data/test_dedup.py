"""Exact and MinHash-LSH near-duplicate detection."""

import random

import numpy as np
import pytest

from llama2_pipeline.data.config import DedupConfig
from llama2_pipeline.data.dedup import (
    Deduplicator,
    MinHasher,
    estimated_jaccard,
    exact_hash,
)
from llama2_pipeline.data.dedup_edges import EXACT, NEAR, group_edges, walk_edges
from llama2_pipeline.data.words import Words

from .corpus import document, mutate

CFG = DedupConfig()
MH = MinHasher.from_config(CFG)


def run(texts, cfg=CFG):
    """Feed texts in order -> list of (kind, kept_index)."""
    d = Deduplicator(cfg)
    sigs = MH.signatures(texts)
    keys = MH.band_keys(sigs)
    return [d.check(exact_hash(t), s, k) for t, s, k in zip(texts, sigs, keys)]


def shingle_jaccard(a, b, k=5):
    sa = {tuple(a.lower().split()[i:i + k]) for i in range(len(a.split()) - k + 1)}
    sb = {tuple(b.lower().split()[i:i + k]) for i in range(len(b.split()) - k + 1)}
    return len(sa & sb) / len(sa | sb)


def test_exact_duplicate_keeps_first():
    a = document(random.Random(1), 16)
    b = document(random.Random(2), 16)
    assert run([a, b, a]) == [(None, 0), (None, 1), ("exact", 0)]


def test_near_duplicate_removed_unrelated_kept():
    rng = random.Random(5)
    a = document(rng, 20)  # ~240 words
    near = mutate(rng, a, 3)  # three words changed
    other = document(rng, 20)
    assert near != a and shingle_jaccard(a, near) > 0.8
    assert run([a, other, near]) == [(None, 0), (None, 1), ("near", 0)]


def test_choice_of_kept_document_is_the_first_one():
    rng = random.Random(6)
    a = document(rng, 20)
    near = mutate(rng, a, 2)
    assert run([a, near])[1] == ("near", 0)
    assert run([near, a])[1] == ("near", 0)  # now `near` is the one kept
    assert run([a, near]) == run([a, near])


def test_threshold_is_respected():
    rng = random.Random(7)
    a = document(rng, 12)
    far = mutate(rng, a, 40)
    assert shingle_jaccard(a, far) < 0.5
    assert run([a, far])[1][0] is None


def test_disabled_kinds():
    a = document(random.Random(1), 12)
    assert run([a, a], DedupConfig(exact=False))[1][0] == "near"
    assert run([a, a], DedupConfig(exact=False, near=False))[1][0] is None


def test_minhash_estimates_jaccard():
    rng = random.Random(8)
    errs = []
    for n_changes in (2, 5, 10, 20, 40):
        a = document(rng, 20)
        b = mutate(rng, a, n_changes)
        errs.append(estimated_jaccard(MH.signature(a), MH.signature(b)) - shingle_jaccard(a, b))
    assert max(abs(e) for e in errs) < 0.15, errs


def test_signatures_deterministic_and_batch_independent():
    texts = [document(random.Random(i), 6) for i in range(5)] + ["short text", ""]
    batch = MH.signatures(texts)
    one = np.stack([MH.signature(t) for t in texts])
    assert (batch == one).all()
    assert (MinHasher.from_config(CFG).signatures(Words(texts)) == batch).all()
    assert (batch[-1] == 0xFFFFFFFF).all()
    assert not (MinHasher(seed=99).signature(texts[0]) == batch[0]).all()
    # fixed value: the same on every machine, process and run
    assert int(MH.signature("the quick brown fox jumps over the lazy dog")[0]) == 89788932


# ----------------------------------------------------------------- the shared bucket rule, as edges

ROWS = CFG.num_perm // CFG.bands


def _random_sig(rng: random.Random) -> np.ndarray:
    return np.array([rng.getrandbits(32) for _ in range(CFG.num_perm)], dtype=np.uint32)


def _with_bands(rng, sig, bands, like=None):
    """``sig`` with the positions of ``bands`` replaced (by random values, or those of ``like``)."""
    out = sig.copy()
    for b in bands:
        sl = slice(b * ROWS, (b + 1) * ROWS)
        out[sl] = _random_sig(rng)[sl] if like is None else like[sl]
    return out


def crafted(rng: random.Random, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Signatures with exact copies, near copies (some bands or positions changed, so chains
    form), unrelated documents and fillers that share one band with an earlier document."""
    sigs, hashes = [], []
    for _ in range(n):
        r = rng.random()
        if sigs and r < 0.15:
            k = rng.randrange(len(sigs))
            sigs.append(sigs[k].copy())
            hashes.append(hashes[k])
            continue
        if sigs and r < 0.5:
            s = _with_bands(rng, sigs[rng.randrange(len(sigs))],
                            rng.sample(range(CFG.bands), rng.randrange(1, 7)))
            for q in rng.sample(range(CFG.num_perm), rng.randrange(0, 20)):
                s[q] = rng.getrandbits(32)
        elif sigs and r < 0.7:
            s = _with_bands(rng, _random_sig(rng), [rng.randrange(CFG.bands)],
                            like=sigs[rng.randrange(len(sigs))])
        else:
            s = _random_sig(rng)
        sigs.append(s)
        hashes.append(rng.getrandbits(64))
    return np.stack(sigs), np.array(hashes, dtype=np.uint64)


def decisions_in_order(cfg, sigs, hashes):
    """{document: (kind, kept document)} of the streaming Deduplicator."""
    d, kept, out = Deduplicator(cfg), [], {}
    keys = MH.band_keys(sigs)
    for j in range(len(sigs)):
        kind, idx = d.check(int(hashes[j]), sigs[j] if cfg.near else None,
                            keys[j] if cfg.near else None)
        if kind is None:
            kept.append(j)
        else:
            out[j] = (kind, kept[idx])
    return out


def decisions_from_edges(cfg, sigs, hashes, rng, parts=3):
    """The same decisions through group_edges over shuffled hash partitions and walk_edges."""
    n, keys = len(sigs), MH.band_keys(sigs)
    part, key, doc = [], [], []
    if cfg.exact:
        part, key, doc = [np.full(n, EXACT)], [hashes], [np.arange(n)]
    if cfg.near:
        part.append(np.full(n * cfg.bands, NEAR))
        key.append(keys.reshape(-1))
        doc.append(np.repeat(np.arange(n), cfg.bands))
    part, key, doc = np.concatenate(part), np.concatenate(key).astype(np.uint64), np.concatenate(doc)
    edges = []
    for p in range(parts):
        sel = np.flatnonzero(key % np.uint64(parts) == p)
        sel = sel[rng.permutation(len(sel))]  # the rows of a partition come in any order
        edges.append(group_edges(part[sel], key[sel], doc[sel], hashes[doc[sel]],
                                 sigs[doc[sel]] if cfg.near else None, cfg))
    e = {c: np.concatenate([x[c] for x in edges]) for c in ("j", "kind", "i", "ref")}
    order = np.lexsort((e["i"], e["kind"], e["j"]))
    cuts = sorted(rng.integers(0, len(order) + 1, size=2).tolist()) + [len(order)]
    batches = [{c: v[order][lo:hi] for c, v in e.items()} for lo, hi in zip([0] + cuts, cuts)]
    return {j: (kind, kept) for j, kind, kept in walk_edges(batches)}


@pytest.mark.parametrize("exact, near", [(True, True), (False, True), (True, False)])
def test_edges_and_walk_take_the_deduplicators_decisions(exact, near):
    rng, np_rng = random.Random(7), np.random.default_rng(7)
    for trial in range(6):
        sigs, hashes = crafted(rng, rng.randrange(50, 250))
        for cap in (None, 1, 2, 5):
            cfg = DedupConfig(exact=exact, near=near, max_bucket=cap)
            expected = decisions_in_order(cfg, sigs, hashes)
            assert decisions_from_edges(cfg, sigs, hashes, np_rng) == expected, (trial, cap)
            assert expected  # the corpus has duplicates of every enabled kind
            assert {k for k, _ in expected.values()} == ({"exact"} if exact else set()) | (
                {"near"} if near else set())


def test_full_buckets_give_no_more_slots():
    """j agrees with K (96 of 128 positions) and shares 12 bands with it; 3 fillers per band
    fill those buckets before K: with max_bucket 3 j never meets K and is kept, with 4 or no
    cap it is K's near duplicate. Both engines' paths agree."""
    rng = random.Random(1)
    k_sig = _random_sig(rng)
    j_sig = _with_bands(rng, k_sig, range(4))
    fillers = [_with_bands(rng, _random_sig(rng), [b], like=k_sig)
               for b in range(4, CFG.bands) for _ in range(3)]
    sigs = np.stack(fillers + [k_sig, j_sig])
    hashes = np.arange(len(sigs), dtype=np.uint64)
    j, k = len(sigs) - 1, len(sigs) - 2
    for cap, expected in ((None, {j: ("near", k)}), (4, {j: ("near", k)}), (3, {})):
        cfg = DedupConfig(max_bucket=cap)
        assert decisions_in_order(cfg, sigs, hashes) == expected
        assert decisions_from_edges(cfg, sigs, hashes, np.random.default_rng(0)) == expected


def test_chains_keep_the_far_end():
    """A~B and B~C but A and C disagree: B goes (A kept), C stays (it is compared with kept
    documents only)."""
    rng = random.Random(2)
    a = _random_sig(rng)
    b = _with_bands(rng, a, range(4))
    c = _with_bands(rng, b, range(4, 8))
    sigs = np.stack([a, b, c])
    assert decisions_in_order(CFG, sigs, np.arange(3, dtype=np.uint64)) == {1: ("near", 0)}


def test_walk_refuses_unsorted_edges():
    batch = {"j": np.array([5, 3]), "kind": np.array([NEAR, NEAR]), "i": np.array([1, 1]),
             "ref": np.array([-1, -1])}
    with pytest.raises(ValueError, match="not sorted"):
        list(walk_edges([batch]))


def _edge_set(cfg, sigs, hashes, small, per_document=False):
    n, keys = len(sigs), MH.band_keys(sigs)
    part = np.concatenate([np.full(n, EXACT), np.full(n * cfg.bands, NEAR)])
    key = np.concatenate([hashes, keys.reshape(-1)]).astype(np.uint64)
    doc = np.concatenate([np.arange(n), np.repeat(np.arange(n), cfg.bands)])
    if per_document:  # one signature per document and each row's index into them
        e = group_edges(part, key, doc, hashes[doc], sigs, cfg, sig_row=doc, small=small)
    else:
        e = group_edges(part, key, doc, hashes[doc], sigs[doc], cfg, small=small)
    return sorted(zip(*(e[c].tolist() for c in ("j", "kind", "i", "ref"))))


def test_array_path_gives_the_one_by_one_edges(monkeypatch):
    """Buckets done together in array operations give exactly the edges of the bucket-by-bucket
    path, with per-row or per-document signatures, in slices of a few pairs, and still when
    every signature shares one digest (every match the digest finds is checked on the signatures)."""
    from llama2_pipeline.data import dedup_edges as dedup

    rng = random.Random(11)
    for trial in range(4):
        sigs, hashes = crafted(rng, rng.randrange(80, 200))
        for cap in (None, 1, 3):
            for exact in (True, False):
                cfg = DedupConfig(max_bucket=cap, exact=exact)
                slow = _edge_set(cfg, sigs, hashes, small=0)
                assert any(k == NEAR for _, k, _, _ in slow) and any(r >= 0 for *_, r in slow)
                assert _edge_set(cfg, sigs, hashes, small=64) == slow, (trial, cap, exact)
                assert _edge_set(cfg, sigs, hashes, small=64, per_document=True) == slow
    monkeypatch.setattr(dedup, "_PAIR_BLOCK", 7)  # many slices of buckets
    assert _edge_set(cfg, sigs, hashes, small=64) == _edge_set(cfg, sigs, hashes, small=0)
    monkeypatch.setattr(dedup, "signature_digest", lambda s: np.zeros(len(s), dtype=np.uint64))
    assert _edge_set(cfg, sigs, hashes, small=64) == _edge_set(cfg, sigs, hashes, small=0)
