from kedro.pipeline import Node, Pipeline

from .nodes import generate_corpus, world_summary, write_prompts, write_sft_dialogues


def create_pipeline(**kwargs) -> Pipeline:
    common = {"world": "params:world", "seed": "params:seed"}
    return Pipeline([
        Node(generate_corpus, common, ["raw_corpus", "pii_canaries"], name="generate_corpus"),
        Node(write_prompts, common, ["prompts_train", "prompts_eval"], name="write_prompts"),
        Node(write_sft_dialogues, common, "sft_dialogues_raw", name="write_sft_dialogues"),
        Node(world_summary, {**common, "corpus": "raw_corpus", "canaries": "pii_canaries",
                             "train": "prompts_train", "evals": "prompts_eval", "dialogues": "sft_dialogues_raw"},
             ["world_metrics", "knowledge_base"], name="world_summary"),
    ])
