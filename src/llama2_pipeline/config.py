"""Kedro glue for parameters: the config loader that resolves the profile and validates params."""

from __future__ import annotations

from typing import Any

from kedro.config import OmegaConfigLoader

from llama2_pipeline import params as P


class ProfileConfigLoader(OmegaConfigLoader):
    """``OmegaConfigLoader`` whose ``parameters`` are those of the selected profile, validated.

    ``params.yaml`` (symlinked as ``conf/base/parameters.yml``) is the single source; the profile
    comes from its ``profile`` key or from ``kedro run --params profile=smoke``.
    """

    def __getitem__(self, key: str) -> dict[str, Any]:
        config = super().__getitem__(key)
        if key == "parameters" and "profiles" in config:
            config = P.validate(P.resolve(config, self.runtime_params or {}))
        return config
