"""Parameters of the cleaning stage (the ``data_processing`` params group) as one dataclass tree.

Built by the project's one config builder (:mod:`llama2_pipeline.core.schema`): an unknown or
wrong-typed key is named by its dotted path. A quality threshold set to ``None`` (YAML ``null``)
disables that rule. Every key's meaning and unit is documented in ``params.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ..core.schema import Config, optional, require

PII_KINDS = ("email", "phone", "ip_address", "credit_card", "ssn", "iban", "secret")
PIIKind = Literal["email", "phone", "ip_address", "credit_card", "ssn", "iban", "secret"]

GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]


@dataclass(frozen=True, kw_only=True)
class NormaliseConfig(Config):
    """Text normalisation switches (see :mod:`llama2_pipeline.data.normalise`)."""

    max_invalid_utf8_frac: float = 0.01
    nfc: bool = True
    strip_control: bool = True
    strip_markup: bool = True
    collapse_whitespace: bool = True
    min_chars: int = 1


@dataclass(frozen=True, kw_only=True)
class QualityConfig(Config):
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
    stop_words: list[str] = field(default_factory=lambda: list(GOPHER_STOP_WORDS))
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


@dataclass(frozen=True, kw_only=True)
class DedupConfig(Config):
    """Exact and MinHash-LSH near-duplicate removal (see :mod:`llama2_pipeline.data.dedup`)."""

    exact: bool = True
    near: bool = True
    shingle_size: int = 5
    num_perm: int = 128
    bands: int = 16
    threshold: float = 0.7
    seed: int = optional(1234)  # of the MinHash permutations (the recipe's seed)
    max_bucket: int | None = 1000  # comparison slots of an LSH bucket (None = unbounded); both engines


@dataclass(frozen=True, kw_only=True)
class PIIConfig(Config):
    """PII detection: which kinds to redact and the per-document density drop rule."""

    enabled: bool = True
    kinds: list[PIIKind] = field(default_factory=lambda: list(PII_KINDS))
    max_density: Optional[float] = 5.0
    min_matches_for_drop: int = 3


@dataclass(frozen=True, kw_only=True)
class RayConfig(Config):
    """How the ``ray`` engine runs (never what it writes); see ``CleaningConfig.engine``."""

    object_store_mb: int | None = None  # the in-process local cluster's object store (None = Ray's default)
    partition_mb: int = 64  # target size of one partition of the dedup shuffle
    unit_rows: int = 2048  # about this many rows of one input file make one map task's unit of work


EXECUTION_KEYS = ("engine", "ray", "workers")  # how the stage runs: not in the report's config


@dataclass(frozen=True, kw_only=True)
class CleaningConfig(Config):
    """Everything ``clean_corpus`` needs; mirrors ``params["data_processing"]``."""

    normalise: NormaliseConfig = field(default_factory=NormaliseConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    workers: int = 0  # worker processes for the per-document work (0 = all cores); the output does not depend on it
    bad_rows: Literal["stop", "drop"] = "stop"  # a row whose text is null or not a string: stop the run naming
    #                                            file and row, or drop it (counted: removed_null_text, removed_non_string)
    max_doc_chars: int = 1_000_000
    shard_docs: int = 50_000
    chunk_docs: int = 256
    max_examples: int = 5
    snippet_chars: int = 200
    compression: Literal["zstd", "snappy", "gzip", "brotli", "lz4", "none"] = "zstd"
    engine: Literal["local", "ray"] = "local"  # ray: Ray Data on a Ray cluster (same output bytes)
    ray: RayConfig = field(default_factory=RayConfig)

    def check(self) -> None:
        d = self.dedup
        require(d.shingle_size >= 1, "dedup.shingle_size", "an integer >= 1", d.shingle_size)
        require(d.num_perm >= 1, "dedup.num_perm", "an integer >= 1", d.num_perm)
        require(d.bands >= 1 and d.num_perm % d.bands == 0, "dedup.bands",
                f"an integer >= 1 that divides dedup.num_perm ({d.num_perm})", d.bands)
        require(0.0 < d.threshold <= 1.0, "dedup.threshold", "a number in (0, 1]", d.threshold)
        require(d.max_bucket is None or d.max_bucket >= 1, "dedup.max_bucket", "an integer >= 1 or null",
                d.max_bucket)
        require(self.ray.object_store_mb is None or self.ray.object_store_mb >= 64, "ray.object_store_mb",
                "an integer >= 64 or null", self.ray.object_store_mb)
        require(self.ray.partition_mb >= 1, "ray.partition_mb", "an integer >= 1", self.ray.partition_mb)
        require(self.ray.unit_rows >= 1, "ray.unit_rows", "an integer >= 1", self.ray.unit_rows)
        for key in ("max_doc_chars", "shard_docs", "chunk_docs"):
            require(getattr(self, key) >= 1, key, "an integer >= 1", getattr(self, key))
        for key in ("max_examples", "snippet_chars", "workers"):
            require(getattr(self, key) >= 0, key, "an integer >= 0", getattr(self, key))
        require(0.0 <= self.normalise.max_invalid_utf8_frac <= 1.0, "normalise.max_invalid_utf8_frac",
                "a number in [0, 1]", self.normalise.max_invalid_utf8_frac)
