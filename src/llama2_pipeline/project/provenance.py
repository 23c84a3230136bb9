"""What a run needs to be explained and rebuilt later, and what a dead run leaves behind.

:class:`ProvenanceHook` adds to the MLflow run of every ``kedro run`` (next to the lineage hook's
tags):

* the environment (``env.*`` tags, :mod:`.environment`): package versions, CPU and instruction
  sets, GPU, the math libraries' switches; torch's kernel level and threads once a stage imported it;
* how the parameters were given: ``params_sha256`` (of ``params.yaml``), ``kedro_env``, the
  ``kedro run --params`` overrides (``params_overrides``, JSON) and, when ``params.yaml`` differs
  from the commit (as under ``dvc exp run --set-param``), the file itself as the artifact
  ``provenance/params.yaml`` (tag ``params_modified``); ``dvc exp run`` runs also get
  ``dvc_exp_name`` and ``dvc_exp_baseline``. ``make reproduce`` rebuilds a run from these;
* ``host`` and ``pid`` (with the process start time), so that the next run of the same pipelines
  finds a run whose process is gone while MLflow still says ``RUNNING`` (``kill -9``, out of
  memory, a power cut) and marks it ``FAILED`` with a ``failure_reason`` tag; a run that fails with
  an exception gets the exception as its ``failure_reason``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from mlflow.tracking import MlflowClient

from llama2_pipeline.core.files import sha256_file
from llama2_pipeline.project.environment import environment, torch_runtime
from llama2_pipeline.project.hooks import proc_start

log = logging.getLogger(__name__)
PARAMS_FILE = "params.yaml"
PARAMS_ARTIFACT = "provenance/params.yaml"


def process_tag(pid: int | None = None) -> str:
    """``<pid>@<start time in clock ticks>``: names one process even after its pid is reused."""
    pid = os.getpid() if pid is None else pid
    try:
        return f"{pid}@{proc_start(pid)}"
    except (OSError, IndexError):
        return str(pid)


def process_alive(tag: str) -> bool:
    """Whether the process a :func:`process_tag` names still runs (on this host)."""
    pid, _, start = tag.partition("@")
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return not start or process_tag(int(pid)) == tag


def params_modified(root: Path) -> bool:
    """Whether ``params.yaml`` differs from the commit (``dvc exp run --set-param`` edits it); True
    where git cannot tell (no repository), so that the file is recorded."""
    try:
        p = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", PARAMS_FILE], cwd=root, capture_output=True,
                           check=False)
    except OSError:  # no git
        return True
    return p.returncode != 0


def mark_dead_runs(client: MlflowClient, experiment_id: str, pipelines: str, current: str, host: str) -> list[str]:
    """Mark the ``RUNNING`` runs of ``pipelines`` whose process is gone ``FAILED``; returns their ids.

    Only runs started on this host can be checked (a run elsewhere may still be alive)."""
    query = f"attributes.status = 'RUNNING' and tags.pipelines = '{pipelines}'"
    marked = []
    for run in client.search_runs([experiment_id], query, max_results=200):
        tags = run.data.tags
        if run.info.run_id == current or tags.get("host") != host or not tags.get("pid"):
            continue
        if process_alive(tags["pid"]):
            continue
        now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        reason = (f"its process (pid {tags['pid'].split('@')[0]} on {host}) ended without closing the run: it was "
                  f"killed (e.g. kill -9, out of memory) or the machine stopped; marked FAILED by run {current} "
                  f"of the same pipelines at {now}")
        client.set_tag(run.info.run_id, "failure_reason", reason)
        client.set_tag(run.info.run_id, "mlflow.note.content", f"FAILED: {reason}")
        client.set_terminated(run.info.run_id, status="FAILED")
        log.warning("MLflow run %s (%s) was left RUNNING by a dead process: marked FAILED", run.info.run_id,
                    pipelines)
        marked.append(run.info.run_id)
    return marked


class ProvenanceHook:
    def __init__(self) -> None:
        self._root = Path.cwd()

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._root = Path(context.project_path)

    @hook_impl(trylast=True)  # after kedro-mlflow has started the run
    def before_pipeline_run(self, run_params: dict, pipeline: Any, catalog: Any) -> None:
        run = mlflow.active_run()
        if run is None:
            return
        host = socket.gethostname()
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        tags = {**environment(), "host": host, "pid": process_tag(), "kedro_env": str(run_params.get("env"))}
        overrides = run_params.get("runtime_params") or run_params.get("extra_params") or {}
        if overrides:
            tags["params_overrides"] = json.dumps(overrides, sort_keys=True)
        for var, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline")):
            if os.environ.get(var):
                tags[tag] = os.environ[var]
        params = self._root / PARAMS_FILE
        if params.is_file():
            tags["params_sha256"] = sha256_file(params)
            modified = params_modified(self._root)
            tags["params_modified"] = str(modified).lower()
            if modified:
                mlflow.log_artifact(str(params), os.path.dirname(PARAMS_ARTIFACT))
        mlflow.set_tags(tags)
        mark_dead_runs(MlflowClient(), run.info.experiment_id, ",".join(names), run.info.run_id, host)

    @hook_impl(tryfirst=True)  # before kedro-mlflow ends the run
    def after_pipeline_run(self, run_params: dict, run_result: Any, pipeline: Any, catalog: Any) -> None:
        import sys

        if mlflow.active_run() is not None and "torch" in sys.modules:
            mlflow.set_tags({f"env.{k}": v for k, v in torch_runtime().items()})

    @hook_impl(tryfirst=True)  # before kedro-mlflow ends the run as FAILED
    def on_pipeline_error(self, error: Exception, run_params: dict, pipeline: Any, catalog: Any) -> None:
        if mlflow.active_run() is not None:
            mlflow.set_tag("failure_reason", f"{type(error).__name__}: {error}"[:5000])


def recorded_params_file(client: MlflowClient, run_id: str, dest: Path) -> Path | None:
    """Write the run's recorded ``params.yaml`` (when it differed from its commit) to ``dest``."""
    tags = client.get_run(run_id).data.tags
    if tags.get("params_modified") != "true":
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(run_id, PARAMS_ARTIFACT, tmp))
        if tags.get("params_sha256") and sha256_file(local) != tags["params_sha256"]:
            raise ValueError(f"run {run_id}: the recorded {PARAMS_ARTIFACT} does not match its params_sha256 tag")
        dest.write_bytes(local.read_bytes())
    return dest
