"""The frame, end to end on the smoke profile: real Kedro runs, real DVC stages, a real MLflow store."""

import json
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from llama2_pipeline.core.files import sha256_path
from tests.conftest import ROOT, SMALL_WORLD, run

pytestmark = pytest.mark.slow


#: the start of a fresh process's code that loads the project's Kedro settings, as `kedro run` does first
BOOTSTRAP = ("from pathlib import Path; from kedro.framework.startup import bootstrap_project; "
             "bootstrap_project(Path('.')); ")


def runs(project: Path) -> list:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("llama2_pipeline")
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_kedro_run_world_records_params_tags_and_digests(project):
    run(["kedro", "run", "--pipelines", "world"], project)
    raw = project / "data/01_raw"
    for name in ["corpus", "pii_canaries.jsonl", "prompts_train.jsonl", "prompts_eval.jsonl",
                 "sft_dialogues.jsonl", "knowledge_base.json"]:
        assert (raw / name).exists(), name
    assert sorted(p.name for p in (raw / "corpus").glob("*.parquet"))[0] == "part-00000.parquet"
    metrics = json.loads((project / "metrics/world.json").read_text())
    canaries = (raw / "pii_canaries.jsonl").read_text().splitlines()
    assert metrics["world_canaries"] == len(canaries) > 0

    client, found = runs(project)
    assert len(found) == 1
    r = found[0]
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert r.data.tags["git_commit"] == head and r.data.tags["git_dirty"] == "false"
    assert r.data.tags["pipelines"] == "world" and r.data.tags["profile"] == "smoke"
    assert r.data.params["world.corpus.size_mb"] == "0.25" and r.data.params["seed"] == "1234"
    assert r.data.tags["output.raw_corpus"] == f"data/01_raw/corpus@sha256:{sha256_path(raw / 'corpus')}"
    assert r.data.metrics["world_canaries"] == len(canaries)
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"lineage.json", "outputs"} <= artifacts
    lineage = json.loads(Path(client.download_artifacts(r.info.run_id, "lineage.json")).read_text())
    assert {e["dataset"] for e in lineage} >= {"raw_corpus", "pii_canaries", "prompts_eval", "world_metrics"}


def test_dvc_repro_then_noop_then_seed_changes_corpus(project):
    run(["dvc", "repro", "world"], project)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    corpus_md5 = [o for o in lock["stages"]["world"]["outs"] if o["path"] == "data/01_raw/corpus"][0]["md5"]
    assert lock["stages"]["world"]["params"]["params.yaml"]["profile"] == "smoke"

    again = run(["dvc", "repro", "world"], project)
    assert "Data and pipelines are up to date" in again.stdout + again.stderr

    client, found = runs(project)
    assert len(found) == 2  # the stage's run and the parent that groups this dvc repro
    stage = [r for r in found if r.data.tags.get("dvc_stage") == "world"][0]
    parent = [r for r in found if r.data.tags.get("repro_parent") == "true"][0]
    assert stage.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert stage.data.tags["repro_group"] == parent.data.tags["repro_group"]

    run(["dvc", "exp", "run", "world", "--set-param", "seed=7"], project)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    new_md5 = [o for o in lock["stages"]["world"]["outs"] if o["path"] == "data/01_raw/corpus"][0]["md5"]
    assert new_md5 != corpus_md5


def test_bad_params_fail_before_any_work(project):
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("size_mb: 4.0", "size_mb: -3"))
    p = run(["kedro", "run", "--pipelines", "world", "--params", "profile=default"], project, check=False)
    assert p.returncode != 0
    said = " ".join((p.stdout + p.stderr).split())
    assert "params.yaml is not valid (profile 'default'): key 'world.corpus.size_mb' is -3.0, expected a number in (0" \
        in said
    assert not (project / "data/01_raw/corpus").exists()
    p = run(["kedro", "run", "--pipelines", "world", "--params", "profile=huge"], project, check=False)
    said = " ".join((p.stdout + p.stderr).split())
    # named where it came from (--params, not params.yaml), every profile listed once
    assert p.returncode != 0 and ("--params: unknown profile 'huge' at key 'profile' (expected one of: default, gpu, "
                                  "smoke)") in said


def test_registering_the_pipelines_imports_no_torch():
    """Every `kedro run` registers all pipelines: their modules import torch (seconds) only when a
    node runs, so stages that never train start faster."""
    code = ("import sys; " + BOOTSTRAP + "from llama2_pipeline.pipeline_registry import register_pipelines; "
            "p = register_pipelines(); assert {'rlhf_v1', 'report', 'gatt'} <= set(p), sorted(p); "
            "print('torch' in sys.modules)")
    out = run([sys.executable, "-c", code], ROOT).stdout.strip().splitlines()
    assert out[-1] == "False", out


def test_the_report_stage_and_the_worlds_judgement_import_no_torch():
    """The report stage judges answers it reads (the annotator's win rate) and draws; neither it nor
    the judgement of answers needs torch (seconds at every report), only generating them does."""
    code = ("import sys; from llama2_pipeline.pipelines.report import nodes; "
            "from llama2_pipeline.evaluation.answers import judge, summarise, win_rate; "
            "from llama2_pipeline.world import World; "
            f"w = World.from_params({SMALL_WORLD!r}); "
            "p = w.prompts('eval')[0]; r = judge(w, p['prompt'], p['reference']); "
            "print(r['helpfulness'] > 0, win_rate(w, [p['prompt']], [p['reference']], ['no.']), 'torch' in sys.modules)")
    out = run([sys.executable, "-c", code], ROOT).stdout.strip().splitlines()
    assert out[-1] == "True 1.0 False", out


def test_registering_the_pipelines_and_reading_their_parameter_types_warns_of_nothing():
    """Every `kedro run` registers all pipelines and reads their nodes' type hints (Kedro's parameter
    validation): neither may warn in every stage's log. The rounds' outputs are read by their
    namespaced names (Kedro's dotted-name warning), and the registry's node is a function whose
    hints Kedro can read (a partial has none: "Could not extract type hints")."""
    code = ("import logging, warnings; " + BOOTSTRAP + "from kedro.validation.type_extractor import TypeExtractor; "
            "seen = []; h = logging.Handler(); h.emit = lambda r: seen.append(r.getMessage()); "
            "logging.getLogger('kedro').addHandler(h); logging.getLogger('kedro').setLevel(logging.WARNING); "
            "warnings.simplefilter('error'); from llama2_pipeline.pipeline_registry import register_pipelines; "
            "p = register_pipelines(); t = TypeExtractor(p).extract_types_from_pipelines(); "
            "print(sorted(set(map(str, t.values())))); print('logged:', seen)")
    out = run([sys.executable, "-c", code], ROOT).stdout.strip().splitlines()
    assert out[-1] == "logged: []", out[-1]
    assert "GattConfig" in out[-2] and "RewardConfig" in out[-2], out[-2]  # the typed parameters are read


def test_importing_the_mlflow_hook_shows_no_warning():
    """Every `kedro` command loads the project's settings, whose MLflow hook imports kedro-mlflow's
    KedroPipelineModel, an MLflow PythonModel with an unhinted predict: MLflow's "Add type hints to
    the `predict` method" warning (under MLflow's own "once" filter) would open every stage's log."""
    code = ("from llama2_pipeline.project.tracking import MlflowRunHook; "
            "import kedro_mlflow.mlflow.kedro_pipeline_model as m; print(m.KedroPipelineModel.__name__)")
    p = run([sys.executable, "-c", code], ROOT)
    assert p.stdout.strip().splitlines()[-1] == "KedroPipelineModel"  # the class was imported
    assert "WARNING" not in p.stdout + p.stderr and "type hints" not in p.stdout + p.stderr, p.stderr[-2000:]


def test_a_stage_process_leaves_its_heap_out_of_the_last_collection_at_exit():
    """The project's settings (what every `kedro` command loads) freeze the heap when the process
    exits, so the interpreter's last garbage collection skips the imported modules' objects. An
    atexit handler registered before them runs after theirs and sees the frozen heap."""
    code = ("import atexit, gc; atexit.register(lambda: print('frozen', gc.get_freeze_count())); " + BOOTSTRAP +
            "from kedro.framework.project import settings; "
            "print(len(settings.HOOKS), 'hooks')")
    out = run([sys.executable, "-c", code], ROOT).stdout.strip().splitlines()
    assert out[-2] == "3 hooks", out  # the project's settings were loaded
    word, count = out[-1].split()
    assert word == "frozen" and int(count) > 10_000, out[-1]  # every module's objects, not a handful


def test_an_environment_changes_the_rounds_and_the_policy_gatt_starts_from(project):
    """The pipelines' shape follows Kedro's configuration: an environment's parameters add a round
    and move gatt.after (and with it the dialogues GAtt replays and the RM that ranks its samples),
    for `kedro run --env` and for conf/local alike."""
    (project / "conf/exp").mkdir()
    (project / "conf/exp/parameters.yml").write_text(yaml.safe_dump(
        {"rlhf": {"rounds": {"v3": {"after": "rlhf_v2", "ppo": True}}}, "gatt": {"after": "rlhf_v3"}}))
    code = ("import sys; " + BOOTSTRAP + "from kedro.framework.session import KedroSession; "
            "env = sys.argv[1] if len(sys.argv) > 1 else None; "
            "ctx = KedroSession.create(project_path=Path('.'), env=env).load_context(); "
            "from kedro.framework.project import pipelines; "
            "g = pipelines['gatt'].inputs(); "
            "print(ctx.params['gatt'].after, 'rlhf_v3' in pipelines, 'rlhf_v3.policy' in g, "
            "','.join(sorted(x for x in g if x.endswith(('rs_dialogues', 'helpfulness')))))")
    moved = ["rlhf_v3", "True", "True", "rlhf_v3.reward_model_helpfulness,rlhf_v3.rs_dialogues"]
    assert run([sys.executable, "-c", code, "exp"], project).stdout.split()[-4:] == moved
    assert run([sys.executable, "-c", code], project).stdout.split()[-4:] == [
        "rlhf_v2", "False", "False", "rlhf_v2.reward_model_helpfulness,rlhf_v2.rs_dialogues"]
    (project / "conf/local/parameters.yml").write_text((project / "conf/exp/parameters.yml").read_text())
    assert run([sys.executable, "-c", code], project).stdout.split()[-4:] == moved
