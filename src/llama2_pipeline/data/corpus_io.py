"""What both cleaning engines read and write: the input shards (found and checked through pyarrow
filesystems, so local paths and URIs such as ``s3://bucket/prefix`` both work, read in chunks of
rows), the output shards (``part-NNNNN.parquet``, row groups of bounded size), and the errors that
name a bad file, row or column."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .process import STAT_COLUMNS, Chunk, ChunkResult

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
class InputFile:
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


def scan_inputs(input_dir: str | os.PathLike) -> list[InputFile]:
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
        files.append(InputFile(p, rows, names, groups, fs))
    if sum(f.rows for f in files) == 0:
        raise CorpusError(f"empty corpus: {len(files)} Parquet file(s) in {input_dir} hold no rows",
                          file=str(input_dir))
    return files


def iter_chunks(files: list[InputFile], chunk_docs: int) -> Iterator[Chunk]:
    """Stream every file in batches of ``chunk_docs`` rows."""
    for f in files:
        yield from file_chunks(f, chunk_docs)


def file_chunks(f: InputFile, chunk_docs: int, rows: range | None = None) -> Iterator[Chunk]:
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


class ShardWriter:
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


def wrap_errors(chunk: Chunk, get) -> ChunkResult:
    try:
        return get()
    except BrokenProcessPool as exc:
        raise RuntimeError(
            "a cleaning worker process died (out of memory, killed, or it could not start: "
            "worker processes re-import the main script, so a script that calls clean_corpus "
            "must do so under `if __name__ == '__main__':`)") from exc
    except RuntimeError as exc:  # raised by the worker with the rows it was cleaning
        raise RuntimeError(f"{chunk.file}: {exc}") from exc
