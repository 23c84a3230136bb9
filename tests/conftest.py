"""Shared fixtures: a throw-away copy of the project for real Kedro/DVC/MLflow runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
_SKIP = {".venv", ".git", "mlflow.db", "mlruns", "build", ".pytest_cache", "__pycache__", "cache", "tmp",
         ".staging", ".whl", "benchmarks_out", "dist"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    rel = Path(folder).resolve().relative_to(ROOT)
    skip = {n for n in names if n in _SKIP or n.endswith(".egg-info")}
    if rel.parts[:1] == ("data",) and len(rel.parts) == 2:  # keep data/<layer>/ but not its outputs
        skip |= {n for n in names if n != ".gitkeep"}
    if rel == Path("metrics"):
        skip |= set(names)
    return skip


def env() -> dict:
    e = dict(os.environ)
    e.update(DO_NOT_TRACK="true", DVC_NO_ANALYTICS="1", KEDRO_DISABLE_TELEMETRY="true", PYTHONHASHSEED="0",
             PATH=f"{BIN}{os.pathsep}{e.get('PATH', '')}")
    e.pop("MLFLOW_TRACKING_URI", None)
    e.pop("LLAMA2_REPRO_GROUP", None)
    return e


#: a small world (seed 3, 120 prompts, 100 demonstrations, no annotator noise) for tests that judge answers
SMALL_WORLD = {"seed": 3, "n_entities": 8, "prompts": {"n_arithmetic": 60, "n_list": 30, "n_string": 30, "eval_fraction": 0.2},
               "corpus": {"size_mb": 0.1, "shard_docs": 100, "mix": {"article": 1.0}},
               "sft": {"n_dialogues": 100, "multi_turn_fraction": 0.2, "max_turns": 3, "system_fraction": 0.2,
                       "constraint_fraction": 0.1},
               "annotator": {"disagreement_rate": 0.0}}


def run(cmd: list[str] | str, cwd: Path, check: bool = True, timeout: int = 900,
        extra_env: dict | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, check=False, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True, timeout=timeout,
                       shell=isinstance(cmd, str))
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-8000:]}")
    return p


def make_project_copy(dest: Path, profile: str = "smoke", overrides: dict | None = None) -> Path:
    """Copy the project's sources (no outputs, no stores) to ``dest``, set the profile, git-commit it."""
    shutil.copytree(ROOT, dest, ignore=_ignore, symlinks=True)
    params_file = dest / "params.yaml"
    text = params_file.read_text()
    text = text.replace("\nprofile: default", f"\nprofile: {profile}", 1)
    params_file.write_text(text)
    if overrides:
        from llama2_pipeline.recipe import deep_merge

        params_file.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(text), overrides), sort_keys=False))
    run("git init -q && git add -A && git -c user.name=t -c user.email=t@localhost commit -qm snapshot", dest)
    return dest


if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two test processes on the cores: their
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # OpenMP threads sleep when idle (spinning, they
    # starved each other: one learning test 14x slower); the results do not depend on it


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Training runs set process-wide torch state (threads, deterministic algorithms); put it back
    after every test, so that a test with ``num_threads=1`` does not leave the tests after it (the
    learning tests, 2x slower so) on one thread."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project_copy(tmp_path / "proj")


@pytest.fixture(scope="session")
def smoke_repro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy (smoke profile) in which ``dvc repro`` ran every stage: outputs under data/
    and metrics/, dvc.lock, and the MLflow runs in its mlflow.db. Shared by the whole session:
    treat it as read-only.

    Under ``make test`` the test processes share one copy: the first to ask builds it under a file
    lock, the others wait for it (a copy for each process was the same work twice: on a 2-core
    machine the whole suite took 825 s so, 692 s sharing one). A failed build is reported to every
    process that asks, not built again."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _build_smoke_repro(tmp_path_factory.mktemp("e2e"))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the pytest run's folder, above each process's own
    folder, done, failed = (shared / f"smoke_repro{end}" for end in ("", ".done", ".failed"))
    with FileLock(shared / "smoke_repro.lock"):
        if failed.exists():
            raise AssertionError(f"the shared smoke run failed in another test process:\n{failed.read_text()}")
        if not done.exists():  # (dvc.lock grows stage by stage: not a sign of a finished run)
            shutil.rmtree(folder, ignore_errors=True)  # what a process killed while building left
            try:
                _build_smoke_repro(folder)
            except BaseException as e:
                failed.write_text(f"{type(e).__name__}: {e}")
                raise
            done.touch()
    return folder / "proj"


def copy_of_smoke_repro(smoke: Path, dest: Path) -> Path:
    """A copy of ``smoke_repro`` to change, without DVC's locks: another test process may be
    running a DVC command in the shared run while this copies it."""
    return Path(shutil.copytree(smoke, dest, symlinks=True,
                                ignore=lambda folder, names: names if Path(folder) == smoke / ".dvc" / "tmp" else []))


def _build_smoke_repro(folder: Path) -> Path:
    proj = make_project_copy(folder / "proj", "smoke")
    run(["dvc", "repro"], proj, timeout=1500)
    return proj
