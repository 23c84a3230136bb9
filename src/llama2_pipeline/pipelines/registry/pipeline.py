"""``registry``: one node reading every model folder of the recipe (the rounds included) and its
metrics, registering them in MLflow and writing ``data/08_reporting/registry.json``."""

from __future__ import annotations

from pathlib import Path

from kedro.pipeline import Node, Pipeline

from llama2_pipeline.project.config_loader import session_recipe
from llama2_pipeline.recipe import Recipe

from .nodes import register_models
from .register import input_name, recipe_entries


def create_pipeline(recipe: Recipe | None = None, **kwargs) -> Pipeline:
    entries = recipe_entries(recipe or session_recipe())
    datasets = sorted({d for e in entries for d in (e.dataset, e.metrics)})
    inputs = {"sampling": "params:sft.eval", **{input_name(d): d for d in datasets}}

    def register_recipe_models(sampling: dict, **folders_and_metrics: Path | dict) -> tuple[dict, dict]:
        """:func:`register_models` over the recipe's entries (a function, not a partial: Kedro reads
        its nodes' type hints to validate their parameters, and a partial has none)."""
        return register_models(entries, sampling, **folders_and_metrics)

    return Pipeline([Node(register_recipe_models, inputs, ["registry_summary", "registry_metrics"],
                          name="register_models")])
