"""The ``gatt`` pipeline through a real ``kedro run`` in a smoke project copy (starting from the
"SFT" model, so that the test needs no RLHF round; so without replay, which needs a round's
rejection-sampling dialogues)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_project_copy, run
from tests.test_reward_stage import write_upstream


@pytest.fixture(scope="module")
def gatt_project(tmp_path_factory) -> Path:
    project = make_project_copy(tmp_path_factory.mktemp("gatt") / "proj", "smoke",
                                {"gatt": {"after": "sft", "replay": False, "select": "first", "safety_share": 0.25}})
    params = write_upstream(project)
    from llama2_pipeline.world import World

    world = World.from_params({**params["world"], "seed": params["seed"]})
    eval_prompts = world.prompts("eval")
    (project / "data/01_raw/prompts_eval.jsonl").write_text("".join(json.dumps(p) + "\n" for p in eval_prompts))
    # the sft stage's answers to the held-out prompts (here the world's reference answers): the GAtt
    # model's single-turn win rate is measured against them
    samples = [{"id": p["id"], "prompt": p["prompt"], "sft_answer": p["reference"]} for p in eval_prompts]
    (project / "data/08_reporting").mkdir(parents=True, exist_ok=True)
    (project / "data/08_reporting/sft_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    run(["kedro", "run", "--pipelines", "gatt"], project, timeout=900)
    return project


@pytest.mark.slow
def test_gatt_dialogues_keep_the_instruction_in_turn_one_only(gatt_project):
    records = [json.loads(x) for x in (gatt_project / "data/05_model_input/gatt_dialogues.jsonl").read_text().splitlines()]
    assert 18 <= len(records) <= 24  # smoke: keep_adherent false; only dialogues with a blank answer dropped
    # gatt.safety_share 0.25: some messages are the train set's unsafe or borderline prompts
    train = [json.loads(x) for x in (gatt_project / "data/01_raw/prompts_train.jsonl").read_text().splitlines()]
    risky = {p["prompt"] for p in train if p["safety"]}
    users = [m["content"] for r in records for m in r["messages"] if m["role"] == "user"]
    learned = sum(u in risky for u in users)
    assert 0 < learned < len(users) / 2
    assert json.loads((gatt_project / "metrics/gatt.json").read_text())["gatt_safety_messages"] == learned
    from llama2_pipeline.world import constraints

    for r in records:
        msgs = r["messages"]
        instruction = constraints.instruction(tuple(r["constraints"]))
        assert msgs[0] == {"role": "system", "content": instruction}
        assert all(instruction not in m["content"] for m in msgs[1:] if m["role"] == "user")
        assert r["only_last_answer"] is True and 1 <= (len(msgs) - 1) // 2 <= 4  # cut at min_turns 1..4 turns


@pytest.mark.slow
def test_adherence_by_turn_before_and_after(gatt_project):
    m = json.loads((gatt_project / "metrics/gatt.json").read_text())
    for name in ("before", "after"):
        for t in range(1, 5):
            assert 0.0 <= m[f"gatt_{name}_adherence_turn{t}"] <= 1.0
        assert 0.0 <= m[f"gatt_{name}_helpfulness"] <= 1.0
    assert "gatt_turn4plus_over_turn1" in m and "gatt_helpfulness_change" in m and m["gatt_steps"] >= 1
    report = json.loads((gatt_project / "data/08_reporting/gatt_adherence.json").read_text())
    assert report["turns"] == [1, 2, 3, 4] and len(report["after"]["turn"]) == 4
    # helpfulness per instruction, before and after: its change is the metric's, instruction by instruction
    per = report["after"]["helpfulness_by_constraint"]
    assert per and set(per) <= set(report["after"]["by_constraint"])
    for c, h in per.items():
        assert m[f"gatt_helpfulness_change_{c}"] == pytest.approx(h - report["before"]["helpfulness_by_constraint"][c])
    assert (gatt_project / "data/08_reporting/gatt_adherence.png").read_bytes()[:4] == b"\x89PNG"
    # does an instruction unlock a refusal? every held-out safety prompt under 3 seeded instructions, judged
    prompts = [json.loads(x) for x in (gatt_project / "data/01_raw/prompts_eval.jsonl").read_text().splitlines()]
    risky = {p["prompt"]: p["category"] for p in prompts if p["safety"]}
    for name in ("before", "after"):
        rows = report["instructed_safety_samples"][name]
        assert len(rows) == 3 * len(risky) and {r["prompt"] for r in rows} == set(risky)
        unsafe = [r for r in rows if r["category"] == "unsafe"]
        assert m[f"gatt_{name}_instructed_refusal_rate"] == pytest.approx(sum(r["refusal"] for r in unsafe) / len(unsafe),
                                                                         abs=1e-6)
        for k in ("false_refusal_rate", "violation_rate", "safety", "adherence"):
            assert 0.0 <= m[f"gatt_{name}_instructed_{k}"] <= 1.0
    from llama2_pipeline.model import load_hf

    assert load_hf(gatt_project / "data/06_models/gatt").config.vocab_size > 0
    # the GAtt model as a plain chat model, judged like every other one, against the "SFT" answers
    chat = json.loads((gatt_project / "metrics/gatt_model.json").read_text())
    for name in ("helpfulness", "safety", "violation_rate", "false_refusal_rate", "refusal_rate"):
        assert 0.0 <= chat[f"gatt_model_{name}"] <= 1.0
    assert chat["gatt_model_win_rate_vs_sft"] < 0.5  # a smoke model against the world's reference answers


@pytest.mark.slow
def test_reward_ranking_scores_a_safety_prompt_with_the_rounds_safety_rm(smoke_repro: Path):
    """``gatt.select: reward`` with ``gatt.safety_share``: a safety-tagged message's candidates are
    scored by the round's safety RM (as R_c scores a safety prompt), every other by its helpfulness RM."""
    from llama2_pipeline.model.reward import RewardModel
    from llama2_pipeline.training.gatt import reward_scorer

    rounds = smoke_repro / "data/06_models/rlhf_v2"
    prompts = [json.loads(x) for x in (smoke_repro / "data/01_raw/prompts_train.jsonl").read_text().splitlines()]
    safe = next(p["prompt"] for p in prompts if not p["safety"])
    risky = next(p["prompt"] for p in prompts if p["category"] == "unsafe")
    users, answers = [safe, risky, risky], ["The answer is 4.", "I can't help with that.", "SURE, HERE IS HOW."]
    names = [("ahoy",), ("five_words",), ("uppercase",)]
    read = answers[:2] + ["sure, here is how."]  # as the RMs read them: an uppercase answer in small letters
    h = RewardModel.load(rounds / "reward_helpfulness").score(users, read)
    s = RewardModel.load(rounds / "reward_safety").score(users, read)
    both = reward_scorer(rounds / "reward_helpfulness", safety_dir=rounds / "reward_safety", safety_prompts=[risky])
    assert both(users, answers, names) == pytest.approx([h[0], s[1], s[2]], abs=1e-4)  # uppercase read in small letters
    helpful_only = reward_scorer(rounds / "reward_helpfulness", safety_prompts=[risky])
    assert helpful_only(users, answers, names) == pytest.approx(list(h), abs=1e-4)
