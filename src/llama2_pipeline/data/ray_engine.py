"""``engine: ray``: :func:`~llama2_pipeline.data.pipeline.clean_corpus` as Ray Data operators on
a Ray cluster (a local one started in-process, or the one ``RAY_ADDRESS`` names), writing the
same bytes as the local engine. Imported only when that engine is chosen.

Data flow (a *candidate* is a document that passed the per-document rules and goes to dedup)::

    units (whole row groups of one input file, about `ray.unit_rows` rows)
      --map_batches: process_chunk per chunk_docs rows (the local engine's function)-->
          _work/unit-NNNNNNN.parquet: the unit's candidates (output columns), in corpus order
          _work/unit-NNNNNNN.sig: their MinHash signatures (raw uint32, same order)
          dedup rows: one exact row and one row per LSH band of each candidate (37 bytes:
          key, position, row in the signature file; no signature)
          _work/unit-NNNNNNN.summary: the unit's counters and first examples
      --repartition into `parts` blocks (adjacent units, no shuffle)
      --groupby(hash partition of the key) --map_groups: the signatures of the documents
        that share a key in the partition, read from the signature files; dedup_edges.group_edges-->
    edges (j -> earlier i): the first document of j's exact group; the slot holders of j's
    buckets whose signatures agree with j's
      --sort (j, kind, i)--> driver: dedup_edges.walk_edges, once in corpus order -> removed documents
    shards (the units each output shard spans, the removed documents among them)
      --map_batches: read the units, drop the removed, one ShardWriter per shard-->
    output_dir/part-NNNNN.parquet

The only shuffle is the dedup rows' (no text, no signatures: a signature is read, once per
partition that needs it, only for a document that shares a key with another). On the driver: the file list, the unit
summaries merged as they stream in (bounded), the walk's state (one entry per removed
document) and the sorted list of removed documents; corpus text never passes through it.
Every step is a pure function of its inputs, so Ray's retries (a lost worker or node) give
the same bytes.

Output: a local ``output_dir`` is written in a temporary sibling folder renamed at the end (on a
multi-node cluster it must be on a filesystem every node mounts); for a URI (``s3://bucket/x``)
the shards go to a temporary prefix and are moved into place file by file at the end. The
unit files live in ``_work/`` inside that temporary folder and are deleted before the move.
Workers need the driver's pyarrow version for byte-identical Parquet.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
import uuid
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.data
from ray.data.context import DataContext, ShuffleStrategy

from ..core.files import atomic_path
from .config import CleaningConfig
from .corpus_io import (
    CorpusError,
    InputFile,
    ShardWriter,
)
from .dedup_edges import walk_edges
from .ray_tasks import (
    clean_units,
    partition_edges,
    read_rows,
    sig_path,
    summary_path,
    write_shard,
)
from .report import Tally, check_canaries, finish_report

_ROW_BYTES = 37  # pkey, part, key, pos, row, hash: one dedup row
_RAY_NOTE = "\nFailed to apply UDF transform"  # what Ray Data appends to a worker's message


def clean_on_ray(files: list[InputFile], output_dir: str | os.PathLike, cfg: CleaningConfig,
                 workers: int, progress: bool, canaries: list[dict] | None = None) -> dict:
    """The ``ray`` engine of ``clean_corpus`` (same arguments, same outputs, report and canary
    check)."""
    t0 = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.perf_counter() - t0 - sum(phases.values()), 3)

    with cluster(workers, cfg) as cpus, _data_context(progress), \
            _output_folder(output_dir) as (fs, folder):
        phase("startup_s")
        run = _Run(files, cfg, cpus, fs, folder)
        try:
            rows = run.clean()
            phase("clean_s")
            removed = run.dedup(rows)
            phase("dedup_s")
            run.write(removed)
            phase("write_s")
            check_canaries(folder, canaries, fs)  # on the driver, before anything is published
        except BaseException as exc:
            with contextlib.suppress(OSError):  # the run's own error is the one to report
                _empty(fs, folder)
            if not isinstance(exc, CorpusError):
                raise
            # raised on a worker: raise it as the local engine does
            message = str((getattr(exc, "cause", None) or exc).args[0])
            raise CorpusError(message.split(_RAY_NOTE)[0], exc.file, exc.row, exc.column) from None
        _empty(fs, run.work, remove=True)
    return finish_report(run.tally.counters, run.examples(), cfg, files,
                         time.perf_counter() - t0,
                         {"workers": cpus, "engine": "ray", "phases": phases, "units": len(run.units),
                          "shuffle_mib": round(run.shuffled / 2**20, 3), "edges": run.edges,
                          "edge_sort_s": round(run.sort_s, 3), "walk_s": round(run.walk_s, 3)})


def _empty(fs: pafs.FileSystem, folder: str, remove: bool = False, tries: int = 50) -> None:
    """Delete what ``folder`` holds (and the folder itself with ``remove``). After a worker's
    error Ray Data stops the run, but a task already running on another worker can still write
    its files while they are deleted (the folder's removal then fails: not empty), so the
    deletion is tried again until it succeeds: 5 s at most. On a local disk no file can appear
    in a removed folder (the workers never create folders); an object store has no folders, and
    a file a task writes after the deletion stays there."""
    for k in range(tries):
        try:
            if fs.get_file_info(folder).type != pafs.FileType.NotFound:
                fs.delete_dir(folder) if remove else fs.delete_dir_contents(folder)
            return
        except OSError:
            if k == tries - 1:
                raise
            time.sleep(0.1)


class _Run:
    """One run: the driver's side of every step."""

    def __init__(self, files: list[InputFile], cfg: CleaningConfig, cpus: int,
                 fs: pafs.FileSystem, folder: str):
        self.files, self.cfg, self.fs, self.folder = files, cfg, fs, folder
        self.work = f"{folder}/_work"
        self.file_pos = np.cumsum([0] + [f.rows for f in files])  # corpus position of each file
        self.units: list[dict] = []
        for k, f in enumerate(files):
            for lo, hi in _unit_rows(f.row_groups, cfg.ray.unit_rows):
                self.units.append({"unit": len(self.units), "file": pickle.dumps(f),
                                   "lo": lo, "hi": hi, "pos0": int(self.file_pos[k]),
                                   "path": f"{self.work}/unit-{len(self.units):07d}.parquet"})
        self.unit_pos = np.array([u["pos0"] + u["lo"] for u in self.units] + [self.file_pos[-1]])
        self.candidates = np.zeros(len(self.units), dtype=np.int64)  # per unit
        d = cfg.dedup
        self.rows_per_doc = int(d.exact) + (d.bands if d.near else 0)
        self.row_bytes = _ROW_BYTES
        # partitions of the dedup shuffle, from an upper bound (every input row a candidate)
        bound = int(self.file_pos[-1]) * self.rows_per_doc * self.row_bytes
        self.parts = max(cpus, -(-bound // (cfg.ray.partition_mb << 20)))
        self.shuffled, self.edges, self.sort_s, self.walk_s = 0, 0, 0.0, 0.0  # for timing
        self.tally = Tally(cfg)
        self.first: dict[str, list[tuple[int, dict]]] = {}  # rule -> first examples (pos, example)

    # ------------------------------------------------------------------------------- step 1
    def clean(self) -> ray.data.Dataset:
        """Per-document work on the workers (unit files, dedup rows); summaries merged here."""
        self.fs.create_dir(self.work)
        rows = (ray.data.from_items(self.units, override_num_blocks=max(len(self.units), 1))
                .map_batches(clean_units, batch_size=1, batch_format="pyarrow",
                             fn_kwargs={"cfg": self.cfg, "fs": self.fs, "parts": self.parts})
                .materialize())
        for unit, u in enumerate(self.units):
            with self.fs.open_input_stream(summary_path(u["path"])) as f:
                n, counters, examples = pickle.loads(f.read())
            self.tally.counters.update(counters)
            self.candidates[unit] = n
            for ex in examples:
                self._example(u["pos0"] + ex["row"], ex)
        return rows

    def _example(self, pos: int, ex: dict) -> None:
        kept = self.first.setdefault(ex["rule"], [])
        kept.append((pos, ex))
        if len(kept) > self.cfg.max_examples:
            kept.sort(key=lambda e: e[0])
            del kept[self.cfg.max_examples:]

    def examples(self) -> list[dict]:
        """Every rule's first examples in corpus order, as the local engine lists them."""
        return [ex for _, ex in sorted((e for v in self.first.values() for e in v),
                                       key=lambda e: e[0])]

    # ------------------------------------------------------------------------------- step 2
    def dedup(self, rows: ray.data.Dataset) -> np.ndarray:
        """Edges on the workers, the greedy walk here; returns the removed positions (sorted)."""
        removed = array("q")  # 8 bytes per removed document
        n = int(self.candidates.sum())
        if self.rows_per_doc == 0 or n == 0:
            return np.array(removed, dtype=np.int64)
        self.shuffled = n * self.rows_per_doc * self.row_bytes
        # the sort shuffle splits each of its M input blocks into M pieces: on the units'
        # blocks that is M^2 small objects, each held in the driver's in-process memory store (at
        # 200 MiB of text, 27k of them: +130 MiB of driver memory). Merged first into
        # ``parts`` adjacent blocks (no shuffle), the groupby moves parts^2 pieces.
        edges = (rows.repartition(self.parts).groupby("pkey")
                 .map_groups(partition_edges, batch_format="pyarrow",
                             fn_kwargs={"cfg": self.cfg, "fs": self.fs,
                                        "unit_paths": [sig_path(u["path"]) for u in self.units],
                                        "unit_pos": self.unit_pos})
                 .materialize())
        self.edges = edges.count()
        if self.edges == 0:
            return np.array(removed, dtype=np.int64)
        wanted: dict[str, list[tuple[int, int]]] = {"exact": [], "near": []}
        t0 = time.perf_counter()
        batches = self._timed(edges.sort(["j", "kind", "i"]).iter_batches(
            batch_format="numpy", batch_size=1 << 14))  # bounds the walk's transient memory
        for j, kind, kept in walk_edges(batches):
            removed.append(j)
            if len(wanted[kind]) < self.cfg.max_examples:
                wanted[kind].append((j, kept))
            else:
                self.tally.counters[f"dup_{kind}"] += 1
        self.walk_s = time.perf_counter() - t0 - self.sort_s
        self._duplicate_examples(wanted)
        return np.frombuffer(removed, dtype=np.int64)

    def _timed(self, batches: Iterable) -> Iterator:
        """``batches``, adding the time spent waiting for them (the sort) to ``sort_s``."""
        batches = iter(batches)
        while True:
            t0 = time.perf_counter()
            b = next(batches, None)
            self.sort_s += time.perf_counter() - t0
            if b is None:
                return
            yield b

    def _unit_of(self, pos: np.ndarray | int) -> np.ndarray:
        return np.searchsorted(self.unit_pos, pos, side="right") - 1

    def _duplicate_examples(self, wanted: dict) -> None:
        pos = np.array(sorted({p for pairs in wanted.values() for pair in pairs for p in pair}),
                       dtype=np.int64)
        if not len(pos):
            return
        units = np.unique(self._unit_of(pos))
        reads = [{"path": self.units[u]["path"], "pos": pos} for u in units.tolist()]
        found = {r["pos"]: (r["id"], r["text"]) for r in (
            ray.data.from_items(reads, override_num_blocks=len(reads))
            .map_batches(read_rows, batch_size=1, batch_format="pyarrow", fn_kwargs={"fs": self.fs})
            .take_all())}
        scratch = Tally(self.cfg)  # formats and counts them as the local engine does
        order = [j for pairs in wanted.values() for j, _ in pairs]
        for kind, pairs in wanted.items():
            for j, kept in pairs:
                k = int(np.searchsorted(self.file_pos, j, side="right")) - 1
                scratch.duplicate(kind, found[j][0], self.files[k].name,
                                  j - int(self.file_pos[k]), found[j][1], found[kept][0])
        self.tally.counters.update(scratch.counters)
        for j, ex in zip(order, scratch.examples, strict=True):
            self._example(j, ex)

    # ------------------------------------------------------------------------------- step 3
    def write(self, removed: np.ndarray) -> None:
        """One task per output shard: the units it spans, less the removed documents."""
        c, S = self.tally.counters, self.cfg.shard_docs
        kept = self.candidates - np.bincount(self._unit_of(removed), minlength=len(self.units))
        start = np.concatenate(([0], np.cumsum(kept)))  # kept rank of each unit's first document
        n_shards = -(-int(start[-1]) // S)
        specs = []
        for s in range(n_shards):
            lo = int(np.searchsorted(start, s * S, side="right")) - 1
            hi = min(int(np.searchsorted(start, (s + 1) * S, side="left")), len(self.units))
            units = [u for u in range(lo, hi) if kept[u]]
            gone = removed[(removed >= self.unit_pos[lo]) & (removed < self.unit_pos[hi])]
            specs.append({"shard": s, "paths": [self.units[u]["path"] for u in units],
                          "start": int(start[units[0]]), "removed": gone.tolist()})
        written = []
        if specs:
            written = (ray.data.from_items(specs, override_num_blocks=len(specs))
                       .map_batches(write_shard, batch_size=1, batch_format="pyarrow",
                                    fn_kwargs={"cfg": self.cfg, "fs": self.fs,
                                               "folder": self.folder})
                       .take_all())
        else:  # everything was removed: still a valid, empty dataset
            ShardWriter(self.folder, S, self.cfg.compression, self.fs).close()
        for w in written:
            c["docs_out"] += w["docs"]
            c["bytes_out"] += w["bytes"]
            c["pii_redacted_out"] += w["pii"]
        c["output_shards"] = max(n_shards, 1)
        if c["docs_out"] != start[-1]:
            raise RuntimeError(f"ray engine: wrote {c['docs_out']} documents, expected {start[-1]}")


def _unit_rows(row_groups: list[int], unit: int) -> list[tuple[int, int]]:
    """Row ranges of one file's units: runs of whole row groups of about ``unit`` rows (a
    row group is read whole, so splitting one costs a re-read); a row group of more than
    2 * ``unit`` rows is cut into pieces of about ``unit``."""
    out, lo, row = [], 0, 0
    for n in row_groups:
        if n > 2 * unit:
            if row > lo:
                out.append((lo, row))
            k = -(-n // unit)
            out += [(row + i * n // k, row + (i + 1) * n // k) for i in range(k)]
            lo = row = row + n
            continue
        row += n
        if row - lo >= unit:
            out.append((lo, row))
            lo = row
    if row > lo:
        out.append((lo, row))
    return out


# ----------------------------------------------------------------------------- the cluster


@contextlib.contextmanager
def cluster(workers: int, cfg: CleaningConfig) -> Iterator[int]:
    """Ray as it is (initialised in this process, or the cluster ``RAY_ADDRESS`` names), else a
    local cluster of ``workers`` CPUs until the block ends; yields the cluster's CPUs.

    The local cluster's workers run at the driver's priority (Ray's default, nice 15, lets any
    other process on the machine starve the stage: measured 0.14x the local engine's rate next
    to other jobs), and usage statistics are off.
    """
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs: dict = {"include_dashboard": False, "logging_level": "WARNING"}
        if not os.environ.get("RAY_ADDRESS"):
            kwargs.update(num_cpus=workers, _system_config={"worker_niceness": 0})
            if cfg.ray.object_store_mb is not None:
                kwargs["object_store_memory"] = cfg.ray.object_store_mb << 20
        ray.init(**kwargs)
    try:
        yield max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _data_context(progress: bool) -> Iterator[None]:
    """Ray Data settings of a run, restored afterwards: the sort-based shuffle (no actors to
    start: the fastest on small clusters, and it scales), no per-operator reservation of the
    cluster's CPUs (each dataset here is one operator: with the reservation, half the CPUs of
    a 2-CPU cluster sat idle, 1.4 of 2 map tasks in flight on average, 1.9 without it),
    workers' exceptions raised as they are (a CorpusError names the file), progress bars only
    when asked for."""
    ctx = DataContext.get_current()
    settings = {"shuffle_strategy": ShuffleStrategy.SORT_SHUFFLE_PULL_BASED,
                "op_resource_reservation_enabled": False,
                "raise_original_map_exception": True, "enable_progress_bars": progress,
                "print_on_execution_start": progress}
    saved = {k: getattr(ctx, k) for k in settings}
    for k, v in settings.items():
        setattr(ctx, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)


@contextlib.contextmanager
def _output_folder(output_dir: str | os.PathLike) -> Iterator[tuple[pafs.FileSystem, str]]:
    """``(filesystem, temporary folder)`` for the shards, moved onto ``output_dir`` on success
    (replacing it) and removed on failure."""
    text = os.fspath(output_dir)
    if "://" not in text:
        with atomic_path(output_dir, is_dir=True) as tmp:
            yield pafs.LocalFileSystem(), str(Path(tmp).resolve())  # workers have their own cwd
        return
    fs, target = pafs.FileSystem.from_uri(text)
    parent, _, name = target.rstrip("/").rpartition("/")
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:12]}"
    fs.create_dir(tmp)
    try:
        yield fs, tmp
        if fs.get_file_info(target).type != pafs.FileType.NotFound:
            fs.delete_dir(target)
        fs.create_dir(target)
        for info in fs.get_file_info(pafs.FileSelector(tmp)):
            fs.move(info.path, f"{target}/{info.base_name}")
    finally:
        _empty(fs, tmp, remove=True)
