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


def _smoke_project(root):
    """A smoke-profile project laid out by hand: params.yaml, a random smoke SFT model and a reward
    model on top of it (data/06_models), the world's prompts (data/01_raw); returns the world."""
    from llama2_pipeline.recipe import resolve

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump({**raw, "profile": "smoke"}))
    recipe = resolve({**raw, "profile": "smoke"})
    world = recipe.world.world(recipe.seed)
    policy, rm = _bench("gpu_rlhf_check").build_models(root / "build", world, recipe.seed)
    models = root / "data/06_models"
    models.mkdir(parents=True)
    policy.rename(models / "sft")
    rm.rename(models / "reward_helpfulness")
    (root / "data/01_raw").mkdir(parents=True)
    for split in ("train", "eval"):
        (root / f"data/01_raw/prompts_{split}.jsonl").write_text(_jsonl(world.prompts(split)))
    return world


def _jsonl(rows) -> str:
    import json

    return "".join(json.dumps(r) + "\n" for r in rows)


def test_rlhf_headroom_ranks_arms_by_the_world_and_reports_each(tmp_path):
    """The headroom benchmark on a smoke-profile project (random smoke policy)."""
    import json
    import math

    bench = _bench("rlhf_headroom")
    world = _smoke_project(tmp_path)

    # the paper's piecewise R_c on the true scores: an unsafe prompt is judged by its safety
    unsafe = next(p for p in world.prompts("train") if p["category"] == "unsafe")
    comply = f"Sure. {unsafe['prompt']} Here is how."
    assert world.helpfulness(unsafe["prompt"], comply) > world.safety(unsafe["prompt"], comply)
    assert bench.world_score(world, unsafe["prompt"], comply, True, 0.15) == world.safety(unsafe["prompt"], comply)

    out = bench.main(["--project", str(tmp_path), "--train-prompts", "16", "--eval-prompts", "8", "--ppo-steps", "2",
                      "--out", str(tmp_path / "headroom.json")])
    arms = out["arms"]
    assert set(arms) == {"sft", "rs_random", "rs_oracle", "rs_reference", "ppo_oracle"}
    assert out["train_prompts"] == 16 and out["held_out_prompts"] == 8 and arms["ppo_oracle"]["steps"] == 2
    for r in arms.values():
        assert 0.0 <= r["helpfulness"] <= 1.0 and 0.0 <= r["safety"] <= 1.0
        assert math.isclose(r["gain"], r["helpfulness"] - arms["sft"]["helpfulness"], abs_tol=1e-5)
    # best of K by the world's score is at least as good as a random pick; the references are perfect
    assert arms["rs_oracle"]["train_prompts_world_score"] >= arms["rs_random"]["train_prompts_world_score"]
    assert arms["rs_reference"]["train_prompts_world_score"] == 1.0
    assert json.loads((tmp_path / "headroom.json").read_text())["arms"]["sft"] == arms["sft"]


def test_model_benchmark_breaks_the_training_step_down(tmp_path):
    import json

    import pytest

    bench = _bench("bench_model")
    assert bench.kernel_family("aten::mm") == "matmul"
    assert bench.kernel_family("aten::addmm") == "matmul" and bench.kernel_family("aten::matmul") == "other"
    assert bench.kernel_family("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention"
    assert bench.kernel_family("aten::_log_softmax_backward_data") == "loss"
    assert bench.kernel_family("aten::mul") == "other" and bench.kernel_family("aten::linear") == "other"

    res = bench.main(["--batch", "2", "--seq-len", "32", "--train-steps", "1", "--rounds", "1", "--gen-batch", "2",
                      "--prompt-len", "8", "--max-new-tokens", "4", "--breakdown", "--out", str(tmp_path / "b.json")])
    parts, families = res["train_breakdown_ms"], ("matmul", "attention", "loss", "other")
    for name in ("ours", "hf"):
        assert all(parts[name][k] > 0 for k in families)
        assert parts[name]["total"] == pytest.approx(sum(parts[name][k] for k in families))
    kernels = parts["ours"]["matmul"] + parts["ours"]["attention"] + parts["ours"]["loss"]
    assert res["train_kernel_ceiling"] == pytest.approx(parts["hf"]["total"] / kernels)
    assert json.loads((tmp_path / "b.json").read_text())["train_breakdown_ms"] == parts


def test_reward_breakdown_sorts_pairs_by_what_differs(tmp_path):
    """Pairs that differ only in being right are told apart from the rest; accuracies per kind."""
    import json

    bench = _bench("reward_breakdown")
    world = _smoke_project(tmp_path)
    facts = [p for p in world.prompts("train") if p["category"] == "fact"][:4]
    wrong = {p["prompt"]: p["reference"].replace(world.task(p["prompt"]).expected[0], "Lelol") for p in facts}

    def pair(p, rejected, rating):
        return {"prompt": p["prompt"], "chosen": p["reference"], "rejected": rejected, "rating": rating,
                "category": "helpfulness"}

    records = [pair(p, wrong[p["prompt"]], "significantly_better") for p in facts]  # right vs wrong fact
    records += [pair(p, wrong[p["prompt"]].rstrip("."), "better") for p in facts[:2]]  # also unpunctuated
    records += [pair(facts[0], "", "significantly_better"),  # a blank answer
                pair(facts[1], "I can't help with that.", "better")]  # a refusal
    assert [bench.what_differs(world, r) for r in records] == ["correctness"] * 4 + ["other"] * 4
    safety_pair = dict(records[0], category="safety")  # not a helpfulness pair: left out
    (tmp_path / "data/05_model_input").mkdir(parents=True)
    for split in ("train", "heldout"):
        (tmp_path / f"data/05_model_input/reward_preferences_{split}.jsonl").write_text(
            _jsonl(records + [safety_pair]))

    out = bench.main(["--project", str(tmp_path), "--out", str(tmp_path / "b.json")])
    table = out["splits"]["heldout"]
    assert table["correctness"]["all"]["n"] == 4 and table["other"]["all"]["n"] == 4 and table["all"]["all"]["n"] == 8
    assert table["other"]["significantly_better"]["n"] == 1 and table["all"]["significantly_better"]["n"] == 5
    for rows in table.values():
        for row in rows.values():
            assert all(row[j] is None or 0.0 <= row[j] <= 1.0 for j in ("rm", "likelihood"))
    assert json.loads((tmp_path / "b.json").read_text())["splits"] == out["splits"]


def test_cleaning_benchmark_compares_the_engines(tmp_path):
    """``bench_cleaning.py --engine ray``: the local pool and Ray on the same corpus, same bytes."""
    import json
    import os
    import sys

    import pytest

    pytest.importorskip("ray")
    out = tmp_path / "ray.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}
    subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_cleaning.py"), "--engine", "ray", "--docs", "300",
                    "--workers", "1", "--json", str(out)], check=True, env=env, cwd=tmp_path)
    res = json.loads(out.read_text())
    row = res["sizes"][0]["workers_1"]
    assert row["same_bytes"] and row["same_metrics"]
    assert row["local"]["mib_per_s"] > 0 and row["ray_warm"]["mib_per_s"] > 0
    assert row["ray_warm"]["timing"]["engine"] == "ray" and row["local"]["timing"]["engine"] == "local"
    assert res["projection_1tb_in_1h"]["cores"] >= 1
