"""MLflow for the Kedro runs: kedro-mlflow's run per ``kedro run``, and a metrics callback for nodes.

Library code (training loops, cleaning) takes a plain ``log_fn(metrics, step)`` callback and
knows nothing of MLflow; nodes pass :func:`mlflow_log_fn`. Multi-rank launches forward rank 0's
``metrics.jsonl`` lines to the same callback (``training.launcher``).

:class:`MlflowRunHook` is kedro-mlflow's hook (one run per ``kedro run``, nested under a ``dvc
repro``'s parent run by the lineage hook) without its per-node parameter logging: nodes receive
typed parameters, which it would log as one string each; the lineage hook logs the run's
parameters once, flattened (``sft.train.lr``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import mlflow
from kedro.framework.hooks import hook_impl
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook


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


class MlflowRunHook(MlflowHook):
    """kedro-mlflow's hook, registered by ``settings.py`` instead of its plugin entry point."""

    @hook_impl
    def before_node_run(self, node: Any, catalog: Any, inputs: dict[str, Any], is_async: bool) -> None:
        data = {k: v for k, v in inputs.items() if not k.startswith("params:") and k != "parameters"}
        super().before_node_run(node, catalog, data, is_async)
