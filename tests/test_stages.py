"""The recipe's first stages (world -> ... -> pretrain) on the smoke profile, from the session's
real `dvc repro` of the whole recipe: one MLflow run per stage, grouped; outputs checked stage by stage."""

import json
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest

from llama2_pipeline.project.datasets import ParquetShards
from llama2_pipeline.data import PIILeakError, find_leaks
from llama2_pipeline.pipelines.data_processing.nodes import clean
from tests.conftest import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cleaned(smoke_repro: Path) -> Path:
    """The session's whole smoke-profile `dvc repro` (world -> ... -> report): these tests read its
    first stages' outputs and runs."""
    return smoke_repro


def stage_run(project: Path, stage: str):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("llama2_pipeline")
    found = client.search_runs([exp.experiment_id], f"tags.dvc_stage = '{stage}'")
    assert len(found) == 1, (stage, len(found))
    return client, found[0]


def _texts_of(path: Path) -> str:
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        return "\n".join(str(v) for col in table.columns for v in col.to_pylist())
    return path.read_bytes().decode("utf-8", errors="replace")


def test_no_canary_in_any_file_the_stage_wrote(cleaned):
    canaries = [json.loads(line) for line in (cleaned / "data/01_raw/pii_canaries.jsonl").read_text().splitlines()]
    assert {c["kind"] for c in canaries} == {"email", "phone", "ip_address", "credit_card", "ssn", "iban", "secret"}
    written = [p for d in ["data/02_intermediate", "data/08_reporting"] for p in (cleaned / d).rglob("*") if p.is_file()]
    written.append(cleaned / "metrics/data_processing.json")
    client, r = stage_run(cleaned, "data_processing")
    art = Path(client.download_artifacts(r.info.run_id, "outputs/cleaning_report"))
    written += [p for p in art.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in written) and any(p.suffix == ".png" for p in written)
    blob = "\n".join(_texts_of(p) for p in written if "01_raw" not in str(p))
    for c in canaries:
        for part in [p.strip() for p in c["value"].splitlines() if len(p.strip()) >= 6] or [c["value"]]:
            assert part not in blob, c


def test_report_metrics_and_kept_sources(cleaned):
    m = json.loads((cleaned / "metrics/data_processing.json").read_text())
    assert m["clean_docs_out"] < m["clean_docs_in"]
    assert m["clean_dup_exact"] > 0 and m["clean_dup_near"] > 0 and m["clean_dropped_pii_density"] > 0
    assert m["clean_pii_total"] > 0 and m["clean_leaked_canaries"] == 0
    clean = ParquetShards(cleaned / "data/02_intermediate/clean_corpus")
    sources = {r["source"] for r in clean.iter_records(["source"])}
    assert {"article", "demo", "prose"} <= sources
    assert not sources & {"spam", "gibberish", "boilerplate", "short", "pii_dump", "exact_dup"}
    report = json.loads((cleaned / "data/08_reporting/cleaning_report.json").read_text())
    assert report["metrics"]["docs_out"] == m["clean_docs_out"]


def test_a_surviving_canary_blocks_publication(cleaned, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA2_STAGING", str(tmp_path / "staging"))
    raw = ParquetShards(cleaned / "data/01_raw/corpus")
    canaries = [json.loads(line) for line in (cleaned / "data/01_raw/pii_canaries.jsonl").read_text().splitlines()]
    from llama2_pipeline.recipe import load

    params = load(cleaned / "params.yaml").data_processing
    params = params.replace(pii=params.pii.replace(enabled=False), workers=1)
    with pytest.raises(PIILeakError, match="survived cleaning"):
        clean(raw, canaries, params)
    assert not any((tmp_path / "staging").iterdir())  # nothing half-written is left behind
    assert find_leaks(cleaned / "data/02_intermediate/clean_corpus", canaries) == []


def test_stages_are_grouped_and_a_second_repro_does_nothing(cleaned):
    groups = {stage_run(cleaned, s)[1].data.tags["repro_group"]
              for s in ["world", "data_processing", "tokenizer_train", "tokenizer_encode", "pretrain"]}
    assert len(groups) == 1
    again = run(["dvc", "repro", "pretrain"], cleaned)
    assert "Data and pipelines are up to date" in again.stdout + again.stderr


def test_tokenizer_is_an_mlflow_artifact_and_counts_tokens(cleaned):
    client, r = stage_run(cleaned, "tokenizer_train")
    local = Path(client.download_artifacts(r.info.run_id, "outputs/tokenizer_model"))
    assert (local / "tokenizer.model").read_bytes() == (cleaned / "data/06_models/tokenizer/tokenizer.model").read_bytes()
    m = json.loads((cleaned / "metrics/tokenizer_encode.json").read_text())
    assert m["tokens_train"] > 10 * m["tokens_val"] > 0
    index = json.loads((cleaned / "data/05_model_input/token_shards/index.json").read_text())
    assert index["dtype"] == "uint16"


def test_pretrain_learns_and_exports_a_transformers_model(cleaned):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    m = json.loads((cleaned / "metrics/pretrain.json").read_text())
    assert m["pretrain_val_loss"] < m["pretrain_val_loss_initial"] - 0.5
    client, r = stage_run(cleaned, "pretrain")
    history = client.get_metric_history(r.info.run_id, "pretrain/train_loss")
    assert len(history) >= 3 and history[-1].value < history[0].value  # streamed as it trained
    out = cleaned / "data/06_models/pretrained"
    model = LlamaForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The capital of", return_tensors="pt").input_ids
    assert ids[0, 0].item() == 1  # BOS, like Llama's tokenizer
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    assert (cleaned / "data/08_reporting/pretrain_loss_curve.png").stat().st_size > 1000
