"""Corpus cleaning for pretraining: normalisation, Gopher quality rules, exact + MinHash-LSH
deduplication and PII removal, streamed over Parquet shards with a process pool.

Main entry point (what the Kedro node calls)::

    from llama2_pipeline.data import clean_corpus, CleaningConfig
    report = clean_corpus("data/01_raw/corpus", "data/02_intermediate/clean",
                          CleaningConfig.from_dict(params["data_processing"]))

Modules: ``config`` (the stage's parameters), ``normalise``, ``words`` (vectorised
word segmentation shared by the quality rules and MinHash), ``quality`` (Gopher rules), ``pii``,
``dedup`` (hashes, MinHash/LSH, the streaming deduplicator and the same rule as edges),
``process`` (the per-document work done in the worker processes), ``pipeline`` (streaming,
global dedup, output), ``ray_engine`` (the same stage on a Ray cluster, ``engine: ray``; the only
module that imports Ray) and ``report`` (metrics and chart). Nothing here imports Kedro or MLflow.
"""

from llama2_pipeline.core.lazy import lazy_exports

from .config import (
    CleaningConfig,  # no heavy imports: the recipe's parameter tree reads it
)

# the rest on first use: importing the package (for its config) costs nothing
_LAZY = {
    **dict.fromkeys(("Deduplicator", "MinHasher", "exact_hash"), "dedup"),
    "normalise_text": "normalise",
    **dict.fromkeys(("PIISpan", "find_pii", "redact_pii"), "pii"),
    "clean_corpus": "pipeline",
    "CorpusError": "corpus_io",
    **dict.fromkeys(("PIILeakError", "find_leaks"), "report"),
    "quality_check": "quality",
    **dict.fromkeys(("plot_cleaning_report", "save_report_plot"), "report"),
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = ["CleaningConfig", *sorted(_LAZY)]
