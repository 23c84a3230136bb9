"""``rlhf``: the RLHF rounds of params.yaml ``rlhf.rounds`` (``v1: {after: sft, ppo: false}``, ...).

Each round is the same modular pipeline under the namespace ``rlhf_<name>`` and is also
registered alone as ``rlhf_<name>`` (the DVC ``foreach`` stage runs one round per stage). A round
reads the policy it starts ``after`` (``sft_model`` or the previous round's ``policy``) and the
preference pairs accumulated so far (the ``reward`` stage's, or the previous round's), and after
the first round the answers rejection sampling kept so far (pooled into this round's); the
reward models are retrained by the ``reward`` pipeline's nodes and the policy fine-tuned by the
``sft`` pipeline's node. The rounds are read from params.yaml when the pipelines are registered:
change the rounds there, not with ``--params``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml
from kedro.pipeline import Node, Pipeline, pipeline

from llama2_pipeline.pipelines.reward.nodes import (evaluate_reward_models, merge_preferences, split_preferences,
                                                    train_reward_models)

from . import nodes

def project_params() -> Path:
    """The project's params.yaml: in the folder Kedro runs from, else next to this source tree."""
    here = Path.cwd() / "params.yaml"
    return here if here.is_file() else Path(__file__).resolve().parents[4] / "params.yaml"


def read_params_file(params_file: Path) -> dict:
    """params.yaml as a dict ({} if missing), parsed once per file version (several pipelines
    read it while Kedro registers them; libyaml's parser when available)."""
    path = Path(params_file)
    if not path.is_file():
        return {}
    stat = path.stat()
    return _parse_yaml(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _parse_yaml(path: str, mtime_ns: int, size: int) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(Path(path).read_text(), Loader=loader) or {}


def _named(fn, name: str, **bound):
    """``fn`` with some arguments bound, keeping a name Kedro can show."""
    out = functools.partial(fn, **bound)
    functools.update_wrapper(out, fn)
    out.__name__ = name
    return out


def round_pipeline(name: str, ppo: bool, first: bool = True) -> Pipeline:
    """One round, un-namespaced; its free inputs ``start_policy`` and ``start_preferences`` (and,
    after the first round, ``start_rs_dialogues``: what rejection sampling kept so far) are mapped
    to the previous round's outputs by :func:`round_pipelines`."""
    policy_after_rs = "policy_rs" if ppo else "policy"
    steps = [
        Node(_named(nodes.sample_candidates, "sample_candidates", round_name=name),
             {"policy": "start_policy", "tokenizer": "tokenizer_model", "prompts": "prompts_train",
              "rlhf": "params:rlhf", "seed": "params:seed"}, "candidates_raw", name="sample_candidates"),
        Node(nodes.annotate_candidates, {"candidates": "candidates_raw", "world": "params:world",
                                         "rlhf": "params:rlhf", "seed": "params:seed"},
             "reward_preferences_new", name="annotate"),
        Node(merge_preferences, {"old": "start_preferences", "new": "reward_preferences_new"},
             "reward_preferences", name="merge_preferences"),
        Node(split_preferences, {"prefs": "reward_preferences",
                                 "eval_fraction": "params:reward.preferences.eval_fraction", "seed": "params:seed"},
             ["reward_preferences_train", "reward_preferences_heldout"], name="split_preferences"),
        Node(train_reward_models,
             {"train_prefs": "reward_preferences_train", "init_model_dir": "sft_model", "params": "params:reward",
              "workspace": "reward_workspace", "seed": "params:seed", "heldout": "reward_preferences_heldout"},
             ["reward_model_helpfulness", "reward_model_safety", "reward_train_summary"], name="train_reward_models"),
        Node(evaluate_reward_models,
             {"helpfulness_dir": "reward_model_helpfulness", "safety_dir": "reward_model_safety",
              "heldout": "reward_preferences_heldout", "params": "params:reward", "world": "params:world",
              "seed": "params:seed", "train_metrics": "reward_train_summary", "init_model_dir": "sft_model"},
             ["reward_metrics", "reward_accuracy", "reward_score_hist_plot", "reward_calibration_plot"],
             name="evaluate_reward_models"),
        Node(nodes.rejection_sampling, {"candidates": "candidates_raw", "helpfulness": "reward_model_helpfulness",
                                        "safety": "reward_model_safety", "rlhf": "params:rlhf",
                                        **({} if first else {"earlier": "start_rs_dialogues",
                                                             "prompts": "prompts_train"})},
             ["rs_dialogues", "candidates", "rs_stats"], name="rejection_sampling"),
        Node(nodes.finetune_policy, {"dialogues": "rs_dialogues", "policy": "start_policy",
                                     "workspace": "rs_workspace", "rlhf": "params:rlhf", "seed": "params:seed"},
             [policy_after_rs, "rs_training", "rs_loss_curve_plot"], name="rejection_sampling_finetune"),
    ]
    eval_inputs = {"policy": "policy", "previous": "start_policy", "sft_model": "sft_model",
                   "helpfulness": "reward_model_helpfulness", "safety": "reward_model_safety",
                   "prompts": "prompts_eval", "world": "params:world", "rlhf": "params:rlhf", "seed": "params:seed",
                   "reward_metrics": "reward_metrics", "rs_stats": "rs_stats"}
    if ppo:
        steps.append(Node(_named(nodes.ppo, "ppo", round_name=name),
                          {"policy": "policy_rs", "helpfulness": "reward_model_helpfulness",
                           "safety": "reward_model_safety", "prompts": "prompts_train", "rlhf": "params:rlhf",
                           "seed": "params:seed"},
                          ["policy", "ppo_history", "ppo_curves_plot"], name="ppo"))
        eval_inputs["ppo_history"] = "ppo_history"
    steps.append(Node(_named(nodes.evaluate_round, "evaluate_round", round_name=name), eval_inputs,
                      ["metrics", "samples", "summary_plot"], name="evaluate_round"))
    return Pipeline(steps)


def read_rounds(params_file: Path | None = None) -> dict[str, dict]:
    """``rlhf.rounds`` of params.yaml, checked (each round after the previous one)."""
    from llama2_pipeline.params import round_names

    group = read_params_file(params_file or project_params()).get("rlhf") or {}
    if not group:
        return {}
    round_names(group)
    return dict(group["rounds"])


SHARED = {"tokenizer_model", "prompts_train", "prompts_eval", "sft_model"}


def round_pipelines(rounds: dict[str, dict] | None = None) -> dict[str, Pipeline]:
    """``{"rlhf_v1": ..., "rlhf_v2": ...}``: each round in its namespace, chained on the one before."""
    rounds = read_rounds() if rounds is None else rounds
    out = {}
    for name, spec in rounds.items():
        after = spec["after"]
        start_policy = "sft_model" if after == "sft" else f"{after}.policy"
        start_prefs = "reward_preferences" if after == "sft" else f"{after}.reward_preferences"
        earlier = {} if after == "sft" else {"start_rs_dialogues": f"{after}.rs_dialogues"}
        out[f"rlhf_{name}"] = pipeline(
            round_pipeline(name, bool(spec["ppo"]), first=after == "sft"), namespace=f"rlhf_{name}",
            inputs={"start_policy": start_policy, "start_preferences": start_prefs, **earlier,
                    **{s: s for s in SHARED}},
            parameters={"params:rlhf", "params:reward", "params:world", "params:seed",
                        "params:reward.preferences.eval_fraction"})
    return out


def create_pipeline(**kwargs) -> Pipeline:
    return sum(round_pipelines().values(), Pipeline([]))
