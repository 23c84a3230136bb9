from kedro.pipeline import Node, Pipeline

from .nodes import pretrain_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(pretrain_model, {"token_shards": "token_shards", "tokenizer_dir": "tokenizer_model",
                              "workspace": "pretrain_workspace", "pretrain": "params:pretrain"},
             ["pretrained_model", "pretrain_metrics", "pretrain_loss_curve_plot"], name="pretrain"),
    ])
