"""Every pipeline under ``pipelines/`` is registered by its module's name; ``__default__`` runs the
whole recipe; each RLHF round is also registered alone (``rlhf_v1``, ...). The rounds and GAtt's
starting policy come from the run's parameters (``params.yaml``, the environment's overlay,
``--params``), as the config loader resolved them."""

import importlib
import warnings
from pathlib import Path

from kedro.pipeline import Pipeline

#: the start of the warning Kedro's ``Node`` gives for a dataset name with a dot outside its namespace
DOTTED_NAME_WARNING = "One or more dataset names contain '.' characters"


def register_pipelines() -> dict[str, Pipeline]:
    # every module is imported (an import error stops the run): Kedro's find_pipelines would only
    # look for modules named like the requested pipelines, and the rounds are no modules
    from llama2_pipeline.pipelines.rlhf import round_pipelines
    from llama2_pipeline.project.config_loader import session_recipe

    recipe = session_recipe()
    root = Path(__file__).parent / "pipelines"
    pipelines: dict[str, Pipeline] = {}
    with warnings.catch_warnings():
        # each RLHF round is a Kedro namespace, and the next round, GAtt, the report and the registry
        # read its outputs by their namespaced names (rlhf_v2.policy): Kedro's node check warns of a
        # dotted name outside its namespace, in every stage's log, though namespaces are what it
        # reserves the dots for
        warnings.filterwarnings("ignore", message=DOTTED_NAME_WARNING, category=UserWarning)
        for name in sorted(d.name for d in root.iterdir() if (d / "__init__.py").is_file()):
            module = importlib.import_module(f"llama2_pipeline.pipelines.{name}")
            pipelines[name] = module.create_pipeline(recipe=recipe)
        pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
        pipelines.update(round_pipelines(recipe.rlhf.rounds))  # rlhf_v1, rlhf_v2, ...: one round each (DVC foreach)
    return pipelines
