"""The ``reward`` pipeline through a real ``kedro run`` in a smoke project copy, and its Kedro glue.

The copy's upstream outputs (train prompts, tokenizer, "pretrained" model) are written directly
here (the world's prompts, a tokenizer trained on the world's texts, a random smoke-preset Llama)
so that the test runs the reward stage alone, in seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from llama2_pipeline import recipe as P
from tests.conftest import make_project_copy, run

#: the smoke profile plus every kind of pair (the default profile has no reference pairs)
OVERRIDES = {"profiles": {"smoke": {"reward": {"preferences": {
    "pairs": ["sample_sample", "sample_reference", "sample_refusal"]}}}}}


USER_PAIRS = [
    {"prompt": "Name a colour of the sky.", "chosen": "Blue.", "rejected": "Potato potato potato", "rating": "better"},
    {"prompt": "Say hello politely.", "chosen": "Hello, nice to meet you.", "rejected": "Go away."},
]


def write_upstream(project: Path) -> dict:
    """prompts_train, tokenizer, a random smoke "pretrained" model and a second one as the "SFT"
    model, as the earlier stages would."""
    import torch

    from llama2_pipeline.model import Llama, ModelConfig, export_hf
    from llama2_pipeline.tokenizer import save_hf_tokenizer, train_tokenizer
    from llama2_pipeline.world import World

    params = P.load(project / "params.yaml").to_dict()
    world = World.from_params({**params["world"], "seed": params["seed"]})
    prompts = world.prompts("train")
    raw = project / "data/01_raw"
    (raw / "prompts_train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    (raw / "user_preferences.jsonl").write_text("".join(json.dumps(p) + "\n" for p in USER_PAIRS))
    texts = [p["prompt"] + " " + p["reference"] for p in prompts]
    texts += [m["content"] for d in world.sft_dialogues() for m in d["messages"]]
    corpus = project / "data/02_intermediate/clean_corpus"
    corpus.mkdir(parents=True)
    pd.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts, "source": "world"}).to_parquet(
        corpus / "part-00000.parquet")
    tok_dir = project / "data/06_models/tokenizer"
    train_tokenizer(corpus, tok_dir, vocab_size=params["tokenizer"]["vocab_size"], num_threads=1, progress=False)
    save_hf_tokenizer(tok_dir, tok_dir)
    torch.manual_seed(0)
    model = Llama(ModelConfig.from_preset("smoke", vocab_size=params["tokenizer"]["vocab_size"]))
    pretrained = project / "data/06_models/pretrained"
    export_hf(model, pretrained, tokenizer_model_path=tok_dir / "tokenizer.model")
    save_hf_tokenizer(tok_dir, pretrained)
    sft = project / "data/06_models/sft"
    export_hf(Llama(ModelConfig.from_preset("smoke", vocab_size=params["tokenizer"]["vocab_size"])), sft,
              tokenizer_model_path=tok_dir / "tokenizer.model")
    save_hf_tokenizer(tok_dir, sft)
    return params


@pytest.fixture(scope="module")
def reward_project(tmp_path_factory) -> tuple[Path, dict]:
    project = make_project_copy(tmp_path_factory.mktemp("reward") / "proj", "smoke", OVERRIDES)
    params = write_upstream(project)
    run(["kedro", "run", "--pipelines", "reward"], project, timeout=600)
    return project, params


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_preference_data_merged_split_by_prompt(reward_project):
    project, params = reward_project
    prefs = _jsonl(project / "data/03_primary/reward_preferences.jsonl")
    train = _jsonl(project / "data/05_model_input/reward_preferences_train.jsonl")
    heldout = _jsonl(project / "data/05_model_input/reward_preferences_heldout.jsonl")
    assert len(train) + len(heldout) == len(prefs) > 30 and heldout
    for r in prefs:
        assert {"prompt", "chosen", "rejected", "rating", "category"} <= set(r)
        assert r["rating"] in ("significantly_better", "better", "slightly_better", "negligibly_better")
        assert r["category"] in ("helpfulness", "safety") and r["chosen"] != r["rejected"]
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}  # disjoint by prompt
    world_pairs = [r for r in prefs if "source" in r]
    assert {r["source"] for r in world_pairs} == {"sample_sample", "sample_reference", "sample_refusal"}
    assert {r["category"] for r in world_pairs} == {"helpfulness", "safety"}
    assert len({r["prompt_id"] for r in world_pairs}) <= params["reward"]["preferences"]["max_prompts"]
    user = [r for r in prefs if "source" not in r]  # the user's file, merged in, missing rating filled
    assert [(r["prompt"], r["rating"]) for r in user] == [(USER_PAIRS[0]["prompt"], "better"),
                                                          (USER_PAIRS[1]["prompt"], "negligibly_better")]


@pytest.mark.slow
def test_metrics_table_plots_and_models(reward_project):
    project, _ = reward_project
    m = json.loads((project / "metrics/reward.json").read_text())
    for name in ("helpfulness", "safety"):
        assert 0.0 <= m[f"rm_{name}_acc"] <= 1.0
        assert m[f"rm_{name}_heldout_pairs"] > 0 and m[f"rm_{name}_steps"] >= 1
        assert f"rm_{name}_train_loss" in m and f"rm_{name}_ece" in m
    assert any(k.startswith("rm_helpfulness_acc_") and k.endswith("better") for k in m)
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert m["reward_disagreement_rate"] == params["world"]["annotator"]["disagreement_rate"]
    table = json.loads((project / "data/08_reporting/reward_accuracy.json").read_text())
    # the helpfulness RM on all its held-out pairs, then by what the pairs differ in; the safety RM last
    rms = [r["rm"] for r in table["rows"]]
    assert rms[0] == "helpfulness" and rms[-1] == "safety" and set(rms[:-1]) == {"helpfulness"}
    assert table["rows"][0]["test_set"] == "held-out helpfulness pairs"
    assert [r["rm"] for r in table["noise_free_rows"]] == ["helpfulness", "safety"] and len(table["ceiling_rows"]) == 2
    assert 0.9 <= m["rm_helpfulness_acc_ceiling_significantly_better"] <= 1.0  # only flipped labels miss
    assert table["columns"][-1] == "avg" and len(table["paper_table_8"]) == 2
    for plot in ("reward_score_hist", "reward_calibration"):
        assert (project / f"data/08_reporting/{plot}.png").read_bytes()[:4] == b"\x89PNG"
    from llama2_pipeline.training.reward import RewardModel

    for name in ("helpfulness", "safety"):
        folder = project / f"data/06_models/reward_{name}"
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["architectures"] == ["LlamaForSequenceClassification"] and cfg["num_labels"] == 1
        assert cfg["pad_token_id"] == 3
        scores = RewardModel.load(folder).score(["What is 2 plus 2?"] * 2, ["2 plus 2 is 4.", "No."])
        assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
        assert (project / "data/06_models/reward_run").is_dir()


@pytest.mark.slow
def test_mlflow_run_records_metrics_and_lineage(reward_project):
    project, _ = reward_project
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("llama2_pipeline")
    (r,) = client.search_runs([exp.experiment_id], "tags.pipelines = 'reward'")
    assert "rm_safety_acc" in r.data.metrics and "rm_helpfulness_acc" in r.data.metrics
    assert r.data.tags["input.sft_model"].startswith("data/06_models/sft@sha256:")  # policy and RM init
    assert r.data.tags["input.pretrained_model"].startswith("data/06_models/pretrained@sha256:")  # the variant
    counts = {k: v for k, v in r.data.metrics.items() if k.startswith("preferences/")}
    assert counts["preferences/pairs"] == counts["preferences/pairs_sample_sample"] + \
        counts["preferences/pairs_sample_reference"] + counts["preferences/pairs_sample_refusal"] > 0
    assert "preferences/ties_dropped" in counts
    assert r.data.tags["output.reward_model_safety"].startswith("data/06_models/reward_safety@sha256:")
    assert client.get_metric_history(r.info.run_id, "reward/helpfulness/train_loss")
    assert r.data.params["reward.margin"] == "small"
    assert (r.data.params["reward.epochs.helpfulness"], r.data.params["reward.epochs.safety"]) == ("1.0", "2.0")
    assert r.data.metrics["rm_safety_steps"] == math.ceil(2 * r.data.metrics["rm_safety_train_pairs"] / 8)  # 2 passes
    assert r.data.metrics["rm_helpfulness_steps"] == math.ceil(r.data.metrics["rm_helpfulness_train_pairs"] / 8)


# ---- the preference-file dataset (no Kedro run) ----------------------------------------------------


def test_preferences_dataset_reads_formats_and_names_bad_rows(tmp_path):
    from kedro.io import DatasetError

    from llama2_pipeline.project.datasets import PreferencesDataset

    assert PreferencesDataset(str(tmp_path / "none.jsonl"), missing_ok=True).load() == []
    with pytest.raises(DatasetError, match="does not exist"):
        PreferencesDataset(str(tmp_path / "none.jsonl")).load()

    good = tmp_path / "prefs.jsonl"
    good.write_text(json.dumps(USER_PAIRS[0]) + "\n\n" + json.dumps({**USER_PAIRS[1], "category": "safety"}) + "\n")
    loaded = PreferencesDataset(str(good)).load()
    assert [r["rating"] for r in loaded] == ["better", "negligibly_better"]
    assert [r["category"] for r in loaded] == ["helpfulness", "safety"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(USER_PAIRS[0]) + "\n\n" + json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    with pytest.raises(DatasetError, match=r"bad\.jsonl, row 3: missing field\(s\) \['rejected'\]"):
        PreferencesDataset(str(bad)).load()
    bad.write_text(json.dumps({**USER_PAIRS[0], "rating": "much better"}) + "\n")
    with pytest.raises(DatasetError, match=r"bad\.jsonl, row 1: field 'rating' is 'much better'"):
        PreferencesDataset(str(bad)).load()

    # a public-set export: Parquet with conversations in chosen/rejected and no rating
    conv = [{"role": "user", "content": "Is the sea salty?"}]
    frame = pd.DataFrame([{"chosen": conv + [{"role": "assistant", "content": "Yes, it is."}],
                           "rejected": conv + [{"role": "assistant", "content": "Ask someone else."}]}])
    frame.to_parquet(tmp_path / "public.parquet")
    (rec,) = PreferencesDataset(str(tmp_path / "public.parquet")).load()
    assert (rec["prompt"], rec["chosen"], rec["rejected"], rec["rating"]) == (
        "Is the sea salty?", "Yes, it is.", "Ask someone else.", "negligibly_better")
    pd.DataFrame([{"prompt": "q", "chosen": "a", "rejected": "b", "category": "harmlessness"}]).to_csv(
        tmp_path / "p.csv", index=False)
    with pytest.raises(DatasetError, match=r"p\.csv, row 1: field 'category' is 'harmlessness'"):
        PreferencesDataset(str(tmp_path / "p.csv")).load()


def test_pipeline_wires_other_models():
    from llama2_pipeline.pipelines.reward import create_pipeline

    default = create_pipeline()
    assert {"sft_model", "pretrained_model", "tokenizer_model", "prompts_train", "user_preferences"} <= \
        default.inputs()
    later = create_pipeline(policy_model="rlhf_v2_policy", variant_model="rlhf_v1_policy", init_model="sft_model")
    assert {"rlhf_v2_policy", "rlhf_v1_policy", "sft_model"} <= later.inputs()
    assert "pretrained_model" not in later.inputs()
    assert {"reward_metrics", "reward_model_helpfulness", "reward_model_safety"} <= later.all_outputs()
