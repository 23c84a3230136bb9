"""The ``rlhf`` rounds through real ``kedro run``s in a smoke project copy: two rounds (PPO in the
second) chained on each other, their metrics named alike, grouped in MLflow, the DVC foreach
stages chained, and the reproduction of round 2 from its MLflow run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from llama2_pipeline.pipeline_registry import DOTTED_NAME_WARNING
from tests.conftest import ROOT, make_project_copy, run
from tests.test_reward_stage import write_upstream

GROUP = "rlhf-test-group"
#: the smoke rounds rank rejection sampling with the policy's likelihood too (the default profile does not)
LIKELIHOOD_WEIGHT = 0.25


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def rounds_project(tmp_path_factory) -> Path:
    project = make_project_copy(tmp_path_factory.mktemp("rlhf") / "proj", "smoke")
    params = write_upstream(project)
    from llama2_pipeline.world import World

    world = World.from_params({**params["world"], "seed": params["seed"]})
    (project / "data/01_raw/prompts_eval.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in world.prompts("eval")))
    # the reward stage's pairs: reference answers over blunt non-answers
    pairs = [{"prompt": p["prompt"], "chosen": p["reference"], "rejected": "No idea, sorry about that",
              "rating": "better", "category": "safety" if p["safety"] else "helpfulness"}
             for p in world.prompts("train")[:40]]
    prefs = project / "data/03_primary/reward_preferences.jsonl"
    prefs.parent.mkdir(parents=True, exist_ok=True)
    prefs.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    # the reward stage's RMs, which the first round continues (rlhf.reward_models: continue)
    import torch

    from llama2_pipeline.model.reward import RewardModel, export_reward_hf

    torch.manual_seed(1)
    sft = project / "data/06_models/sft"
    for category in ("helpfulness", "safety"):
        export_reward_hf(RewardModel.from_pretrained(sft), project / f"data/06_models/reward_{category}",
                         tokenizer_model=sft / "tokenizer.model")
    for name in ("rlhf_v1", "rlhf_v2"):  # as the DVC foreach stages run them: one kedro run per round
        run(["kedro", "run", "--pipelines", name, "--params",
             f"rlhf.reward_replay=1.0,rlhf.reward_epochs=3,rlhf.candidates.likelihood_weight={LIKELIHOOD_WEIGHT}"],
            project, timeout=900,
            extra_env={"LLAMA2_REPRO_GROUP": GROUP})
    return project


def _runs(project: Path):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("llama2_pipeline")
    runs = {r.data.tags["pipelines"]: r for r in client.search_runs([exp.experiment_id], f"tags.repro_group = '{GROUP}'")
            if "pipelines" in r.data.tags}
    return client, runs


@pytest.mark.slow
def test_rounds_chain_and_accumulate(rounds_project):
    project = rounds_project
    client, runs = _runs(project)
    assert {"rlhf_v1", "rlhf_v2"} <= set(runs)
    v1, v2 = runs["rlhf_v1"].data.tags, runs["rlhf_v2"].data.tags
    # round 2 starts from exactly what round 1 wrote (same digest), round 1 from the SFT model
    assert v2["input.rlhf_v1.policy"] == v1["output.rlhf_v1.policy"]
    assert v1["input.sft_model"].startswith("data/06_models/sft@sha256:")
    # the same parent run groups both rounds
    assert v1["mlflow.parentRunId"] == v2["mlflow.parentRunId"]
    # preference pairs accumulate: round 2's are round 1's plus its new ones
    p1 = _jsonl(project / "data/06_models/rlhf_v1/preferences.jsonl")
    p2 = _jsonl(project / "data/06_models/rlhf_v2/preferences.jsonl")
    new2 = _jsonl(project / "data/07_model_output/rlhf_v2/preferences_new.jsonl")
    assert p2[:len(p1)] == p1 and len(p2) > len(p1) > 40 and new2
    # each round's RMs continue the previous ones on the round's new train pairs, with as many
    # earlier train pairs replayed beside them (rlhf.reward_replay=1.0 above), per category
    m2 = json.loads((project / "metrics/rlhf_v2.json").read_text())
    assert 0 < m2["rm_new_pairs"] <= len(new2) < len(p2)
    from llama2_pipeline.training.preferences import pair_key

    train2 = _jsonl(project / "data/07_model_output/rlhf_v2/preferences_train.jsonl")
    fresh = {pair_key(r) for r in new2}
    count = lambda rows, c: sum(r["category"] == c for r in rows)  # noqa: E731
    new_train = [r for r in train2 if pair_key(r) in fresh]
    earlier = [r for r in train2 if pair_key(r) not in fresh]
    assert m2["rm_new_pairs"] == len(new_train)
    assert m2["rm_replayed_pairs"] == sum(min(count(new_train, c), count(earlier, c)) for c in ("helpfulness", "safety"))
    assert m2["rm_replayed_pairs"] > 0
    # both RMs make rlhf.reward_epochs passes (3 above; not reward.epochs) over the new and replayed pairs
    for name in ("helpfulness", "safety"):
        assert m2[f"rm_{name}_steps"] == math.ceil(3 * m2[f"rm_{name}_train_pairs"] / 8), name  # smoke micro-batch
    # the round's RMs are judged on its new held-out pairs and on the earlier stages' apart
    for name in ("helpfulness", "safety"):
        assert m2[f"rm_{name}_heldout_pairs_new"] + m2[f"rm_{name}_heldout_pairs_earlier"] == \
            m2[f"rm_{name}_heldout_pairs"]
        for side in ("new", "earlier"):  # an accuracy where the side has pairs
            assert (f"rm_{name}_acc_{side}" in m2) == (m2[f"rm_{name}_heldout_pairs_{side}"] > 0)
    assert 0 <= m2["rm_helpfulness_acc_earlier"] <= 1 and m2["rm_helpfulness_heldout_pairs_earlier"] > 0
    assert v2["input.rlhf_v1.reward_model_helpfulness"] == v1["output.rlhf_v1.reward_model_helpfulness"]
    # rejection sampling kept the best of K by the round's reward and, on prompts not tagged safety,
    # the starting policy's likelihood (rlhf.candidates.likelihood_weight above; each divided by its
    # spread over those prompts' answers)
    weight = LIKELIHOOD_WEIGHT
    cands = _jsonl(project / "data/07_model_output/rlhf_v1/candidates.jsonl")
    helpful = [(c, j) for c in cands if not c["safety"] for j, a in enumerate(c["answers"]) if a.strip()]
    sd_r, sd_l = (float(np.std([c[key][j] for c, j in helpful])) for key in ("reward", "likelihood"))
    changed = 0
    for c in cands:
        assert len(c["answers"]) == len(c["reward"]) == len(c["likelihood"]) == 3
        assert all(math.isfinite(v) and v < 0 for v in c["likelihood"])  # a mean log-probability
        if c["best"] is not None:
            rank = [r if c["safety"] else r / sd_r + weight * lk / sd_l for r, lk in zip(c["reward"], c["likelihood"])]
            options = [j for j, a in enumerate(c["answers"]) if a.strip()]
            assert rank[c["best"]] >= max(rank[j] for j in options) - 1e-4  # stored to 6 digits
            changed += c["reward"][c["best"]] < max(c["reward"][j] for j in options)
    m1 = json.loads((project / "metrics/rlhf_v1.json").read_text())
    assert m1["rs_likelihood_changed_share"] == pytest.approx(changed / sum(c["best"] is not None for c in cands))
    # round 2 ranks round 1's kept answers too (re-scored by its own RMs): its pool holds every
    # prompt round 1 kept an answer for, with that answer among the prompt's answers
    rs1 = _jsonl(project / "data/06_models/rlhf_v1/rs_dialogues.jsonl")
    plain1 = [d for d in rs1 if d["messages"][0]["role"] == "user"]
    kept1 = {d["messages"][0]["content"]: d["messages"][1]["content"] for d in plain1}
    pool2 = {c["prompt"]: c for c in _jsonl(project / "data/07_model_output/rlhf_v2/candidates.jsonl")}
    assert kept1 and set(kept1) <= set(pool2)
    for prompt, answer in kept1.items():
        assert answer in pool2[prompt]["answers"] and len(pool2[prompt]["reward"]) == len(pool2[prompt]["answers"])
    assert any(c["earlier"] for c in pool2.values())
    kept2 = {d["messages"][0]["content"] for d in _jsonl(project / "data/06_models/rlhf_v2/rs_dialogues.jsonl")
             if d["messages"][0]["role"] == "user"}
    assert set(kept1) <= kept2
    # each kept answer to a safety-tagged prompt is learned under an instruction too
    # (rlhf.candidates.instructed_safety: 1.0), after the plain dialogues; the next round pools the plain ones
    copies = rs1[len(plain1):]
    assert rs1[:len(plain1)] == plain1 and m1["rs_instructed_copies"] == len(copies) > 0
    safety_kept = {c["prompt"]: c["answers"][c["best"]] for c in cands if c["safety"] and c["best"] is not None}
    for d in copies:
        system, user, assistant = d["messages"]
        assert system["role"] == "system" and user["content"] in safety_kept
        assert assistant["content"].lower().replace("ahoy! ", "").replace(" cheers!", "") == \
            safety_kept[user["content"]].strip().lower()


@pytest.mark.slow
def test_round_metrics_line_up_and_ppo_is_logged(rounds_project):
    project = rounds_project
    m1 = json.loads((project / "metrics/rlhf_v1.json").read_text())
    m2 = json.loads((project / "metrics/rlhf_v2.json").read_text())
    for key in ("policy_helpfulness", "policy_safety", "policy_refusal_rate", "policy_false_refusal_rate",
                "policy_answer_words", "win_rate_vs_previous", "win_rate_vs_sft", "rm_helpfulness_score",
                "rm_safety_score", "kl_to_sft", "rm_helpfulness_acc", "rs_reward_best"):
        assert key in m1 and key in m2, key
    # same names; round 2 adds its PPO (an accuracy on new or earlier held-out pairs only where there are some)
    sides = ("_acc_new", "_acc_earlier")
    assert {k for k in m2 if not k.startswith("ppo_") and not k.endswith(sides)} == \
        {k for k in m1 if not k.endswith(sides)}
    assert m2["ppo_steps"] == 3 and not any(k.startswith("ppo_") for k in m1)
    history = _jsonl(project / "data/07_model_output/rlhf_v2/ppo_history.jsonl")
    assert [h["step"] for h in history] == [1, 2, 3]
    for h in history:
        assert {"reward", "kl", "entropy", "clip_frac", "value_loss", "answer_tokens"} <= set(h)
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the first rollout comes from the reference itself
    client, runs = _runs(project)
    assert [m.step for m in client.get_metric_history(runs["rlhf_v2"].info.run_id, "ppo/kl")] == [1, 2, 3]
    assert runs["rlhf_v1"].data.metrics["policy_helpfulness"] == m1["policy_helpfulness"]
    for name in ("summary", "rs_loss_curve", "reward_calibration"):
        assert (project / f"data/08_reporting/rlhf_v1/{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert (project / "data/08_reporting/rlhf_v2/ppo_curves.png").is_file()


@pytest.mark.filterwarnings(f"ignore:{DOTTED_NAME_WARNING}")  # as register_pipelines does: the rounds' namespaced outputs
def test_rounds_are_namespaced_pipelines_and_dvc_foreach_stages():
    from llama2_pipeline.pipelines.rlhf import round_pipelines
    from llama2_pipeline.training.config import RLHFConfig

    spec = RLHFConfig.from_dict({"rounds": {"v1": {"after": "sft", "ppo": False}, "v2": {"after": "rlhf_v1", "ppo": True},
                                            "v3": {"after": "rlhf_v2", "ppo": True}}})
    rounds = round_pipelines(spec.rounds)
    assert list(rounds) == ["rlhf_v1", "rlhf_v2", "rlhf_v3"]
    assert "sft_model" in rounds["rlhf_v1"].inputs() and "reward_preferences" in rounds["rlhf_v1"].inputs()
    assert {"rlhf_v1.policy", "rlhf_v1.reward_preferences"} <= rounds["rlhf_v2"].inputs()
    assert "rlhf_v2.policy" in rounds["rlhf_v3"].inputs()
    assert {n.namespace for n in rounds["rlhf_v2"].nodes} == {"rlhf_v2"}
    assert any(n.name == "rlhf_v2.ppo" for n in rounds["rlhf_v2"].nodes)
    assert not any(n.name.endswith(".ppo") for n in rounds["rlhf_v1"].nodes)
    # DVC: one stage per round of params.yaml, each chained on the one before
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dot = subprocess.run([sys.executable, "-m", "dvc", "dag", "--dot", "rlhf@v2"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert '"rlhf@v1" -> "rlhf@v2"' in dot and '"sft" -> "rlhf@v1"' in dot


@pytest.mark.slow
def test_reproduce_names_a_changed_input_of_round_2_and_an_unknown_run(rounds_project):
    """`reproduce` refuses before running anything; a full reproduction of a round (the champion,
    rlhf_v2, bit for bit): tests/test_sharing.py::test_make_reproduce_of_a_registered_model_checks_its_digests."""
    project = rounds_project
    _, runs = _runs(project)
    run_id = runs["rlhf_v2"].info.run_id
    # a changed input is named, and nothing runs
    prefs = project / "data/06_models/rlhf_v1/preferences.jsonl"
    saved = prefs.read_bytes()
    try:
        prefs.write_bytes(saved + b"\n")
        bad = run([sys.executable, "-m", "llama2_pipeline.commands.reproduce", run_id], project, check=False, timeout=300)
        assert bad.returncode == 2
        assert "data/06_models/rlhf_v1/preferences.jsonl) has changed since the run" in bad.stderr
    finally:
        prefs.write_bytes(saved)
    unknown = run([sys.executable, "-m", "llama2_pipeline.commands.reproduce", "0" * 32], project, check=False, timeout=120)
    assert unknown.returncode == 2 and "no MLflow run" in unknown.stderr
