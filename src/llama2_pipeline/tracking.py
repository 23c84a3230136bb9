"""Kedro-side MLflow helper for nodes: stream a library's metrics into the active run.

Library code (training loops, cleaning) takes a plain ``log_fn(metrics, step)`` callback and
knows nothing of MLflow; nodes pass :func:`mlflow_log_fn`. Multi-rank launches forward rank 0's
``metrics.jsonl`` lines to the same callback (``training.launcher``).
"""

from __future__ import annotations

import math
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
