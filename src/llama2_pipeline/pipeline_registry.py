"""Every pipeline under ``pipelines/`` is registered by its module's name; ``__default__`` runs the
whole recipe; each RLHF round is also registered alone (``rlhf_v1``, ...). The rounds and GAtt's
starting policy come from the run's parameters (``params.yaml``, the environment's overlay,
``--params``), as the config loader resolved them."""

import importlib
from pathlib import Path

from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    # every module is imported (an import error stops the run): Kedro's find_pipelines would only
    # look for modules named like the requested pipelines, and the rounds are no modules
    from llama2_pipeline.pipelines.rlhf import round_pipelines
    from llama2_pipeline.project.config_loader import session_recipe

    recipe = session_recipe()
    root = Path(__file__).parent / "pipelines"
    pipelines: dict[str, Pipeline] = {}
    for name in sorted(d.name for d in root.iterdir() if (d / "__init__.py").is_file()):
        pipelines[name] = importlib.import_module(f"llama2_pipeline.pipelines.{name}").create_pipeline(recipe=recipe)
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    pipelines.update(round_pipelines(recipe.rlhf.rounds))  # rlhf_v1, rlhf_v2, ...: one round each (DVC foreach)
    return pipelines
