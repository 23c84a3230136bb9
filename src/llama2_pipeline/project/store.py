"""Where a run records: the project's MLflow store, also from DVC's temporary experiment copies.

``conf/base/mlflow.yml`` names the embedded store as ``sqlite:///mlflow.db``: a path relative to
the working directory. ``dvc exp run --temp`` and ``dvc exp run --queue`` run the stages in a
copy of the repository under ``<repo>/.dvc/tmp/exps/``, deleted afterwards, so a
relative store would record there and be lost. :func:`store_root` maps such a copy back to the
repository DVC names in ``DVC_ROOT`` (DVC sets it to the parent repository for queued and
temporary runs); :func:`mlflow_config` makes the tracking URI and the experiment's artifact
location absolute under that root, so every run, wherever it ran, lands in the project's
``mlflow.db`` and ``mlruns/``. Stores given as URLs (``http://``, ``postgresql://``) are left alone.
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

#: where DVC puts the copies of ``dvc exp run --temp`` / ``--queue`` (``dvc.repo.experiments.utils.EXEC_TMP_DIR``)
EXPERIMENT_COPIES = (".dvc", "tmp", "exps")
#: the MLflow UI's tag for what an experiment holds: training runs, not GenAI traces (MLflow 3)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def store_root(project_path: str | os.PathLike) -> Path:
    """The folder whose ``mlflow.db`` and ``mlruns/`` a run in ``project_path`` records into:
    ``project_path`` itself, or, inside a DVC experiment's temporary copy, the same folder of
    the repository the copy was made from."""
    project = Path(project_path).resolve()
    dvc_root = os.environ.get("DVC_ROOT")
    if not dvc_root:
        return project
    root = Path(dvc_root).resolve()
    copies = root.joinpath(*EXPERIMENT_COPIES)
    if not project.is_relative_to(copies) or project == copies:
        return project
    # the copy is a clone of the repository (``exps/tmpXXXX/`` or ``exps/standalone/tmpXXXX/``):
    # the project is at the same place below its top as here below the repository's
    copy_top, repo_top = _git_top(project), _git_top(root)
    if copy_top is not None and repo_top is not None and copy_top.is_relative_to(copies):
        return repo_top / project.relative_to(copy_top)
    parts = project.relative_to(copies).parts
    executor = next((i for i, p in enumerate(parts) if p.startswith("tmp")), 0)
    return root.joinpath(*parts[executor + 1:])


def _git_top(folder: Path) -> Path | None:
    p = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=folder, capture_output=True, text=True, check=False)
    return Path(p.stdout.strip()).resolve() if p.returncode == 0 and p.stdout.strip() else None


def absolute_sqlite(uri: str, root: Path) -> str:
    """``sqlite:///relative.db`` made absolute under ``root``; any other URI unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/") and ":memory:" not in uri:
        return f"{prefix}{root / uri[len(prefix):]}"
    return uri


def mlflow_config(conf: dict[str, Any], project_path: str | os.PathLike) -> dict[str, Any]:
    """kedro-mlflow's configuration (``mlflow.yml``) with the store resolved by :func:`store_root`:
    a relative sqlite tracking (and registry) URI made absolute, and a new experiment's artifacts
    under ``<root>/mlruns/<experiment>`` (MLflow would otherwise put them under the working
    directory), tagged as an experiment of training runs."""
    root = store_root(project_path)
    out = copy.deepcopy(conf)
    server = out.setdefault("server", {})
    uri = server.get("mlflow_tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    server["mlflow_tracking_uri"] = absolute_sqlite(uri, root)
    if server.get("mlflow_registry_uri"):
        server["mlflow_registry_uri"] = absolute_sqlite(server["mlflow_registry_uri"], root)
    if server["mlflow_tracking_uri"].startswith("sqlite:///"):
        experiment = out.setdefault("tracking", {}).setdefault("experiment", {})
        create = experiment.setdefault("create_experiment_kwargs", {})
        if not create.get("artifact_location"):
            create["artifact_location"] = str(root / "mlruns" / str(experiment.get("name") or "default"))
        create["tags"] = {**EXPERIMENT_KIND, **(create.get("tags") or {})}
    return out
