"""Every pipeline under ``pipelines/`` is registered by its module's name; ``__default__`` runs the
whole recipe; each RLHF round is also registered alone (``rlhf_v1``, ...)."""

import importlib
from pathlib import Path

from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    # every module is imported (an import error stops the run): Kedro's find_pipelines would only
    # look for modules named like the requested pipelines, and the rounds are no modules
    from llama2_pipeline.pipelines.rlhf import round_pipelines

    root = Path(__file__).parent / "pipelines"
    pipelines: dict[str, Pipeline] = {}
    for name in sorted(d.name for d in root.iterdir() if (d / "__init__.py").is_file()):
        pipelines[name] = importlib.import_module(f"llama2_pipeline.pipelines.{name}").create_pipeline()
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    pipelines.update(round_pipelines())  # rlhf_v1, rlhf_v2, ...: one round each (the DVC foreach stage)
    return pipelines
