"""The recipe's typed parameter tree: every profile resolves, train_defaults and overlays apply in
order, and a bad key is named by its dotted path (nested keys included)."""

import re

import pytest
import yaml

from llama2_pipeline import recipe as R
from llama2_pipeline.training.config import TrainConfig
from tests.conftest import ROOT

PARAMS = ROOT / "params.yaml"


def raw() -> dict:
    return yaml.safe_load(PARAMS.read_text())


@pytest.mark.parametrize("profile", ["default", "smoke", "gpu"])
def test_every_profile_resolves(profile):
    recipe = R.load(PARAMS, profile=profile)
    assert recipe.profile == profile and isinstance(recipe.sft.train, TrainConfig)
    plain = recipe.to_dict()
    assert "profiles" not in plain and "train_defaults" not in plain
    assert R.Recipe.from_dict(plain, strict=True) == recipe  # plain data round-trips (what Kedro's nodes get)


def test_train_defaults_are_overridden_key_by_key():
    data = raw()
    recipe = R.load(PARAMS)
    defaults = data["train_defaults"]
    assert recipe.sft.train.lr == data["sft"]["train"]["lr"]  # the stage's own value
    assert recipe.sft.train.seq_len == defaults["seq_len"] and recipe.sft.train.betas == tuple(defaults["betas"])
    assert recipe.reward.train.micro_batch == data["reward"]["train"]["micro_batch"] != defaults["micro_batch"]
    gpu = R.load(PARAMS, profile="gpu")  # the profile's train_defaults reach every stage that does not override
    assert {gpu.pretrain.train.zero_stage, gpu.sft.train.zero_stage, gpu.reward.train.zero_stage,
            gpu.rlhf.rejection_sampling.train.zero_stage, gpu.gatt.finetune.train.zero_stage} == {1}
    assert gpu.pretrain.train.grad_accum == 4 and gpu.sft.train.grad_accum == 8


def test_one_seed_reaches_every_config():
    recipe = R.load(PARAMS, overrides={"seed": 7})
    seeds = {recipe.pretrain.train.seed, recipe.sft.train.seed, recipe.sft.eval.seed, recipe.reward.train.seed,
             recipe.rlhf.rejection_sampling.train.seed, recipe.rlhf.ppo.seed, recipe.gatt.sampling.seed,
             recipe.gatt.finetune.train.seed, recipe.data_processing.dedup.seed}
    assert seeds == {7}


def test_order_profile_then_environment_then_overrides():
    data = raw()
    smoke = R.resolve(data, overrides={"profile": "smoke"})
    assert smoke.world.corpus.size_mb == data["profiles"]["smoke"]["world"]["corpus"]["size_mb"]
    assert smoke.world.corpus.mix == data["world"]["corpus"]["mix"]  # untouched keys kept
    env = {"world": {"corpus": {"size_mb": 0.3}}, "gatt": {"after": "rlhf_v1"}}
    local = R.resolve(data, overlays=(env,), overrides={"profile": "smoke"})
    assert local.world.corpus.size_mb == 0.3 and local.gatt.after == "rlhf_v1"  # the environment beats the profile
    over = R.resolve(data, overlays=(env,), overrides={"profile": "smoke", "world": {"corpus": {"size_mb": 0.5}}})
    assert over.world.corpus.size_mb == 0.5  # --params beats both
    assert R.resolve(data, overlays=({"profile": "smoke"},)).profile == "smoke"


def test_every_profile_lists_every_group_dvc_tracks():
    """dvc.yaml tracks profiles.<profile>.<group>: every overlay must name every such group."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stages = [s.get("do", s) for s in dvc["stages"].values()]
    groups = {p.split(".")[-1] for s in stages for p in s.get("params", [])
              if isinstance(p, str) and p.startswith("profiles.")}
    assert "train_defaults" in groups
    for name, overlay in raw()["profiles"].items():
        assert groups <= set(overlay), f"profile {name} lacks {groups - set(overlay)}"


def test_every_key_of_params_yaml_is_commented():
    """Each value line of the top-level groups says what the key means in a comment on the line."""
    lines = PARAMS.read_text().splitlines()
    end = lines.index("profiles:")
    bare = [f"line {i + 1}: {line.strip()}" for i, line in enumerate(lines[:end])
            if (m := re.match(r"^\s*[a-z_0-9]+:\s*([^#\s].*)?$", line)) and m.group(1) is not None
            and "#" not in m.group(1)]
    assert not bare, "keys without a comment:\n" + "\n".join(bare)


def test_unknown_profile_is_named_once_with_its_source():
    with pytest.raises(R.ParamsError) as e:
        R.load(PARAMS, overrides={"profile": "huge"})
    msg = str(e.value)
    assert msg.startswith("--params: unknown profile 'huge'") and msg.count("default") == 1
    assert "default, gpu, smoke" in msg


def _set(data: dict, dotted: str, value):
    *head, last = dotted.split(".")
    node = data
    for part in head:
        node = node[part]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value


@pytest.mark.parametrize("key, value, message", [
    ("world.corpus.size_mb", -1, "key 'world.corpus.size_mb' is -1.0, expected a number in (0"),
    ("world.annotator.disagreement_rate", KeyError, "missing key 'world.annotator.disagreement_rate' (a number)"),
    ("world.n_entities", True, "key 'world.n_entities' is True (bool), expected an integer"),
    ("sft.trian", {}, "unknown key 'sft.trian' (expected one of:"),
    ("sft.train.lr", "fast", "key 'sft.train.lr' is 'fast' (str), expected a number"),
    ("sft.train.max_steps", 10, "key 'sft.train.max_steps' is 10, expected absent: epochs sets it"),
    ("train_defaults.zero_stage", 5, "key 'pretrain.train.zero_stage' is 5, expected 0, 1, 2 or 3"),
    ("rlhf.ppo.beta", "high", "key 'rlhf.ppo.beta' is 'high' (str), expected a number"),
    ("rlhf.ppo.precision", "fp16", "key 'rlhf.ppo.precision' is 'fp16', expected one of 'fp32', 'bf16'"),
    ("rlhf.candidates.earlier_rounds", "yes", "key 'rlhf.candidates.earlier_rounds' is 'yes' (str), expected true"),
    ("rlhf.rounds.v2.after", "sft", "key 'rlhf.rounds.v2.after' is 'sft', expected 'rlhf_v1'"),
    ("rlhf.reward_replay", -0.5, "key 'rlhf.reward_replay' is -0.5, expected a number >= 0"),
    ("rlhf.reward_epochs", 0, "key 'rlhf.reward_epochs' is 0.0, expected a number > 0"),
    ("rlhf.candidates.likelihood_weight", -0.25, "key 'rlhf.candidates.likelihood_weight' is -0.25, expected a number >= 0"),
    ("reward.margin", "huge", "key 'reward.margin' is 'huge', expected one of 'small', 'large', 'none'"),
    ("reward.preferences.pairs", ["sample_sample", "x"], "key 'reward.preferences.pairs[1]' is 'x'"),
    ("reward.preferences.temperatures", [0.7], "key 'reward.preferences.temperatures' is [0.7], expected a list"),
    ("reward.safety_mix", {"safety": -1}, "key 'reward.safety_mix' is {'safety': -1.0}"),
    ("reward.train.max_steps", 3, "key 'reward.train.max_steps' is 3, expected absent"),
    ("reward.epochs", {"safety": 2}, "key 'reward.epochs' is {'safety': 2.0}, expected a number > 0, or a mapping of "
     "helpfulness and safety to numbers > 0"),
    ("reward.epochs", 0, "key 'reward.epochs' is 0.0, expected a number > 0"),
    ("data_processing.dedup.bands", 7, "key 'data_processing.dedup.bands' is 7, expected an integer >= 1 that divides"),
    ("data_processing.pii.kinds", ["email", "passport"], "key 'data_processing.pii.kinds[1]' is 'passport'"),
    ("pretrain.model.preset", "huge", "key 'pretrain.model.preset' is 'huge', expected one of smoke, tiny"),
    ("gatt.after", "rlhf_v9", "key 'gatt.after' is 'rlhf_v9', expected one of ['sft', 'rlhf_v1', 'rlhf_v2']"),
    ("gatt.turns", 0, "key 'gatt.turns' is 0, expected an integer >= 1"),
    ("gatt.min_turns", 99, "key 'gatt.min_turns' is 99, expected at most gatt.turns (6)"),
    ("gatt.cuts", "all", "key 'gatt.cuts' is 'all', expected one of 'every', 'random', 'whole'"),
    ("gatt.context", "chat", "key 'gatt.context' is 'chat', expected one of 'turn', 'dialogue'"),
    ("gatt.after", "sft", "key 'gatt.replay' is True, expected false when gatt.after is sft"),
    ("gatt.select", "best", "key 'gatt.select' is 'best', expected one of 'first', 'reward'"),
    ("gatt.extra", 1, "unknown key 'gatt.extra'"),
    ("rlhf.rounds.v1", {"after": "sft"}, "missing key 'rlhf.rounds.v1.ppo' (true or false)"),
    ("gatt.finetune.train.betas", [0.9], "key 'gatt.finetune.train.betas' is [0.9], expected a list of 2 values"),
])
def test_a_bad_key_is_named_by_its_dotted_path(key, value, message):
    data = raw()
    _set(data, key, value)
    with pytest.raises(R.ParamsError) as e:
        R.resolve(data, source="params.yaml")
    assert message in str(e.value), str(e.value)
    assert str(e.value).startswith("params.yaml is not valid (profile 'default')")


def test_gatt_ranks_samples_with_a_round_reward_model_only():
    data = raw()
    data["gatt"].update(after="sft", replay=False)
    with pytest.raises(R.ParamsError, match="key 'gatt.select' is 'reward', expected first when gatt.after is sft"):
        R.resolve(data, source="params.yaml")
    data["gatt"]["select"] = "first"
    assert R.resolve(data, source="params.yaml").gatt.select == "first"


def test_rm_replay_only_with_continued_reward_models():
    data = raw()
    data["rlhf"].update(reward_models="retrain", reward_replay=1.0)
    with pytest.raises(R.ParamsError, match="key 'rlhf.reward_replay' is 1.0, expected 0 with reward_models: retrain"):
        R.resolve(data, source="params.yaml")
    data["rlhf"]["reward_replay"] = 0.0
    assert R.resolve(data, source="params.yaml").rlhf.reward_models == "retrain"
    data["rlhf"].update(reward_models="continue", reward_replay=1.0)
    assert R.resolve(data, source="params.yaml").rlhf.reward_replay == 1.0


def test_every_problem_is_listed_at_once():
    data = raw()
    _set(data, "sft.train.lr", -1)
    _set(data, "rlhf.ppo.clip", 0)
    _set(data, "tokenizer.vocab_size", 10)
    with pytest.raises(R.ParamsError) as e:
        R.resolve(data)
    assert "3 problems" in str(e.value)
    assert all(k in str(e.value) for k in ("'sft.train.lr'", "'rlhf.ppo.clip'", "'tokenizer.vocab_size'"))
