"""``rlhf``: the iterative RLHF rounds of the recipe's ``rlhf.rounds``, each in its namespace
(``rlhf_v1``, ...) and chained on the one before; every round is also registered alone."""

from __future__ import annotations

import functools

from kedro.pipeline import Node, Pipeline, pipeline

from llama2_pipeline.pipelines.shared import (
    evaluate_reward_models,
    merge_preferences,
    split_preferences,
)
from llama2_pipeline.project.config_loader import session_recipe
from llama2_pipeline.recipe import Recipe
from llama2_pipeline.training.config import RoundSpec

from . import nodes

#: catalog entries every round reads as they are (not namespaced)
SHARED = {"tokenizer_model", "prompts_train", "prompts_eval", "sft_model"}
PARAMETERS = {"params:rlhf", "params:reward", "params:world", "params:seed", "params:reward.preferences.eval_fraction"}


def _named(fn, name: str, **bound):
    """``fn`` with some arguments bound, keeping a name Kedro can show."""
    out = functools.partial(fn, **bound)
    functools.update_wrapper(out, fn)
    out.__name__ = name
    return out


def round_pipeline(name: str, ppo: bool, first: bool = True) -> Pipeline:
    """One round, un-namespaced; its free inputs ``start_policy``, ``start_preferences``,
    ``start_reward_model_*`` (and, after the first round, ``start_rs_dialogues``: what rejection
    sampling kept so far) are mapped to the previous stage's outputs by :func:`round_pipelines`."""
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
        Node(_named(nodes.train_round_reward_models, "train_round_reward_models", round_name=name),
             {"train_prefs": "reward_preferences_train", "new_prefs": "reward_preferences_new",
              "start_helpfulness": "start_reward_model_helpfulness", "start_safety": "start_reward_model_safety",
              "sft_model": "sft_model", "rlhf": "params:rlhf", "reward": "params:reward",
              "workspace": "reward_workspace", "heldout": "reward_preferences_heldout", "seed": "params:seed"},
             ["reward_model_helpfulness", "reward_model_safety", "reward_train_summary"], name="train_reward_models"),
        Node(evaluate_reward_models,
             {"helpfulness_dir": "reward_model_helpfulness", "safety_dir": "reward_model_safety",
              "heldout": "reward_preferences_heldout", "reward": "params:reward", "world": "params:world",
              "seed": "params:seed", "train_metrics": "reward_train_summary", "init_model_dir": "sft_model",
              "new_prefs": "reward_preferences_new"},
             ["reward_metrics", "reward_accuracy", "reward_score_hist_plot", "reward_calibration_plot"],
             name="evaluate_reward_models"),
        Node(_named(nodes.rejection_sampling, "rejection_sampling", round_name=name),
             {"candidates": "candidates_raw", "helpfulness": "reward_model_helpfulness",
              "safety": "reward_model_safety", "policy": "start_policy", "tokenizer": "tokenizer_model",
              "rlhf": "params:rlhf", "seed": "params:seed",
              **({} if first else {"earlier": "start_rs_dialogues", "prompts": "prompts_train"})},
             ["rs_dialogues", "candidates", "rs_stats"], name="rejection_sampling"),
        Node(nodes.finetune_policy, {"dialogues": "rs_dialogues", "policy": "start_policy",
                                     "workspace": "rs_workspace", "rlhf": "params:rlhf"},
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


def round_pipelines(rounds: dict[str, RoundSpec]) -> dict[str, Pipeline]:
    """``{"rlhf_v1": ..., "rlhf_v2": ...}``: each round in its namespace, chained on the one before."""
    out = {}
    for name, spec in rounds.items():
        first = spec.after == "sft"
        start_policy = "sft_model" if first else f"{spec.after}.policy"
        start_prefs = "reward_preferences" if first else f"{spec.after}.reward_preferences"
        start_rms = {f"start_reward_model_{c}": f"reward_model_{c}" if first else f"{spec.after}.reward_model_{c}"
                     for c in ("helpfulness", "safety")}
        earlier = {} if first else {"start_rs_dialogues": f"{spec.after}.rs_dialogues"}
        out[f"rlhf_{name}"] = pipeline(
            round_pipeline(name, spec.ppo, first=first), namespace=f"rlhf_{name}",
            inputs={"start_policy": start_policy, "start_preferences": start_prefs, **start_rms, **earlier,
                    **{s: s for s in SHARED}},
            parameters=PARAMETERS)
    return out


def create_pipeline(recipe: Recipe | None = None, **kwargs) -> Pipeline:
    """Every round of the recipe's ``rlhf.rounds`` (default: the recipe of this Kedro run)."""
    return sum(round_pipelines((recipe or session_recipe()).rlhf.rounds).values(), Pipeline([]))
