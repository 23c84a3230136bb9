"""Bring your own data: ``llama2-pipeline examples`` writes example files for every swap point and
``kedro run --env byo`` (conf/byo/catalog.yml) runs the pipelines on them instead of the world's.

The slow tests share one smoke project copy: examples, the world's prompts, then data_processing,
tokenizer, pretrain, sft and reward on the Parquet corpus; then data_processing again on the JSONL
corpus, then on a JSONL corpus with a line missing its ``text``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
from kedro.io import DatasetError

from llama2_pipeline.commands import examples
from llama2_pipeline.project.datasets import JSONLCorpusDataset
from tests.conftest import make_project_copy, run

PIPELINES = "data_processing,tokenizer,pretrain,sft,reward"
PARQUET_BLOCK = ("raw_corpus:\n  type: llama2_pipeline.project.datasets.ParquetShardsDataset\n"
                 "  path: data/01_raw/byo/corpus\n  read_only: true\n  metadata: {pii: true}\n")
JSONL_BLOCK = ("# raw_corpus:\n#   type: llama2_pipeline.project.datasets.JSONLCorpusDataset\n"
               "#   filepath: data/01_raw/byo/corpus.jsonl\n#   metadata: {pii: true}\n")
WIDE = {"COLUMNS": "400"}  # Kedro's rich log handler would wrap long error messages


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _clean(project: Path) -> list[dict]:
    folder = project / "data/02_intermediate/clean_corpus"
    columns = ["id", "text", "source"]
    return [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f, columns=columns).to_pylist()]


def _metrics(project: Path, stage: str) -> dict:
    return json.loads((project / f"metrics/{stage}.json").read_text())


def _run_tags(project: Path) -> list[dict]:
    """The tags of every MLflow run of the project copy, oldest first."""
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              order_by=["attributes.start_time ASC"])
    return [r.data.tags for r in runs]


def use_jsonl_corpus(project: Path) -> None:
    """The documented switch: comment out the Parquet ``raw_corpus`` block, uncomment the JSONL one."""
    catalog = project / "conf/byo/catalog.yml"
    text = catalog.read_text()
    assert text.count(PARQUET_BLOCK) == 1 and text.count(JSONL_BLOCK) == 1, "conf/byo/catalog.yml changed its layout"
    text = text.replace(PARQUET_BLOCK, "".join(f"# {line}\n" for line in PARQUET_BLOCK.splitlines()))
    text = text.replace(JSONL_BLOCK, "".join(line[2:] + "\n" for line in JSONL_BLOCK.splitlines()))
    catalog.write_text(text)


@pytest.fixture(scope="module")
def byo_project(tmp_path_factory) -> dict:
    project = make_project_copy(tmp_path_factory.mktemp("byo") / "proj", "smoke")
    run([sys.executable, "-m", "llama2_pipeline.commands", "examples"], project)
    run(["kedro", "run", "--pipelines", "world", "--nodes", "write_prompts"], project, timeout=600)
    run(["kedro", "run", "--env", "byo", "--pipelines", PIPELINES], project, timeout=900)
    out = {"project": project, "parquet_clean": _clean(project),
           "parquet_metrics": _metrics(project, "data_processing")}
    use_jsonl_corpus(project)
    run(["kedro", "run", "--env", "byo", "--pipelines", "data_processing"], project, timeout=600)
    out["jsonl_clean"] = _clean(project)
    corpus = project / "data/01_raw/byo/corpus.jsonl"
    lines = corpus.read_text().splitlines()
    bad = json.loads(lines[6])
    del bad["text"]
    lines[6] = json.dumps(bad)
    corpus.write_text("\n".join(lines) + "\n")
    out["corrupt"] = run(["kedro", "run", "--env", "byo", "--pipelines", "data_processing"], project, check=False,
                         timeout=600, extra_env=WIDE)
    out["after_corrupt_clean"] = _clean(project)
    return out


# ---- the example files ---------------------------------------------------------------------------


def test_examples_are_deterministic_and_consistent(tmp_path):
    counts = examples.write_examples(tmp_path / "a")
    examples.write_examples(tmp_path / "b")
    for name in ("corpus.jsonl", "sft_dialogues.jsonl", "preferences.jsonl"):  # (README names the folder)
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    docs = _jsonl(tmp_path / "a/corpus.jsonl")
    shards = sorted((tmp_path / "a/corpus").glob("*.parquet"))
    assert [f.name for f in shards] == ["part-00000.parquet", "part-00001.parquet"]
    assert [r for f in shards for r in pq.read_table(f).to_pylist()] == docs  # the same documents both ways
    assert len(docs) == counts["documents"] and len({d["id"] for d in docs}) == len(docs)
    assert all(set(d) == {"id", "text", "source"} and d["text"] for d in docs)
    assert (tmp_path / "a/pii_canaries.jsonl").read_text() == ""
    dialogues = _jsonl(tmp_path / "a/sft_dialogues.jsonl")
    assert len(dialogues) == counts["dialogues"] >= 30
    assert any(d["messages"][0]["role"] == "system" for d in dialogues)
    assert any(d["messages"][0]["role"] == "user" for d in dialogues)
    assert any(len(d["messages"]) > 3 for d in dialogues)  # multi-turn
    prefs = _jsonl(tmp_path / "a/preferences.jsonl")
    assert len(prefs) == counts["preferences"]
    assert {p["category"] for p in prefs} == {"helpfulness", "safety"}
    assert any(isinstance(p["chosen"], list) for p in prefs)  # UltraFeedback layout
    assert examples.write_examples(tmp_path / "c", seed=7) and \
        (tmp_path / "c/corpus.jsonl").read_bytes() != (tmp_path / "a/corpus.jsonl").read_bytes()


def test_examples_command_refuses_to_overwrite(tmp_path, capsys):
    assert examples.main(["--out", str(tmp_path / "ex")]) == 0
    assert examples.main(["--out", str(tmp_path / "ex")]) == 1
    assert "--force" in capsys.readouterr().err
    assert examples.main(["--out", str(tmp_path / "ex"), "--force"]) == 0


def test_examples_data_ship_with_the_package_and_a_seed_gives_the_same_bytes(tmp_path):
    from fnmatch import fnmatch
    from importlib import resources

    from tests.conftest import ROOT

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10, where pytest depends on tomli
        import tomli as tomllib

    # the vocabulary and templates are package data: present in the package as imported, and
    # matched by pyproject.toml's package-data globs, so that `pip install .` ships them too
    package = resources.files("llama2_pipeline.commands.examples")
    shipped = {f.name for f in package.iterdir() if f.is_file() and not f.name.endswith((".py", ".pyc"))}
    assert shipped == set(examples.DATA_FILES)
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = package_data["llama2_pipeline.commands.examples"]
    assert all(any(fnmatch(name, g) for g in globs) for name in examples.DATA_FILES)

    # the same seed into the same folder twice: every file the same to the byte, Parquet and README too
    out = tmp_path / "ex"

    def files() -> dict:
        return {f.relative_to(out).as_posix(): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}

    examples.write_examples(out, seed=3)
    first = files()
    examples.write_examples(out, seed=3, force=True)
    assert files() == first
    assert set(first) == {"corpus/part-00000.parquet", "corpus/part-00001.parquet"} | set(examples.FILES[1:])


def test_byo_catalog_refuses_to_overwrite_your_files(tmp_path, monkeypatch):
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    from tests.conftest import ROOT

    monkeypatch.chdir(tmp_path)  # the catalog's relative paths land here
    examples.write_examples(tmp_path / "data/01_raw/byo")
    before = {f: f.read_bytes() for f in (tmp_path / "data/01_raw/byo").rglob("*") if f.is_file()}
    loader = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="byo")
    catalog = DataCatalog.from_config(loader["catalog"])
    # what the world pipeline would write into these entries
    attempts = {"raw_corpus": [[{"id": "w-1", "text": "simulated", "source": "world"}]],
                "pii_canaries": [{"kind": "email", "value": "a@b.c"}],
                "sft_dialogues_raw": [{"id": "d", "messages": [{"role": "user", "content": "hi"},
                                                               {"role": "assistant", "content": "hello"}]}]}
    for name, data in attempts.items():
        with pytest.raises(DatasetError, match=r"data/01_raw/byo/\S+ is read-only in this catalog"):
            catalog.save(name, data)
        assert catalog.load(name) is not None  # still readable
    assert {f: f.read_bytes() for f in (tmp_path / "data/01_raw/byo").rglob("*") if f.is_file()} == before
    # the base catalog's own entries stay writable
    base = DataCatalog.from_config(OmegaConfigLoader(str(ROOT / "conf"), base_env="base",
                                                     default_run_env="base")["catalog"])
    base.save("pii_canaries", attempts["pii_canaries"])
    assert _jsonl(tmp_path / "data/01_raw/pii_canaries.jsonl") == attempts["pii_canaries"]


# ---- JSONLCorpusDataset --------------------------------------------------------------------------


def test_jsonl_corpus_dataset_loads_shards(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA2_STAGING", str(tmp_path / "staging"))
    f = tmp_path / "docs.jsonl"
    f.write_text('{"id": "a", "text": "first", "source": "s"}\n\n{"text": "second"}\n{"id": 7, "text": "third"}\n')
    shards = JSONLCorpusDataset(str(f), shard_docs=2).load()
    assert [p.name for p in shards.files] == ["part-00000.parquet", "part-00001.parquet"]
    assert list(shards.iter_records()) == [{"id": "a", "text": "first", "source": "s"},
                                           {"id": "docs:3", "text": "second", "source": ""},
                                           {"id": "7", "text": "third", "source": ""}]
    folder = shards.path
    del shards  # the staged copy goes with the handle
    assert not folder.exists()
    with pytest.raises(DatasetError, match="reads only"):
        JSONLCorpusDataset(str(f)).save([])


@pytest.mark.parametrize("lines, message", [
    (['{"id": "a", "text": "ok"}', '{"id": "b", "source": "x"}'], r"docs.jsonl, line 2: field 'text' is missing"),
    (['{"id": "a", "text": "ok"}', '{"id": "b", "text": 3}'], r"line 2: field 'text' is int"),
    (['{"id": "a", "text": "ok"}', "{not json"], r"line 2: not valid JSON"),
    (['["a list"]'], r"line 1: expected an object"),
    (['{"id": "a", "text": "ok"}', '{"id": "a", "text": "again"}'], r"line 2: field 'id' 'a' repeats the id of line 1"),
    (['{"id": "a", "text": "ok", "source": 5}'], r"line 1: field 'source' is 5"),
    ([""], r"empty corpus"),
])
def test_jsonl_corpus_dataset_bad_rows(tmp_path, monkeypatch, lines, message):
    monkeypatch.setenv("LLAMA2_STAGING", str(tmp_path / "staging"))
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=message):
        JSONLCorpusDataset(str(f)).load()
    assert not any((tmp_path / "staging").iterdir())  # nothing staged is left behind


# ---- the pipelines on the examples ---------------------------------------------------------------


@pytest.mark.slow
def test_data_processing_cleans_the_example_corpus(byo_project):
    project = byo_project["project"]
    docs = _jsonl(project / "data/01_raw/byo/corpus.jsonl")
    clean = byo_project["parquet_clean"]
    by_id = {d["id"]: d for d in docs}
    assert {r["id"] for r in clean} <= set(by_id) and {r["source"] for r in clean} <= {d["source"] for d in docs}
    dirty = {d["id"] for d in docs if d["source"] == "web_scrape"}
    assert len(dirty) == 5 and not dirty & {r["id"] for r in clean}  # duplicates, fragments, spam removed
    assert len(clean) >= 0.95 * (len(docs) - len(dirty))  # the good documents pass the quality rules
    note = next(r for r in clean if r["source"] == "club_newsletter")
    assert "<EMAIL>" in note["text"] and "<PHONE>" in note["text"] and "example.org" not in note["text"]
    m = byo_project["parquet_metrics"]
    assert m["clean_docs_in"] == len(docs) and m["clean_docs_out"] == len(clean)
    assert _metrics(project, "tokenizer_train")["tokenizer_docs"] == len(clean)
    assert _metrics(project, "tokenizer_encode")["tokens_train"] > 10_000


@pytest.mark.slow
def test_pretrain_and_sft_train_on_the_examples(byo_project):
    project = byo_project["project"]
    pre = _metrics(project, "pretrain")
    assert pre["pretrain_steps"] == 30 and pre["pretrain_val_loss"] < pre["pretrain_val_loss_initial"]
    sft = _metrics(project, "sft")
    dialogues = _jsonl(project / "data/01_raw/byo/sft_dialogues.jsonl")
    assert sft["sft_dialogues"] + sft["sft_dialogues_val"] == len(dialogues) and sft["sft_dropped"] == 0
    assert sft["sft_steps"] >= 1 and (project / "data/06_models/sft/model.safetensors").is_file()
    (tags,) = [t for t in _run_tags(project) if set(t.get("pipelines", "").split(",")) == set(PIPELINES.split(","))]
    assert tags["input.raw_corpus"].startswith("data/01_raw/byo/corpus@sha256:")
    assert tags["input.sft_dialogues_raw"].startswith("data/01_raw/byo/sft_dialogues.jsonl@sha256:")
    assert tags["input.user_preferences"].startswith("data/01_raw/byo/preferences.jsonl@sha256:")


@pytest.mark.slow
def test_reward_models_learn_from_the_example_preferences(byo_project):
    project = byo_project["project"]
    user = {p["id"]: p for p in _jsonl(project / "data/01_raw/byo/preferences.jsonl")}
    merged = _jsonl(project / "data/03_primary/reward_preferences.jsonl")
    ours = {r["id"]: r for r in merged if str(r.get("id", "")).startswith("byo-pref-")}
    assert set(ours) == set(user)  # every pair of the file, merged with the world's
    assert any("source" in r for r in merged)
    train = _jsonl(project / "data/05_model_input/reward_preferences_train.jsonl")
    heldout = _jsonl(project / "data/05_model_input/reward_preferences_heldout.jsonl")
    split = {r["id"] for r in train + heldout if "id" in r}
    assert split == set(user)
    for pid, raw in user.items():  # UltraFeedback-style conversations became prompt/messages + answers
        rec = ours[pid]
        assert rec["rating"] == raw["rating"] and rec["category"] == raw["category"]
        if isinstance(raw["chosen"], list):
            assert rec["chosen"] == raw["chosen"][-1]["content"] and rec["rejected"] == raw["rejected"][-1]["content"]
            assert ("messages" in rec) == (len(raw["chosen"]) > 2)
    m = _metrics(project, "reward")
    for name in ("helpfulness", "safety"):
        assert m[f"rm_{name}_steps"] >= 1 and m[f"rm_{name}_train_pairs"] > 0
        assert (project / f"data/06_models/reward_{name}/config.json").is_file()


@pytest.mark.slow
def test_jsonl_corpus_gives_the_same_clean_corpus(byo_project):
    assert byo_project["jsonl_clean"] == byo_project["parquet_clean"]
    tags = [t for t in _run_tags(byo_project["project"]) if ".jsonl@" in t.get("input.raw_corpus", "")]
    assert len(tags) == 1 and tags[0]["input.raw_corpus"].startswith("data/01_raw/byo/corpus.jsonl@sha256:")
    staging = byo_project["project"] / "data/.staging"
    assert not list(staging.glob("raw_corpus_jsonl-*"))  # the staged Parquet copy was removed


@pytest.mark.slow
def test_corrupt_jsonl_row_stops_the_run_naming_file_line_and_field(byo_project):
    p = byo_project["corrupt"]
    assert p.returncode != 0
    assert "corpus.jsonl, line 7: field 'text' is missing" in p.stdout + p.stderr
    assert byo_project["after_corrupt_clean"] == byo_project["jsonl_clean"]  # the clean corpus is untouched
