"""The whole recipe from a user's seat (smoke profile): a second ``dvc repro`` does nothing; an
experiment that changes one stage's parameter (GAtt's) reruns that stage and the ones after it only, and
``dvc exp show`` / ``dvc metrics diff`` compare it with the committed run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import copy_of_smoke_repro, run

pytestmark = pytest.mark.slow
STAGES = ["validate_params", "world", "data_processing", "tokenizer_train", "tokenizer_encode", "pretrain", "sft",
          "reward", "rlhf@v1", "rlhf@v2", "gatt", "report", "registry"]


def ran(output: str) -> list[str]:
    return re.findall(r"^Running stage '([^']+)'", output, flags=re.MULTILINE)


def test_second_repro_does_nothing(smoke_repro: Path):
    out = run("dvc repro", smoke_repro).stdout
    assert ran(out) == [], out
    status = run("dvc status --json", smoke_repro).stdout
    assert json.loads(status) == {}, status
    # every stage has a lock entry: all of them ran in the first repro
    lock = (smoke_repro / "dvc.lock").read_text()
    for stage in STAGES:
        assert f"  {stage}:" in lock, stage


def test_changing_one_stage_param_reruns_only_that_stage_and_after(smoke_repro: Path, tmp_path: Path):
    # a copy: the experiment must not disturb the project the other end-to-end tests read
    project = tmp_path / "proj"
    copy_of_smoke_repro(smoke_repro, project)
    run("git add -A && git -c user.name=t -c user.email=t@localhost commit -qm 'smoke repro'", project)
    p = run("dvc exp run --name more-gatt --set-param profiles.smoke.gatt.dialogues=32", project, timeout=1200)
    # the parameter check reruns (params.yaml changed) and, its marker unchanged, invalidates nothing;
    # GAtt is the last training stage: the report and the registry after it rerun, nothing before it
    assert ran(p.stdout) == ["validate_params", "gatt", "report", "registry"], p.stdout

    exps = json.loads(run("dvc exp show --json", project).stdout)
    blob = json.dumps(exps)
    assert "more-gatt" in blob and "sft_helpfulness" in blob and "report_gatt_helpfulness" in blob
    # the experiment's results are in the workspace: compare them with the committed run
    diff = json.loads(run("dvc metrics diff --json", project).stdout)
    drawn = diff["metrics/gatt.json"]["gatt_drawn_dialogues"]
    assert (drawn["old"], drawn["new"]) == (24, 32), drawn
    assert "metrics/sft.json" not in diff and "metrics/rlhf_v2.json" not in diff  # upstream of the change: untouched
    # the registry took a new version of the retrained model only (the first run registered every model)
    versions = diff["metrics/registry.json"]["registry_new_versions"]
    assert versions["new"] == 1 and versions["old"] > 1, versions
