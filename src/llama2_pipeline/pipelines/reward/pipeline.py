"""``reward``: collect and annotate preference pairs, split them by prompt, train the helpfulness
and safety RMs, evaluate them on the held-out pairs.

Tags: ``preferences`` (collect, merge, split) and ``train`` (train, evaluate). The policy that
answers, the second model variant that answers too, and the model the RMs start from are node
inputs: ``create_pipeline(policy_model=..., variant_model=..., init_model=...)`` wires other
catalog entries.
"""

from kedro.pipeline import Node, Pipeline

from llama2_pipeline.pipelines.shared import (
    evaluate_reward_models,
    merge_preferences,
    split_preferences,
    train_reward_models,
)

from .nodes import collect_preferences

#: the first round's policy and RM initialisation (the paper: the SFT model, then the newest chat
#: model), and the second model variant whose samples diversify the pairs
POLICY_MODEL = "sft_model"
VARIANT_MODEL = "pretrained_model"
INIT_MODEL = "sft_model"


def create_pipeline(*, policy_model: str = POLICY_MODEL, variant_model: str = VARIANT_MODEL,
                    init_model: str = INIT_MODEL, **kwargs) -> Pipeline:
    return Pipeline([
        Node(collect_preferences,
             {"policy_dir": policy_model, "tokenizer": "tokenizer_model", "prompts": "prompts_train",
              "world": "params:world", "reward": "params:reward", "seed": "params:seed", "variant_dir": variant_model},
             "reward_preferences_new", name="collect_preferences", tags=["preferences"]),
        Node(merge_preferences, {"old": "user_preferences", "new": "reward_preferences_new"},
             "reward_preferences", name="merge_preferences", tags=["preferences"]),
        Node(split_preferences,
             {"prefs": "reward_preferences", "eval_fraction": "params:reward.preferences.eval_fraction",
              "seed": "params:seed"},
             ["reward_preferences_train", "reward_preferences_heldout"], name="split_preferences",
             tags=["preferences"]),
        Node(train_reward_models,
             {"train_prefs": "reward_preferences_train", "init_model_dir": init_model, "reward": "params:reward",
              "workspace": "reward_workspace", "heldout": "reward_preferences_heldout"},
             ["reward_model_helpfulness", "reward_model_safety", "reward_train_summary"],
             name="train_reward_models", tags=["train"]),
        Node(evaluate_reward_models,
             {"helpfulness_dir": "reward_model_helpfulness", "safety_dir": "reward_model_safety",
              "heldout": "reward_preferences_heldout", "reward": "params:reward", "world": "params:world",
              "seed": "params:seed", "train_metrics": "reward_train_summary", "init_model_dir": init_model},
             ["reward_metrics", "reward_accuracy", "reward_score_hist_plot", "reward_calibration_plot"],
             name="evaluate_reward_models", tags=["train"]),
    ])
