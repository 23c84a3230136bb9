"""Worlds built from the project's params.yaml, for the world's tests."""

from __future__ import annotations

import pytest

from llama2_pipeline import recipe as P
from llama2_pipeline.world import World
from tests.conftest import ROOT


def make_world(seed: int = 1234, profile: str = "smoke", **overrides) -> World:
    """The world of a params profile, its ``world`` group overlaid with ``overrides``."""
    params = P.load(ROOT / "params.yaml", profile=profile).world.to_dict()
    return World.from_params({**P.deep_merge(params, overrides), "seed": seed})


@pytest.fixture(scope="session")
def default_world() -> World:
    """The default profile's world (40 entities, ~950 tasks), seed 1234."""
    return make_world(profile="default")


@pytest.fixture(scope="session")
def safe_tasks(default_world) -> list:
    """Every task of the default world whose answer is not a refusal (all but unsafe)."""
    return [t for t in default_world.tasks if t.category != "unsafe"]
