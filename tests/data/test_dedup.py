"""Exact and MinHash-LSH near-duplicate detection."""

import random

import numpy as np

from llama2_pipeline.data.config import DedupConfig
from llama2_pipeline.data.dedup import Deduplicator, MinHasher, estimated_jaccard, exact_hash
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
