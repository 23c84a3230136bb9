"""Train Llama 2's sentencepiece BPE tokenizer on the clean corpus, and load it.

Training settings are those of Meta's Llama 2 ``tokenizer.model`` (``model_type=bpe``,
``split_digits``, ``byte_fallback``, identity normalisation, a dummy prefix, no whitespace
removal, whitespace-only pieces allowed, ``character_coverage=0.99995``, ``unk=0 bos=1 eos=2``),
with one difference: Llama 2 has no pad piece (``pad_id=-1``); here ``<pad>`` is a control piece
with id 3, so padding has a real id that never comes out of encoding text and decodes to nothing.
Byte pieces ``<0x00>..<0xFF>`` therefore occupy ids 4..259 (Llama 2: 3..258).

A training "sentence" is one non-blank line of a document (sentencepiece's own unit; Meta trained
on line-split text, which is why ``"\\n"`` is a byte piece, not a learned one). Lines longer than
``max_sentence_length`` bytes are skipped, as sentencepiece does. When the corpus has more lines
than ``max_sentences``, exactly ``max_sentences`` of them are drawn by seeded selection sampling
(Knuth's algorithm S) before they reach sentencepiece: sentencepiece's own sampling
(``input_sentence_size`` + ``shuffle_input_sentence``) is seeded per process and cannot be made
reproducible, so it is not used. Training twice on the same corpus with the same parameters
gives byte-identical ``tokenizer.model`` files, whatever ``num_threads`` is.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
from tqdm.auto import tqdm

from ..core.files import atomic_path
from .corpus import corpus_files, corpus_num_docs, iter_documents

log = logging.getLogger(__name__)

MODEL_FILE = "tokenizer.model"
VOCAB_FILE = "tokenizer.vocab"

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
UNK_PIECE, BOS_PIECE, EOS_PIECE, PAD_PIECE = "<unk>", "<s>", "</s>", "<pad>"

#: The fixed part of the sentencepiece trainer options: Llama 2's, plus the ``<pad>`` piece.
LLAMA2_TRAINER_OPTIONS = dict(
    model_type="bpe",
    split_digits=True,
    byte_fallback=True,
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    split_by_unicode_script=True,
    split_by_whitespace=True,
    split_by_number=True,
    max_sentencepiece_length=16,
    vocabulary_output_piece_score=True,
    hard_vocab_limit=True,
    unk_id=UNK_ID,
    bos_id=BOS_ID,
    eos_id=EOS_ID,
    pad_id=PAD_ID,
    unk_piece=UNK_PIECE,
    bos_piece=BOS_PIECE,
    eos_piece=EOS_PIECE,
    pad_piece=PAD_PIECE,
    input_sentence_size=0,  # we sample ourselves, reproducibly (see module docstring)
    shuffle_input_sentence=False,
)


class TokenizerTrainingError(ValueError):
    """The corpus cannot give a tokenizer of the asked size (or sentencepiece refused it)."""


def resolve_workers(n: int) -> int:
    """``0`` (or less) means all cores this process may use."""
    if n and n > 0:
        return int(n)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _iter_sentences(corpus_dir, max_bytes: int, counts: dict, progress: bool) -> Iterator[str]:
    """Non-blank lines of every document, in corpus order; over-long lines are counted, skipped."""
    bar = tqdm(total=corpus_num_docs(corpus_dir), unit="doc", desc="tokenizer: reading corpus",
               disable=not progress, leave=False)
    with bar:
        for _, texts in iter_documents(corpus_dir):
            for text in texts:
                counts["docs"] += 1
                for line in text.split("\n"):
                    if not line or line.isspace():
                        continue
                    if len(line) * 4 > max_bytes and len(line.encode("utf-8")) > max_bytes:
                        counts["too_long"] += 1
                        continue
                    yield line
            bar.update(len(texts))


class _SelectionSampler:
    """Keep exactly ``k`` of ``n`` items, each subset equally likely (Knuth's algorithm S)."""

    def __init__(self, n: int, k: int, seed: int):
        self.n, self.k = n, k
        self.rng = np.random.default_rng(seed)
        self.buf = np.empty(0)
        self.pos = 0

    def keep(self) -> bool:
        if self.pos == len(self.buf):
            self.buf, self.pos = self.rng.random(1 << 16), 0
        u = self.buf[self.pos]
        self.pos += 1
        take = u * self.n < self.k
        self.n -= 1
        self.k -= take
        return bool(take)


def train_tokenizer(
    corpus_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 32000,
    max_sentences: int = 0,
    seed: int = 0,
    num_threads: int = 0,
    character_coverage: float = 0.99995,
    max_sentence_length: int = 4192,
    progress: bool = True,
) -> dict:
    """Train the Llama 2 BPE tokenizer on the clean corpus and write it to ``out_dir``.

    Args:
        corpus_dir: folder of clean Parquet shards (``id``, ``text``, ``source``).
        out_dir: output folder, replaced as a whole and atomically; receives
            ``tokenizer.model`` and ``tokenizer.vocab``.
        vocab_size: number of pieces, specials and the 256 byte pieces included.
        max_sentences: cap on training sentences (non-blank lines), drawn reproducibly with
            ``seed`` when the corpus has more; ``0`` = use all.
        seed: seed of that sampling.
        num_threads: sentencepiece trainer threads; ``0`` = all cores. Does not change the result.
        character_coverage: share of characters covered by single-character pieces; the
            rest fall back to bytes.
        max_sentence_length: lines longer than this many UTF-8 bytes are skipped.
        progress: show a progress bar while reading the corpus.

    Returns:
        flat stats: ``vocab_size``, ``docs``, ``sentences_total``, ``sentences_used``,
        ``sentences_skipped_too_long``, ``train_seconds``, ``tokenizer_sha256``.

    Raises:
        CorpusError: no corpus or a malformed shard.
        TokenizerTrainingError: the corpus is empty or too small for ``vocab_size``.
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    corpus_files(corpus_dir)  # fail early, naming the folder or the bad shard
    if vocab_size < 4 + 256 + 1:
        raise TokenizerTrainingError(
            f"vocab_size={vocab_size} is too small: the 4 special and 256 byte pieces need 260 "
            "ids, plus one per character kept"
        )
    threads = resolve_workers(num_threads)
    t0 = time.perf_counter()

    # Pass 1: count the eligible sentences (cheap next to training), to sample exactly.
    counts = {"docs": 0, "too_long": 0}
    n_total = sum(1 for _ in _iter_sentences(corpus_dir, max_sentence_length, counts, progress))
    docs, too_long = counts["docs"], counts["too_long"]
    if n_total == 0:
        raise TokenizerTrainingError(
            f"cannot train a tokenizer on {corpus_dir}: it holds {docs} document(s) but no "
            f"non-blank line of at most {max_sentence_length} bytes"
        )
    n_used = min(n_total, max_sentences) if max_sentences and max_sentences > 0 else n_total

    def sentences() -> Iterator[str]:
        it = _iter_sentences(corpus_dir, max_sentence_length, {"docs": 0, "too_long": 0}, progress)
        if n_used == n_total:
            yield from it
            return
        sampler = _SelectionSampler(n_total, n_used, seed)
        for line in it:
            if sampler.keep():
                yield line

    log.info("training a %d-piece BPE tokenizer on %d of %d sentences from %s",
             vocab_size, n_used, n_total, corpus_dir)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_writer=buf,
            vocab_size=vocab_size,
            character_coverage=character_coverage,
            max_sentence_length=max_sentence_length,
            num_threads=threads,
            minloglevel=1 if log.isEnabledFor(logging.DEBUG) else 2,
            **LLAMA2_TRAINER_OPTIONS,
        )
    except RuntimeError as e:
        said = str(e).strip()
        if "required_chars" in said:
            hint = ("vocab_size is too small for the characters the corpus needs at "
                    f"character_coverage={character_coverage}; use a larger vocab_size or a "
                    "lower character_coverage")
        else:
            hint = ("the corpus is too small or too uniform for that many pieces; use more "
                    "text or a smaller vocab_size")
        raise TokenizerTrainingError(
            f"cannot train a tokenizer of vocab_size={vocab_size} on corpus {corpus_dir} "
            f"({docs} documents, {n_used} sentences used): {hint}. sentencepiece said: {said}"
        ) from e
    model = _drop_machine_dependent_fields(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model)
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))
    with atomic_path(out_dir, is_dir=True) as tmp:
        (tmp / MODEL_FILE).write_bytes(model)
        (tmp / VOCAB_FILE).write_text(vocab, encoding="utf-8")
    seconds = time.perf_counter() - t0
    return {
        "vocab_size": vocab_size,
        "docs": docs,
        "sentences_total": n_total,
        "sentences_used": n_used,
        "sentences_skipped_too_long": too_long,
        "train_seconds": round(seconds, 3),
        "tokenizer_sha256": hashlib.sha256(model).hexdigest(),
    }


def _drop_machine_dependent_fields(model: bytes) -> bytes:
    """Clear ``trainer_spec.num_threads`` from the model so its bytes (and digest) do not depend
    on the core count; the pieces do not depend on it either. Needs protobuf, which
    sentencepiece's model schema (and MLflow) bring; without it the field is left as is."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:  # pragma: no cover
        log.warning("protobuf missing: tokenizer.model keeps trainer_spec.num_threads")
        return model
    proto = pb.ModelProto()
    proto.ParseFromString(model)
    proto.trainer_spec.ClearField("num_threads")
    return proto.SerializeToString()


# --------------------------------------------------------------------------------------------
# Loading and using
# --------------------------------------------------------------------------------------------


class Tokenizer:
    """A trained ``tokenizer.model``, with Meta's ``encode(text, bos, eos)`` interface.

    ``path`` is the ``.model`` file or a folder holding ``tokenizer.model``. Instances pickle
    (by model bytes), so they can travel to DataLoader or pool workers.
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if path.is_dir():
            path = path / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model {path} does not exist")
        self.path = path
        self._load(path.read_bytes())

    def _load(self, proto: bytes) -> None:
        self.model_proto = proto
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(proto)
        except Exception as e:
            raise ValueError(f"{self.path} is not a sentencepiece model: {e}") from e
        self.vocab_size: int = self.sp.vocab_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id()
        self.unk_id: int = self.sp.unk_id()

    def __getstate__(self):
        return {"path": str(self.path), "model_proto": self.model_proto}

    def __setstate__(self, state):
        self.path = Path(state["path"])
        self._load(state["model_proto"])

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"

    @property
    def digest(self) -> str:
        """sha256 of the model bytes (what the shard index records)."""
        return hashlib.sha256(self.model_proto).hexdigest()

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``; ``bos``/``eos`` add ids 1/2 around it. Never parses ``<s>``
        or ``</s>`` written in the text as special tokens."""
        return self.sp.encode(text, add_bos=bos, add_eos=eos)

    def encode_batch(
        self, texts: Sequence[str], bos: bool = False, eos: bool = False, num_threads: int = 0
    ) -> list[list[int]]:
        """:meth:`encode` over many texts on ``num_threads`` C++ threads (``0`` = all cores)."""
        return self.sp.encode(list(texts), add_bos=bos, add_eos=eos,
                              num_threads=resolve_workers(num_threads))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; control ids (bos, eos, pad) decode to nothing."""
        ids = ids.tolist() if isinstance(ids, np.ndarray) else [int(i) for i in ids]
        return self.sp.decode(ids)

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        return self.sp.piece_to_id(piece)
