"""The end-to-end benchmark's fresh copy: what it runs must be the project as committed."""

from __future__ import annotations

import importlib.util
import subprocess

import yaml

from tests.conftest import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("bench_e2e", ROOT / "benchmarks/bench_e2e.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fresh_copy_keeps_params_link_and_switches_profile(tmp_path):
    dest = _bench().copy_project(tmp_path / "copy", "smoke")
    link = dest / "conf/base/parameters.yml"
    # Kedro reads conf/base/parameters.yml: in the copy it must still be the copy's params.yaml
    assert link.is_symlink() and link.resolve() == (dest / "params.yaml").resolve()
    assert yaml.safe_load(link.read_text())["profile"] == "smoke"
    assert (dest / "dvc.yaml").read_bytes() == (ROOT / "dvc.yaml").read_bytes()
    assert not (dest / "data/06_models/sft").exists() and not (dest / ".venv").exists()  # sources only
    status = subprocess.run(["git", "status", "--porcelain"], cwd=dest, capture_output=True, text=True, check=True)
    assert status.stdout == ""  # committed, so DVC and MLflow record a clean revision
