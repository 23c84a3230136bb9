"""The Kedro project runtime: the config loader that reads the recipe's parameter tree
(``config_loader``), the lineage and MLflow hooks (``hooks``, ``tracking``) and the catalog's
datasets (``datasets``). The stages' nodes and pipelines are in ``llama2_pipeline.pipelines``."""
