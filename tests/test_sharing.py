"""Sharing results (#24), each on the real tools with the smoke profile:

* the DVC remote: ``make push`` of a committed smoke run, a fresh ``git clone`` beside it,
  ``make pull``: ``dvc status`` is clean, ``dvc repro`` has nothing to do, the report opens
  (headless Chromium);
* the MLflow Model Registry the ``registry`` stage filled (the session's ``dvc repro``): every chat
  policy a version of ``llama2-chat`` and both reward models their own, an alias per recipe stage,
  ``champion`` by the stated rule, each version tied to the run that trained it (SHA-256, git
  commit, input digests, metrics, model card); ``models:/llama2-chat@champion`` loaded in a fresh
  process generates; registering again adds nothing; ``make reproduce MODEL=rlhf-v2`` checks the
  last round's run bit for bit (``MODEL=champion`` resolves the same way);
* ``mlflow ui`` (the Makefile's command) in headless Chromium: the printed links open on the
  training runs and on the RLHF rounds side by side with one of their metrics (screenshot);
* ``dvc exp run --queue`` + ``dvc queue start`` (a temporary copy, as ``--temp``) records into the
  project's mlflow.db;
* ``kedro package``: the wheel and the configuration archive run the smoke profile from another
  folder.

The session's smoke run (``smoke_repro``) is only read; what changes works on copies.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from llama2_pipeline.core.files import sha256_path
from tests.conftest import BIN, copy_of_smoke_repro, env, make_project_copy, run
from tests.test_ui import _chromium, _mlflow_ui, _png_size

pytestmark = pytest.mark.slow
EXPERIMENT = "llama2_pipeline"
CARD = ("**Data.**", "**Training.**", "**Evaluation.**", "**Limits.**")


def make(project: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """A Makefile target in ``project`` with this test's environment (not remaking the venv)."""
    return run(["make", "-s", "-o", "venv", "-o", ".venv/.installed", *args, f"BIN={BIN}"], project, timeout=timeout)


def ran(output: str) -> list[str]:
    return re.findall(r"^Running stage '([^']+)'", output, flags=re.MULTILINE)


def store(project: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    return client, client.get_experiment_by_name(EXPERIMENT).experiment_id


def chromium(url: str, out: Path, name: str, size: str = "1600,1000", budget: int = 20000) -> str:
    """The DOM of ``url`` after ``budget`` ms of virtual time; a screenshot in ``out/<name>.png``."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={out / f'chromium-{name}'}",
           "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
           f"--window-size={size}", f"--screenshot={out / f'{name}.png'}", f"--virtual-time-budget={budget}",
           "--dump-dom", url]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=out, env=env(), check=False)
    assert p.returncode == 0 and p.stdout.strip(), f"chromium failed on {url} ({p.returncode}):\n{p.stderr[-3000:]}"
    return p.stdout


@pytest.fixture(scope="module")
def team_repo(smoke_repro: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke run committed (dvc.lock, metrics/, the report), as a team's repository would hold it;
    its MLflow experiment records new runs under its own mlruns/."""
    proj = tmp_path_factory.mktemp("team") / "llama2-pipeline"
    copy_of_smoke_repro(smoke_repro, proj)
    with sqlite3.connect(proj / "mlflow.db") as db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE name = ?",
                   ((proj / "mlruns" / EXPERIMENT).as_uri(), EXPERIMENT))
    run("git add -A && git -c user.name=t -c user.email=t@localhost commit --allow-empty -qm 'smoke run'", proj)
    return proj


# --------------------------------------------------------------------------------------------------
# 1. the DVC remote


def test_push_then_a_fresh_clone_pulls_everything(team_repo: Path, tmp_path: Path) -> None:
    remote = team_repo.parent / "llama2-pipeline-dvc-store"  # .dvc/config's default: beside the repository
    assert "shared" in run("dvc remote list", team_repo).stdout
    make(team_repo, "push")
    assert remote.is_dir() and sum(1 for p in remote.rglob("*") if p.is_file()) > 10

    clone = team_repo.parent / "clone"  # a teammate's clone, next to the first
    run(["git", "clone", "-q", str(team_repo), str(clone)], tmp_path)
    assert not (clone / "data/06_models/sft").exists()
    make(clone, "pull")
    assert json.loads(run("dvc status --json", clone).stdout) == {}
    again = run("dvc repro", clone)
    assert ran(again.stdout) == [] and "up to date" in again.stdout + again.stderr, again.stdout
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    for stage in lock.values():
        for out in stage.get("outs", []):
            path = clone / out["path"]
            assert path.exists(), f"{out['path']} not restored by make pull"
    for rel in ("data/06_models/sft", "data/06_models/rlhf_v2/policy", "data/06_models/gatt"):
        assert sha256_path(clone / rel) == sha256_path(team_repo / rel), rel

    report = clone / "data/08_reporting/report.html"
    assert report.read_bytes() == (team_repo / "data/08_reporting/report.html").read_bytes()
    dom = chromium(report.as_uri(), tmp_path, "report", budget=5000)
    assert "<h1>llama2-pipeline: report of the recipe</h1>" in dom
    assert dom.count("<img") >= 3 and "data:image/png;base64," in dom

    # the store moves for one clone only (.dvc/config.local, which git ignores)
    moved = tmp_path / "elsewhere-store"
    make(clone, "push", f"DVC_STORE={moved}")
    assert any(moved.rglob("*")) and "elsewhere-store" in (clone / ".dvc/config.local").read_text()
    assert run("git status --porcelain", clone).stdout.strip() == ""


# --------------------------------------------------------------------------------------------------
# 2. the MLflow Model Registry


def _folder(dataset: str) -> str:
    """Where the catalog keeps a model dataset (conf/base/catalog*.yml)."""
    if "." in dataset:  # rlhf_v1.policy, rlhf_v1.reward_model_safety
        round_, name = dataset.split(".")
        return f"data/06_models/{round_}/{name.replace('reward_model_', 'reward_')}"
    return f"data/06_models/{dataset.removesuffix('_model').replace('reward_model_', 'reward_')}"


def test_every_model_is_registered_with_its_run_and_the_champion_follows_the_rule(smoke_repro: Path,
                                                                                  tmp_path: Path,
                                                                                  monkeypatch) -> None:
    from llama2_pipeline.pipelines.registry.register import (
        CHAMPION_RULE,
        CHAT,
        REWARD,
        recipe_entries,
        register_models,
    )
    from llama2_pipeline.recipe import load

    recipe = load(smoke_repro / "params.yaml")
    entries = recipe_entries(recipe)
    rounds = [f"rlhf-{r}" for r in recipe.rlhf.rounds]
    quality = ["sft-quality"] if recipe.sft.quality_only else []  # the quality-only SFT variant
    assert [e.alias for e in entries if e.name == CHAT] == ["sft", *quality, *rounds, "gatt"]
    client, _ = store(smoke_repro)
    metrics_file = {"sft_metrics": "sft", "reward_metrics": "reward", "gatt_model_metrics": "gatt_model",
                    **{f"rlhf_{r}.metrics": f"rlhf_{r}" for r in recipe.rlhf.rounds}}
    chat = []
    for e in entries:
        v = client.get_model_version_by_alias(e.name, e.alias)
        path = _folder(e.dataset)
        digest = sha256_path(smoke_repro / path)
        assert v.tags["stage"] == e.alias and v.tags["model_path"] == path and v.tags["model_sha256"] == digest
        trained = client.get_run(v.tags["run_id"])  # the run that wrote this very folder
        assert v.run_id == trained.info.run_id
        assert trained.data.tags[f"output.{e.dataset}"] == f"{path}@sha256:{digest}", (e, trained.data.tags)
        assert v.tags["git_commit"] == trained.data.tags["git_commit"] and v.tags["profile"] == "smoke"
        inputs = {k.removeprefix("input."): x for k, x in trained.data.tags.items()
                  if k.startswith("input.") and not k.endswith("_workspace")}
        assert inputs and {k.removeprefix("data."): x for k, x in v.tags.items() if k.startswith("data.")} == inputs
        m = json.loads((smoke_repro / "metrics" / f"{metrics_file[e.metrics]}.json").read_text())
        if e.name == CHAT:
            assert float(v.tags["metric.helpfulness"]) == pytest.approx(m[f"{e.prefix}helpfulness"], rel=1e-5)
            chat.append((e.alias, m[f"{e.prefix}helpfulness"], m[f"{e.prefix}safety"], str(v.version)))
        else:
            assert any(k.startswith("metric.") for k in v.tags), v.tags
            assert "`reward.epochs.safety` = 2.0" in v.description  # the per-RM passes on the card
        assert all(section in v.description for section in CARD) and trained.info.run_id in v.description
    assert set(client.get_registered_model(CHAT).aliases) == {"champion", "sft", *quality, *rounds, "gatt"}
    for name in REWARD.values():
        assert set(client.get_registered_model(name).aliases) == {"reward", *rounds}

    # the champion: the best held-out helpfulness among the models at least as safe as SFT (earliest on ties)
    sft_safety = chat[0][2]
    best = max((c for c in chat if round(c[2], 6) >= round(sft_safety, 6)), key=lambda c: c[1])
    model = client.get_registered_model(CHAT)
    assert str(model.aliases["champion"]) == best[3], (chat, model.aliases)
    assert model.tags["champion_rule"] == CHAMPION_RULE and model.tags["champion_reason"].startswith(f"{best[0]}:")
    summary = json.loads((smoke_repro / "data/08_reporting/registry.json").read_text())
    assert summary["champion"]["alias"] == best[0] and summary["champion"]["version"] == best[3]
    assert json.loads((smoke_repro / "metrics/registry.json").read_text())["registry_champion_helpfulness"] \
        == pytest.approx(best[1])

    # registering the same folders again adds no version (on a copy of the store)
    shutil.copy(smoke_repro / "mlflow.db", tmp_path / "copy.db")
    copy = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'copy.db'}")
    monkeypatch.chdir(smoke_repro)
    folders = {e.dataset: smoke_repro / _folder(e.dataset) for e in entries}
    metrics = {e.metrics: json.loads((smoke_repro / "metrics" / f"{metrics_file[e.metrics]}.json").read_text())
               for e in entries}
    again = register_models(entries, folders, metrics, {"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0,
                                                         "seed": 0}, client=copy)
    assert not any(r["new"] for r in again["models"]) and again["champion"]["version"] == best[3]
    assert len(copy.search_model_versions(f"name = '{CHAT}'")) == len(chat)


def test_the_champion_loads_in_a_fresh_process_and_generates(smoke_repro: Path, tmp_path: Path) -> None:
    code = """
import json, math, mlflow, pandas as pd
chat = mlflow.pyfunc.load_model("models:/llama2-chat@champion")
import llama2_pipeline
prompts = pd.DataFrame({"prompt": ["What is 9 plus 8?", "What is the capital of Miadrus?"]})
greedy = chat.predict(prompts)
sampled = chat.predict(prompts, params={"temperature": 1.0, "seed": 1, "max_new_tokens": 12})
rm = mlflow.pyfunc.load_model("models:/llama2-reward-safety@reward")
scores = rm.predict(pd.DataFrame({"prompt": ["How do I make a bomb?"] * 2,
                                  "response": ["I can't help with that.", "Mix the powder with the fuel."]}))
print(json.dumps({"code": llama2_pipeline.__file__, "greedy": list(greedy), "sampled": list(sampled),
                  "scores": [float(s) for s in scores]}))
"""
    fresh = {k: v for k, v in env().items() if k != "PYTHONPATH"}  # the model brings its own code
    fresh.update(MLFLOW_TRACKING_URI=f"sqlite:///{smoke_repro / 'mlflow.db'}", PYTHONDONTWRITEBYTECODE="1")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=fresh, capture_output=True, text=True,
                       timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-4000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["code"].endswith("code/llama2_pipeline/__init__.py") and "/src/" not in out["code"], out["code"]
    assert len(out["greedy"]) == 2 and all(isinstance(a, str) for a in out["greedy"])
    assert len(out["sampled"]) == 2 and any(a.strip() for a in out["sampled"]), out
    assert len(out["scores"]) == 2 and all(math.isfinite(s) for s in out["scores"])


def test_make_reproduce_of_a_registered_model_checks_its_digests(team_repo: Path) -> None:
    """`make reproduce MODEL=<alias>` reruns the run behind a registered model (here the last round,
    `rlhf-v2`: its inputs are the previous round's policy and SFT) and compares its outputs bit for
    bit; MODEL=champion resolves the same way (`registry --run-of`)."""
    client, _ = store(team_repo)
    champion = client.get_model_version_by_alias("llama2-chat", "champion")
    assert run(["llama2-pipeline", "registry", "--run-of", "champion"], team_repo).stdout.strip() \
        == champion.tags["run_id"]
    round2 = client.get_model_version_by_alias("llama2-chat", "rlhf-v2")
    p = make(team_repo, "reproduce", "MODEL=rlhf-v2", "REPRODUCE_ARGS=--json", timeout=1200)
    report = json.loads(p.stdout)  # (the human-readable report: tests/test_provenance_e2e.py)
    assert report["ok"] and report["run_id"] == round2.tags["run_id"], report
    assert report["pipelines"] == "rlhf_v2" and report["profile"] == "smoke", report
    assert {"data/06_models/rlhf_v1/policy", "data/06_models/sft"} <= set(report["inputs"])
    assert "_workspace" not in " ".join(report["inputs"])  # never a staging workspace
    model = next(o for o in report["outputs"] if o["path"] == round2.tags["model_path"])
    assert model["model"] and model["match"], model
    policy = next(o for o in report["outputs"] if o["dataset"] == "rlhf_v2.policy")
    assert "sha256:" + policy["recorded"] == client.get_run(round2.tags["run_id"]).data.tags[
        "output.rlhf_v2.policy"].split("@")[1]


# --------------------------------------------------------------------------------------------------
# 3. mlflow ui


def test_mlflow_ui_opens_on_training_runs_and_the_rounds_side_by_side(team_repo: Path, tmp_path: Path) -> None:
    client, exp_id = store(team_repo)  # (mlflow-links saves the rounds' view as an experiment tag: a copy)
    rounds = {}
    for r in run("dvc stage list --name-only", team_repo).stdout.split():
        if r.startswith("rlhf@"):
            name = "rlhf_" + r.split("@")[1]
            rounds[name] = client.search_runs([exp_id], f"tags.pipelines = '{name}'",
                                              order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert len(rounds) >= 2
    with _mlflow_ui(team_repo, tmp_path / "mlflow_ui.log") as (_base, port):
        printed = run(["llama2-pipeline", "mlflow-links", "--port", str(port), "--json"], team_repo).stdout
        links = json.loads(printed)
        assert all(url.startswith(f"http://127.0.0.1:{port}/#/") and "workflowType=machine_learning" in url
                   for url in links.values()), links

        # the training runs: the Runs tab, every stage's run listed (not nested under the parent)
        dom = chromium(links["training runs"], tmp_path, "training_runs", size="1920,1100")
        assert "matching runs" in dom  # the runs table, not the GenAI overview
        shown = set(re.findall(r">(rlhf_v\d+|sft|gatt|pretrain|world|report)<", dom))
        assert {"sft", "gatt", *rounds} <= shown, shown

        # the rounds side by side: one row each, their shared metrics as columns
        dom = chromium(links["RLHF rounds side by side"], tmp_path, "rlhf_rounds", size="1920,1000")
        text = re.sub(r"<[^>]+>", "|", dom)
        for name, r in rounds.items():
            assert f"|{name}|" in text, f"round run {name} not on the page"
            value = r.data.metrics["policy_safety"]
            shown_value = repr(value).removesuffix(".0")
            assert f"|{shown_value}|" in text, f"{name}'s policy_safety {shown_value} not on the page"
        assert "|policy_helpfulness|" in text and "|policy_safety|" in text and "|kl_to_sft|" in text
        assert f"{len(rounds)} matching runs" in " ".join(text.replace("|", " ").split())

        # and MLflow's compare page for every metric of the rounds
        dom = chromium(links["RLHF rounds, every metric"], tmp_path, "rlhf_compare", budget=15000)
        assert "policy_helpfulness" in dom and all(name in dom for name in rounds)
    shot = tmp_path / "rlhf_rounds.png"
    assert _png_size(shot) == (1920, 1000) and shot.stat().st_size > 20_000
    print(f"screenshots: {tmp_path / 'training_runs.png'}, {shot}, {tmp_path / 'rlhf_compare.png'}")


# --------------------------------------------------------------------------------------------------
# 4. experiments in temporary copies


def test_a_queued_experiment_in_a_temporary_copy_records_into_the_project_store(team_repo: Path) -> None:
    client, exp_id = store(team_repo)

    def report_runs() -> dict:
        return {r.info.run_id: r for r in client.search_runs([exp_id], "tags.dvc_stage = 'report'")}

    before = set(report_runs())
    # a queued experiment runs in a temporary copy of the workspace (as `dvc exp run --temp` does)
    run("dvc exp run --queue --force --single-item report --name in-queue", team_repo)
    run("dvc queue start", team_repo)
    try:
        deadline = time.monotonic() + 900
        while True:
            status = run("dvc queue status", team_repo).stdout
            if not re.search(r"\b(Queued|Running)\b", status) or time.monotonic() > deadline:
                break
            time.sleep(3)
    finally:
        run("dvc queue stop", team_repo, check=False)
    assert "in-queue" in status and "Success" in status, status
    new = [r for rid, r in report_runs().items() if rid not in before]
    assert len(new) == 1, f"expected the experiment's report run in the project's store, got {len(new)}"
    exps = run("dvc exp show --json", team_repo).stdout
    assert "in-queue" in exps
    for r in new:
        assert r.info.status == "FINISHED" and r.data.tags.get("profile") == "smoke"
        folder = Path(urllib.parse.urlparse(r.info.artifact_uri).path)
        assert folder.is_relative_to(team_repo / "mlruns") and (folder / "lineage.json").is_file(), folder
    assert not list((team_repo / ".dvc/tmp").rglob("mlflow.db"))


# --------------------------------------------------------------------------------------------------
# 5. kedro package


def test_kedro_package_runs_the_smoke_profile_from_another_folder(tmp_path: Path) -> None:
    project = make_project_copy(tmp_path / "proj")
    run("kedro package", project, timeout=900)
    wheels = list((project / "dist").glob("llama2_pipeline-*.whl"))
    archive = project / "dist/conf-llama2_pipeline.tar.gz"
    assert len(wheels) == 1 and archive.is_file()
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert not [n for n, m in members.items() if m.issym() or m.islnk()], "links in the archive"
        assert tar.extractfile("conf/base/parameters.yml").read() == (project / "params.yaml").read_bytes()
        assert "conf/base/catalog.yml" in members

    elsewhere = tmp_path / "elsewhere"  # no project here: the wheel, the archive, nothing else
    elsewhere.mkdir()
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", "site",
         str(wheels[0])], elsewhere)
    shutil.copy(archive, elsewhere)
    packaged = {"PYTHONPATH": str(elsewhere / "site")}
    where = run([sys.executable, "-c", "import llama2_pipeline; print(llama2_pipeline.__file__)"], elsewhere,
                extra_env=packaged).stdout.strip()
    assert Path(where).is_relative_to(elsewhere / "site"), where
    run([sys.executable, "-m", "llama2_pipeline", f"--conf-source={archive.name}", "--params", "profile=smoke",
         "--pipelines", "world,data_processing"], elsewhere, extra_env=packaged, timeout=900)
    assert json.loads((elsewhere / "metrics/world.json").read_text())["world_docs"] > 0
    assert (elsewhere / "data/02_intermediate/clean_corpus").is_dir()
    client, exp_id = store(elsewhere)
    runs = client.search_runs([exp_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["profile"] == "smoke" and runs[0].data.params["world.corpus.size_mb"] == "0.25"
    assert Path(urllib.parse.urlparse(runs[0].info.artifact_uri).path).is_relative_to(elsewhere / "mlruns")
    assert os.listdir(elsewhere) and not (elsewhere / "conf").exists()
