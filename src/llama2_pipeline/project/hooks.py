"""Lineage for every ``kedro run``: tags, dataset digests, metrics and artifacts in MLflow.

kedro-mlflow's hook (``tracking.MlflowRunHook``) starts one MLflow run per ``kedro run`` in the
project's experiment. This hook adds, on the same run:

* the parameters the run's nodes read, flattened (``sft.train.lr``, ``rlhf.ppo.beta``);

* tags: ``git_commit`` (+ ``mlflow.source.git.commit``), ``git_dirty``, ``pipelines``,
  ``profile``, ``dvc_stage`` (when DVC runs the stage), ``repro_group`` (one value per
  ``dvc repro``/``make demo`` invocation) and ``mlflow.parentRunId``, so all the runs of one
  ``dvc repro`` appear nested under one parent run in ``mlflow ui``;
* for every dataset read or written: its path and sha256 (tags ``input.<name>`` /
  ``output.<name>``, and a ``lineage.json`` artifact with the whole table);
* every ``MetricsDataset`` saved is logged as MLflow metrics;
* outputs up to ``tracking.artifact_max_mb`` are logged as artifacts under ``outputs/<name>``;
  larger ones (checkpoints) only by digest, DVC holding the bytes. Datasets that may hold personal
  data (``metadata: {pii: true}`` in the catalog: the raw corpus, the canary list, your own files)
  are recorded by path and digest only, never copied into the tracking store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from mlflow.tracking import MlflowClient

from llama2_pipeline.core.files import sha256_path, write_json
from llama2_pipeline.core.schema import flatten, to_plain
from llama2_pipeline.project.datasets import MetricsDataset, WorkspaceDataset

log = logging.getLogger(__name__)
GROUP_ENV = "LLAMA2_REPRO_GROUP"


# what `dvc repro` itself rewrites while it runs the stages: not a change of the code version
_NOT_CODE = (":(exclude)dvc.lock", ":(exclude)metrics", ":(exclude)data")


def git_state(root: Path) -> tuple[str, bool]:
    """(commit sha or 'unknown', dirty flag) of the repository holding ``root``. Dirty: a tracked
    file differs from the commit, not counting dvc.lock, metrics/ and data/ (DVC's outputs, which
    every stage of a ``dvc repro`` after the first would otherwise see changed)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *_NOT_CODE],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip() != ""
        return sha, dirty
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown", True


def proc_start(pid: int) -> str:
    """The start time of process ``pid`` (clock ticks since boot): with the pid, names one process."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]


def repro_group() -> str | None:
    """An id shared by every process started by one ``dvc repro`` (or the env var GROUP_ENV)."""
    if os.environ.get(GROUP_ENV):
        return os.environ[GROUP_ENV]
    if not os.environ.get("DVC_STAGE"):
        return None
    pid = os.getppid()
    for _ in range(8):  # walk up to the dvc process
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "dvc" in cmd:
                return "dvc-" + hashlib.sha256(f"{pid}-{proc_start(pid)}".encode()).hexdigest()[:12]
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return None


def _dataset_path(dataset: Any) -> Path | None:
    for attr in ("_filepath", "_path"):
        p = getattr(dataset, attr, None)
        if p is not None:
            return Path(str(p))
    return None


def may_hold_pii(dataset: Any) -> bool:
    """``metadata: {pii: true}`` on the dataset's catalog entry: record it by path and digest only."""
    metadata = getattr(dataset, "metadata", None) or {}
    return bool(metadata.get("pii", False))


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class LineageHook:
    def __init__(self) -> None:
        self._catalog = None
        self._records: dict[str, dict] = {}
        self._artifact_max = 5 * 2**20

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._root = Path(context.project_path)
        tracking = context.params.get("tracking", {})
        self._artifact_max = int(float(tracking.get("artifact_max_mb", 5)) * 2**20)
        self._params = context.params

    @hook_impl(trylast=True)  # after kedro-mlflow has started the run
    def before_pipeline_run(self, run_params: dict, pipeline: Any, catalog: Any) -> None:
        self._catalog = catalog
        self._records = {}
        if mlflow.active_run() is None:
            return
        sha, dirty = git_state(self._root)
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        tags = {"git_commit": sha, "mlflow.source.git.commit": sha, "git_dirty": str(dirty).lower(),
                "pipelines": ",".join(names), "profile": str(self._params.get("profile")),
                "seed": str(self._params.get("seed"))}
        if os.environ.get("DVC_STAGE"):
            tags["dvc_stage"] = os.environ["DVC_STAGE"]
        group = repro_group()
        if group:
            tags["repro_group"] = group
            parent = self._parent_run(group)
            if parent:
                tags["mlflow.parentRunId"] = parent
        mlflow.set_tags(tags)
        self._log_params(pipeline)

    def _log_params(self, pipeline: Any) -> None:
        """The parameters the pipeline's nodes read, once, as flat ``group.key`` names."""
        used = sorted(n.removeprefix("params:") for n in pipeline.inputs() if n.startswith("params:"))
        flat: dict[str, Any] = {}
        for name in used:
            value: Any = self._params
            for part in name.split("."):
                value = value[part] if isinstance(value, dict) else getattr(value, part)
            value = to_plain(value)
            flat.update(flatten(value, f"{name}.") if isinstance(value, dict) else {name: value})
        items = list(flat.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
            mlflow.log_params(dict(items[i:i + 100]))

    def _parent_run(self, group: str) -> str | None:
        """The run that groups one ``dvc repro``: found by tag, created by the first stage."""
        run = mlflow.active_run()
        client = MlflowClient()
        exp = run.info.experiment_id
        query = f"tags.repro_group = '{group}' and tags.repro_parent = 'true'"
        found = client.search_runs([exp], query, max_results=1)
        if found:
            return found[0].info.run_id
        parent = client.create_run(exp, run_name=f"dvc repro {group}",
                                   tags={"repro_group": group, "repro_parent": "true"})
        client.set_terminated(parent.info.run_id)
        return parent.info.run_id

    def _record(self, direction: str, name: str) -> None:
        if self._catalog is None or name.startswith("params:") or name == "parameters":
            return
        dataset = self._catalog.get(name)
        if isinstance(dataset, WorkspaceDataset):  # checkpoints to resume from: scratch, not lineage
            return
        path = _dataset_path(dataset) if dataset is not None else None
        if path is None or not path.exists():
            return
        rel = path.resolve()
        try:
            rel = rel.relative_to(self._root.resolve())
        except ValueError:
            pass
        entry = {"dataset": name, "direction": direction, "path": str(rel), "sha256": sha256_path(path),
                 "bytes": _size(path), "pii": may_hold_pii(dataset)}
        self._records[f"{direction}:{name}"] = entry
        if mlflow.active_run() is None:
            return
        mlflow.set_tag(f"{direction}.{name}", f"{entry['path']}@sha256:{entry['sha256']}")
        if direction == "output":
            if isinstance(dataset, MetricsDataset):
                metrics = dataset.load()
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            if entry["bytes"] <= self._artifact_max and not entry["pii"]:
                if path.is_dir():
                    mlflow.log_artifacts(str(path), f"outputs/{name}")
                else:
                    mlflow.log_artifact(str(path), f"outputs/{name}")

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any, node: Any) -> None:
        if f"output:{dataset_name}" not in self._records:  # an input of this run, not an intermediate
            self._record("input", dataset_name)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        self._record("output", dataset_name)

    @hook_impl(tryfirst=True)  # before kedro-mlflow ends the run
    def after_pipeline_run(self, run_params: dict, run_result: Any, pipeline: Any, catalog: Any) -> None:
        if mlflow.active_run() is None or not self._records:
            return
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "lineage.json"
            write_json(target, sorted(self._records.values(), key=lambda r: (r["direction"], r["dataset"])))
            mlflow.log_artifact(str(target))
