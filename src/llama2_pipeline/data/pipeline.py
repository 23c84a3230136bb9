"""``clean_corpus``: stream raw Parquet shards through cleaning, PII removal and dedup.

Data flow::

    input_dir/*.parquet (sorted)  --pyarrow batches of chunk_docs-->  Chunk
        --process pool (workers)-->  ChunkResult (normalise, PII, quality, MinHash)
        --parent, corpus order-->    Deduplicator (exact + LSH)  -->  _ShardWriter
        --> output_dir/part-00000.parquet ...  (written in a temp folder, renamed at the end)

Memory: the parent holds at most ``2 * workers`` chunks in flight and one output row group
(``ROW_GROUP_DOCS`` documents or ``ROW_GROUP_CHARS`` characters); apart from the dedup index
(see :mod:`llama2_pipeline.data.dedup`) nothing grows with the corpus.
Determinism: workers only do per-document work; every decision that depends on other
documents is taken in the parent in (file, row) order, and chunks are consumed in submission
order, so the output bytes do not depend on ``workers``.

``engine: ray`` runs the same work on a Ray cluster (:mod:`llama2_pipeline.data.ray_engine`,
imported only then) and writes the same bytes. Input folders are read through pyarrow
filesystems, so ``s3://bucket/prefix`` and other URIs work as inputs of both engines.

Bad input: unreadable / corrupt Parquet, a missing ``text`` column or an empty corpus raise
:class:`CorpusError` (a ``ValueError``) naming the file (and column or row) before anything is
written. A row that is not a document (its ``text`` null or not a string) stops the run the same
way, naming the file and the row, unless ``bad_rows: drop`` says to drop such rows (counted as
``removed_null_text`` / ``removed_non_string``); undecodable, oversize or empty text is dirt
the cleaning removes, a counted drop whose file and row appear in the report's examples.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..core.files import atomic_path
from .config import CleaningConfig
from .dedup import Deduplicator
from .process import (
    STAT_COLUMNS,
    Chunk,
    ChunkResult,
    Processor,
    init_worker,
    process_chunk,
)
from .report import build_report, check_canaries

#: faults that make a row no document at all (bad_rows: stop | drop), with how the error says it
BAD_ROWS = {"null_text": "null", "non_string": "not a string"}
ROW_GROUP_DOCS = 2048  # an output row group holds at most this many documents ...
ROW_GROUP_CHARS = 64 << 20  # ... and about this many characters of text
OUTPUT_SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("source", pa.string())]
    + [(c, pa.float64() if c == "mean_word_length" else pa.int64()) for c in STAT_COLUMNS])


class CorpusError(ValueError):
    """Bad input corpus; ``file``, ``row`` and ``column`` say where (when known)."""

    def __init__(self, message: str, file: str | None = None, row: int | None = None,
                 column: str | None = None):
        super().__init__(message)
        self.file, self.row, self.column = file, row, column

    def __reduce__(self):
        return (type(self), (self.args[0], self.file, self.row, self.column))


@dataclass
class _InputFile:
    path: str  # as listed by ``fs``: a local path, or a bucket path for an object store
    rows: int
    columns: list[str]
    row_groups: list[int]  # rows of each row group
    fs: pafs.FileSystem

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def open(self) -> pq.ParquetFile:
        return pq.ParquetFile(self.fs.open_input_file(self.path))


def resolve_path(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path on it)`` of a local path or a URI such as ``s3://bucket/prefix``."""
    text = os.fspath(path)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), str(Path(text))


def resolve_workers(workers: int) -> int:
    """``0`` -> all usable cores; negative -> error."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = all cores), got {workers}")
    if workers == 0:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    return workers


def scan_inputs(input_dir: str | os.PathLike) -> list[_InputFile]:
    """Validate every input shard's footer and schema before any work starts."""
    fs, input_dir = resolve_path(input_dir)
    if fs.get_file_info(input_dir).type != pafs.FileType.Directory:
        raise CorpusError(f"input folder {input_dir} does not exist or is not a folder",
                          file=str(input_dir))
    paths = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(input_dir))
                   if i.type == pafs.FileType.File and i.base_name.endswith(".parquet"))
    if not paths:
        raise CorpusError(f"empty corpus: no *.parquet files in {input_dir}", file=str(input_dir))
    files = []
    for p in paths:
        try:
            meta = pq.ParquetFile(fs.open_input_file(p))
            names = meta.schema_arrow.names
            rows = meta.metadata.num_rows
            groups = [meta.metadata.row_group(i).num_rows for i in range(meta.num_row_groups)]
        except Exception as exc:
            raise CorpusError(f"corrupt Parquet file {p}: {exc}", file=str(p)) from exc
        if "text" not in names:
            raise CorpusError(f"{p}: missing column 'text' (expected columns id, text, source; "
                              f"found {names})", file=str(p), column="text")
        files.append(_InputFile(p, rows, names, groups, fs))
    if sum(f.rows for f in files) == 0:
        raise CorpusError(f"empty corpus: {len(files)} Parquet file(s) in {input_dir} hold no rows",
                          file=str(input_dir))
    return files


def iter_chunks(files: list[_InputFile], chunk_docs: int) -> Iterator[Chunk]:
    """Stream every file in batches of ``chunk_docs`` rows."""
    for f in files:
        yield from file_chunks(f, chunk_docs)


def file_chunks(f: _InputFile, chunk_docs: int, rows: range | None = None) -> Iterator[Chunk]:
    """Stream one file (or its ``rows``) in batches of at most ``chunk_docs`` rows."""
    cols = [c for c in ("id", "text", "source") if c in f.columns]
    rows = range(f.rows) if rows is None else rows
    starts = np.cumsum([0] + f.row_groups)  # first row of each row group
    groups = [g for g in range(len(f.row_groups))
              if starts[g] < rows.stop and starts[g + 1] > rows.start]
    row = int(starts[groups[0]]) if groups else rows.stop
    try:
        batches = f.open().iter_batches(batch_size=chunk_docs, columns=cols, row_groups=groups)
        for batch in batches:  # Arrow buffers go to the worker, which makes the Python values
            lo, hi = max(row, rows.start), min(row + batch.num_rows, rows.stop)
            if lo < hi:
                yield Chunk(f.name, lo, batch.slice(lo - row, hi - lo))
            row += batch.num_rows
            if row >= rows.stop:
                break
    except CorpusError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"corrupt Parquet file {f.path}: read failed after row {row}: {exc}",
                          file=str(f.path), row=row) from exc


class _ShardWriter:
    """Writes kept documents to ``part-NNNNN.parquet`` files of ``shard_docs`` documents.

    The row groups of a shard depend only on that shard's documents, so a shard can be written
    on its own (the ray engine writes shard ``first_shard`` with a writer of its own).
    """

    def __init__(self, folder: str | Path, shard_docs: int, compression: str,
                 filesystem: pafs.FileSystem | None = None, first_shard: int = 0):
        self.folder, self.shard_docs, self.fs = str(folder), shard_docs, filesystem
        self.compression = None if compression == "none" else compression
        self.rows: list[tuple] = []
        self.chars = 0
        self.writer: pq.ParquetWriter | None = None
        self.in_shard = 0
        self.n_shards = first_shard

    def _path(self) -> str:
        return f"{self.folder}/part-{self.n_shards:05d}.parquet"

    def add(self, row: tuple) -> None:
        self.rows.append(row)
        self.chars += len(row[1])
        if (len(self.rows) >= ROW_GROUP_DOCS or self.chars >= ROW_GROUP_CHARS
                or self.in_shard + len(self.rows) >= self.shard_docs):
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self._path(), OUTPUT_SCHEMA, compression=self.compression,
                                           filesystem=self.fs)
            self.n_shards += 1
        cols = list(zip(*self.rows))
        self.writer.write_table(pa.table(
            [pa.array(c, type=OUTPUT_SCHEMA.field(i).type) for i, c in enumerate(cols)],
            schema=OUTPUT_SCHEMA))
        self.in_shard += len(self.rows)
        self.rows, self.chars = [], 0
        if self.in_shard >= self.shard_docs:
            self.writer.close()
            self.writer, self.in_shard = None, 0

    def close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.n_shards == 0:  # everything was removed: still a valid, empty dataset
            pq.write_table(OUTPUT_SCHEMA.empty_table(), self._path(), compression=self.compression,
                           filesystem=self.fs)
            self.n_shards = 1


def _results(chunks: Iterator[Chunk], cfg: CleaningConfig, workers: int) -> Iterator[ChunkResult]:
    """Chunk results in submission order; at most ``2 * workers`` chunks in flight."""
    if workers == 1:
        proc = Processor(cfg)
        for c in chunks:
            yield _wrap_errors(c, lambda c=c: proc.process(c))
        return
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["__main__", "llama2_pipeline.data.process"])  # import once
    else:
        ctx = mp.get_context("spawn")
    ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker,
                             initargs=(cfg.to_dict(),))
    try:
        pending: deque = deque()
        for c in chunks:
            pending.append((c, ex.submit(process_chunk, c)))
            if len(pending) >= 2 * workers:
                c0, fut = pending.popleft()
                yield _wrap_errors(c0, fut.result)
        while pending:
            c0, fut = pending.popleft()
            yield _wrap_errors(c0, fut.result)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _wrap_errors(chunk: Chunk, get) -> ChunkResult:
    try:
        return get()
    except BrokenProcessPool as exc:
        raise RuntimeError(
            "a cleaning worker process died (out of memory, killed, or it could not start: "
            "worker processes re-import the main script, so a script that calls clean_corpus "
            "must do so under `if __name__ == '__main__':`)") from exc
    except RuntimeError as exc:  # raised by the worker with the rows it was cleaning
        raise RuntimeError(f"{chunk.file}: {exc}") from exc


def clean_corpus(input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                 config: CleaningConfig | dict | None = None, workers: int | None = None,
                 progress: bool = True, canaries: list[dict] | None = None) -> dict:
    """Clean a folder of raw Parquet shards into ``output_dir`` and return the report.

    Args:
        input_dir: folder of ``*.parquet`` shards (read in name order) with a ``text`` column
            and usually ``id`` and ``source`` (missing ids become ``<file stem>:<row>``).
        output_dir: folder to (re)create with ``part-00000.parquet``, ...: columns ``id``,
            ``text`` (normalised, PII-redacted), ``source`` and the stats columns
            ``n_chars, n_bytes, n_words, n_lines, mean_word_length, pii_redacted``. Written in a
            temporary sibling and renamed as a whole on success.
        config: :class:`CleaningConfig` or its nested dict (the ``data_processing`` params group).
        workers: worker processes for the per-document work (default: ``config.workers``); 0 = all
            cores. The output does
            not depend on it. Workers are started with ``forkserver`` (``spawn`` where that is
            missing), which re-imports the main script: call this under
            ``if __name__ == "__main__":`` in a script. With ``engine: ray``: the CPUs of the
            local Ray cluster started in-process (ignored when ``RAY_ADDRESS`` names a cluster
            or Ray is already initialised).
        progress: show a tqdm progress bar (Ray Data's progress bars with ``engine: ray``).
        canaries: planted PII values (``doc_id``, ``kind``, ``value``): if any survives in the
            cleaned text of its document, :class:`PIILeakError` is raised and nothing is written.

    Returns:
        ``{"metrics": {...flat numbers...}, "examples": [...], "files": [...], "config": {...},
        "timing": {...}}``; see :func:`llama2_pipeline.data.report.build_report`.

    Raises:
        CorpusError: missing/corrupt input file, missing ``text`` column, empty corpus.
    """
    from tqdm.auto import tqdm

    cfg = config if isinstance(config, CleaningConfig) else CleaningConfig.from_dict(config)
    n_workers = resolve_workers(cfg.workers if workers is None else workers)
    files = scan_inputs(input_dir)
    if cfg.engine == "ray":
        from .ray_engine import clean_on_ray  # Ray is imported only for this engine

        return clean_on_ray(files, output_dir, cfg, n_workers, progress, canaries)
    t0 = time.perf_counter()
    bar = tqdm(total=sum(f.rows for f in files), unit="doc", desc="clean corpus",
               disable=not progress, dynamic_ncols=True)
    try:
        with atomic_path(output_dir, is_dir=True) as tmp:
            merger = _Merger(cfg, _ShardWriter(tmp, cfg.shard_docs, cfg.compression), os.fspath(input_dir))
            stream = _results(iter_chunks(files, cfg.chunk_docs), cfg, n_workers)
            with contextlib.closing(stream):
                for res in stream:
                    merger.add(res)
                    bar.update(len(res.docs))
                    bar.set_postfix(kept=merger.counters["docs_out"], refresh=False)
            merger.close()
            check_canaries(tmp, canaries)
    finally:
        bar.close()
    return finish_report(merger.counters, merger.examples, cfg, files, time.perf_counter() - t0,
                         {"workers": n_workers, "engine": "local"})


def finish_report(counters: Counter, examples: list[dict], cfg: CleaningConfig,
                  files: list[_InputFile], elapsed: float, timing: dict) -> dict:
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


class _Merger:
    """Parent-side, in-order consumer: counters, examples, global dedup, output writing."""

    def __init__(self, cfg: CleaningConfig, writer: _ShardWriter, source: str):
        self.cfg, self.writer = cfg, writer
        self.tally = Tally(cfg, source)
        self.counters, self.examples = self.tally.counters, self.tally.examples
        self.dedup = Deduplicator(cfg.dedup)
        self.kept_ids: list[str] = []

    def add(self, res: ChunkResult) -> None:
        c = self.counters
        for i, doc_id, source, text, stats, h, sig, keys in self.tally.candidates(res):
            kind, idx = self.dedup.check(h, sig, keys)
            if kind is not None:
                self.tally.duplicate(kind, doc_id, res.file, res.row0 + i, text,
                                     self.kept_ids[idx])
                continue
            self.kept_ids.append(doc_id)
            c["docs_out"] += 1
            c["bytes_out"] += stats[1]
            c["pii_redacted_out"] += stats[5]
            self.writer.add((doc_id, text, source) + stats)

    def close(self) -> None:
        self.writer.close()
        self.counters["output_shards"] = self.writer.n_shards
