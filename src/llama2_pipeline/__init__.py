"""llama2-pipeline: the LLaMA 2 recipe as Kedro pipelines, DVC stages and MLflow lineage."""

__version__ = "0.1.0"
