"""Nodes of ``data_processing``: thin wrappers over :mod:`llama2_pipeline.data`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

from llama2_pipeline.data import CleaningConfig, clean_corpus, plot_cleaning_report
from llama2_pipeline.datasets import ParquetShards, staging_dir


class PIILeakError(RuntimeError):
    """A planted PII value survived cleaning."""


def find_leaks(shards: ParquetShards | Path, canaries: list[dict]) -> list[dict]:
    """Canaries found in the clean corpus: each planted value is looked for in the document it was
    planted in (line by line for multi-line values such as private keys)."""
    by_doc: dict[str, list[dict]] = {}
    for c in canaries:
        by_doc.setdefault(c["doc_id"], []).append(c)
    folder = shards.path if isinstance(shards, ParquetShards) else Path(shards)
    leaks = []
    for f in sorted(folder.glob("*.parquet")):
        table = pq.read_table(f, columns=["id", "text"])
        for doc_id, text in zip(table.column("id").to_pylist(), table.column("text").to_pylist()):
            for c in by_doc.get(doc_id, ()):
                parts = [p for p in c["value"].splitlines() if len(p.strip()) >= 6] or [c["value"]]
                if any(p.strip() in text for p in parts):
                    leaks.append({"doc_id": doc_id, "kind": c["kind"], "file": f.name})
    return leaks


def clean(raw_corpus: ParquetShards, canaries: list[dict], cleaning: dict, seed: int):
    """Clean the crawl; refuse to publish a corpus in which a planted PII value survived.

    Returns the staged clean shards (moved into place by the catalog), the report, its chart and
    the flat metrics.
    """
    params = dict(cleaning)
    workers = params.pop("workers", 0)
    params["dedup"] = {**params.get("dedup", {}), "seed": seed}
    cfg = CleaningConfig.from_dict(params)
    out = staging_dir("clean_corpus") / "corpus"
    try:
        report = clean_corpus(raw_corpus.path, out, cfg, workers=workers)
        leaks = find_leaks(out, canaries)
        if leaks:
            raise PIILeakError(f"{len(leaks)} planted PII value(s) survived cleaning, e.g. {leaks[:3]}; "
                               "the clean corpus was not published")
    except BaseException:
        shutil.rmtree(out.parent, ignore_errors=True)
        raise
    metrics = {f"clean_{k}": v for k, v in report["metrics"].items()}
    metrics["clean_leaked_canaries"] = 0
    metrics["clean_mib_per_s"] = round(report["metrics"]["bytes_in"] / 2**20 / max(report["timing"]["seconds"], 1e-9), 3)
    return ParquetShards(out), report, plot_cleaning_report(report), metrics
