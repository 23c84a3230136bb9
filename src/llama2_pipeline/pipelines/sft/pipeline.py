from kedro.pipeline import Node, Pipeline

from .nodes import evaluate_sft, finetune_sft


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(finetune_sft, {"dialogues": "sft_dialogues_raw", "pretrained_model": "pretrained_model",
                              "workspace": "sft_workspace", "sft": "params:sft"},
             ["sft_model", "sft_training", "sft_loss_curve_plot"], name="sft_finetune"),
        Node(evaluate_sft, {"pretrained_model": "pretrained_model", "sft_model": "sft_model",
                            "prompts": "prompts_eval", "training": "sft_training", "world": "params:world",
                            "sft": "params:sft", "seed": "params:seed"},
             ["sft_metrics", "sft_samples"], name="sft_evaluate"),
    ])
