"""Kedro's config loader for the recipe: ``parameters`` are the :class:`~llama2_pipeline.recipe.Recipe`
of ``params.yaml``, resolved once per run and validated.

``conf/base/parameters.yml`` is a link to ``params.yaml``, the single source. The parameters files
of the run's environment (``conf/local``, or ``--env byo``) overlay it after the profile's overlay,
and ``kedro run --params`` overrides come last (:func:`~llama2_pipeline.recipe.resolve`), so an
environment can change any key for every profile. The resolved recipe is also kept for the
pipeline registry (:func:`session_recipe`): the rounds and GAtt's start policy follow the same
configuration as the nodes' parameters. ``mlflow`` (kedro-mlflow's ``mlflow.yml``) names the
project's own store, wherever the run happens (:mod:`llama2_pipeline.project.store`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader

from llama2_pipeline import recipe as R
from llama2_pipeline.project.store import mlflow_config

_CURRENT: R.Recipe | None = None
#: the loader's settings (settings.CONFIG_LOADER_ARGS): conf/base, overlaid by conf/local unless --env says
LOADER_ARGS = {"base_env": "base", "default_run_env": "local"}


class RecipeConfigLoader(OmegaConfigLoader):
    """``OmegaConfigLoader`` whose ``parameters`` are the resolved recipe as plain data."""

    def __getitem__(self, key: str) -> dict[str, Any]:
        if key == "mlflow":  # the project's store, also from a DVC experiment's temporary copy
            return mlflow_config(super().__getitem__(key), Path.cwd())
        if key != "parameters":
            return super().__getitem__(key)
        global _CURRENT
        base = self._parameters_of(self.base_env)
        env = self.env or self.default_run_env
        overlays = (self._parameters_of(env),) if env and env != self.base_env else ()
        _CURRENT = R.resolve(base, overlays=tuple(o for o in overlays if o), overrides=self.runtime_params or {},
                             source=self._source())
        return _CURRENT.to_dict()

    def _is_hidden(self, path_str: str) -> bool:
        """A hidden file or folder below the configuration folder. Kedro's own check resolves links
        first, so ``conf/base/parameters.yml`` (a link to ``params.yaml``) would count as hidden in a
        project inside a dot-folder, as DVC's experiment copies are (``.dvc/tmp/exps/...``)."""
        if self._protocol == "file":
            try:
                rel = Path(path_str).absolute().relative_to(Path(self.conf_source).absolute())
            except ValueError:
                pass
            else:
                return any(part.startswith(".") for part in rel.parts)
        return super()._is_hidden(path_str)

    def _source(self) -> str:
        """What to name in errors: params.yaml (the base parameters file links to it), relative to here."""
        if self._protocol != "file":  # a packaged configuration (kedro package's conf-*.tar.gz)
            return f"{self.conf_source}: {self.base_env}/parameters.yml"
        path = (Path(self.conf_source) / self.base_env / "parameters.yml").resolve()
        return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)

    def _parameters_of(self, env: str) -> dict[str, Any]:
        folder = self._get_conf_env_path(env)  # also inside an archive
        if not self._fs.isdir(Path(folder).as_posix()):
            return {}
        return self.load_and_merge_dir_config(folder, self.config_patterns["parameters"], "parameters", set())


def session_recipe() -> R.Recipe:
    """The recipe of this process's Kedro run: the last one the config loader resolved, else
    ``params.yaml`` with the ``KEDRO_ENV`` environment's parameters (as ``kedro viz`` sees them)."""
    if _CURRENT is not None:
        return _CURRENT
    from kedro.framework.project import settings

    conf = Path.cwd() / settings.CONF_SOURCE
    if not (conf / "base").is_dir():  # imported outside a project folder (e.g. by a test)
        return R.load(Path(__file__).resolve().parents[3] / R.PARAMS_FILE)
    loader = RecipeConfigLoader(str(conf), env=os.environ.get("KEDRO_ENV"), **settings.CONFIG_LOADER_ARGS)
    loader["parameters"]
    return _CURRENT
