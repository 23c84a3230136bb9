"""``registry``: one node reading every model folder of the recipe (the rounds included) and its
metrics, registering them in MLflow and writing ``data/08_reporting/registry.json``."""

from __future__ import annotations

from functools import partial

from kedro.pipeline import Node, Pipeline

from llama2_pipeline.project.config_loader import session_recipe
from llama2_pipeline.recipe import Recipe

from .nodes import register_models
from .register import input_name, recipe_entries


def create_pipeline(recipe: Recipe | None = None, **kwargs) -> Pipeline:
    entries = recipe_entries(recipe or session_recipe())
    datasets = sorted({d for e in entries for d in (e.dataset, e.metrics)})
    inputs = {"sampling": "params:sft.eval", **{input_name(d): d for d in datasets}}
    func = partial(register_models, entries)
    func.__name__ = func.__qualname__ = register_models.__name__  # (no update_wrapper: Kedro reads the partial's signature)
    return Pipeline([Node(func, inputs, ["registry_summary", "registry_metrics"], name="register_models")])
