"""Corpus cleaning for pretraining: normalisation, Gopher quality rules, exact + MinHash-LSH
deduplication and PII removal, streamed over Parquet shards with a process pool.

Main entry point (what the Kedro node calls)::

    from llama2_pipeline.data import clean_corpus, CleaningConfig
    report = clean_corpus("data/01_raw/corpus", "data/02_intermediate/clean",
                          CleaningConfig.from_dict(params["data_processing"]), workers=0)

Modules: ``config`` (params and their documentation), ``normalise``, ``words`` (vectorised
word segmentation shared by the quality rules and MinHash), ``quality`` (Gopher rules), ``pii``,
``dedup`` (hashes, MinHash/LSH, the streaming deduplicator and the same rule as edges),
``process`` (the per-document work done in the worker processes), ``pipeline`` (streaming,
global dedup, output), ``ray_engine`` (the same stage on a Ray cluster, ``engine: ray``; the only
module that imports Ray) and ``report`` (metrics and chart). Nothing here imports Kedro or MLflow.
"""

from .config import DEFAULT_CLEANING_PARAMS, PARAM_DOCS, CleaningConfig
from .dedup import Deduplicator, MinHasher, exact_hash
from .normalise import normalise_text
from .pii import PIISpan, find_pii, redact_pii
from .pipeline import CorpusError, clean_corpus
from .quality import quality_check
from .report import plot_cleaning_report, save_report_plot

__all__ = [
    "CleaningConfig", "CorpusError", "DEFAULT_CLEANING_PARAMS", "Deduplicator", "MinHasher",
    "PARAM_DOCS", "PIISpan", "clean_corpus", "exact_hash", "find_pii", "normalise_text",
    "plot_cleaning_report", "quality_check", "redact_pii", "save_report_plot",
]
