"""The recipe's parameters: one typed tree that mirrors ``params.yaml``, and the one loader.

``params.yaml`` holds the default profile at the top level, ``profiles.<name>`` overlays (``smoke``,
``gpu``) and ``train_defaults``, the training keys every stage shares, which each stage's ``train:``
overrides key by key. :func:`load` (a file) and :func:`resolve` (its data, as Kedro's config loader
has it) apply, in order: the selected profile's overlay, Kedro environment overlays
(``conf/<env>/parameters*.yml``), explicit overrides (``kedro run --params``); then expand
``train_defaults`` into every stage, give every config's ``seed`` the one ``seed``, and build the
:class:`Recipe` with the project's config builder, which names every unknown, missing or
malformed key by its dotted path before any work starts.

Each group is the config dataclass of the library that runs it (``TrainConfig``,
``CleaningConfig``, ``SFTConfig``, ``RewardConfig``, ``RLHFConfig``, ``GattConfig``, ...); the
groups no single library owns are here. No Kedro or MLflow imports.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from .core.schema import Config, ConfigError, require
from .data.config import CleaningConfig
from .model.config import ModelSpec, SamplingConfig
from .training.config import (
    GattConfig,
    RewardConfig,
    RLHFConfig,
    SFTConfig,
    TrainConfig,
)

PARAMS_FILE = "params.yaml"
#: where each stage's ``train:`` group sits; ``train_defaults`` is merged under each
TRAIN_GROUPS = ("pretrain.train", "sft.train", "reward.train", "rlhf.rejection_sampling.train", "gatt.finetune.train")
#: keys of params.yaml that are not part of the resolved tree
LOADER_KEYS = ("profiles", "train_defaults")


class ParamsError(ConfigError):
    """``params.yaml`` (or an overlay, or an override) is missing a key or has a malformed one."""


# --- the groups no single library owns ------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class TrackingParams(Config):
    experiment: str  # the MLflow experiment
    artifact_max_mb: float  # outputs up to this size are MLflow artifacts; larger ones by digest

    def check(self) -> None:
        require(self.experiment != "", "experiment", "a non-empty string", self.experiment)
        require(self.artifact_max_mb >= 0, "artifact_max_mb", "a number >= 0", self.artifact_max_mb)


@dataclass(frozen=True, kw_only=True)
class PromptParams(Config):
    n_arithmetic: int
    n_list: int
    n_string: int
    eval_fraction: float

    def check(self) -> None:
        for key in ("n_arithmetic", "n_list", "n_string"):
            require(getattr(self, key) >= 0, key, "an integer >= 0", getattr(self, key))
        require(0 < self.eval_fraction <= 1, "eval_fraction", "a number in (0, 1]", self.eval_fraction)


@dataclass(frozen=True, kw_only=True)
class CorpusParams(Config):
    size_mb: float
    shard_docs: int
    mix: dict[str, float]

    def check(self) -> None:
        require(0 < self.size_mb <= 1e6, "size_mb", "a number in (0, 1e6]", self.size_mb)
        require(self.shard_docs >= 1, "shard_docs", "an integer >= 1", self.shard_docs)
        require(bool(self.mix) and all(v >= 0 for v in self.mix.values()) and sum(self.mix.values()) > 0, "mix",
                "a mapping of sources to non-negative weights with a positive sum", self.mix)


@dataclass(frozen=True, kw_only=True)
class DemoParams(Config):
    n_dialogues: int
    multi_turn_fraction: float
    max_turns: int
    system_fraction: float
    constraint_fraction: float

    def check(self) -> None:
        require(self.n_dialogues >= 1, "n_dialogues", "an integer >= 1", self.n_dialogues)
        require(2 <= self.max_turns <= 64, "max_turns", "an integer in [2, 64]", self.max_turns)
        for key in ("multi_turn_fraction", "system_fraction", "constraint_fraction"):
            require(0 <= getattr(self, key) <= 1, key, "a number in [0, 1]", getattr(self, key))


@dataclass(frozen=True, kw_only=True)
class AnnotatorParams(Config):
    disagreement_rate: float

    def check(self) -> None:
        require(0 <= self.disagreement_rate < 0.5, "disagreement_rate", "a number in [0, 0.5)",
                self.disagreement_rate)


@dataclass(frozen=True, kw_only=True)
class WorldParams(Config):
    """The simulated world (``llama2_pipeline.world``)."""

    version: int  # the world's rules (2: demonstrations of mixed quality)
    n_entities: int
    prompts: PromptParams
    corpus: CorpusParams
    sft: DemoParams
    annotator: AnnotatorParams

    def check(self) -> None:
        from .world import VERSION

        require(self.version == VERSION, "version",
                f"{VERSION} (the world's rules; earlier versions are retired and their metrics not comparable)",
                self.version)
        require(1 <= self.n_entities <= 5000, "n_entities", "an integer in [1, 5000]", self.n_entities)

    def world(self, seed: int):
        """The :class:`~llama2_pipeline.world.World` these params and ``seed`` make."""
        from .world import World

        return World.from_params({**self.to_dict(), "seed": seed})


@dataclass(frozen=True, kw_only=True)
class TokenizerParams(Config):
    vocab_size: int
    max_sentences: int
    num_threads: int
    character_coverage: float
    max_sentence_length: int
    val_fraction: float
    workers: int
    tokens_per_shard: int

    def check(self) -> None:
        require(self.vocab_size >= 261, "vocab_size", "an integer >= 261 (4 specials + 256 bytes + 1)",
                self.vocab_size)
        require(self.max_sentences >= 0, "max_sentences", "an integer >= 0 (0 = all)", self.max_sentences)
        for key in ("num_threads", "workers"):
            require(0 <= getattr(self, key) <= 1024, key, "an integer in [0, 1024] (0 = all cores)", getattr(self, key))
        require(0.9 <= self.character_coverage <= 1.0, "character_coverage", "a number in [0.9, 1]",
                self.character_coverage)
        require(self.max_sentence_length >= 16, "max_sentence_length", "an integer >= 16", self.max_sentence_length)
        require(0 < self.val_fraction <= 1, "val_fraction", "a number in (0, 1]", self.val_fraction)
        require(self.tokens_per_shard >= 1, "tokens_per_shard", "an integer >= 1", self.tokens_per_shard)


@dataclass(frozen=True, kw_only=True)
class PretrainStage(Config):
    model: ModelSpec
    train: TrainConfig

    def check(self) -> None:
        require(self.train.max_steps is not None, "train.max_steps", "the number of optimiser steps")
        require(self.train.warmup_steps is not None, "train.warmup_steps", "the linear warm-up steps")


@dataclass(frozen=True, kw_only=True)
class SFTStage(SFTConfig):
    """Supervised fine-tuning (:class:`~llama2_pipeline.training.sft.SFTConfig`), the quality-only
    variant and the sampling of the held-out evaluation."""

    quality_only: str | None  # also fine-tune on this writer skill's dialogues alone (None: no variant)
    eval: SamplingConfig

    def check(self) -> None:
        super().check()
        require(self.quality_only in (None, "low", "mid", "high"), "quality_only",
                "a writer skill (low, mid, high) or null", self.quality_only)


@dataclass(frozen=True, kw_only=True)
class Recipe(Config):
    """Every parameter of the recipe, resolved for one profile."""

    profile: str
    seed: int
    tracking: TrackingParams
    world: WorldParams
    data_processing: CleaningConfig
    tokenizer: TokenizerParams
    pretrain: PretrainStage
    sft: SFTStage
    reward: RewardConfig
    rlhf: RLHFConfig
    gatt: GattConfig

    def check(self) -> None:
        require(0 <= self.seed < 2**32, "seed", "an integer in [0, 2^32)", self.seed)
        stages = ["sft", *(f"rlhf_{r}" for r in self.rlhf.rounds)]
        require(self.gatt.after in stages, "gatt.after", f"one of {stages} (the last round: {stages[-1]})",
                self.gatt.after)
        for path in ("sft", "rlhf.rejection_sampling", "gatt.finetune"):
            group = _get(self, path)
            require(group.train.warmup_steps is not None, f"{path}.train.warmup_steps", "the linear warm-up steps")
        require(self.reward.train.warmup_steps is None, "reward.train.warmup_steps",
                "absent: reward.warmup_fraction sets it", self.reward.train.warmup_steps)

    def stage_order(self) -> list[str]:
        """The model-producing stages in training order: ``sft``, ``rlhf_v1``, ... (GAtt's start)."""
        return ["sft", *(f"rlhf_{r}" for r in self.rlhf.rounds)]


# --- loading ----------------------------------------------------------------------------------------

def read_params_file(path: str | os.PathLike = PARAMS_FILE) -> dict:
    """``params.yaml`` as data (a missing or unparsable file raises naming it)."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise ParamsError([f"{path} does not exist (the recipe's parameters)"]) from None
    except yaml.YAMLError as e:
        raise ParamsError([f"not valid YAML: {e}"], str(path)) from None
    if not isinstance(data, dict):
        raise ParamsError(["expected a mapping of parameter groups"], str(path))
    return data


def load(path: str | os.PathLike = PARAMS_FILE, *, profile: str | None = None, overrides: Mapping | None = None,
         overlays: tuple[Mapping, ...] = ()) -> Recipe:
    """The :class:`Recipe` of ``path`` (with ``profile`` instead of the file's, if given)."""
    overrides = {**(overrides or {}), **({"profile": profile} if profile else {})}
    return resolve(read_params_file(path), overlays=overlays, overrides=overrides, source=str(path))


def resolve(params: Mapping, *, overlays: tuple[Mapping, ...] = (), overrides: Mapping | None = None,
            source: str = PARAMS_FILE) -> Recipe:
    """The :class:`Recipe` of params.yaml's data ``params``, ``overlays`` (Kedro environments) and
    ``overrides`` (``--params``), in that order; a :class:`ParamsError` lists every bad key."""
    plain = resolve_plain(params, overlays=overlays, overrides=overrides, source=source)
    try:
        return Recipe.from_dict(plain, strict=True)
    except ConfigError as e:
        raise ParamsError(e.problems, f"{source} is not valid (profile {plain.get('profile')!r})") from None


def resolve_plain(params: Mapping, *, overlays: tuple[Mapping, ...] = (), overrides: Mapping | None = None,
                  source: str = PARAMS_FILE) -> dict:
    """The resolved tree as plain data, before it is built (what :func:`resolve` checks)."""
    overrides = dict(overrides or {})
    layers = [("--params", overrides), *((f"{source} overlay", o) for o in reversed(overlays)), (source, params)]
    origin, profile = next(((name, layer["profile"]) for name, layer in layers if "profile" in layer),
                           (source, None))
    profiles = params.get("profiles") or {}
    known = sorted({"default", *profiles})
    if profile is None:
        raise ParamsError([f"missing key 'profile' (expected one of: {', '.join(known)})"], source)
    if profile != "default" and profile not in profiles:
        raise ParamsError([f"unknown profile {profile!r} at key 'profile' (expected one of: {', '.join(known)})"],
                          origin)
    merged = {k: copy.deepcopy(v) for k, v in params.items() if k != "profiles"}
    for layer in (profiles.get(profile) or {}, *overlays, overrides):
        merged = deep_merge(merged, {k: v for k, v in layer.items() if k != "profiles"})
    merged["profile"] = profile
    defaults = merged.pop("train_defaults", None) or {}
    for path in TRAIN_GROUPS:
        group = _get(merged, path.rsplit(".", 1)[0], None)
        if isinstance(group, dict):
            group["train"] = deep_merge(defaults, group.get("train") or {})
    if isinstance(merged.get("seed"), int):
        _set_seeds(Recipe, merged, merged["seed"])
    return merged


def deep_merge(base: Mapping, overlay: Mapping) -> dict:
    """``overlay`` over ``base``, mapping by mapping (copies; lists and values are replaced)."""
    out = copy.deepcopy(dict(base))
    for k, v in (overlay or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def _set_seeds(cls: type, data: dict, seed: int) -> None:
    """Every config in the tree with a ``seed`` field gets the one seed, unless the data gives one."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value, hint = data.get(f.name), hints[f.name]
        if f.name == "seed" and cls is not Recipe:
            data.setdefault("seed", seed)
        elif dataclasses.is_dataclass(hint) and isinstance(value, dict):
            _set_seeds(hint, value, seed)


def _get(obj: Any, path: str, default: Any = KeyError) -> Any:
    for part in path.split("."):
        if isinstance(obj, Mapping):
            if part not in obj:
                if default is KeyError:
                    raise KeyError(path)
                return default
            obj = obj[part]
        else:
            obj = getattr(obj, part)
    return obj
