"""``gatt``: GAtt dialogues from the policy of ``gatt.after`` (the last RLHF round; with
``gatt.select: reward`` the best adherent samples by that round's helpfulness RM; with
``gatt.repair`` a sample that breaks a case, prefix or suffix instruction rewritten to obey it; with
``gatt.case: plain`` an answer under a case instruction sampled without it, then rewritten), fine-tuning
with the loss on the last answer only (with ``gatt.replay``, beside the round's rejection-sampling
dialogues), adherence by turn before and after."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from llama2_pipeline.project.config_loader import session_recipe
from llama2_pipeline.recipe import Recipe

from .nodes import build_dialogues, evaluate_chat, evaluate_gatt, finetune_gatt


def start_policy(after: str) -> str:
    """The catalog entry of the policy GAtt starts from (``gatt.after``)."""
    return "sft_model" if after == "sft" else f"{after}.policy"


def create_pipeline(recipe: Recipe | None = None, **kwargs) -> Pipeline:
    gatt = (recipe or session_recipe()).gatt
    policy = start_policy(gatt.after)
    replay = {"replay": f"{gatt.after}.rs_dialogues"} if gatt.replay else {}
    ranker = {"reward_model": f"{gatt.after}.reward_model_helpfulness"} if gatt.select == "reward" else {}
    if ranker and gatt.safety_share:  # safety-tagged messages are ranked by the round's safety RM
        ranker["safety_model"] = f"{gatt.after}.reward_model_safety"
    return Pipeline([
        Node(build_dialogues, {"policy": policy, "prompts": "prompts_train", "gatt": "params:gatt",
                               "seed": "params:seed", **ranker}, ["gatt_dialogues", "gatt_build_stats"],
             name="gatt_build"),
        Node(finetune_gatt, {"dialogues": "gatt_dialogues", "policy": policy, "workspace": "gatt_workspace",
                             "gatt": "params:gatt", **replay},
             ["gatt_model", "gatt_training", "gatt_loss_curve_plot"], name="gatt_finetune"),
        Node(evaluate_gatt, {"before": policy, "after": "gatt_model", "prompts": "prompts_eval",
                             "world": "params:world", "gatt": "params:gatt", "seed": "params:seed",
                             "build_stats": "gatt_build_stats", "training": "gatt_training"},
             ["gatt_metrics", "gatt_adherence", "gatt_samples", "gatt_adherence_plot"], name="gatt_evaluate"),
        Node(evaluate_chat, {"model": "gatt_model", "sft_samples": "sft_samples", "prompts": "prompts_eval",
                             "world": "params:world", "sft": "params:sft", "gatt": "params:gatt",
                             "seed": "params:seed"}, "gatt_model_metrics", name="gatt_evaluate_chat"),
    ])
