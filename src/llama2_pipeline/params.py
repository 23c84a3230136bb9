"""Parameters: profile resolution and validation of ``params.yaml`` (no Kedro imports).

``params.yaml`` holds the default profile's values at the top level and, under ``profiles``,
per-profile overlays (``smoke``, ``gpu``, ...). :func:`resolve` merges the selected profile's overlay
over the defaults, then re-applies explicit overrides (``kedro run --params k=v``), and
:func:`validate` checks every known key before any work starts, naming the key and what was
expected.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable


class ParamsError(ValueError):
    """A value in params.yaml is missing or malformed."""


def deep_merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (overlay or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve(params: dict, overrides: dict | None = None) -> dict:
    """The parameters of the selected profile, with explicit ``overrides`` applied last."""
    overrides = overrides or {}
    profile = overrides.get("profile", params.get("profile"))
    profiles = params.get("profiles") or {}
    if profile is None:
        raise ParamsError("params.yaml: missing key 'profile' (expected one of: default, "
                          + ", ".join(sorted(profiles)) + ")")
    if profile != "default" and profile not in profiles:
        raise ParamsError(f"params.yaml: unknown profile {profile!r} at key 'profile' "
                          f"(expected one of: {', '.join(['default'] + sorted(profiles))})")
    base = {k: v for k, v in params.items() if k != "profiles"}
    merged = deep_merge(base, profiles.get(profile) or {})
    merged = deep_merge(merged, overrides)
    merged["profile"] = profile
    return merged


# --- validation --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    check: Callable[[Any], bool]
    expected: str


def integer(lo: float = -math.inf, hi: float = math.inf) -> Rule:
    return Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi,
                f"an integer in [{lo}, {hi}]".replace("inf", "∞"))


def number(lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and (v > lo if lo_open else v >= lo) and v <= hi)
    return Rule(ok, f"a number in {'(' if lo_open else '['}{lo}, {hi}]".replace("inf", "∞"))


def one_of(*choices: Any) -> Rule:
    return Rule(lambda v: v in choices, f"one of {list(choices)}")


def boolean() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "true or false")


def weights() -> Rule:
    return Rule(lambda v: isinstance(v, dict) and v and all(isinstance(x, (int, float)) and x >= 0 for x in v.values())
                and sum(v.values()) > 0, "a mapping of names to non-negative weights with a positive sum")


def string() -> Rule:
    return Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")


#: Every validated key, as a dotted path. Groups of later stages register theirs with
#: :func:`register`; a stage's library may also validate its own group further.
SCHEMA: dict[str, Rule] = {
    "seed": integer(0, 2**32 - 1),
    "world.n_entities": integer(1, 5000),
    "world.prompts.n_arithmetic": integer(0),
    "world.prompts.n_list": integer(0),
    "world.prompts.n_string": integer(0),
    "world.prompts.eval_fraction": number(0, 1, lo_open=True),
    "world.corpus.size_mb": number(0, 1e6, lo_open=True),
    "world.corpus.shard_docs": integer(1),
    "world.corpus.mix": weights(),
    "world.sft.n_dialogues": integer(1),
    "world.sft.multi_turn_fraction": number(0, 1),
    "world.sft.max_turns": integer(2, 64),
    "world.sft.system_fraction": number(0, 1),
    "world.sft.constraint_fraction": number(0, 1),
    "world.annotator.disagreement_rate": number(0, 0.5),
    "tracking.experiment": string(),
    "tracking.artifact_max_mb": number(0),
    "data_processing.workers": integer(0, 1024),
    "tokenizer.vocab_size": integer(261, 2**31 - 1),
    "tokenizer.max_sentences": integer(0),
    "tokenizer.num_threads": integer(0, 1024),
    "tokenizer.character_coverage": number(0.9, 1.0),
    "tokenizer.max_sentence_length": integer(16),
    "tokenizer.val_fraction": number(0, 1, lo_open=True),
    "tokenizer.workers": integer(0, 1024),
    "tokenizer.tokens_per_shard": integer(1),
}


def _validate_cleaning(group: dict) -> None:
    from llama2_pipeline.data import CleaningConfig

    CleaningConfig.from_dict({k: v for k, v in group.items() if k != "workers"})


def _validate_training(group: dict) -> None:
    from llama2_pipeline.model import ModelConfig
    from llama2_pipeline.training.config import TrainConfig

    TrainConfig.from_dict(group.get("train"))
    model = dict(group.get("model") or {})
    if "preset" not in model:
        raise ValueError("missing key 'model.preset' (a model preset name)")
    ModelConfig.from_preset(model.pop("preset"), **model)


def _validate_sft(group: dict) -> None:
    from llama2_pipeline.evaluation import SamplingConfig
    from llama2_pipeline.training.config import TrainConfig
    from llama2_pipeline.training.sft import SFTConfig

    TrainConfig.from_dict(group.get("train"))
    SFTConfig.from_dict({k: v for k, v in group.items() if k not in ("train", "eval")})
    SamplingConfig.from_dict(group.get("eval") or {})


def _validate_reward(group: dict) -> None:
    from llama2_pipeline.training.reward import validate_reward_params

    validate_reward_params(group)


def _validate_rlhf(group: dict) -> None:
    from llama2_pipeline.training.config import TrainConfig
    from llama2_pipeline.training.rlhf import validate_rlhf_params
    from llama2_pipeline.training.sft import SFTConfig

    validate_rlhf_params(group)
    rs = dict(group["rejection_sampling"])
    TrainConfig.from_dict(rs.pop("train", None))
    SFTConfig.from_dict(rs)


def _validate_gatt(group: dict) -> None:
    from llama2_pipeline.training.gatt import validate_gatt_params

    validate_gatt_params(group)


#: Groups whose library validates them further (unknown keys, cross-field rules); each raises
#: ValueError naming the key, re-raised as ParamsError with the group's prefix.
GROUP_VALIDATORS: dict[str, Callable[[dict], None]] = {"data_processing": _validate_cleaning,
                                                      "pretrain": _validate_training,
                                                      "sft": _validate_sft,
                                                      "reward": _validate_reward,
                                                      "rlhf": _validate_rlhf,
                                                      "gatt": _validate_gatt}

_MISSING = object()


def register(rules: dict[str, Rule]) -> None:
    SCHEMA.update(rules)


def get(params: dict, path: str, default: Any = _MISSING) -> Any:
    node: Any = params
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _MISSING:
                raise KeyError(path)
            return default
        node = node[part]
    return node


def validate(params: dict, schema: dict[str, Rule] | None = None) -> dict:
    """Raise :class:`ParamsError` listing every missing or malformed key; return ``params``."""
    errors = []
    absent = object()
    for path, rule in (schema or SCHEMA).items():
        value = get(params, path, absent)
        if value is absent:
            errors.append(f"missing key '{path}' (expected {rule.expected})")
        elif not rule.check(value):
            errors.append(f"key '{path}' is {value!r}, expected {rule.expected}")
    for group, check in GROUP_VALIDATORS.items():
        if isinstance(params.get(group), dict):
            try:
                check(params[group])
            except (ValueError, TypeError) as e:
                errors.append(f"{group}: {e}")
    if errors:
        raise ParamsError("params.yaml is not valid (profile "
                          f"{params.get('profile')!r}):\n  - " + "\n  - ".join(errors))
    return params


def round_names(group: dict) -> list[str]:
    """The round names (``v1``, ``v2``, ...) in order, checked: each round starts ``after`` the
    previous one (the first after ``sft``) and says whether it runs PPO."""
    rounds = group.get("rounds")
    if not isinstance(rounds, dict) or not rounds:
        raise ValueError("key 'rlhf.rounds' must map round names (v1, v2, ...) to {after, ppo}")
    previous = "sft"
    for name, spec in rounds.items():
        if not isinstance(spec, dict) or set(spec) != {"after", "ppo"}:
            raise ValueError(f"key 'rlhf.rounds.{name}' must be a mapping with exactly 'after' and 'ppo', got {spec!r}")
        if spec["after"] != previous:
            raise ValueError(f"key 'rlhf.rounds.{name}.after' is {spec['after']!r}, expected {previous!r} "
                             "(each round starts from the one before it; the first from sft)")
        if not isinstance(spec["ppo"], bool):
            raise ValueError(f"key 'rlhf.rounds.{name}.ppo' is {spec['ppo']!r}, expected true or false")
        previous = f"rlhf_{name}"
    return list(rounds)
