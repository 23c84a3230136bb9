"""Read the clean corpus: a folder of Parquet shards (``*.parquet``, columns ``id``, ``text``,
``source``), taken in file-name order, streamed in record batches so memory stays bounded.

Both tokenizer training and shard encoding read the corpus through here, so they agree on the
document order and on what counts as bad input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

REQUIRED_COLUMNS = ("id", "text")


class CorpusError(ValueError):
    """The corpus folder is missing, empty or holds a malformed shard."""


def corpus_files(corpus_dir: str | os.PathLike) -> list[Path]:
    """The ``*.parquet`` shards of ``corpus_dir``, sorted by name; an error if there are none."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise CorpusError(f"corpus folder {corpus_dir} does not exist (expected Parquet shards)")
    files = sorted(p for p in corpus_dir.glob("*.parquet") if p.is_file())
    if not files:
        raise CorpusError(f"corpus folder {corpus_dir} holds no *.parquet shards")
    for path in files:
        names = pq.read_schema(path).names
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise CorpusError(
                f"corpus shard {path}: missing column(s) {missing}; expected columns "
                f"{list(REQUIRED_COLUMNS)} (+ 'source'), found {names}"
            )
    return files


def corpus_num_docs(corpus_dir: str | os.PathLike) -> int:
    """Number of documents (rows) in the corpus, from the Parquet footers only."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in corpus_files(corpus_dir))


def iter_documents(
    corpus_dir: str | os.PathLike, batch_rows: int = 4096
) -> Iterator[tuple[list[str], list[str]]]:
    """Yield ``(ids, texts)`` record batches of the corpus, in file then row order.

    Ids are returned as strings (``str(id)``) whatever their Parquet type. A null ``text`` or
    ``id`` raises :class:`CorpusError` naming the file and the row.
    """
    for path in corpus_files(corpus_dir):
        row0 = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=list(REQUIRED_COLUMNS)):
            ids = batch.column("id").to_pylist()
            texts = batch.column("text").to_pylist()
            if batch.column("text").null_count or batch.column("id").null_count:
                for i, (doc_id, text) in enumerate(zip(ids, texts)):
                    if doc_id is None or text is None:
                        field = "id" if doc_id is None else "text"
                        raise CorpusError(
                            f"corpus shard {path}, row {row0 + i} (id {doc_id!r}): null {field!r}; "
                            "expected a string"
                        )
            if texts and not isinstance(texts[0], str):
                raise CorpusError(
                    f"corpus shard {path}: column 'text' has type {batch.schema.field('text').type}, "
                    "expected string"
                )
            yield [str(x) for x in ids], texts
            row0 += len(texts)
