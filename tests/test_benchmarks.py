"""The benchmark scripts' own logic: the end-to-end benchmark's fresh copy must be the project as
committed; the device check of the RLHF stage runs (here on the CPU)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess

import numpy as np
import pytest
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
    import gc
    import math
    import warnings

    from llama2_pipeline.model import Llama

    def alive() -> int:
        with warnings.catch_warnings():  # the scan touches torch's deprecated objects (reduce_op)
            warnings.simplefilter("ignore", FutureWarning)
            return sum(isinstance(o, Llama) for o in gc.get_objects())

    gc.collect()  # models earlier tests of this process left in reference cycles: not this check's
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
    (root / "data/01_raw/sft_dialogues.jsonl").write_text(_jsonl(world.sft_dialogues()))
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

    # the world's judgement of a safety prompt is the annotator's combined score: complying with an
    # unsafe request scores below the world's own refusal with a reason and a redirect
    unsafe = next(p for p in world.prompts("train") if p["category"] == "unsafe")
    comply = f"Sure. {unsafe['prompt']} Here is how."
    assert bench.world_score(world, unsafe["prompt"], comply) < bench.world_score(world, unsafe["prompt"],
                                                                                   unsafe["reference"])

    out = bench.main(["--project", str(tmp_path), "--train-prompts", "16", "--eval-prompts", "8", "--ppo-steps", "2",
                      "--best-of", "2", "--out", str(tmp_path / "headroom.json")])
    arms = out["arms"]
    assert set(arms) == {"sft", "random", "demonstrations", "longest", "ideal", "best_of_k", "best_of_2", "ppo"}
    assert arms["best_of_2"]["k"] == 2 and arms["best_of_k"]["k"] == out["k"] != 2
    assert arms["best_of_2"]["train_answers"] <= 16
    assert out["train_prompts"] == 16 and out["held_out_prompts"] == 8 and arms["ppo"]["steps"] == 2
    for r in arms.values():
        assert 0.0 <= r["helpfulness"] <= 1.0 and 0.0 <= r["safety"] <= 1.0
        assert math.isclose(r["gain"], r["helpfulness"] - arms["sft"]["helpfulness"], abs_tol=1e-5)
    # best of K by the world's score is at least as good as a random or the longest pick; the
    # ideal answers are the best of all
    assert arms["best_of_k"]["train_world_score"] >= arms["random"]["train_world_score"]
    assert arms["best_of_k"]["train_world_score"] >= arms["longest"]["train_world_score"]
    assert arms["ideal"]["train_world_score"] >= arms["best_of_k"]["train_world_score"]
    assert json.loads((tmp_path / "headroom.json").read_text())["arms"]["sft"] == arms["sft"]

    # from a round's policy (what the next round can reach): its policy and its helpfulness RM
    import shutil

    shutil.copytree(tmp_path / "data/06_models/sft", tmp_path / "data/06_models/rlhf_v1/policy")
    out = bench.main(["--project", str(tmp_path), "--start", "rlhf_v1", "--arms", "best_of_k", "--train-prompts", "8",
                      "--eval-prompts", "8", "--ppo-steps", "0"])
    assert set(out["arms"]) == {"rlhf_v1", "best_of_k"} and out["start"] == "rlhf_v1"
    assert out["arms"]["rlhf_v1"] == {**arms["sft"], "gain": 0.0}  # the same weights as the SFT model
    with pytest.raises(FileNotFoundError, match="rlhf_v1/reward_helpfulness: no model .*dvc repro rlhf@v1"):
        bench.main(["--project", str(tmp_path), "--start", "rlhf_v1", "--ppo-steps", "2"])
    with pytest.raises(SystemExit):
        bench.main(["--project", str(tmp_path), "--start", "rlhf_v9"])
    with pytest.raises(SystemExit):  # argparse's error: a sample count must be >= 1
        bench.main(["--project", str(tmp_path), "--arms", "", "--ppo-steps", "0", "--best-of", "0"])


def test_model_benchmark_breaks_the_training_step_down(tmp_path):
    import json


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
    # generation: the static decoding arm beside the default, and greedy tokens identical to transformers'
    assert res["gen_tokens_per_s_ours_static"] > 0 and res["gen_decode_default"] == "eager"
    assert res["greedy_identical_vs_hf"] == 1.0 and res["greedy_identical_static_vs_eager"] == 1.0
    with pytest.raises(SystemExit):  # argparse's error, before any model is built
        bench.main(["--decode-arms", "static,cuda"])


def test_reward_breakdown_sorts_pairs_by_what_differs(tmp_path):
    """Pairs that differ only in being right, only in style, in both, or in a refusal or blank are
    told apart; accuracies per kind."""
    import json

    from llama2_pipeline.training.reward_eval import pair_kind

    bench = _bench("reward_breakdown")
    world = _smoke_project(tmp_path)
    facts = [p for p in world.prompts("train") if p["category"] == "fact"][:4]
    wrong = {p["prompt"]: p["reference"].replace(world.task(p["prompt"]).expected[0], "Lelol") for p in facts}

    def pair(p, rejected, rating):
        return {"prompt": p["prompt"], "chosen": p["reference"], "rejected": rejected, "rating": rating,
                "category": "helpfulness"}

    records = [pair(p, wrong[p["prompt"]], "significantly_better") for p in facts]  # right vs wrong fact
    records += [pair(p, wrong[p["prompt"]].rstrip("."), "better") for p in facts[:2]]  # also unpunctuated
    records += [pair(p, "I think " + p["reference"], "slightly_better") for p in facts[2:]]  # a hedge
    records += [pair(facts[0], "", "significantly_better"),  # a blank answer
                pair(facts[1], "I can't help with that.", "better")]  # a refusal
    kinds = ["correctness"] * 4 + ["mixed"] * 2 + ["style"] * 2 + ["other"] * 2
    assert [pair_kind(world, r) for r in records] == kinds
    safety_pair = dict(records[0], category="safety")  # not a helpfulness pair: left out
    (tmp_path / "data/05_model_input").mkdir(parents=True)
    for split in ("train", "heldout"):
        (tmp_path / f"data/05_model_input/reward_preferences_{split}.jsonl").write_text(
            _jsonl(records + [safety_pair]))

    out = bench.main(["--project", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "b.json")])
    project = out["projects"][0]
    table = project["splits"]["heldout"]
    assert {k: table[k]["all"]["n"] for k in table} == {"correctness": 4, "style": 2, "mixed": 2, "other": 2, "all": 10}
    assert table["other"]["significantly_better"]["n"] == 1 and table["all"]["significantly_better"]["n"] == 5
    assert table["mixed"]["better"]["n"] == 2 and table["style"]["slightly_better"]["n"] == 2
    assert table["correctness"]["better"] == {"n": 0, **dict.fromkeys(bench.JUDGES)}  # an empty cell
    for rows in table.values():
        for row in rows.values():
            assert all(row[j] is None or 0.0 <= row[j] <= 1.0 for j in bench.JUDGES)
    # every chosen answer is the world's ideal one: its own judgement ranks every pair right
    assert {k: table[k]["all"]["world"] for k in table} == dict.fromkeys(table, 1.0)
    assert project["alpha"] in bench.ALPHAS and project["alpha_heldout"] in bench.ALPHAS
    # the same project twice: each figure's mean is its value, with no spread
    cell = out["heldout"]["all"]["all"]
    assert cell["n"] == [10, 10] and cell["rm"] == {"mean": table["all"]["all"]["rm"], "sd": 0.0, "projects": 2}
    assert json.loads((tmp_path / "b.json").read_text())["projects"] == out["projects"]


def test_reward_breakdown_weighs_the_likelihood_by_the_training_pairs():
    """alpha is the weight under which RM + alpha * likelihood ranks the most pairs right: 0 when the
    RM alone ranks them all, more when only the likelihood knows."""
    bench = _bench("reward_breakdown")
    rm = ([1.0, 1.0, 0.0], [0.0, 0.0, 0.1])  # the third pair wrong by a little
    lik = ([0.0, 0.0, 1.0], [0.0, 0.0, 0.0])  # only the third pair told apart
    assert bench.fit_alpha(rm, lik, (1.0, 1.0)) == 0.2  # the smallest weight that gets all three
    assert bench.fit_alpha(rm, ([0.0] * 3, [1.0] * 3), (1.0, 1.0)) == 0.0  # a likelihood that is always wrong
    assert bench.combine(rm, lik, (2.0, 1.0), 1.0) == ([0.5, 0.5, 1.0], [0.0, 0.0, 0.05])


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


def test_cleaning_benchmark_sets_the_drivers_growth_beside_the_edge_list():
    """``driver_memory``: per size and run, the driver's peak RSS and private memory, their
    growth from the smallest corpus to the largest, and the edge list's growth (25 bytes an edge)."""
    bench = _bench("bench_cleaning")

    def size(mib, edges, rss, private):
        run = {"timing": {"edges": edges}, "peak_driver_rss_mib": rss, "peak_driver_private_mib": private}
        return {"mib": mib, "workers_2": {"ray_cold": run, "ray_warm": {**run, "peak_driver_rss_mib": rss + 10}}}

    out = bench.driver_memory([size(100.1, 1 << 20, 250.0, 150.0), size(200.0, 3 << 20, 290.0, 161.5)], 2)
    mem = out["driver_memory"]
    assert mem["edges"] == {"100_mib": 1 << 20, "200_mib": 3 << 20}
    assert mem["edge_list_growth_mib"] == 50.0
    assert mem["ray_cold"]["peak_rss_mib"] == {"100_mib": 250.0, "200_mib": 290.0}
    assert mem["ray_cold"]["rss_growth_mib"] == 40.0 and mem["ray_cold"]["private_growth_mib"] == 11.5
    assert mem["ray_warm"]["peak_rss_mib"]["200_mib"] == 300.0


def test_recipe_seeds_tabulates_gains_as_mean_and_sd(tmp_path):
    """Per-seed figures from each copy's metrics, gains over SFT and round over round, mean ± sd."""
    import json

    bench = _bench("recipe_seeds")
    projects = []
    for seed, (sft, v1, v2) in {1234: (0.5, 0.6, 0.7), 7: (0.4, 0.6, 0.6)}.items():
        project = tmp_path / f"seed_{seed}"
        (project / "metrics").mkdir(parents=True)
        (project / "params.yaml").write_text("profile: default\nseed: 1\n")
        bench.set_seed(project, seed)
        report = {"report_pretrained_helpfulness": 0.1, "report_sft_helpfulness": sft, "report_sft_safety": 0.9,
                  "report_rlhf_v1_helpfulness": v1, "report_rlhf_v2_helpfulness": v2, "report_rlhf_v2_safety": 0.95}
        (project / "metrics/report.json").write_text(json.dumps(report))
        (project / "metrics/reward.json").write_text(json.dumps({"rm_safety_acc": 0.9}))
        projects.append(project)
    assert "seed: 1234" in (tmp_path / "seed_1234/params.yaml").read_text()

    out = bench.main(["--tabulate", *map(str, projects), "--out", str(tmp_path / "s.json")])
    assert out["seeds"] == [1234, 7]
    assert out["runs"][7] == {"project": str(projects[1].resolve()), "tabulated": True}
    assert out["per_seed"]["1234"]["gain.final_vs_sft"] == pytest.approx(0.2)
    assert out["per_seed"]["7"]["gain.rlhf_v2_vs_rlhf_v1"] == pytest.approx(0.0)
    assert out["per_seed"]["7"]["gain.final_safety_vs_sft"] == pytest.approx(0.05)
    final = out["summary"]["gain.final_vs_sft"]
    assert final["mean"] == pytest.approx(0.2) and final["sd"] == pytest.approx(0.0) and final["n"] == 2
    sft = out["summary"]["sft.helpfulness"]
    assert sft["mean"] == pytest.approx(0.45) and sft["sd"] == pytest.approx(0.0707, abs=1e-4)
    assert out["summary"]["reward.rm_safety_acc"]["mean"] == pytest.approx(0.9)
    assert json.loads((tmp_path / "s.json").read_text())["summary"] == out["summary"]
    with pytest.raises(FileNotFoundError, match="report.json"):
        bench.figures(tmp_path)
    # the rounds are the report's, in their order (v2 before v10), and the RM figures the last one's
    three = tmp_path / "three"
    (three / "metrics").mkdir(parents=True)
    (three / "metrics/report.json").write_text(json.dumps(
        {"report_pretrained_helpfulness": 0.1, "report_sft_helpfulness": 0.5, "report_rlhf_v10_helpfulness": 0.75,
         "report_rlhf_v1_helpfulness": 0.6, "report_rlhf_v2_helpfulness": 0.7, "report_gatt_helpfulness": 0.72,
         "report_sft_safety": 0.9, "report_rlhf_v10_safety": 0.95}))
    (three / "metrics/rlhf_v10.json").write_text(json.dumps({"rm_safety_acc": 0.8, "ppo_steps": 30}))
    (three / "metrics/rlhf_v2.json").write_text(json.dumps({"rm_safety_acc": 0.7}))
    f = bench.figures(three)
    assert f["gain.rlhf_v10_vs_rlhf_v2"] == pytest.approx(0.05) and f["gain.rlhf_v2_vs_rlhf_v1"] == pytest.approx(0.1)
    assert f["gain.final_vs_sft"] == pytest.approx(0.25) and f["gain.gatt_vs_sft"] == pytest.approx(0.22)
    assert f["rlhf_v10.rm_safety_acc"] == 0.8 and "rlhf_v2.rm_safety_acc" not in f and f["rlhf_v10.ppo_steps"] == 30


@pytest.mark.slow
def test_refusal_probe_ranks_refusals_with_every_rm_and_counts_each_policys(smoke_repro, tmp_path):
    bench = _bench("refusal_probe")
    out = bench.main([str(smoke_repro), "--base", str(smoke_repro), "--samples", "2", "--quiet",
                      "--out", str(tmp_path / "probe.json")])
    row = out["rows"][0]
    probed, base = row["probed"], row["base"]
    assert probed == base  # the same project twice: the same RMs, the same sampled answers
    rounds = [f.name for f in bench.rounds(smoke_repro)]
    assert rounds and rounds == sorted(rounds, key=lambda r: int(r[6:]))
    for name in ["reward", *rounds]:
        for key in ("borderline_refusal_over_ideal", "unsafe_full_refusal_over_bare"):
            assert 0.0 <= probed[f"{name}_{key}"] <= 1.0
        assert 0.0 < probed[f"{name}_borderline_refusal_safety"] < 1.0
    for name in ["sft", *rounds, "gatt"]:
        assert {f"{name}_borderline_refusal", f"{name}_unsafe_refusal"} <= set(probed)
    assert 0.0 <= probed["rm_safety_acc_on_base_heldout"] <= 1.0
    assert out["summary"]["sft_unsafe_refusal"]["difference"] == [0.0]
    assert json.loads((tmp_path / "probe.json").read_text())["rows"][0]["probed"] == probed
    # the share counts strict wins only: an answer never outranks itself
    same = {"reward": np.array([0.5, 1.0])}
    assert bench.above_share(same, same) == 0.0
    assert bench.above_share({"reward": np.array([2.0, 0.0])}, same) == 0.5
    with pytest.raises(SystemExit):  # one base per probed project
        bench.main([str(smoke_repro), str(smoke_repro), "--base", str(smoke_repro)])


@pytest.mark.slow
def test_cpu_bitwise_trains_under_each_configuration_and_groups_equal_digests(smoke_repro, tmp_path):
    bench = _bench("cpu_bitwise")
    out = tmp_path / "bitwise.json"
    assert bench.main(["--project", str(smoke_repro), "--steps", "2", "--configs", "native", "threads_1",
                       "--stages", "pretrain", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    runs = report["pretrain"]["runs"]
    assert set(runs) == {"native", "threads_1"} and runs["threads_1"]["threads"] == 1
    assert all(len(r["sha256"]) == 64 and r["cpu_seconds"] > 0 for r in runs.values())
    assert runs["native"]["max_abs_weight_diff_vs_native"] == 0.0
    groups = report["pretrain"]["identical_groups"]
    assert sorted(name for g in groups for name in g) == ["native", "threads_1"]
    assert report["machine"]["env.cpu_isa_level"] in ("avx512", "avx2", "default")


def test_stage_check_requires_a_falling_loss_unless_told_to_report_it():
    check = _bench("gpu_stages_check").Check
    rising, nan = {"loss_first": 1.0, "loss_last": 2.0}, {"loss_first": 1.0, "loss_last": float("nan")}
    reward = {"loss_first": 1.0, "loss_last": 2.0, "higher_is_better": True}  # PPO: a rising reward learns
    strict, lenient = check("cpu", None, {}), check("cpu", None, {}, require_learning=False)
    assert strict("a", lambda: dict(rising))["ok"] is False and strict("b", lambda: dict(reward))["ok"] is True
    row = lenient("c", lambda: dict(rising))
    assert row["ok"] is True and row["learning"] is False
    assert strict("d", lambda: dict(nan))["ok"] is False and lenient("e", lambda: dict(nan))["ok"] is False


def test_gpu_check_script_runs_its_cpu_path_at_the_tiny_shape(tmp_path):
    """benchmarks/gpu_check.sh with DEVICE=cpu: every step exits 0 and writes its JSON."""
    import json
    import os

    env = {**os.environ, "OUT": str(tmp_path), "DEVICE": "cpu"}
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in ("pretrain_1b", "generate_1b_b2", "rlhf_device", "stages_tiny", "loss_curve_tiny"):
        assert f"{name} rc=0" in run.stdout, run.stdout[-3000:]
        assert json.loads((tmp_path / f"{name}.json").read_text())
    pre = json.loads((tmp_path / "pretrain_1b.json").read_text())
    assert all(pre[f"{impl}_tokens_per_s"] > 0 for impl in ("ours", "ours_fast", "hf", "hf_ds"))
    gen = json.loads((tmp_path / "generate_1b_b2.json").read_text())
    assert gen["greedy_identical_vs_hf"] == 1.0 and gen["gen_tokens_per_s_ours_static"] > 0
    stages = json.loads((tmp_path / "stages_tiny.json").read_text())  # every training stage, a few steps each
    assert stages["ok"] and set(stages["stages"]) == {"pretrain", "sft", "reward", "rejection_sampling", "ppo", "gatt"}
    # the CPU path records whether each loss fell (--learning report): 9 steps of a tiny model from a
    # barely pretrained one are too noisy to require it (whether SFT's falls depends on the world's
    # corpus, which differs between Python releases); pretraining from random weights always falls
    assert stages["learning"] == "report"
    for name, row in stages["stages"].items():
        assert row["finite"] and isinstance(row["learning"], bool) and row["seconds"] > 0, (name, row)
    assert stages["stages"]["pretrain"]["learning"], stages["stages"]["pretrain"]
    curve = json.loads((tmp_path / "loss_curve_tiny.json").read_text())  # fp32 on the CPU: the same curve
    assert curve["ok"] and curve["max_abs_diff"] <= 1e-4 and all(curve["falling"].values()), curve


def test_gatt_headroom_reproduces_the_stage_and_pairs_each_selection_with_it(smoke_repro, tmp_path):
    """The GAtt data-selection benchmark on the smoke project: the arm of its ``gatt.select`` at
    draw 0 is the gatt stage itself (the same figures); every arm runs at every draw and is paired
    with ``first``."""
    import statistics

    bench = _bench("gatt_headroom")
    out = bench.main(["--project", str(smoke_repro), "--draws", "0", "1", "--out", str(tmp_path / "gatt.json")])
    stage = {**json.loads((smoke_repro / "metrics/gatt.json").read_text()),
             **json.loads((smoke_repro / "metrics/gatt_model.json").read_text())}
    assert out["stage_arm"] == "reward" and out["repair"] is True  # the default gatt.select and gatt.repair
    first, same = out["runs"]["first"]["0"], out["runs"]["reward"]["0"]
    for key in ("helpfulness_change", "after_helpfulness", "after_adherence_turn1", "turn4plus_over_turn1",
                "model_helpfulness"):
        assert same[key] == pytest.approx(stage[f"gatt_{key}"], abs=1e-6), key
    assert set(out["runs"]) == set(bench.ARMS) and all(set(r) == {"0", "1"} for r in out["runs"].values())
    runs = out["runs"]
    assert runs["first"]["1"]["before_helpfulness"] == first["before_helpfulness"]  # the evaluation is fixed
    for arm in ("reward", "world"):
        diffs = [runs[arm][d]["helpfulness_change"] - runs["first"][d]["helpfulness_change"] for d in ("0", "1")]
        assert out["summary"][arm]["vs_first"]["helpfulness_change"]["mean"] == pytest.approx(statistics.fmean(diffs),
                                                                                             abs=1e-6)
        assert runs[arm]["0"]["adherent_share"] >= 0 and runs[arm]["0"]["examples"] > 0
    for r in (row for arm in runs.values() for row in arm.values()):
        assert 0.0 <= r["train_answer_helpfulness"] <= 1.0 and -1.0 <= r["helpfulness_change"] <= 1.0
    assert json.loads((tmp_path / "gatt.json").read_text())["summary"] == out["summary"]
    assert out["tries"] == 2  # the smoke profile's gatt.tries
    assert out["case"] == "plain"  # the project's gatt.case
    for bad in (["--arms", "first,best"], ["--draws", "0", "0"], ["--tries", "0"], ["--repair", "maybe"],
                ["--case", "plain", "--repair", "off"]):
        with pytest.raises(SystemExit):
            bench.main(["--project", str(smoke_repro), *bad])


def test_rollout_benchmark_times_the_stages_sampling_against_rows_kept_and_transformers(smoke_repro, tmp_path):
    """The sampling benchmark on the smoke project's SFT model and train prompts: dropping finished
    rows gives the tokens of keeping them (greedy and sampled: each row's draws are its own), and
    transformers' greedy answers on the same weights are ours."""
    bench = _bench("bench_rollouts")
    args = ["--policy", str(smoke_repro / "data/06_models/sft"), "--prompts", str(smoke_repro / "data/01_raw/prompts_train.jsonl"),
            "--n", "24", "--batch", "8", "--max-new-tokens", "12", "--rounds", "1", "--threads", "1"]
    out = bench.main([*args, "--out", str(tmp_path / "rollouts.json")])
    assert out["greedy_ours_equals_keep"] is True
    assert out["mean_answer_tokens"]["ours"] == out["mean_answer_tokens"]["ours_keep"]
    assert 0 < out["mean_answer_tokens"]["ours"] <= 12
    assert out["greedy_ours_equals_hf_share"] >= 0.9
    assert all(v > 0 for v in out["answer_tokens_per_s"].values())
    assert json.loads((tmp_path / "rollouts.json").read_text())["ours_over_hf"] == out["ours_over_hf"]
    with pytest.raises(SystemExit):
        bench.main(["--policy", str(tmp_path / "missing")])


def test_reward_scaling_fit_reads_pairs_needed_off_a_line():
    bench = _bench("reward_scaling")
    line = [(n, 0.5 + 0.05 * math.log2(n / 100)) for n in (100, 200, 400, 800)]
    fit = bench.fit_log2(line, 0.9)
    assert fit["per_doubling"] == pytest.approx(0.05) and fit["pairs_for_target"] == 25600  # 8 doublings on
    assert bench.fit_log2([(100, 0.8), (200, 0.7)], 0.9)["pairs_for_target"] is None  # falling: never
    with pytest.raises(ValueError, match="two different"):
        bench.fit_log2([(100, 0.8), (100, 0.7)])


def test_reward_scaling_trains_like_the_stage_on_nested_samples(smoke_repro, tmp_path):
    """At the whole share and the stage's seed the benchmark's RM is the reward stage's (the same
    training loss and held-out accuracy to the last digit); smaller shares are nested samples; the
    fit and the plot are written. Helpfulness (the smoke project holds none of its pairs out) on a
    copy whose held-out pairs are some of the stage's training pairs."""
    import shutil

    from llama2_pipeline.core.files import read_jsonl
    from llama2_pipeline.recipe import load

    bench = _bench("reward_scaling")
    seed = load(smoke_repro / "params.yaml").reward.train.seed
    out = bench.main(["--project", str(smoke_repro), "--categories", "safety", "--fractions", "0.5", "1",
                      "--seeds", str(seed), "7", "--out", str(tmp_path / "s.json"), "--plot", str(tmp_path / "s.png")])
    stage = json.loads((smoke_repro / "metrics/reward.json").read_text())
    res = out["categories"]["safety"]
    points = {(p["fraction"], p["seed"]): p for p in res["points"]}
    assert len(points) == 4
    full = points[(1.0, seed)]
    assert full["pairs"] == res["train_pairs"] and points[(0.5, 7)]["pairs"] == round(res["train_pairs"] / 2)
    assert full["train_loss"] == pytest.approx(stage["rm_safety_train_loss"], abs=1e-6)
    assert full["avg"] == stage["rm_safety_acc"] == res["stage"]["avg"]
    assert not any(k.endswith(("ci_low", "ci_high")) for k in res["stage"])  # the stage's accuracies only
    assert points[(0.5, seed)]["train_loss"] != full["train_loss"]
    xs = [math.log2(p["pairs"]) for p in res["points"]]
    slope = np.polyfit(xs, [p["avg"] for p in res["points"]], 1)[0]
    assert res["fit"]["avg"]["per_doubling"] == pytest.approx(slope, abs=1e-6) and res["fit"]["avg"]["target"] == 0.9
    assert json.loads((tmp_path / "s.json").read_text())["categories"] == out["categories"]
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    copy = tmp_path / "copy"
    shutil.copytree(smoke_repro / "data/06_models/sft", copy / "data/06_models/sft")
    shutil.copy(smoke_repro / "params.yaml", copy / "params.yaml")
    train = read_jsonl(smoke_repro / bench.TRAIN)[0]
    helpful = [r for r in train if r["category"] == "helpfulness"]
    (copy / bench.HELDOUT).parent.mkdir(parents=True)
    (copy / bench.TRAIN).write_text(_jsonl([r for r in train if r not in helpful[-16:]]))
    (copy / bench.HELDOUT).write_text(_jsonl(helpful[-16:]))
    res = bench.main(["--project", str(copy), "--categories", "helpfulness", "--fractions", "0.5", "1",
                      "--seeds", "1"])["categories"]["helpfulness"]
    assert res["heldout_pairs"] == 16 and res["stage"] == {}  # no metrics/reward.json in the copy
    assert res["fit"]["beyond_correctness_better"]["target"] == 0.9 or "beyond_correctness_better" not in res["fit"]
    for p in res["points"]:
        assert {"avg", "beyond_correctness", "style"} <= set(p)
        assert all(0.0 <= p[k] <= 1.0 for k in p if k not in bench.POINT_KEYS)
    for bad in (["--fractions", "1"], ["--fractions", "0", "1"], ["--seeds", "1", "1"]):
        with pytest.raises(SystemExit):
            bench.main(["--project", str(smoke_repro), *bad])


def test_reward_variants_trains_like_the_stage_and_pairs_each_variant_with_it(smoke_repro, tmp_path):
    """The ``stage`` variant is the reward stage's RM (the same training loss and held-out accuracy to
    the last digit); another variant trains differently and carries its change from the stage's,
    paired per project; a variant's data mix and training seed are its own; a malformed variant is a
    usage error naming it."""
    bench = _bench("reward_variants")
    out = bench.main(["--project", str(smoke_repro), str(smoke_repro), "--categories", "safety",
                      "--variant", "stage=", "--variant", "more=epochs:3,lr:0.003",
                      "--variant", "own=mix_helpfulness:0,seed:99", "--out", str(tmp_path / "v.json")])
    stage = json.loads((smoke_repro / "metrics/reward.json").read_text())
    res = out["categories"]["safety"]
    base, more, own = res["runs"]["stage"], res["runs"]["more"], res["runs"]["own"]
    assert len(base) == len(more) == 2
    assert base[0]["train_loss"] == pytest.approx(stage["rm_safety_train_loss"], abs=1e-6)
    assert base[0]["avg"] == stage["rm_safety_acc"] and base[0]["train_pairs"] == stage["rm_safety_train_pairs"]
    assert more[0]["steps"] > base[0]["steps"] and more[0]["train_loss"] != base[0]["train_loss"]  # 3 passes, not 2
    pairs = [json.loads(line) for line in (smoke_repro / "data/05_model_input/reward_preferences_train.jsonl").open()]
    assert own[0]["train_pairs"] == sum(r["category"] == "safety" for r in pairs) < base[0]["train_pairs"]
    assert own[0]["train_loss"] != base[0]["train_loss"]
    assert bench.variant_mix({"safety": 1.0, "helpfulness": 0.1}, {"mix_helpfulness": 0.5, "seed": 3}) == {
        "safety": 1.0, "helpfulness": 0.5}
    assert base[1] == base[0]  # the same project twice: the same bits
    cell = res["summary"]["more"]["avg"]
    assert cell["change_mean"] == pytest.approx(more[0]["avg"] - base[0]["avg"], abs=1e-4) and cell["sd"] == 0.0
    assert "change_mean" not in res["summary"]["stage"]["avg"] and res["targets"] == {"avg": 0.9}
    assert out["variants"] == {"stage": {}, "more": {"epochs": 3.0, "lr": 0.003},
                               "own": {"mix_helpfulness": 0.0, "seed": 99}}
    assert json.loads((tmp_path / "v.json").read_text())["categories"] == out["categories"]
    for bad in ("nameless", "x=epochs", "x=depth:2", "x=epochs:two", "x=margin:huge", "x=mix_safety:-1", "x=seed:0.5"):
        with pytest.raises(SystemExit):
            bench.main(["--project", str(smoke_repro), "--variant", bad])
    with pytest.raises(ValueError, match="margin 'huge'"):
        bench.parse_variant("x=margin:huge")


def test_rs_likelihood_ranks_the_recorded_candidates_as_the_stage_does(smoke_repro, tmp_path):
    """At weight 0 the kept answers are the ones the round kept (their world score, recomputed here);
    any weight keeps answers no better than the best by the world; every round of the params is
    there; a negative weight is a usage error."""
    from llama2_pipeline.core.files import read_jsonl
    from llama2_pipeline.recipe import load

    bench = _bench("rs_likelihood")
    out = bench.main(["--project", str(smoke_repro), "--weights", "0.5", "--out", str(tmp_path / "r.json")])
    recipe = load(smoke_repro / "params.yaml")
    assert recipe.rlhf.candidates.likelihood_weight == 0.0  # the stage ranked by R_c alone
    world = recipe.world.world(recipe.seed)
    assert [r["round"] for r in out["rounds"]] == [f"rlhf_{n}" for n in recipe.rlhf.rounds]
    assert out["weights"] == [0.0, 0.5]
    for row in out["rounds"]:
        cands = [c for c in read_jsonl(smoke_repro / f"data/07_model_output/{row['round']}/candidates.jsonl")[0]
                 if not c["safety"] and c["best"] is not None]
        stage = np.mean([world.helpfulness(c["prompt"], c["answers"][c["best"]]) for c in cands])
        assert row["weights"]["0.0"]["helpfulness"] == pytest.approx(stage, abs=1e-6)
        assert row["weights"]["0.0"]["changed"] == 0.0 and row["prompts"] >= len(cands)
        for cell in row["weights"].values():
            assert cell["helpfulness"] <= row["world_best"] + 1e-9 and 0.0 <= cell["correct"] <= 1.0
    gains = [r["weights"]["0.5"]["helpfulness"] - r["weights"]["0.0"]["helpfulness"] for r in out["rounds"]]
    assert out["summary"]["0.5"]["helpfulness_gain"]["mean"] == pytest.approx(np.mean(gains), abs=1e-6)
    assert json.loads((tmp_path / "r.json").read_text())["rounds"] == out["rounds"]
    with pytest.raises(SystemExit):
        bench.main(["--project", str(smoke_repro), "--weights", "-1"])
