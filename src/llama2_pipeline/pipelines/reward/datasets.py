"""``PreferencesDataset``: a user's preference file, read and validated at load time.

Formats by suffix: ``.jsonl`` (one object per line), ``.json`` (an array of objects),
``.parquet`` (or a folder of ``*.parquet`` shards) and ``.csv``. Columns: ``prompt`` (or
``messages``), ``chosen``, ``rejected``, optional ``rating`` and ``category`` (see
:mod:`llama2_pipeline.training.preferences`). A bad record raises an error naming the file, the
row (the line for JSONL, the 1-based data row otherwise) and the field. With ``missing_ok: true``
an absent file loads as no records (the optional input of the ``reward`` pipeline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from kedro.io import AbstractDataset, DatasetError

from llama2_pipeline.datasets import read_jsonl
from llama2_pipeline.io_utils import atomic_path
from llama2_pipeline.training.preferences import validate_preferences


class PreferencesDataset(AbstractDataset):
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
        records, rows = self._read()
        return validate_preferences(records, source=str(self._filepath), rows=rows)

    def save(self, data: Iterable[dict]) -> None:
        if self._filepath.suffix.lower() != ".jsonl":
            raise DatasetError(f"{self._filepath}: PreferencesDataset saves JSONL only")
        with atomic_path(self._filepath) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for record in data:
                f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
