"""Privacy and provenance from a user's seat, on real DVC, Kedro and MLflow (smoke profile): no planted
PII outside the raw layer, the environment on every run, a malformed params.yaml that costs no
output, a baseline of this machine's own, `dvc exp run` runs that `make reproduce` rebuilds (and
the ways it says no), a `kill -9`ed run marked failed by the next one."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
import yaml

from llama2_pipeline.core.files import sha256_path
from tests.conftest import copy_of_smoke_repro, env, make_project_copy, run

pytestmark = pytest.mark.slow
VENV = Path(sys.executable).parent.parent
#: the raw layer holds the PII by design; the DVC cache holds content-addressed copies of its files
RAW_LAYER = (("data", "01_raw"), (".dvc", "cache"))


def client_of(project: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def stage_runs(project: Path) -> list:
    client = client_of(project)
    exp = client.get_experiment_by_name("llama2_pipeline")
    return client.search_runs([exp.experiment_id], "tags.pipelines != ''", max_results=500)


def texts(path: Path) -> str:
    """A file's text as a reader would see it: Parquet decoded (its pages are compressed), else the bytes."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        return "\n".join(str(v) for col in table.columns for v in col.to_pylist())
    return path.read_bytes().decode("utf-8", errors="replace")


def canary_hits(project: Path, values: list[str]) -> dict[str, int]:
    """Occurrences of the canary values per file of ``project`` outside the raw layer, and in the
    text of the MLflow database's rows."""
    pattern = re.compile("|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)))
    hits: dict[str, int] = {}
    for path in sorted(project.rglob("*")):
        rel = path.relative_to(project)
        if path.is_file() and not path.is_symlink() and not any(rel.parts[:2] == raw for raw in RAW_LAYER):
            n = len(pattern.findall(texts(path)))
            if n:
                hits[rel.as_posix()] = n
    with sqlite3.connect(project / "mlflow.db") as db:
        n = len(pattern.findall("\n".join(db.iterdump())))
    if n:
        hits["mlflow.db (rows)"] = n
    return hits


def test_no_planted_pii_outside_the_raw_layer(smoke_repro):
    values = [json.loads(line)["value"] for line in (smoke_repro / "data/01_raw/pii_canaries.jsonl").open()]
    assert len(values) > 100
    assert canary_hits(smoke_repro, values) == {}
    # the scan sees what it looks for: the canary list itself, and the raw corpus decoded
    raw = smoke_repro / "data/01_raw"
    assert len(re.findall(re.escape(values[0]), texts(raw / "pii_canaries.jsonl"))) >= 1
    assert any(values[0] in texts(p) for p in (raw / "corpus").glob("*.parquet"))
    # the world's run records the PII datasets by path and digest, and copies none of them
    client = client_of(smoke_repro)
    (world,) = [r for r in stage_runs(smoke_repro) if r.data.tags.get("dvc_stage") == "world"]
    tags = world.data.tags
    assert tags["output.raw_corpus"] == f"data/01_raw/corpus@sha256:{sha256_path(raw / 'corpus')}"
    assert tags["output.pii_canaries"].startswith("data/01_raw/pii_canaries.jsonl@sha256:")
    outputs = {a.path for a in client.list_artifacts(world.info.run_id, "outputs")}
    assert "outputs/prompts_eval" in outputs and not outputs & {"outputs/raw_corpus", "outputs/pii_canaries"}
    lineage = json.loads(Path(client.download_artifacts(world.info.run_id, "lineage.json")).read_text())
    assert {e["dataset"] for e in lineage if e["pii"]} == {"raw_corpus", "pii_canaries"}


def test_every_run_records_its_environment(smoke_repro):
    runs = stage_runs(smoke_repro)
    stages = set(yaml.safe_load((smoke_repro / "dvc.lock").read_text())["stages"]) - {"validate_params"}
    assert {r.data.tags["dvc_stage"] for r in runs} == stages and "rlhf@v2" in stages  # every stage but the check
    for r in runs:
        tags = r.data.tags
        for key in ("python", "torch", "deepspeed", "transformers", "kedro", "mlflow", "cpu", "cpu_isa",
                    "cpu_isa_level", "cpu_cores", "gpu", "switches"):
            assert tags.get(f"env.{key}"), (tags["dvc_stage"], key)
        assert tags["host"] and tags["pid"] and tags["params_sha256"] and tags["params_modified"] == "false"
        assert r.info.status == "FINISHED"
    trained = {r.data.tags["dvc_stage"]: r.data.tags for r in runs}
    for stage in ("pretrain", "sft", "reward", "rlhf@v2", "gatt"):  # stages that ran torch
        assert trained[stage]["env.torch_cpu_capability"] in ("avx512", "avx2", "default", "avx512_vnni")
        assert int(trained[stage]["env.torch_threads"]) >= 1


@pytest.fixture(scope="module")
def work(smoke_repro, tmp_path_factory) -> Path:
    """A copy of the session's smoke repro, committed as the upstream repository would be (its
    dvc.lock and metrics: the author's results); the tests below run in order on it."""
    project = tmp_path_factory.mktemp("provenance") / "proj"
    copy_of_smoke_repro(smoke_repro, project)
    run("git add -A && git -c user.name=t -c user.email=t@localhost commit -qm 'the author run'", project)
    return project


def test_a_malformed_params_file_stops_dvc_before_any_output_is_deleted(work):
    params = work / "params.yaml"
    good = params.read_text()
    clean = sha256_path(work / "data/02_intermediate/clean_corpus")
    params.write_text(good.replace("\n  bad_rows: stop ", "\n  bad_rows: sometimes ", 1))
    p = run("dvc repro", work, check=False)
    said = p.stdout + p.stderr
    assert p.returncode != 0
    assert "key 'data_processing.bad_rows' is 'sometimes', expected one of 'stop', 'drop'" in said, said[-3000:]
    assert re.findall(r"^Running stage '([^']+)'", p.stdout, flags=re.MULTILINE) == ["validate_params"]
    assert sha256_path(work / "data/02_intermediate/clean_corpus") == clean  # not deleted, not rewritten
    params.write_text(good)
    assert json.loads(run("dvc status --json", work).stdout) == {}


def test_the_demo_baseline_makes_comparisons_this_machines_own(work):
    """A fresh clone's committed metrics come from another machine: `make baseline` (the end of
    `make demo`) commits this machine's, and dvc then compares the user's runs with them."""
    ours = {p.name: p.read_text() for p in (work / "metrics").glob("*.json")}
    pretrain = json.loads(ours["pretrain.json"])
    theirs = {**pretrain, "pretrain_val_loss": pretrain["pretrain_val_loss"] + 0.01}  # another machine's figure
    (work / "metrics/pretrain.json").write_text(json.dumps(theirs))
    run("git -c user.name=a -c user.email=a@localhost commit -qam 'results of the author machine'", work)
    (work / "metrics/pretrain.json").write_text(ours["pretrain.json"])
    mixed = json.loads(run("dvc metrics diff --json", work).stdout)
    assert "pretrain_val_loss" in mixed.get("metrics/pretrain.json", {})  # what a fresh clone shows before

    p = run(["make", "baseline", f"VENV={VENV}"], work)
    assert "baseline: committed this machine's results" in p.stdout
    assert json.loads(run("dvc metrics diff --json", work).stdout) == {}
    assert run("git status --porcelain -- metrics dvc.lock", work).stdout == ""
    shown = json.loads(run("dvc exp show --json", work).stdout)
    baseline = next(r for r in shown if r.get("rev") not in (None, "workspace"))
    metrics = baseline["data"]["metrics"]["metrics/pretrain.json"]["data"]
    assert metrics["pretrain_val_loss"] == pretrain["pretrain_val_loss"]
    assert "HEAD already holds" in run(["make", "baseline", f"VENV={VENV}"], work).stdout


def _reproduce(project: Path, run_id: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "llama2_pipeline.commands.reproduce", run_id, "--project", str(project)],
               project, check=False, timeout=900)


def test_a_dvc_exp_run_is_recorded_and_reproduced_and_reproduce_says_no(work):
    run("dvc exp run tokenizer_train --name vocab-600 --set-param profiles.smoke.tokenizer.vocab_size=600", work,
        timeout=900)
    (r,) = [r for r in stage_runs(work) if r.data.tags.get("dvc_exp_name") == "vocab-600"]
    tags = r.data.tags
    assert tags["dvc_stage"] == "tokenizer_train" and tags["params_modified"] == "true" and tags["dvc_exp_baseline"]
    assert r.data.params["tokenizer.vocab_size"] == "600"
    client = client_of(work)
    recorded = Path(client.download_artifacts(r.info.run_id, "provenance/params.yaml")).read_text()
    assert yaml.safe_load(recorded)["profiles"]["smoke"]["tokenizer"]["vocab_size"] == 600

    p = _reproduce(work, r.info.run_id)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert "experiment vocab-600" in p.stdout and "with the run's recorded params.yaml" in p.stdout
    assert "bitwise equality expected" in p.stdout and "same      model tokenizer_model" in p.stdout

    # a recorded output this rerun does not give, from a machine with another torch: exit 1, both said
    client.set_tag(r.info.run_id, "output.tokenizer_model", "data/06_models/tokenizer@sha256:" + "0" * 64)
    client.set_tag(r.info.run_id, "env.torch", "2.0.0")
    p = _reproduce(work, r.info.run_id)
    assert p.returncode == 1, p.stdout + p.stderr[-3000:]
    assert "DIFFERENT model tokenizer_model (data/06_models/tokenizer)" in p.stdout
    assert "bitwise equality NOT expected on this machine:\n  torch: 2.0.0 recorded" in p.stdout
    assert "NOT reproduced: a model differs from the recorded one" in p.stdout


def test_reproduce_names_a_parameter_the_commit_cannot_give(work):
    """A parameter set in conf/local (not in git) cannot be rebuilt from the commit: named, exit 2."""
    run("git checkout -- . && dvc checkout -q", work)  # back to the baseline
    (work / "conf/local/parameters.yml").write_text("tokenizer:\n  character_coverage: 0.9995\n")
    try:
        run(["kedro", "run", "--pipelines", "tokenizer", "--tags", "train"], work, timeout=900)
    finally:
        (work / "conf/local/parameters.yml").unlink()
    runs = [r for r in stage_runs(work) if r.data.params.get("tokenizer.character_coverage") == "0.9995"]
    assert len(runs) == 1
    p = _reproduce(work, runs[0].info.run_id)
    assert p.returncode == 2, p.stdout + p.stderr[-3000:]
    assert ("1 of the run's parameters differ from the commit's params.yaml" in p.stderr
            and "tokenizer.character_coverage: recorded '0.9995', the commit's params.yaml gives 0.99995" in p.stderr), \
        p.stderr[-3000:]


def has_a_run_with_a_pid(db: Path) -> bool:
    """Whether the store holds a run tagged with its process, read without MLflow: an MLflowClient
    would create or migrate the database while the kedro run does (a race)."""
    if not db.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            return con.execute("SELECT 1 FROM tags WHERE key = 'pid'").fetchone() is not None
    except sqlite3.Error:  # not created yet, or being written
        return False


def test_a_run_killed_with_sigkill_is_marked_failed_by_the_next_run(tmp_path):
    project = make_project_copy(tmp_path / "proj")
    # a crawl large enough that the run is still writing it when it is killed (the smoke one takes ~1 s)
    proc = subprocess.Popen(["kedro", "run", "--pipelines", "world", "--params", "world.corpus.size_mb=40"],
                            cwd=project, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            time.sleep(0.5)
            if has_a_run_with_a_pid(project / "mlflow.db"):
                break
        else:
            pytest.fail("the kedro run never started an MLflow run")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (dead,) = stage_runs(project)
    assert dead.info.status == "RUNNING"  # as MLflow leaves it
    run(["kedro", "run", "--pipelines", "world", "--nodes", "write_prompts"], project)
    client = client_of(project)
    dead = client.get_run(dead.info.run_id)
    assert dead.info.status == "FAILED" and dead.info.end_time
    reason = dead.data.tags["failure_reason"]
    assert reason.startswith(f"its process (pid {proc.pid} on ") and "killed (e.g. kill -9" in reason
    assert [r.info.status for r in stage_runs(project) if r.info.run_id != dead.info.run_id] == ["FINISHED"]
