from kedro.pipeline import Node, Pipeline

from .nodes import clean


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(clean, {"raw_corpus": "raw_corpus", "canaries": "pii_canaries", "cleaning": "params:data_processing"},
             ["clean_corpus", "cleaning_report", "cleaning_report_plot", "data_processing_metrics"],
             name="clean_corpus"),
    ])
