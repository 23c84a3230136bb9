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
import warnings
from typing import Any, Callable

import kedro.framework.project  # noqa: F401  (Kedro's logging, which takes over warnings: before the import below)
import mlflow
from kedro.framework.hooks import hook_impl

# kedro-mlflow's KedroPipelineModel is an MLflow PythonModel whose predict has no type hints, so
# importing it makes MLflow warn "Add type hints to the `predict` method ..." in every `kedro run`
# and `dvc repro` stage (MLflow shows it under its own "once" filter, past any filter set here).
# The recipe does not serve through that class, and its own served models leave predict unhinted by
# design (pipelines/registry/served.py): that warning is dropped, any other one shown as it came.
with warnings.catch_warnings(record=True) as _caught:
    from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook
for _w in _caught:
    if "Add type hints to the `predict` method" not in str(_w.message):
        warnings.warn_explicit(_w.message, _w.category, _w.filename, _w.lineno)


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
