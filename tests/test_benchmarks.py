"""The benchmark scripts' own logic: the end-to-end benchmark's fresh copy must be the project as
committed; the device check of the RLHF stage runs (here on the CPU)."""

from __future__ import annotations

import importlib.util
import subprocess

import yaml

from tests.conftest import ROOT


def _bench(name: str = "bench_e2e"):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"benchmarks/{name}.py")
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


def test_rlhf_device_check_runs_ppo_and_evaluation(tmp_path):
    import math

    import gc

    from llama2_pipeline.model import Llama

    def alive() -> int:
        return sum(isinstance(o, Llama) for o in gc.get_objects())

    before = alive()
    result = _bench("gpu_rlhf_check").main(["--steps", "2", "--out", str(tmp_path / "r.json")])
    assert alive() == before  # PPO's five models and the evaluation's four are all gone (GPU memory free)
    assert result["device"] == "cpu" and result["cuda_peak_mib"] == 0.0  # no GPU here: all on the CPU
    assert result["ppo"]["ppo_steps"] == 2
    assert all(math.isfinite(v) for v in list(result["ppo"].values()) + list(result["eval"].values()))
    assert 0.0 <= result["eval"]["policy_safety"] <= 1.0
    assert (tmp_path / "r.json").exists()
