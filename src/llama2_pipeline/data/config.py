"""Parameters of the cleaning stage: one nested dict (``params.yaml``) <-> one dataclass.

``DEFAULT_CLEANING_PARAMS`` is the nested dict to copy into ``params.yaml``; ``PARAM_DOCS``
gives a one-line meaning (with unit) for every dotted key. ``CleaningConfig.from_dict`` accepts
a (partial) nested dict, fills the rest from the defaults and rejects unknown or wrong-typed
keys with a ``ValueError`` naming the dotted key. A quality threshold set to ``None`` (YAML
``null``) disables that rule.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from ..hints import value_matches

PII_KINDS = ("email", "phone", "ip_address", "credit_card", "ssn", "iban", "secret")

GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]


@dataclass(frozen=True)
class NormaliseConfig:
    """Text normalisation switches (see :mod:`llama2_pipeline.data.normalise`)."""

    max_invalid_utf8_frac: float = 0.01
    nfc: bool = True
    strip_control: bool = True
    strip_markup: bool = True
    collapse_whitespace: bool = True
    min_chars: int = 1


@dataclass(frozen=True)
class QualityConfig:
    """Gopher quality-rule thresholds (Rae et al., 2021, appendix A); ``None`` disables a rule."""

    min_words: Optional[int] = 50
    max_words: Optional[int] = 100_000
    min_mean_word_length: Optional[float] = 3.0
    max_mean_word_length: Optional[float] = 10.0
    max_symbol_word_ratio: Optional[float] = 0.1
    max_bullet_lines_frac: Optional[float] = 0.9
    max_ellipsis_lines_frac: Optional[float] = 0.3
    min_alpha_words_frac: Optional[float] = 0.8
    min_stop_words: Optional[int] = 2
    stop_words: list = field(default_factory=lambda: list(GOPHER_STOP_WORDS))
    max_dup_line_frac: Optional[float] = 0.30
    max_dup_para_frac: Optional[float] = 0.30
    max_dup_line_char_frac: Optional[float] = 0.20
    max_dup_para_char_frac: Optional[float] = 0.20
    max_top_2gram_char_frac: Optional[float] = 0.20
    max_top_3gram_char_frac: Optional[float] = 0.18
    max_top_4gram_char_frac: Optional[float] = 0.16
    max_dup_5gram_char_frac: Optional[float] = 0.15
    max_dup_6gram_char_frac: Optional[float] = 0.14
    max_dup_7gram_char_frac: Optional[float] = 0.13
    max_dup_8gram_char_frac: Optional[float] = 0.12
    max_dup_9gram_char_frac: Optional[float] = 0.11
    max_dup_10gram_char_frac: Optional[float] = 0.10


@dataclass(frozen=True)
class DedupConfig:
    """Exact and MinHash-LSH near-duplicate removal (see :mod:`llama2_pipeline.data.dedup`)."""

    exact: bool = True
    near: bool = True
    shingle_size: int = 5
    num_perm: int = 128
    bands: int = 16
    threshold: float = 0.7
    seed: int = 1234
    max_bucket: Optional[int] = 1000


@dataclass(frozen=True)
class PIIConfig:
    """PII detection: which kinds to redact and the per-document density drop rule."""

    enabled: bool = True
    kinds: list = field(default_factory=lambda: list(PII_KINDS))
    max_density: Optional[float] = 5.0
    min_matches_for_drop: int = 3


@dataclass(frozen=True)
class RayConfig:
    """How the ``ray`` engine runs (never what it writes); see ``engine``."""

    object_store_mb: Optional[int] = None
    partition_mb: int = 64


ENGINES = ("local", "ray")
EXECUTION_KEYS = ("engine", "ray")  # how the stage runs: not part of the report's config


@dataclass(frozen=True)
class CleaningConfig:
    """Everything ``clean_corpus`` needs; mirrors ``params["data_processing"]``."""

    normalise: NormaliseConfig = field(default_factory=NormaliseConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    max_doc_chars: int = 1_000_000
    shard_docs: int = 50_000
    chunk_docs: int = 256
    max_examples: int = 5
    snippet_chars: int = 200
    compression: str = "zstd"
    engine: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)

    @classmethod
    def from_dict(cls, params: dict | None) -> "CleaningConfig":
        """Build from a nested dict (partial is fine); unknown / wrong-typed keys -> ValueError."""
        if params is None:
            return cls()
        if isinstance(params, CleaningConfig):
            return params
        cfg = _build(cls, params, prefix="")
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        """The nested, JSON/YAML-able dict (inverse of :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Cross-field checks; raises ValueError naming the offending key."""
        d = self.dedup
        checks = [
            (d.shingle_size >= 1, "dedup.shingle_size", "must be >= 1"),
            (d.num_perm >= 1, "dedup.num_perm", "must be >= 1"),
            (d.bands >= 1, "dedup.bands", "must be >= 1"),
            (d.num_perm % max(d.bands, 1) == 0, "dedup.bands",
             f"must divide dedup.num_perm ({d.num_perm})"),
            (0.0 < d.threshold <= 1.0, "dedup.threshold", "must be in (0, 1]"),
            (d.max_bucket is None or d.max_bucket >= 1, "dedup.max_bucket", "must be >= 1 or null"),
            (self.max_doc_chars >= 1, "max_doc_chars", "must be >= 1"),
            (self.shard_docs >= 1, "shard_docs", "must be >= 1"),
            (self.chunk_docs >= 1, "chunk_docs", "must be >= 1"),
            (self.max_examples >= 0, "max_examples", "must be >= 0"),
            (self.snippet_chars >= 0, "snippet_chars", "must be >= 0"),
            (0.0 <= self.normalise.max_invalid_utf8_frac <= 1.0,
             "normalise.max_invalid_utf8_frac", "must be in [0, 1]"),
            (all(isinstance(w, str) for w in self.quality.stop_words),
             "quality.stop_words", "must be a list of strings"),
            (self.compression in ("zstd", "snappy", "gzip", "brotli", "lz4", "none"),
             "compression", "must be one of zstd, snappy, gzip, brotli, lz4, none"),
            (self.engine in ENGINES, "engine", f"must be one of {', '.join(ENGINES)}"),
            (self.ray.object_store_mb is None or self.ray.object_store_mb >= 64,
             "ray.object_store_mb", "must be >= 64 or null"),
            (self.ray.partition_mb >= 1, "ray.partition_mb", "must be >= 1"),
        ]
        for ok, key, msg in checks:
            if not ok:
                raise ValueError(f"cleaning params: {key} {msg}")
        for k in self.pii.kinds:
            if k not in PII_KINDS:
                raise ValueError(f"cleaning params: pii.kinds has unknown kind {k!r}; "
                                 f"expected some of {list(PII_KINDS)}")


def _build(cls: type, params: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "<root>"
    if not isinstance(params, dict):
        raise ValueError(f"cleaning params: {where} must be a mapping, got {type(params).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ValueError(f"cleaning params: unknown key {dotted!r}; expected one of {sorted(names)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, prefix=f"{dotted}.")
            continue
        if not value_matches(value, hint):
            raise ValueError(f"cleaning params: {dotted!r} has wrong type {type(value).__name__} "
                             f"(value {value!r}); expected {_hint_name(hint)}")
        if isinstance(value, (list, tuple)):
            value = list(value)
        elif hint in (float, Optional[float]) and isinstance(value, int):
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def _hint_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_hint_name(h) for h in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


DEFAULT_CLEANING_PARAMS: dict = CleaningConfig().to_dict()
"""Nested defaults, ready to copy under ``data_processing:`` in params.yaml (see PARAM_DOCS)."""

_GRAM = "fraction of word characters covered by the most frequent {n}-word n-gram (Gopher: {v})"
_DUP = "fraction of word characters inside {n}-word n-grams that occur more than once (Gopher: {v})"

PARAM_DOCS: dict[str, str] = {
    "max_doc_chars": "documents longer than this many characters are dropped (counted as removed_oversize)",
    "shard_docs": "documents per output Parquet shard part-NNNNN.parquet (count)",
    "chunk_docs": "documents per unit of work sent to a worker process (count; affects speed only)",
    "max_examples": "removed-document examples kept in the report per rule (count)",
    "snippet_chars": "length of each example's PII-redacted text snippet (characters)",
    "compression": "Parquet codec of the output shards (zstd, snappy, gzip, none)",
    "engine": "where the stage runs: local (this process and a process pool) or ray (a Ray cluster: the in-process local one, or the one RAY_ADDRESS names); the output bytes are the same",
    "ray.object_store_mb": "object store of the local Ray cluster started in-process (MiB; null = Ray's default, 30% of memory; ignored on an existing cluster)",
    "ray.partition_mb": "target size of one partition of the dedup shuffle (MiB of shuffled rows; speed and worker memory only)",
    "normalise.max_invalid_utf8_frac": "invalid UTF-8 is replaced by U+FFFD; above this fraction of replaced characters the document is dropped (fraction)",
    "normalise.nfc": "apply Unicode NFC normalisation (bool)",
    "normalise.strip_control": "remove control / zero-width / bidi characters except newline and tab (bool)",
    "normalise.strip_markup": "remove HTML tags, comments, script/style blocks and unescape entities (bool)",
    "normalise.collapse_whitespace": "collapse runs of spaces to one, strip lines, at most one blank line between paragraphs (bool)",
    "normalise.min_chars": "documents shorter than this after normalisation are dropped as removed_empty (characters)",
    "quality.min_words": "minimum number of words (Gopher: 50; words = whitespace tokens with punctuation stripped)",
    "quality.max_words": "maximum number of words (Gopher: 100000)",
    "quality.min_mean_word_length": "minimum mean word length (characters; Gopher: 3)",
    "quality.max_mean_word_length": "maximum mean word length (characters; Gopher: 10)",
    "quality.max_symbol_word_ratio": "maximum ratio of '#' and ellipsis ('...', '…') occurrences to words (Gopher: 0.1)",
    "quality.max_bullet_lines_frac": "maximum fraction of lines starting with a bullet (•, -, *, ‣, ...) (Gopher: 0.9)",
    "quality.max_ellipsis_lines_frac": "maximum fraction of lines ending with an ellipsis (Gopher: 0.3)",
    "quality.min_alpha_words_frac": "minimum fraction of words containing at least one alphabetic character (Gopher: 0.8)",
    "quality.min_stop_words": "minimum number of distinct stop words present (count; Gopher: 2)",
    "quality.stop_words": "the stop-word list used by quality.min_stop_words (lower-case words)",
    "quality.max_dup_line_frac": "maximum fraction of lines that duplicate an earlier line (Gopher: 0.30)",
    "quality.max_dup_para_frac": "maximum fraction of paragraphs that duplicate an earlier paragraph (Gopher: 0.30)",
    "quality.max_dup_line_char_frac": "maximum fraction of characters in duplicated lines (Gopher: 0.20)",
    "quality.max_dup_para_char_frac": "maximum fraction of characters in duplicated paragraphs (Gopher: 0.20)",
    "quality.max_top_2gram_char_frac": "maximum " + _GRAM.format(n=2, v=0.20),
    "quality.max_top_3gram_char_frac": "maximum " + _GRAM.format(n=3, v=0.18),
    "quality.max_top_4gram_char_frac": "maximum " + _GRAM.format(n=4, v=0.16),
    "quality.max_dup_5gram_char_frac": "maximum " + _DUP.format(n=5, v=0.15),
    "quality.max_dup_6gram_char_frac": "maximum " + _DUP.format(n=6, v=0.14),
    "quality.max_dup_7gram_char_frac": "maximum " + _DUP.format(n=7, v=0.13),
    "quality.max_dup_8gram_char_frac": "maximum " + _DUP.format(n=8, v=0.12),
    "quality.max_dup_9gram_char_frac": "maximum " + _DUP.format(n=9, v=0.11),
    "quality.max_dup_10gram_char_frac": "maximum " + _DUP.format(n=10, v=0.10),
    "dedup.exact": "drop documents whose output text is byte-identical to an earlier kept one (bool)",
    "dedup.near": "drop MinHash-LSH near-duplicates of an earlier kept document (bool)",
    "dedup.shingle_size": "words per shingle for MinHash (count)",
    "dedup.num_perm": "MinHash permutations = signature length (count; memory 4 bytes each per kept doc)",
    "dedup.bands": "LSH bands; must divide num_perm, rows per band = num_perm / bands (count)",
    "dedup.threshold": "estimated Jaccard similarity of shingle sets at or above which a candidate is a near-duplicate (0-1)",
    "dedup.seed": "seed of the MinHash permutations (int)",
    "dedup.max_bucket": "an LSH bucket gives comparison slots to its first this many documents in corpus order; a document is compared only with the kept slot holders of its buckets (count; null = every kept document of the bucket, quadratic)",
    "pii.enabled": "detect and redact PII at all (bool)",
    "pii.kinds": "PII kinds to detect: email, phone, ip_address, credit_card, ssn, iban, secret (list)",
    "pii.max_density": "documents with more than this many PII matches per 1000 characters are dropped, not redacted (matches/1000 chars; null = never)",
    "pii.min_matches_for_drop": "the density rule only applies to documents with at least this many PII matches (count)",
}


def _all_keys(d: dict, prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _all_keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


assert set(_all_keys(DEFAULT_CLEANING_PARAMS)) == set(PARAM_DOCS), (
    set(_all_keys(DEFAULT_CLEANING_PARAMS)) ^ set(PARAM_DOCS))


def default_params() -> dict:
    """A deep copy of ``DEFAULT_CLEANING_PARAMS`` (safe to mutate)."""
    return copy.deepcopy(DEFAULT_CLEANING_PARAMS)
