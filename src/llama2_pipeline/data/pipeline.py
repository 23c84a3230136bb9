"""``clean_corpus``: stream raw Parquet shards through cleaning, PII removal and dedup.

Data flow::

    input_dir/*.parquet (sorted)  --pyarrow batches of chunk_docs-->  Chunk
        --process pool (workers)-->  ChunkResult (normalise, PII, quality, MinHash)
        --parent, corpus order-->    Deduplicator (exact + LSH)  -->  ShardWriter (corpus_io)
        --> output_dir/part-00000.parquet ...  (written in a temp folder, renamed at the end)

Memory: the parent holds at most ``2 * workers`` chunks in flight and one output row group
(``corpus_io.ROW_GROUP_DOCS`` documents or ``ROW_GROUP_CHARS`` characters); apart from the dedup index
(see :mod:`llama2_pipeline.data.dedup`) nothing grows with the corpus.
Determinism: workers only do per-document work; every decision that depends on other
documents is taken in the parent in (file, row) order, and chunks are consumed in submission
order, so the output bytes do not depend on ``workers``.

``engine: ray`` runs the same work on a Ray cluster (:mod:`llama2_pipeline.data.ray_engine`,
imported only then) and writes the same bytes. Input folders are read through pyarrow
filesystems, so ``s3://bucket/prefix`` and other URIs work as inputs of both engines. What both
engines share: reading and writing shards in :mod:`~llama2_pipeline.data.corpus_io`, counting
and reporting (:class:`~llama2_pipeline.data.report.Tally`) in :mod:`~llama2_pipeline.data.report`.

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
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator

from ..core.files import atomic_path
from .config import CleaningConfig
from .corpus_io import ShardWriter, iter_chunks, scan_inputs, wrap_errors
from .dedup import Deduplicator
from .process import Chunk, ChunkResult, Processor, init_worker, process_chunk
from .report import Tally, check_canaries, finish_report


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


def _results(chunks: Iterator[Chunk], cfg: CleaningConfig, workers: int) -> Iterator[ChunkResult]:
    """Chunk results in submission order; at most ``2 * workers`` chunks in flight."""
    if workers == 1:
        proc = Processor(cfg)
        for c in chunks:
            yield wrap_errors(c, lambda c=c: proc.process(c))
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
                yield wrap_errors(c0, fut.result)
        while pending:
            c0, fut = pending.popleft()
            yield wrap_errors(c0, fut.result)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


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
            merger = _Merger(cfg, ShardWriter(tmp, cfg.shard_docs, cfg.compression), os.fspath(input_dir))
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


class _Merger:
    """Parent-side, in-order consumer: counters, examples, global dedup, output writing."""

    def __init__(self, cfg: CleaningConfig, writer: ShardWriter, source: str):
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
