from kedro.pipeline import Node, Pipeline

from .nodes import encode, train


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(train, {"clean_corpus": "clean_corpus", "tokenizer": "params:tokenizer", "seed": "params:seed"},
             ["tokenizer_model", "tokenizer_train_metrics"], name="train_tokenizer", tags=["train"]),
        Node(encode, {"clean_corpus": "clean_corpus", "tokenizer_dir": "tokenizer_model",
                      "tokenizer": "params:tokenizer", "seed": "params:seed"},
             ["token_shards", "tokenizer_encode_metrics"], name="encode_corpus", tags=["encode"]),
    ])
