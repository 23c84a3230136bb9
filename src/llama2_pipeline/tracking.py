"""Kedro-side MLflow helpers for nodes: stream a library's metrics into the active run.

Library code (training loops, cleaning) takes a plain ``log_fn(metrics, step)`` callback and
knows nothing of MLflow; nodes pass :func:`mlflow_log_fn`. For training that runs in other
processes (multi-rank launches), rank 0 appends JSON lines to a file that :class:`MetricsTail`
follows and forwards, so metrics still appear in ``mlflow ui`` while the run is going.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Callable

import mlflow


def mlflow_log_fn(prefix: str = "") -> Callable[[dict, int], None]:
    """A ``log_fn(metrics, step)`` logging finite numbers to the active MLflow run, if any."""

    def log(metrics: dict, step: int) -> None:
        if mlflow.active_run() is None:
            return
        clean = {f"{prefix}{k}": float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if clean:
            mlflow.log_metrics(clean, step=int(step))

    return log


class MetricsTail:
    """Follow a JSONL file of ``{"step": n, ...metrics}`` lines and forward each to ``log_fn``."""

    def __init__(self, path: str | Path, log_fn: Callable[[dict, int], None], interval: float = 1.0):
        self.path, self.log_fn, self.interval = Path(path), log_fn, interval
        self._stop = threading.Event()
        self._offset = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MetricsTail":
        self._offset = self.path.stat().st_size if self.path.exists() else 0  # only new lines
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._drain()

    def _drain(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            f.seek(self._offset)
            while True:
                line = f.readline()
                if not line.endswith("\n"):
                    break  # a partial line: read it next time
                self._offset = f.tell()
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                step = rec.pop("step", 0)
                self.log_fn(rec, step)
