"""The cleaning report: flat metrics, removed examples, and a bar chart.

``metrics`` (all numbers, snake_case, every key always present so that DVC/MLflow diffs line up):

* ``docs_in``, ``docs_out``, ``docs_removed``, ``docs_kept_frac``, ``bytes_in``, ``bytes_out``,
  ``bytes_kept_frac`` (UTF-8 bytes of the raw / output text);
* ``removed_<rule>`` for the faults (``null_text``, ``non_string``, ``oversize``,
  ``invalid_utf8``, ``empty``) and every quality rule
  (:data:`llama2_pipeline.data.quality.QUALITY_RULES`); ``dropped_pii_density``;
  ``dup_exact``, ``dup_near``;
* ``pii_<kind>`` (matches found, including in documents later removed), ``pii_total``,
  ``pii_docs`` (documents with any PII), ``pii_redacted_out`` (placeholders in the output);
* ``utf8_repaired_docs``, ``normalised_docs`` (documents changed by normalisation),
  ``input_files``, ``output_shards``.

``examples``: up to ``max_examples`` removed documents per rule, in corpus order, each
``{"rule", "id", "file", "row", "snippet"}`` (+ ``duplicate_of`` for duplicates); snippets are
PII-redacted. Wall-clock figures live in ``timing``, outside ``metrics``, so that the metrics of
two runs with the same input and params are identical; ``config`` holds the cleaning rules, not
how the stage ran (the engine is in ``timing``), so both engines give the same report.

:func:`check_canaries` looks for planted PII values (canaries) in a cleaned corpus before it is
published; both engines call it.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Iterator

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..core.files import atomic_path
from .config import EXECUTION_KEYS, PII_KINDS, CleaningConfig
from .corpus_io import BAD_ROWS, CorpusError, InputFile
from .process import ChunkResult
from .quality import QUALITY_RULES

FAULT_RULES = ("null_text", "non_string", "oversize", "invalid_utf8", "empty")
REMOVAL_KEYS = ([f"removed_{r}" for r in FAULT_RULES] + ["dropped_pii_density"]
                + [f"removed_{r}" for r in QUALITY_RULES] + ["dup_exact", "dup_near"])
PII_KEYS = [f"pii_{k}" for k in PII_KINDS]


def build_report(counters: Counter, examples: list[dict], cfg: CleaningConfig,
                 files: list[dict], timing: dict) -> dict:
    """Assemble the report dict from the run's counters."""
    c = counters
    docs_in, docs_out = int(c["docs_in"]), int(c["docs_out"])
    bytes_in, bytes_out = int(c["bytes_in"]), int(c["bytes_out"])
    m: dict[str, float | int] = {
        "docs_in": docs_in,
        "docs_out": docs_out,
        "docs_removed": docs_in - docs_out,
        "docs_kept_frac": round(docs_out / docs_in, 6) if docs_in else 0.0,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "bytes_kept_frac": round(bytes_out / bytes_in, 6) if bytes_in else 0.0,
    }
    for k in REMOVAL_KEYS:
        m[k] = int(c[k])
    for k in PII_KEYS:
        m[k] = int(c[k])
    m["pii_total"] = sum(int(c[k]) for k in PII_KEYS)
    for k in ("pii_docs", "pii_redacted_out", "utf8_repaired_docs", "normalised_docs",
              "input_files", "output_shards"):
        m[k] = int(c[k])
    config = {k: v for k, v in cfg.to_dict().items() if k not in EXECUTION_KEYS}
    return {"metrics": m, "examples": examples, "files": files, "config": config,
            "timing": timing}


def plot_cleaning_report(report: dict[str, Any]):
    """Bar charts of removals per rule and PII matches per kind -> ``matplotlib.figure.Figure``."""
    from matplotlib.figure import (
        Figure,  # no pyplot: no global backend state, Agg on save
    )

    m = report["metrics"]
    removals = [(k.replace("removed_", "").replace("dropped_", ""), m.get(k, 0))
                for k in REMOVAL_KEYS if m.get(k, 0)]
    pii = [(k[4:], m.get(k, 0)) for k in PII_KEYS]
    fig = Figure(figsize=(12, max(4.0, 0.32 * max(len(removals), len(pii)) + 1.5)),
                 layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    if removals:
        names, vals = zip(*removals)
        bars = ax1.barh(names, vals, color="#c0504d")
        ax1.bar_label(bars, padding=2, fontsize=8)
        ax1.invert_yaxis()
    else:
        ax1.text(0.5, 0.5, "nothing removed", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("documents removed")
    ax1.set_title(f"removals per rule ({m.get('docs_in', 0)} docs in, "
                  f"{m.get('docs_out', 0)} out)")
    names, vals = zip(*pii)
    bars = ax2.barh(names, vals, color="#4f81bd")
    ax2.bar_label(bars, padding=2, fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlabel("matches")
    ax2.set_title(f"PII found per kind ({m.get('pii_total', 0)} total)")
    return fig


def save_report_plot(report: dict[str, Any], path: str | os.PathLike, dpi: int = 100) -> None:
    """Render :func:`plot_cleaning_report` to a PNG file, atomically."""
    fig = plot_cleaning_report(report)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


class PIILeakError(RuntimeError):
    """A planted PII value (a canary) survived cleaning; nothing was published."""


def check_canaries(folder: str | os.PathLike, canaries: list[dict] | None,
                   filesystem: pafs.FileSystem | None = None) -> None:
    """Raise :class:`PIILeakError` if a canary survived in the cleaned corpus in ``folder``."""
    leaks = find_leaks(folder, canaries or [], filesystem)
    if leaks:
        raise PIILeakError(f"{len(leaks)} planted PII value(s) survived cleaning, e.g. {leaks[:3]}; "
                           "the clean corpus was not published")


def find_leaks(folder: str | os.PathLike, canaries: list[dict],
               filesystem: pafs.FileSystem | None = None) -> list[dict]:
    """Canaries found in a cleaned corpus (the ``*.parquet`` files of ``folder``, on
    ``filesystem``, default local): each planted value is looked for in the document it was
    planted in (line by line for multi-line values such as private keys)."""
    by_doc: dict[str, list[dict]] = {}
    for c in canaries:
        by_doc.setdefault(c["doc_id"], []).append(c)
    if not by_doc:
        return []
    fs = filesystem or pafs.LocalFileSystem()
    paths = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(str(folder)))
                   if i.type == pafs.FileType.File and i.base_name.endswith(".parquet"))
    leaks = []
    for path in paths:
        table = pq.read_table(path, columns=["id", "text"], filesystem=fs)
        for doc_id, text in zip(table.column("id").to_pylist(), table.column("text").to_pylist()):
            for c in by_doc.get(doc_id, ()):
                parts = [p for p in c["value"].splitlines() if len(p.strip()) >= 6] or [c["value"]]
                if any(p.strip() in text for p in parts):
                    leaks.append({"doc_id": doc_id, "kind": c["kind"], "file": path.rsplit("/", 1)[-1]})
    return leaks


def finish_report(counters: Counter, examples: list[dict], cfg: CleaningConfig,
                  files: list[InputFile], elapsed: float, timing: dict) -> dict:
    """The report of a finished run (both engines); ``timing`` adds to the wall-clock figures."""
    counters["input_files"] = len(files)
    return build_report(counters, examples, cfg,
                        files=[{"file": f.name, "rows": f.rows} for f in files],
                        timing={"seconds": round(elapsed, 3), **timing,
                                "mib_per_s": round(counters["bytes_in"] / 2**20 / max(elapsed, 1e-9), 3)})


class Tally:
    """Counters and removed-document examples (up to ``max_examples`` per rule, in the order
    given), shared by both engines: :meth:`candidates` counts a chunk's removals and yields the
    documents that go on to dedup."""

    def __init__(self, cfg: CleaningConfig, source: str = ""):
        self.cfg, self.source = cfg, source.rstrip("/")  # source: the input folder, for errors
        self.counters: Counter = Counter()
        self.examples: list[dict] = []
        self.per_rule: Counter = Counter()

    def example(self, rule: str, doc_id: str, file: str, row: int, snippet: str,
                **extra) -> None:
        if self.per_rule[rule] < self.cfg.max_examples:
            self.per_rule[rule] += 1
            self.examples.append({"rule": rule, "id": doc_id, "file": file, "row": row,
                                  "snippet": snippet, **extra})

    def candidates(self, res: ChunkResult) -> Iterator[tuple]:
        """``(i, id, source, text, stats, exact_hash, signature, band_keys)`` of each document
        of ``res`` that passed the per-document rules (signature and keys None without near
        dedup), in order."""
        c = self.counters
        c.update(res.counters)
        j = 0  # index into the chunk's signatures (one per quality-passing document)
        for i, (rule, doc_id, source, text, stats, h) in enumerate(res.docs):
            c["docs_in"] += 1
            if rule in BAD_ROWS and self.cfg.bad_rows == "stop":
                where = f"{self.source}/{res.file}" if self.source else res.file
                raise CorpusError(f"{where}, row {res.row0 + i + 1} (counting from 1; id {doc_id!r}): column 'text' is "
                                  f"{BAD_ROWS[rule]}, "
                                  "expected a string (the document); set data_processing.bad_rows: drop to drop such "
                                  f"rows (counted as removed_{rule})", file=str(where), row=res.row0 + i, column="text")
            if rule is not None:
                key = "dropped_pii_density" if rule == "pii_density" else f"removed_{rule}"
                c[key] += 1
                self.example(rule, doc_id, res.file, res.row0 + i, text)
                continue
            sig = keys = None
            if res.sigs is not None:
                sig, keys = res.sigs[j], res.keys[j]
                j += 1
            yield i, doc_id, source, text, stats, h, sig, keys

    def duplicate(self, kind: str, doc_id: str, file: str, row: int, text: str,
                  duplicate_of: str) -> None:
        self.counters[f"dup_{kind}"] += 1
        self.example(f"dup_{kind}", doc_id, file, row, text[: self.cfg.snippet_chars],
                     duplicate_of=duplicate_of)
