import pytest
import yaml

from llama2_pipeline import params as P
from tests.conftest import ROOT


def load() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("profile", ["default", "smoke", "gpu"])
def test_every_profile_resolves_and_validates(profile):
    params = P.validate(P.resolve(load(), {"profile": profile}))
    assert params["profile"] == profile
    assert "profiles" not in params


def test_profile_overlay_and_overrides_order():
    raw = load()
    smoke = P.resolve(raw, {"profile": "smoke"})
    assert smoke["world"]["corpus"]["size_mb"] == raw["profiles"]["smoke"]["world"]["corpus"]["size_mb"]
    assert smoke["world"]["corpus"]["mix"] == raw["world"]["corpus"]["mix"]  # untouched keys kept
    over = P.resolve(raw, {"profile": "smoke", "world": {"corpus": {"size_mb": 0.5}}})
    assert over["world"]["corpus"]["size_mb"] == 0.5  # explicit override beats the overlay


def test_every_profile_lists_every_stage_group():
    """dvc.yaml tracks profiles.<profile>.<stage>: every overlay must name every stage group."""
    raw = load()
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    groups = {p.split(".")[-1] for s in dvc["stages"].values() for p in s.get("params", [])
              if isinstance(p, str) and p.startswith("profiles.")}
    for name, overlay in raw["profiles"].items():
        assert groups <= set(overlay), f"profile {name} lacks {groups - set(overlay)}"


def test_unknown_profile_is_named():
    with pytest.raises(P.ParamsError, match="unknown profile 'huge'.*default, gpu, smoke"):
        P.resolve(load(), {"profile": "huge"})


def test_negative_size_and_missing_key_are_named():
    raw = P.resolve(load())
    raw["world"]["corpus"]["size_mb"] = -1
    del raw["world"]["annotator"]["disagreement_rate"]
    with pytest.raises(P.ParamsError) as e:
        P.validate(raw)
    msg = str(e.value)
    assert "key 'world.corpus.size_mb' is -1, expected a number in (0" in msg
    assert "missing key 'world.annotator.disagreement_rate'" in msg


def test_bools_are_not_integers():
    raw = P.resolve(load())
    raw["world"]["n_entities"] = True
    with pytest.raises(P.ParamsError, match="world.n_entities"):
        P.validate(raw)
