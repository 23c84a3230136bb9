"""Kedro project settings: the recipe's config loader, the MLflow, lineage and provenance hooks."""

import atexit
import gc

from llama2_pipeline.project.config_loader import LOADER_ARGS, RecipeConfigLoader
from llama2_pipeline.project.hooks import LineageHook
from llama2_pipeline.project.provenance import ProvenanceHook
from llama2_pipeline.project.tracking import MlflowRunHook

# MlflowRunHook is kedro-mlflow's hook (one MLflow run per `kedro run`, conf/base/mlflow.yml) with
# the parameters logged once by LineageHook, which adds tags, dataset digests, metrics and
# grouping (see project/hooks.py), and ProvenanceHook, which records the environment and how the
# parameters were given and marks runs left RUNNING by a killed process FAILED (project/provenance.py).
# Both plugins' own hooks are off: kedro-telemetry would prompt
# for consent in non-interactive runs, kedro-mlflow's is registered here.
HOOKS = (MlflowRunHook(), LineageHook(), ProvenanceHook())
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-telemetry", "kedro_mlflow")

CONFIG_LOADER_CLASS = RecipeConfigLoader
CONFIG_LOADER_ARGS = LOADER_ARGS

# Once its run is over, a stage's process spent 1.2-1.8 s (2 cores) in the interpreter's last garbage
# collection, freeing one by one the objects of every module it imported (MLflow, pandas, torch, ...),
# which the operating system frees at once. Freezing the heap at exit leaves them out of that
# collection. It is an atexit handler like MLflow's end of run and logging's flush, which run all the
# same; every output is written (and renamed in place) before, and nothing is read after.
atexit.register(gc.freeze)
