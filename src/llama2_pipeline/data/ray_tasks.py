"""The functions the ``ray`` engine (:mod:`llama2_pipeline.data.ray_engine`) runs on the Ray
workers, as Ray Data ``map_batches`` / ``map_groups`` callables: plain pyarrow and numpy, no Ray
import. Each is a pure function of its inputs (unit files are rewritten whole), so Ray's task
retries give the same bytes.
"""

from __future__ import annotations

import functools
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import process
from .config import CleaningConfig
from .corpus_io import (
    OUTPUT_SCHEMA,
    InputFile,
    ShardWriter,
    file_chunks,
    wrap_errors,
)
from .dedup import EXACT, NEAR, group_edges, shared_keys
from .report import Tally

UNIT_SCHEMA = pa.schema([("pos", pa.int64())] + list(OUTPUT_SCHEMA))  # a unit file's columns


def rows_schema(num_perm: int) -> pa.Schema:
    """Dedup rows; a unit's summary row has ``pkey`` -1 and only ``summary``, the pickled
    ``(unit, candidates, counters, examples)``."""
    return pa.schema([("pkey", pa.int64()), ("part", pa.int8()), ("key", pa.uint64()),
                      ("pos", pa.int64()), ("hash", pa.uint64()),
                      ("sig", pa.binary(4 * num_perm)), ("summary", pa.binary())])


def clean_units(batch: pa.Table, cfg: CleaningConfig, fs: pafs.FileSystem,
                 parts: int) -> pa.Table:
    """Step 1, one unit per call: the local engine's per-chunk function over the unit's rows.
    Writes the candidates to the unit's file; returns their dedup rows and a summary row."""
    process.init_worker(cfg.to_dict())
    d = cfg.dedup
    schema = rows_schema(d.num_perm)
    out = []
    for u in batch.to_pylist():
        f: InputFile = pickle.loads(u["file"])
        tally = Tally(cfg, f.path.rsplit("/", 1)[0])
        rows: list[tuple] = []
        hashes, sigs, bands = [], [], []
        for chunk in file_chunks(f, cfg.chunk_docs, range(u["lo"], u["hi"])):
            res = wrap_errors(chunk, functools.partial(process.process_chunk, chunk))
            for i, doc_id, source, text, stats, h, sig, keys in tally.candidates(res):
                rows.append((u["pos0"] + chunk.row0 + i, doc_id, text, source) + stats)
                hashes.append(h)
                sigs.append(sig)
                bands.append(keys)
        n = len(rows)
        if n:
            write_unit(fs, u["path"], rows)
        pos, h = np.array([r[0] for r in rows], dtype=np.int64), np.array(hashes, dtype=np.uint64)
        sig = np.stack(sigs) if d.near and n else np.zeros((n, d.num_perm), dtype=np.uint32)
        take, kinds, keys = [np.empty(0, dtype=np.int64)], [], [np.empty(0, dtype=np.uint64)]
        if d.exact:
            take.append(np.arange(n))
            kinds.append(np.full(n, EXACT, dtype=np.int8))
            keys.append(h)
        if d.near and n:
            take.append(np.repeat(np.arange(n), d.bands))
            kinds.append(np.full(n * d.bands, NEAR, dtype=np.int8))
            keys.append(np.stack(bands).reshape(-1))
        idx, key = np.concatenate(take), np.concatenate(keys)
        out.append(pa.table({
            "pkey": (key % np.uint64(parts)).astype(np.int64),
            "part": np.concatenate(kinds) if kinds else np.empty(0, dtype=np.int8),
            "key": key, "pos": pos[idx], "hash": h[idx], "sig": sig_array(sig[idx]),
            "summary": pa.nulls(len(idx), pa.binary())}, schema=schema))
        summary = pickle.dumps((u["unit"], n, dict(tally.counters), tally.examples))
        out.append(pa.table({c.name: pa.nulls(1, c.type) for c in schema}, schema=schema)
                   .set_column(0, "pkey", pa.array([-1], pa.int64()))
                   .set_column(6, "summary", pa.array([summary], pa.binary())))
    return pa.concat_tables(out)


def write_unit(fs: pafs.FileSystem, path: str, rows: list[tuple]) -> None:
    cols = [list(c) for c in zip(*rows)]
    table = pa.table([pa.array(c, type=UNIT_SCHEMA.field(k).type) for k, c in enumerate(cols)],
                     schema=UNIT_SCHEMA)
    pq.write_table(table, path, filesystem=fs, compression="lz4")


def sig_array(sig: np.ndarray) -> pa.Array:
    buf = pa.py_buffer(np.ascontiguousarray(sig, dtype=np.uint32).tobytes())
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * sig.shape[1]), len(sig),
                                                [None, buf])


def sig_matrix(col: pa.ChunkedArray, num_perm: int) -> np.ndarray:
    arr = col.combine_chunks()
    if len(arr) == 0:
        return np.empty((0, num_perm), dtype=np.uint32)
    data = np.frombuffer(arr.buffers()[1], dtype=np.uint32)
    return data[arr.offset * num_perm:(arr.offset + len(arr)) * num_perm].reshape(-1, num_perm)


def summary_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.less(batch["pkey"], 0)).select(["summary"])


def dedup_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.greater_equal(batch["pkey"], 0)).drop_columns(["summary"])


def partition_edges(rows: pa.Table, cfg: CleaningConfig) -> pa.Table:
    """Step 2: the edges of every exact group and LSH bucket of one hash partition."""
    d = cfg.dedup
    rows = rows.filter(shared_keys(rows["part"].to_numpy(), rows["key"].to_numpy()))
    sigs = sig_matrix(rows["sig"], d.num_perm) if d.near else None
    return pa.table(group_edges(rows["part"].to_numpy(), rows["key"].to_numpy(),
                                rows["pos"].to_numpy(), rows["hash"].to_numpy(), sigs, d))


def read_rows(batch: pa.Table, fs: pafs.FileSystem) -> pa.Table:
    """Rows ``pos`` of a unit file (the duplicates the report shows as examples)."""
    spec = batch.to_pylist()[0]
    t = pq.read_table(spec["path"], filesystem=fs, columns=["pos", "id", "text"])
    return t.filter(pc.is_in(t["pos"], pa.array(spec["pos"], pa.int64())))


def write_shard(batch: pa.Table, cfg: CleaningConfig, fs: pafs.FileSystem,
                 folder: str) -> pa.Table:
    """Step 3: one output shard from the unit files it spans, as the local engine writes it."""
    spec = batch.to_pylist()[0]
    shard, S = spec["shard"], cfg.shard_docs
    removed = set(spec["removed"])
    writer = ShardWriter(folder, S, cfg.compression, fs, first_shard=shard)
    rank, docs, nbytes, pii = spec["start"], 0, 0, 0
    for path in spec["paths"]:
        t = pq.read_table(path, filesystem=fs)
        for row in zip(*(t[c].to_pylist() for c in UNIT_SCHEMA.names)):
            if row[0] in removed:
                continue
            if shard * S <= rank < (shard + 1) * S:
                writer.add(row[1:])
                docs, nbytes, pii = docs + 1, nbytes + row[5], pii + row[9]
            rank += 1
    writer.close()
    return pa.table({"shard": [shard], "docs": [docs], "bytes": [nbytes], "pii": [pii]})
