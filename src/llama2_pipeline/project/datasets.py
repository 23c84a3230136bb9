"""Kedro datasets of the project. Every save is atomic (a temporary sibling renamed into place).

* ``JSONLDataset``: a list of dicts, one JSON object per line (prompts, dialogues, preferences).
* ``DialoguesDataset``: chat dialogues as JSON lines, each checked on load (a bad one is named by
  file and line).
* ``JSONDataset``: one JSON document.
* ``MetricsDataset``: a flat ``{name: number}`` JSON file (a DVC metrics file); the lineage hook
  also logs it to MLflow.
* ``ParquetShardsDataset``: a folder of Parquet shards, streamed: ``save`` takes an iterable of
  record lists / DataFrames / Arrow tables (one shard each) or a staged folder; ``load`` returns a
  :class:`ParquetShards` handle that reads lazily.
* ``DirectoryDataset``: a folder produced by a library function (tokenizer model, token shards,
  checkpoints). ``save`` takes a staged folder (from :func:`staging_dir`) and moves it into place;
  ``load`` returns the folder's path after checking it exists.
* ``FigureDataset``: a matplotlib figure (or PNG bytes/file) saved as PNG.
* ``TextDataset``: a UTF-8 text file (the Markdown and HTML reports).
* ``WorkspaceDataset``: a persistent working folder (checkpoints) that a node writes into.
* ``PreferencesDataset``: a user's preference pairs (JSONL, JSON, Parquet or CSV), validated.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from kedro.io import AbstractDataset, DatasetError

from llama2_pipeline.core.files import (
    atomic_path,
    parse_json_line,
    read_jsonl,
    write_jsonl,
)


def staging_dir(name: str = "stage") -> Path:
    """A fresh folder on the same file system as ``data/`` for a node to build an output in.

    ``DirectoryDataset``/``ParquetShardsDataset`` move it into place with a rename. Set
    ``LLAMA2_STAGING`` to put staging elsewhere (it must be on the same file system as data/).
    """
    root = Path(os.environ.get("LLAMA2_STAGING", "data/.staging"))
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))


def _move_into_place(staged: Path, target: Path) -> None:
    staged = Path(staged)
    if not staged.is_dir():
        raise DatasetError(f"cannot save {target}: staged folder {staged} does not exist")
    with atomic_path(target, is_dir=True) as tmp:
        tmp.rmdir()
        shutil.move(str(staged), str(tmp))
    # a node often builds its output one level inside its staging_dir(): drop the emptied holder
    holder = staged.parent
    if holder.parent.resolve() == Path(os.environ.get("LLAMA2_STAGING", "data/.staging")).resolve():
        try:
            holder.rmdir()  # only if empty
        except OSError:
            pass


def run_folder(workspace: Path, identity: dict, keep: int = 1) -> Path:
    """The run folder for this exact configuration inside a stage's workspace.

    Checkpoints are resumed only by a rerun of the same configuration (same params, same input
    digests): a changed parameter starts afresh instead of resuming a stale run. The folders of
    the ``keep - 1`` configurations used most recently before this one stay (so switching back
    resumes, or finds the finished run); older ones are removed. ``keep_runs`` keys in
    ``identity`` (the bound itself) do not count as configuration.
    """
    key = hashlib.sha256(json.dumps(_without_key(identity, "keep_runs"), sort_keys=True).encode()).hexdigest()[:16]
    current = Path(workspace) / key
    current.mkdir(parents=True, exist_ok=True)
    os.utime(current)  # the most recently used configuration
    others = sorted((p for p in Path(workspace).iterdir() if p.is_dir() and p.name != key),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[max(keep, 1) - 1:]:
        shutil.rmtree(old, ignore_errors=True)
    return current


def _without_key(data: object, name: str) -> object:
    if isinstance(data, dict):
        return {k: _without_key(v, name) for k, v in data.items() if k != name}
    return data


class _FileDataset(AbstractDataset):
    def __init__(self, filepath: str, metadata: dict | None = None, read_only: bool = False):
        self._filepath = Path(filepath)
        self.metadata = metadata
        self._read_only = bool(read_only)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def _writable(self) -> None:
        """``read_only: true`` in the catalog (your own files, e.g. conf/byo): saving is refused."""
        if self._read_only:
            raise DatasetError(f"{self._filepath} is read-only in this catalog (your data: read_only: true); "
                               "a node tried to overwrite it. Run the pipeline that writes it without this "
                               "environment (e.g. without --env byo)")

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _require(self) -> None:
        if not self._filepath.exists():
            raise DatasetError(f"{self._filepath} does not exist: run the stage that writes it first")


class JSONLDataset(_FileDataset):
    def load(self) -> list[dict]:
        self._require()
        return read_jsonl(self._filepath)[0]

    def save(self, data: Iterable[dict]) -> None:
        self._writable()
        write_jsonl(self._filepath, data, sort_keys=True)


class DialoguesDataset(JSONLDataset):
    """Chat dialogues, ``{"id"?, "messages": [{"role", "content"}, ...]}`` per line (SFT data).

    ``load`` checks every dialogue as training needs it (an optional system message first, then
    user and assistant alternating, ending with an assistant answer, no blank content) and stops at
    the first bad one naming the file, the line, the dialogue's id and the message (1-based)."""

    def load(self) -> list[dict]:
        from llama2_pipeline.tokenizer.chat import ChatFormatError, validate_messages

        self._require()
        records, rows = read_jsonl(self._filepath)
        for record, row in zip(records, rows):
            where = f"{self._filepath}, line {row}"
            if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
                raise DatasetError(f"{where}: expected an object with a 'messages' list, got {str(record)[:80]!r}")
            try:
                validate_messages(record["messages"], record=record.get("id"))
            except ChatFormatError as e:
                raise DatasetError(f"{where}: {e}") from None
        return records


class JSONDataset(_FileDataset):
    def load(self) -> Any:
        self._require()
        try:
            return json.loads(self._filepath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{self._filepath}: not valid JSON ({e.msg}, line {e.lineno})") from e

    def save(self, data: Any) -> None:
        with atomic_path(self._filepath) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


class MetricsDataset(JSONDataset):
    """Flat metrics: names (snake_case) to finite numbers."""

    def save(self, data: dict[str, float]) -> None:
        bad = [k for k, v in data.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise DatasetError(f"{self._filepath}: metrics must be numbers; not numbers: {bad}")
        super().save({k: data[k] for k in sorted(data)})


@dataclass(frozen=True)
class ParquetShards:
    """A lazily read folder of Parquet shards (``*.parquet``, in name order)."""

    path: Path

    @property
    def files(self) -> list[Path]:
        return sorted(self.path.glob("*.parquet"))

    def iter_tables(self, columns: list[str] | None = None) -> Iterator[Any]:
        import pyarrow.parquet as pq

        for f in self.files:
            yield pq.read_table(f, columns=columns)

    def iter_records(self, columns: list[str] | None = None) -> Iterator[dict]:
        for table in self.iter_tables(columns):
            yield from table.to_pylist()

    def num_rows(self) -> int:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)


class ParquetShardsDataset(_FileDataset):
    def __init__(self, path: str, metadata: dict | None = None, read_only: bool = False):
        super().__init__(path, metadata, read_only)

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._filepath)}

    def load(self) -> ParquetShards:
        self._require()
        shards = ParquetShards(self._filepath)
        if not shards.files:
            raise DatasetError(f"{self._filepath} holds no *.parquet shards")
        return shards

    def save(self, data: Any) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._writable()
        if isinstance(data, ParquetShards):
            _move_into_place(data.path, self._filepath)
            return
        if isinstance(data, (str, Path)):
            _move_into_place(Path(data), self._filepath)
            return
        with atomic_path(self._filepath, is_dir=True) as tmp:
            for i, shard in enumerate(data):
                if isinstance(shard, list):
                    shard = pa.Table.from_pylist(shard)
                elif not isinstance(shard, pa.Table):  # a pandas DataFrame
                    shard = pa.Table.from_pandas(shard, preserve_index=False)
                pq.write_table(shard, tmp / f"part-{i:05d}.parquet", compression="zstd")


class DirectoryDataset(_FileDataset):
    def __init__(self, path: str, metadata: dict | None = None):
        super().__init__(path, metadata)

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._filepath)}

    def load(self) -> Path:
        self._require()
        return self._filepath

    def save(self, data: str | os.PathLike) -> None:
        _move_into_place(Path(data), self._filepath)


class FigureDataset(_FileDataset):
    """A PNG: ``save`` takes a matplotlib figure, PNG bytes, or the path of a PNG file."""

    def load(self) -> bytes:
        self._require()
        return self._filepath.read_bytes()

    def save(self, data: Any) -> None:
        with atomic_path(self._filepath) as tmp:
            if isinstance(data, (bytes, bytearray)):
                tmp.write_bytes(data)
            elif isinstance(data, (str, Path)):
                shutil.copyfile(data, tmp)
            else:
                import matplotlib.pyplot as plt

                data.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
                plt.close(data)


class TextDataset(_FileDataset):
    """A UTF-8 text file (a Markdown or HTML report)."""

    def load(self) -> str:
        self._require()
        return self._filepath.read_text(encoding="utf-8")

    def save(self, data: str) -> None:
        with atomic_path(self._filepath) as tmp:
            tmp.write_text(data, encoding="utf-8")


class WorkspaceDataset(_FileDataset):
    """A persistent working folder (e.g. a training run's checkpoints, kept across crashes so a
    rerun resumes). ``load`` creates it if needed and returns its path; nodes never save to it."""

    def __init__(self, path: str, metadata: dict | None = None):
        super().__init__(path, metadata)

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._filepath)}

    def load(self) -> Path:
        self._filepath.mkdir(parents=True, exist_ok=True)
        return self._filepath

    def save(self, data: Any) -> None:
        raise DatasetError(f"{self._filepath} is a workspace: nodes write into it, they do not save it")


class JSONLCorpusDataset(_FileDataset):
    """A raw corpus as one JSON-lines file of ``{"id", "text", "source"}`` objects (``text``
    required; a missing ``id`` becomes ``<file stem>:<line>``, a missing ``source`` ``""``; other
    fields are ignored), for ``raw_corpus`` in place of a folder of Parquet shards.

    ``load`` checks every line (a bad one raises DatasetError naming the file, the line and the
    field) while streaming it into Parquet shards of ``shard_docs`` documents in a staging folder
    (removed when the returned :class:`ParquetShards` handle is garbage-collected), so the nodes
    get the same handle ``ParquetShardsDataset`` gives. It is an input only: ``save`` refuses.
    """

    def __init__(self, filepath: str, shard_docs: int = 50_000, metadata: dict | None = None):
        super().__init__(filepath, metadata)
        self._shard_docs = int(shard_docs)

    def load(self) -> ParquetShards:
        import weakref

        import pyarrow as pa
        import pyarrow.parquet as pq

        self._require()
        schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])
        folder = staging_dir("raw_corpus_jsonl") / "corpus"
        folder.mkdir()
        seen: dict[str, int] = {}
        rows: list[dict] = []
        shards = 0

        def flush() -> None:
            nonlocal rows, shards
            if rows:
                pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"part-{shards:05d}.parquet")
                rows, shards = [], shards + 1

        try:
            with open(self._filepath, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    rows.append(self._document(line, i, seen))
                    if len(rows) >= self._shard_docs:
                        flush()
            flush()
            if not seen:
                raise DatasetError(f"{self._filepath}: empty corpus (no JSON lines)")
        except BaseException:
            shutil.rmtree(folder.parent, ignore_errors=True)
            raise
        handle = ParquetShards(folder)
        weakref.finalize(handle, shutil.rmtree, str(folder.parent), True)
        return handle

    def _document(self, line: str, i: int, seen: dict[str, int]) -> dict:
        where = f"{self._filepath}, line {i}"
        try:
            record = parse_json_line(line, where)
        except ValueError as e:
            raise DatasetError(str(e)) from None
        if not isinstance(record, dict):
            raise DatasetError(f"{where}: expected an object with fields id, text, source; "
                               f"got {type(record).__name__}")
        text = record.get("text")
        if not isinstance(text, str):
            found = "missing" if "text" not in record else f"{type(text).__name__} {str(text)[:40]!r}"
            raise DatasetError(f"{where}: field 'text' is {found}, expected a string (the document); "
                               f"got fields {sorted(record)}")
        doc_id = record.get("id")
        if doc_id is None:
            doc_id = f"{self._filepath.stem}:{i}"
        elif isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or doc_id == "":
            raise DatasetError(f"{where}: field 'id' is {doc_id!r}, expected a non-empty string or an integer")
        doc_id = str(doc_id)
        if doc_id in seen:
            raise DatasetError(f"{where}: field 'id' {doc_id!r} repeats the id of line {seen[doc_id]}; "
                               "ids must be unique")
        seen[doc_id] = i
        source = record.get("source")
        if source is None:
            source = ""
        elif not isinstance(source, str):
            raise DatasetError(f"{where}: field 'source' is {source!r}, expected a string")
        return {"id": doc_id, "text": text, "source": source}

    def save(self, data: Any) -> None:
        raise DatasetError(f"{self._filepath} is a JSONL corpus you provide (JSONLCorpusDataset reads only); "
                           "point the writing pipeline's entry at a ParquetShardsDataset instead")


class PreferencesDataset(AbstractDataset):
    """A user's preference file, read and validated at load time.

    Formats by suffix: ``.jsonl`` (one object per line), ``.json`` (an array of objects),
    ``.parquet`` (or a folder of ``*.parquet`` shards) and ``.csv``. Columns: ``prompt`` (or
    ``messages``), ``chosen``, ``rejected``, optional ``rating`` and ``category`` (see
    :mod:`llama2_pipeline.training.preferences`). A bad record raises an error naming the file,
    the row (the line for JSONL, the 1-based data row otherwise) and the field. With
    ``missing_ok: true`` an absent file loads as no records (the optional input of ``reward``).
    """
    def __init__(self, filepath: str, missing_ok: bool = False, metadata: dict | None = None):
        self._filepath = Path(filepath)
        self._missing_ok = missing_ok
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "missing_ok": self._missing_ok}

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _read(self) -> tuple[list[Any], list[int]]:
        path, suffix = self._filepath, self._filepath.suffix.lower()
        if suffix == ".jsonl":
            return read_jsonl(path, unit="row")
        if suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
            if not isinstance(data, list):
                raise DatasetError(f"{path}: expected a JSON array of preference objects")
            return data, list(range(1, len(data) + 1))
        if suffix == ".parquet" or path.is_dir():
            import pyarrow.parquet as pq

            files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
            records = [r for f in files for r in pq.read_table(f).to_pylist()]
            return records, list(range(1, len(records) + 1))
        if suffix == ".csv":
            import pandas as pd

            frame = pd.read_csv(path, keep_default_na=False)
            records = frame.to_dict(orient="records")
            return records, list(range(1, len(records) + 1))
        raise DatasetError(f"{path}: unknown preference file type {suffix!r}; use .jsonl, .json, .parquet or .csv")

    def load(self) -> list[dict]:
        if not self._filepath.exists():
            if self._missing_ok:
                return []
            raise DatasetError(f"{self._filepath} does not exist")
        from llama2_pipeline.training.preferences import validate_preferences

        records, rows = self._read()
        return validate_preferences(records, source=str(self._filepath), rows=rows)

    def save(self, data: Iterable[dict]) -> None:
        if self._filepath.suffix.lower() != ".jsonl":
            raise DatasetError(f"{self._filepath}: PreferencesDataset saves JSONL only")
        with atomic_path(self._filepath) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n" for record in data)
