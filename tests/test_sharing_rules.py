"""The rules behind sharing (#24), without running the pipeline (tests/test_sharing.py runs them on
the real tools): the champion rule, where a run in a DVC experiment copy records, the packaged
configuration archive, the rounds' view in mlflow ui."""

from __future__ import annotations

import tarfile
from pathlib import Path
from types import SimpleNamespace

import click
import pytest

from llama2_pipeline.cli import archive_conf
from llama2_pipeline.commands.mlflow_links import rounds_view
from llama2_pipeline.pipelines.registry.register import choose_champion
from llama2_pipeline.project.store import absolute_sqlite, mlflow_config, store_root


def m(helpfulness: float, safety: float) -> dict[str, float]:
    return {"helpfulness": helpfulness, "safety": safety}


def test_the_champion_is_the_most_helpful_model_at_least_as_safe_as_sft() -> None:
    chat = [("sft", m(0.30, 0.80)), ("rlhf-v1", m(0.40, 0.85)), ("rlhf-v2", m(0.55, 0.79)), ("gatt", m(0.45, 0.80))]
    best, reason = choose_champion(chat)
    assert best == "gatt"  # rlhf-v2 is more helpful but less safe than SFT
    assert reason.startswith("gatt: held-out helpfulness 0.4500") and "below SFT's safety: rlhf-v2" in reason
    assert choose_champion([("sft", m(0.3, 0.8)), ("rlhf-v1", m(0.3, 0.9))])[0] == "sft"  # a tie: the earlier stage
    assert choose_champion([("sft", m(0.3, 0.8)), ("rlhf-v1", m(0.2, 0.9))])[0] == "sft"  # SFT itself qualifies
    with pytest.raises(ValueError, match="'sft' model's held-out safety"):
        choose_champion([("rlhf-v1", m(0.4, 0.9))])


def test_a_run_in_a_dvc_experiment_copy_records_into_the_repository_store(tmp_path: Path, monkeypatch) -> None:
    repo = tmp_path / "repo"
    copy = repo / ".dvc/tmp/exps/standalone/tmpab12cd"  # no git here: the folder after DVC's tmp<id>
    copy.mkdir(parents=True)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert store_root(copy) == copy.resolve()
    monkeypatch.setenv("DVC_ROOT", str(repo))
    assert store_root(copy) == repo.resolve() and store_root(repo / "sub") == (repo / "sub").resolve()

    assert absolute_sqlite("sqlite:///mlflow.db", repo) == f"sqlite:///{repo}/mlflow.db"
    for uri in ("sqlite:////abs/mlflow.db", "http://mlflow:5000", "postgresql://h/db"):
        assert absolute_sqlite(uri, repo) == uri
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    conf = mlflow_config({"tracking": {"experiment": {"name": "llama2_pipeline"}}}, copy)
    assert conf["server"]["mlflow_tracking_uri"] == f"sqlite:///{repo.resolve()}/mlflow.db"
    create = conf["tracking"]["experiment"]["create_experiment_kwargs"]
    assert create["artifact_location"] == str(repo.resolve() / "mlruns/llama2_pipeline")
    remote = mlflow_config({"server": {"mlflow_tracking_uri": "http://mlflow:5000"}}, copy)
    assert remote["server"]["mlflow_tracking_uri"] == "http://mlflow:5000" and "tracking" not in remote


def test_the_configuration_archive_holds_linked_files_themselves(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    conf = tmp_path / "conf"
    (conf / "base").mkdir(parents=True)
    (conf / "local").mkdir()
    (conf / "base/catalog.yml").write_text("{}\n")
    (conf / "base/parameters.yml").symlink_to("../../params.yaml")
    (conf / "local/credentials.yml").write_text("secret: x\n")
    (conf / "local/.gitkeep").write_text("")
    target = tmp_path / "conf.tar.gz"
    archive_conf(conf, target)
    with tarfile.open(target) as tar:
        members = {t.name: t for t in tar.getmembers()}
        assert tar.extractfile("conf/base/parameters.yml").read() == b"seed: 1\n"
    assert all(t.isfile() or t.isdir() for t in members.values())
    assert "conf/local/credentials.yml" not in members and "conf/local/.gitkeep" in members

    (conf / "base/globals.yml").symlink_to("missing.yml")
    with pytest.raises(click.ClickException, match="dangling"):
        archive_conf(conf, target)


def test_the_rounds_view_shows_the_metrics_every_round_has() -> None:
    runs = {"a": {"policy_helpfulness": 0.1, "policy_safety": 0.8, "ppo_kl": 0.01, "kl_to_sft": 0.2},
            "b": {"policy_helpfulness": 0.2, "policy_safety": 0.9, "kl_to_sft": 0.3}}
    client = SimpleNamespace(get_run=lambda r: SimpleNamespace(data=SimpleNamespace(metrics=runs[r])))
    view = rounds_view(client, "1", ["a", "b"])
    assert view["searchFilter"] == "attributes.run_id IN ('a', 'b')"
    assert view["selectedColumns"] == ["metrics.`policy_helpfulness`", "metrics.`policy_safety`", "metrics.`kl_to_sft`"]
