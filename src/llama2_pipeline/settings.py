"""Kedro project settings: the recipe's config loader, the MLflow and lineage hooks."""

from llama2_pipeline.project.config_loader import RecipeConfigLoader
from llama2_pipeline.project.hooks import LineageHook
from llama2_pipeline.project.tracking import MlflowRunHook

# MlflowRunHook is kedro-mlflow's hook (one MLflow run per `kedro run`, conf/base/mlflow.yml) with
# the parameters logged once by LineageHook, which adds tags, dataset digests, metrics and
# grouping (see project/hooks.py). Both plugins' own hooks are off: kedro-telemetry would prompt
# for consent in non-interactive runs, kedro-mlflow's is registered here.
HOOKS = (MlflowRunHook(), LineageHook())
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-telemetry", "kedro_mlflow")

CONFIG_LOADER_CLASS = RecipeConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
