"""Kedro project settings: the profile-aware config loader, the lineage hook, the MLflow plugin."""

from llama2_pipeline.config import ProfileConfigLoader
from llama2_pipeline.hooks import LineageHook

# kedro-mlflow's MlflowHook is registered by its plugin entry point; it starts one MLflow run per
# `kedro run`, logs node parameters and reads conf/base/mlflow.yml. LineageHook adds tags, dataset
# digests, metrics and grouping (see hooks.py).
HOOKS = (LineageHook(),)

# kedro-telemetry would prompt for consent in non-interactive runs; the project never sends it.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-telemetry",)

CONFIG_LOADER_CLASS = ProfileConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
