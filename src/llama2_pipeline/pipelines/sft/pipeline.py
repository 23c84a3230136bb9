from kedro.pipeline import Node, Pipeline

from llama2_pipeline.project.config_loader import session_recipe
from llama2_pipeline.recipe import Recipe

from .nodes import evaluate_sft, finetune_quality, finetune_sft


def create_pipeline(recipe: Recipe | None = None, **kwargs) -> Pipeline:
    quality = (recipe or session_recipe()).sft.quality_only is not None
    evaluate = {"pretrained_model": "pretrained_model", "sft_model": "sft_model", "prompts": "prompts_eval",
                "training": "sft_training", "world": "params:world", "sft": "params:sft", "seed": "params:seed"}
    nodes = [Node(finetune_sft, {"dialogues": "sft_dialogues_raw", "pretrained_model": "pretrained_model",
                                 "workspace": "sft_workspace", "sft": "params:sft"},
                  ["sft_model", "sft_training", "sft_loss_curve_plot"], name="sft_finetune")]
    if quality:
        nodes.append(Node(finetune_quality, {"dialogues": "sft_dialogues_raw", "pretrained_model": "pretrained_model",
                                             "workspace": "sft_quality_workspace", "sft": "params:sft"},
                          ["sft_quality_model", "sft_quality_training", "sft_quality_loss_curve_plot"],
                          name="sft_quality_finetune"))
        evaluate.update(quality_model="sft_quality_model", quality_training="sft_quality_training")
    nodes.append(Node(evaluate_sft, evaluate, ["sft_metrics", "sft_samples"], name="sft_evaluate"))
    return Pipeline(nodes)
