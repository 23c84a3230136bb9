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
from .dedup_edges import EXACT, NEAR, group_edges, shared_keys
from .report import Tally

UNIT_SCHEMA = pa.schema([("pos", pa.int64())] + list(OUTPUT_SCHEMA))  # a unit file's columns


ROWS_SCHEMA = pa.schema([("pkey", pa.int64()), ("part", pa.int8()), ("key", pa.uint64()),
                         ("pos", pa.int64()), ("row", pa.int32()), ("hash", pa.uint64())])
"""Dedup rows: ``row`` is the document's row in its unit's signature file."""


def clean_units(batch: pa.Table, cfg: CleaningConfig, fs: pafs.FileSystem,
                 parts: int) -> pa.Table:
    """Step 1, one unit per call: the local engine's per-chunk function over the unit's rows.
    Writes the candidates to the unit's file and their MinHash signatures to its signature
    file and its summary (``(candidates, counters, examples)``, pickled) to its summary file;
    returns their dedup rows (no signature)."""
    process.init_worker(cfg.to_dict())
    d = cfg.dedup
    schema = ROWS_SCHEMA
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
            if d.near:
                write_signatures(fs, sig_path(u["path"]), np.stack(sigs))
        pos, h = np.array([r[0] for r in rows], dtype=np.int64), np.array(hashes, dtype=np.uint64)
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
            "key": key, "pos": pos[idx], "row": idx.astype(np.int32), "hash": h[idx]},
            schema=schema))
        with fs.open_output_stream(summary_path(u["path"])) as stream:
            stream.write(pickle.dumps((n, dict(tally.counters), tally.examples)))
    return pa.concat_tables(out)


def write_unit(fs: pafs.FileSystem, path: str, rows: list[tuple]) -> None:
    cols = [list(c) for c in zip(*rows)]
    table = pa.table([pa.array(c, type=UNIT_SCHEMA.field(k).type) for k, c in enumerate(cols)],
                     schema=UNIT_SCHEMA)
    pq.write_table(table, path, filesystem=fs, compression="lz4")


def sig_path(unit_path: str) -> str:
    """The signature file beside a unit file: its candidates' MinHash signatures, raw
    little-endian uint32 ``[candidates, num_perm]`` in the unit file's row order."""
    return unit_path.removesuffix(".parquet") + ".sig"


def summary_path(unit_path: str) -> str:
    """The summary file beside a unit file (what the driver merges into the report)."""
    return unit_path.removesuffix(".parquet") + ".summary"


def write_signatures(fs: pafs.FileSystem, path: str, sigs: np.ndarray) -> None:
    with fs.open_output_stream(path) as f:
        f.write(np.ascontiguousarray(sigs, dtype="<u4").tobytes())


_SPARSE = 8  # read a signature file row by row when fewer than 1/_SPARSE of its rows are needed


def read_signatures(fs: pafs.FileSystem, unit_paths: list[str], unit: np.ndarray,
                    row: np.ndarray, num_perm: int) -> np.ndarray:
    """Signatures ``uint32[len(row), num_perm]`` of rows ``row`` of the units ``unit`` (both
    arrays sorted by unit): each unit's file is read once, whole when many of its rows are
    needed, else only those rows (ranged reads: on an object store, bytes rather than files)."""
    out = np.empty((len(row), num_perm), dtype=np.uint32)
    width = 4 * num_perm
    starts = np.flatnonzero(np.r_[True, unit[1:] != unit[:-1]]) if len(unit) else unit
    for lo, hi in zip(starts.tolist(), np.append(starts[1:], len(unit)).tolist()):
        with fs.open_input_file(unit_paths[int(unit[lo])]) as f:
            rows = row[lo:hi]
            if (hi - lo) * _SPARSE >= f.size() // width:
                whole = np.frombuffer(f.read(), dtype="<u4").reshape(-1, num_perm)
                out[lo:hi] = whole[rows]
            else:
                for k, r in enumerate(rows.tolist()):
                    out[lo + k] = np.frombuffer(f.read_at(width, r * width), dtype="<u4")
    return out


def partition_edges(rows: pa.Table, cfg: CleaningConfig, fs: pafs.FileSystem,
                    unit_paths: list[str], unit_pos: np.ndarray) -> pa.Table:
    """Step 2: the edges of every exact group and LSH bucket of one hash partition. The
    signatures of the documents that share a key here are read from their units' signature
    files (each document once), not carried by the shuffle."""
    d = cfg.dedup
    rows = rows.filter(shared_keys(rows["part"].to_numpy(), rows["key"].to_numpy()))
    pos = rows["pos"].to_numpy()
    sigs = back = None
    if d.near:
        docs, first, back = np.unique(pos, return_index=True, return_inverse=True)
        unit = np.searchsorted(unit_pos, docs, side="right") - 1
        sigs = read_signatures(fs, unit_paths, unit, rows["row"].to_numpy()[first], d.num_perm)
    return pa.table(group_edges(rows["part"].to_numpy(), rows["key"].to_numpy(), pos,
                                rows["hash"].to_numpy(), sigs, d, sig_row=back if d.near else None))


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
