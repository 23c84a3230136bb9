"""Nodes of ``data_processing``: a thin wrapper over :func:`llama2_pipeline.data.clean_corpus`."""

from __future__ import annotations

import shutil

from llama2_pipeline.data import CleaningConfig, clean_corpus, plot_cleaning_report
from llama2_pipeline.project.datasets import ParquetShards, staging_dir


def clean(raw_corpus: ParquetShards, canaries: list[dict], cleaning: CleaningConfig):
    """Clean the crawl, refusing to publish a corpus in which a planted PII value survived; returns
    the staged clean shards (moved into place by the catalog), the report, its chart, the metrics."""
    holder = staging_dir("clean_corpus")
    try:
        report = clean_corpus(raw_corpus.path, holder / "corpus", cleaning, canaries=canaries)
    except BaseException:
        shutil.rmtree(holder, ignore_errors=True)  # nothing half-made is left in the staging area
        raise
    metrics = {f"clean_{k}": v for k, v in report["metrics"].items()}
    metrics["clean_leaked_canaries"] = 0
    metrics["clean_mib_per_s"] = round(report["metrics"]["bytes_in"] / 2**20 / max(report["timing"]["seconds"], 1e-9), 3)
    return ParquetShards(holder / "corpus"), report, plot_cleaning_report(report), metrics
