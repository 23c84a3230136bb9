"""Training: Llama 2 settings, determinism, round trips, clear errors on bad input."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest
from sentencepiece import sentencepiece_model_pb2 as pb

from llama2_pipeline.tokenizer import (
    CorpusError,
    Tokenizer,
    TokenizerTrainingError,
    train_tokenizer,
)

from .conftest import UNICODE_SAMPLES, VOCAB, write_corpus


def _proto(path) -> pb.ModelProto:
    m = pb.ModelProto()
    m.ParseFromString(path.read_bytes())
    return m


def test_outputs_and_stats(trained, documents):
    out, stats = trained
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.model", "tokenizer.vocab"]
    assert not list(out.parent.glob(".*tmp-*")), "temporary folder left behind"
    assert stats["vocab_size"] == VOCAB
    assert stats["docs"] == len(documents)
    assert stats["sentences_used"] == stats["sentences_total"] > 5000
    vocab_lines = (out / "tokenizer.vocab").read_bytes().decode("utf-8").split("\n")[:-1]
    assert len(vocab_lines) == VOCAB and vocab_lines[0] == "<unk>\t0"


def test_llama2_settings(trained, tok):
    m = _proto(trained[0] / "tokenizer.model")
    ts, ns = m.trainer_spec, m.normalizer_spec
    assert ts.model_type == pb.TrainerSpec.BPE
    assert ts.split_digits and ts.byte_fallback and ts.allow_whitespace_only_pieces
    assert ts.character_coverage == pytest.approx(0.99995)
    assert ns.name == "identity" and ns.add_dummy_prefix and not ns.remove_extra_whitespaces
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    assert [tok.id_to_piece(i) for i in range(5)] == ["<unk>", "<s>", "</s>", "<pad>", "<0x00>"]
    assert tok.sp.is_control(3) and tok.id_to_piece(259) == "<0xFF>"
    assert tok.vocab_size == VOCAB
    # <pad> is never produced by text and decodes to nothing
    assert 3 not in tok.encode("<pad> <s> </s>")
    assert tok.decode([1, 3, 3, 2]) == ""


def test_round_trip(tok, documents):
    texts = list(documents.text) + UNICODE_SAMPLES + [
        "", " ", "  two leading spaces", "trailing  ", "a\n\n\nb\r\nc", "\t\tindent",
        "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ ①②③ ﬁ ligature", "🧑🏿‍🚀 ZWJ family 👨‍👩‍👧‍👦", "\U0010FFFF\x00nul",
    ]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text, repr(text)
    # identity normalisation: nothing is NFKC-folded
    assert tok.decode(tok.encode("ﬁ①")) == "ﬁ①"


def test_byte_fallback_for_unseen_characters(tok):
    pieces = [tok.id_to_piece(i) for i in tok.encode("龘")]  # not in the corpus
    assert pieces[-3:] == ["<0xE9>", "<0xBE>", "<0x98>"]
    assert tok.unk_id not in tok.encode("龘 🦜 \U0001FAE8")


def test_digits_are_split(tok):
    pieces = [tok.id_to_piece(i) for i in tok.encode("Order 20240917 cost 3.14159")]
    digits = [p.lstrip("▁") for p in pieces if any(c.isdigit() for c in p)]
    assert all(len(p) == 1 and p.isdigit() for p in digits), digits
    assert "".join(digits) == "2024091731415" + "9"
    # no piece in the whole vocabulary holds two digits
    learned = [tok.id_to_piece(i) for i in range(tok.vocab_size) if not tok.sp.is_byte(i)]
    assert not [p for p in learned if sum(c.isdigit() for c in p) > 1]


def test_encode_batch_bos_eos_and_pickle(tok):
    texts = ["hello world", "In 1999, 42 maps.", "日本"]
    assert tok.encode_batch(texts, num_threads=2) == [tok.encode(t) for t in texts]
    ids = tok.encode("hello", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode_batch(texts, bos=True) == tok.encode_batch(texts, bos=True)
    assert clone.digest == tok.digest
    assert Tokenizer(tok.path.parent).digest == tok.digest  # a folder works too


def test_deterministic_bytes(tmp_path, corpus_dir, trained):
    """Same corpus and params -> identical model bytes, whatever num_threads."""
    ref = (trained[0] / "tokenizer.model").read_bytes()
    train_tokenizer(corpus_dir, tmp_path / "t2", vocab_size=VOCAB, num_threads=2, progress=False)
    assert (tmp_path / "t2" / "tokenizer.model").read_bytes() == ref
    assert (tmp_path / "t2" / "tokenizer.vocab").read_bytes() == (
        trained[0] / "tokenizer.vocab").read_bytes()


def test_sentence_cap_is_seeded_and_exact(tmp_path, corpus_dir):
    kw = dict(vocab_size=600, max_sentences=3000, num_threads=1, progress=False)
    a = train_tokenizer(corpus_dir, tmp_path / "a", seed=7, **kw)
    train_tokenizer(corpus_dir, tmp_path / "b", seed=7, **kw)
    train_tokenizer(corpus_dir, tmp_path / "c", seed=8, **kw)
    assert a["sentences_used"] == 3000 < a["sentences_total"]
    model = lambda d: (tmp_path / d / "tokenizer.model").read_bytes()  # noqa: E731
    assert model("a") == model("b")
    assert model("a") != model("c")  # a different sample, a different vocabulary


def test_overwrites_existing_output_atomically(tmp_path, corpus_dir):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    train_tokenizer(corpus_dir, out, vocab_size=500, num_threads=1, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.model", "tokenizer.vocab"]


def test_failed_training_leaves_previous_output(tmp_path, corpus_dir, trained):
    out = tmp_path / "tok"
    train_tokenizer(corpus_dir, out, vocab_size=500, num_threads=1, progress=False)
    before = (out / "tokenizer.model").read_bytes()
    with pytest.raises(TokenizerTrainingError):
        train_tokenizer(corpus_dir, out, vocab_size=100_000, num_threads=1, progress=False)
    assert (out / "tokenizer.model").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_too_small_corpus_names_corpus_and_vocab(tmp_path):
    corpus = write_corpus(tmp_path / "tiny", pd.DataFrame(
        {"id": ["a", "b"], "text": ["hello world", "hello there"], "source": ["x", "x"]}), 1)
    with pytest.raises(TokenizerTrainingError) as e:
        train_tokenizer(corpus, tmp_path / "out", vocab_size=2000, progress=False)
    msg = str(e.value)
    assert "vocab_size=2000" in msg and str(corpus) in msg and "too small" in msg
    assert not (tmp_path / "out").exists()


def test_vocab_below_byte_pieces_is_rejected(tmp_path, corpus_dir):
    with pytest.raises(TokenizerTrainingError, match="vocab_size=200"):
        train_tokenizer(corpus_dir, tmp_path / "out", vocab_size=200, progress=False)


@pytest.mark.parametrize("rows", [[], [("a", "", "x"), ("b", "\n  \n", "x")]])
def test_empty_corpus(tmp_path, rows):
    corpus = write_corpus(tmp_path / "empty", pd.DataFrame(rows, columns=["id", "text", "source"]), 1)
    with pytest.raises(TokenizerTrainingError, match="empty|no non-blank line") as e:
        train_tokenizer(corpus, tmp_path / "out", vocab_size=500, progress=False)
    assert str(corpus) in str(e.value)


def test_no_shards_or_bad_shards(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(CorpusError, match="no \\*.parquet"):
        train_tokenizer(tmp_path / "none", tmp_path / "out", vocab_size=500)
    with pytest.raises(CorpusError, match="does not exist"):
        train_tokenizer(tmp_path / "missing", tmp_path / "out", vocab_size=500)
    bad = tmp_path / "bad"
    bad.mkdir()
    pd.DataFrame({"id": ["a"], "body": ["x"]}).to_parquet(bad / "p.parquet")
    with pytest.raises(CorpusError, match=r"p\.parquet.*missing column.*'text'"):
        train_tokenizer(bad, tmp_path / "out", vocab_size=500)
    nulls = tmp_path / "nulls"
    nulls.mkdir()
    pd.DataFrame({"id": ["a", "b"], "text": ["fine", None], "source": ["x", "x"]}).to_parquet(
        nulls / "p.parquet")
    with pytest.raises(CorpusError, match=r"p\.parquet, row 1 \(id 'b'\): null 'text'"):
        train_tokenizer(nulls, tmp_path / "out", vocab_size=500, progress=False)
