"""Packed token shards: contents, determinism over worker counts, the index, the reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llama2_pipeline.tokenizer import (
    TokenShards,
    TokenShardsError,
    encode_corpus,
    is_val_doc,
    token_dtype,
)

VAL = 0.1
PER_SHARD = 40_000  # small, so that documents span shard boundaries


@pytest.fixture(scope="session")
def shards(tmp_path_factory, corpus_dir, tok):
    out = tmp_path_factory.mktemp("shards") / "tokens"
    stats = encode_corpus(corpus_dir, tok, out, val_fraction=VAL, workers=1,
                          tokens_per_shard=PER_SHARD, progress=False)
    return out, stats


def _split_docs(stream: np.ndarray, bos: int, eos: int) -> list[np.ndarray]:
    starts = np.flatnonzero(stream == bos)
    ends = np.flatnonzero(stream == eos)
    assert len(starts) == len(ends) and (starts < ends).all()
    assert starts[0] == 0 and ends[-1] == len(stream) - 1
    assert (starts[1:] == ends[:-1] + 1).all(), "documents must be back to back"
    return [stream[s + 1:e] for s, e in zip(starts, ends)]


def test_shards_decode_back_to_documents_in_order(shards, documents, tok):
    out, stats = shards
    for split in ("train", "val"):
        expect = [t for i, t in zip(documents.id, documents.text)
                  if t and is_val_doc(i, VAL) == (split == "val")]
        ts = TokenShards(out, split)
        docs = _split_docs(np.asarray(ts.tokens), tok.bos_id, tok.eos_id)
        assert [tok.decode(d) for d in docs] == expect
        assert ts.num_docs == len(expect) == stats[f"docs_{split}"]
        assert len(ts) == stats[f"tokens_{split}"]


def test_stats_and_index(shards, tok, documents):
    out, stats = shards
    index = json.loads((out / "index.json").read_text())
    assert index["dtype"] == "uint16" == token_dtype(tok.vocab_size)
    assert index["tokenizer_sha256"] == tok.digest
    assert index["vocab_size"] == stats["vocab_size"] == tok.vocab_size
    assert stats["docs_train"] + stats["docs_val"] + stats["docs_skipped_empty"] == len(documents)
    assert stats["docs_skipped_empty"] == 1
    assert 0 < stats["docs_val"] < stats["docs_train"]
    assert stats["shards_train"] == len(index["splits"]["train"]["shards"]) > 1
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["index.json"] + [s["name"] for sp in index["splits"].values()
                                             for s in sp["shards"]])
    assert names[1] == "train_00000.bin"
    assert all(s["tokens"] <= PER_SHARD for sp in index["splits"].values() for s in sp["shards"])
    assert stats["tokens_train"] == sum(s["tokens"] for s in index["splits"]["train"]["shards"])
    assert stats["text_bytes"] == sum(len(t.encode()) for t in documents.text)
    assert 1.5 < stats["bytes_per_token"] < 5


def test_same_bytes_with_any_worker_count(tmp_path, shards, corpus_dir, tok):
    ref = shards[0]
    out = tmp_path / "w2"
    stats = encode_corpus(corpus_dir, tok.path, out, val_fraction=VAL, workers=2,
                          tokens_per_shard=PER_SHARD, progress=False)
    assert stats["workers"] == 2
    for f in sorted(ref.iterdir()):
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())


def test_split_is_by_document_and_deterministic():
    ids = [f"doc-{i}" for i in range(20_000)]
    val = [i for i in ids if is_val_doc(i, 0.05)]
    assert abs(len(val) / len(ids) - 0.05) < 0.01
    assert val == [i for i in ids if is_val_doc(i, 0.05)]
    assert not any(is_val_doc(i, 0.0) for i in ids[:100])
    assert val != [i for i in ids if is_val_doc(i, 0.05, seed=1)]


def test_reader_reads_across_shard_boundaries(shards):
    ts = TokenShards(shards[0], "train")
    full = np.asarray(ts.tokens)
    for start, n in [(0, 10), (PER_SHARD - 5, 10), (PER_SHARD * 2 - 1, PER_SHARD + 3),
                     (len(ts) - 7, 7)]:
        assert (ts.read(start, n) == full[start:start + n]).all()
    assert (ts[PER_SHARD - 3:PER_SHARD + 3] == full[PER_SHARD - 3:PER_SHARD + 3]).all()
    with pytest.raises(IndexError):
        ts.read(len(ts) - 2, 3)


def test_single_shard_is_a_memmap_view(shards):
    ts = TokenShards(shards[0], "val")
    assert len(ts.index["splits"]["val"]["shards"]) == 1
    assert isinstance(ts.tokens, np.memmap) and ts.tokens.dtype == np.dtype("<u2")


def test_sample_batch_and_blocks(shards):
    ts = TokenShards(shards[0], "train")
    full = np.asarray(ts.tokens)
    b1 = ts.sample_batch(4, 64, np.random.default_rng(0))
    b2 = ts.sample_batch(4, 64, np.random.default_rng(0))
    assert b1.shape == (4, 65) and b1.dtype == np.int64 and (b1 == b2).all()
    for row in b1:  # each row is a contiguous window of the stream
        cands = np.flatnonzero(full[:len(full) - 64] == row[0])
        assert any((full[s:s + 65] == row).all() for s in cands)
    seq = 1000
    blocks = list(ts.iter_blocks(seq))
    assert len(blocks) == ts.num_blocks(seq) == (len(ts) - 1) // seq
    assert all(len(b) == seq + 1 for b in blocks)
    assert (blocks[1][0] == blocks[0][-1]) and (blocks[3] == full[3 * seq:4 * seq + 1]).all()
    batches = list(ts.iter_batches(8, seq))
    assert sum(len(b) for b in batches) == len(blocks)
    with pytest.raises(ValueError, match="fewer than one block"):
        ts.sample_batch(1, len(ts), np.random.default_rng(0))


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_shard_is_named(tmp_path, shards):
    bad = _copy(shards[0], tmp_path / "bad")
    (bad / "train_00001.bin").unlink()
    with pytest.raises(TokenShardsError, match=r"train_00001\.bin.* is missing"):
        TokenShards(bad, "train")
    TokenShards(bad, "val")  # the other split is fine


def test_wrong_size_or_dtype_is_named(tmp_path, shards):
    bad = _copy(shards[0], tmp_path / "bad")
    arr = np.fromfile(bad / "val_00000.bin", dtype="<u2").astype("<u4")
    arr.tofile(bad / "val_00000.bin")  # written as uint32 but indexed as uint16
    with pytest.raises(TokenShardsError, match=r"val_00000\.bin: \d+ bytes, expected .*uint16"):
        TokenShards(bad, "val")
    index = json.loads((bad / "index.json").read_text())
    index["dtype"] = "int8"
    (bad / "index.json").write_text(json.dumps(index))
    with pytest.raises(TokenShardsError, match="index.json: dtype 'int8'"):
        TokenShards(bad, "train")


def test_bad_index_and_split(tmp_path, shards, tok):
    with pytest.raises(TokenShardsError, match="index.json does not exist"):
        TokenShards(tmp_path, "train")
    with pytest.raises(TokenShardsError, match="no split 'test'"):
        TokenShards(shards[0], "test")
    with pytest.raises(TokenShardsError, match="tokenizer sha256"):
        TokenShards(shards[0], "train", expected_tokenizer_sha256="0" * 64)
    TokenShards(shards[0], "train", expected_tokenizer_sha256=tok.digest)


def test_bad_params(tmp_path, corpus_dir, tok):
    with pytest.raises(ValueError, match="val_fraction"):
        encode_corpus(corpus_dir, tok, tmp_path / "o", val_fraction=1.0, progress=False)
    assert not (tmp_path / "o").exists()
