"""Nodes of ``report``: gather the stages' metrics and plots, find the MLflow runs that wrote them,
and write the report (:mod:`llama2_pipeline.evaluation.report` does the writing)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from llama2_pipeline.core.files import sha256_path
from llama2_pipeline.recipe import WorldParams

log = logging.getLogger(__name__)

# stage -> (dataset of its metrics file, metrics file, throughput key and unit)
STAGES: dict[str, tuple[str, str, tuple[str, str] | None]] = {
    "world": ("world_metrics", "metrics/world.json", None),
    "data_processing": ("data_processing_metrics", "metrics/data_processing.json", ("clean_mib_per_s", "MiB/s")),
    "tokenizer_train": ("tokenizer_train_metrics", "metrics/tokenizer_train.json", None),
    "tokenizer_encode": ("tokenizer_encode_metrics", "metrics/tokenizer_encode.json",
                         ("tokens_mib_per_second", "MiB/s")),
    "pretrain": ("pretrain_metrics", "metrics/pretrain.json", ("pretrain_tokens_per_s", "tokens/s")),
    "sft": ("sft_metrics", "metrics/sft.json", ("sft_tokens_per_s", "tokens/s")),
    "reward": ("reward_metrics", "metrics/reward.json", ("rm_helpfulness_tokens_per_s", "tokens/s")),
    "gatt": ("gatt_metrics", "metrics/gatt.json", ("gatt_tokens_per_s", "tokens/s")),
}


def round_stages(rounds: list[str]) -> dict[str, tuple[str, str, tuple[str, str] | None]]:
    return {f"rlhf_{r}": (f"rlhf_{r}.metrics", f"metrics/rlhf_{r}.json", ("rm_helpfulness_tokens_per_s", "tokens/s"))
            for r in rounds}


def producing_runs(stages: dict[str, tuple[str, str, object]]) -> tuple[dict[str, dict], dict]:
    """For each stage, the MLflow run that wrote its metrics file as it is now on disk: the newest
    run whose ``output.<dataset>`` tag carries the file's SHA-256 (the lineage hook's tags). Returns
    (stage -> run record, this report run's own record); a stage whose file no run of this store
    wrote (e.g. outputs restored by ``dvc checkout`` on another machine) maps to ``{}``."""
    import mlflow

    client = mlflow.MlflowClient()
    active = mlflow.active_run()
    exp_ids = [active.info.experiment_id] if active else [e.experiment_id for e in client.search_experiments()]
    out: dict[str, dict] = {}
    for stage, (dataset, path, _) in stages.items():
        if not Path(path).is_file():
            out[stage] = {}
            continue
        value = f"{path}@sha256:{sha256_path(Path(path))}"
        runs = client.search_runs(exp_ids, filter_string=f"tags.`output.{dataset}` = '{value}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            log.warning("report: no MLflow run in this store wrote %s as it is now", path)
            out[stage] = {}
            continue
        r = runs[0]
        end = r.info.end_time or r.info.start_time
        out[stage] = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
                      "start_time": r.info.start_time, "wall_seconds": round((end - r.info.start_time) / 1000, 1),
                      "git_commit": r.data.tags.get("git_commit"), "git_dirty": r.data.tags.get("git_dirty"),
                      "dvc_stage": r.data.tags.get("dvc_stage"), "repro_group": r.data.tags.get("repro_group")}
    me = {}
    if active:
        run = client.get_run(active.info.run_id)
        me = {"run_id": run.info.run_id, "experiment": client.get_experiment(run.info.experiment_id).name,
              "git_commit": run.data.tags.get("git_commit"), "git_dirty": run.data.tags.get("git_dirty") == "true"}
    return out, me


def build_report(sft_metrics: dict, sft_samples: list[dict], pretrain_metrics: dict, reward_metrics: dict,
                 reward_accuracy: dict, gatt_metrics: dict, gatt_model_metrics: dict, gatt_adherence: dict,
                 cleaning_report: dict, calibration_plot: bytes, gatt_plot: bytes, cleaning_plot: bytes,
                 pretrain_plot: bytes, world: WorldParams, seed: int, profile: str, gatt_select: str | None = None,
                 gatt_case: str | None = None, **round_metrics: dict):
    """The report (:func:`llama2_pipeline.evaluation.report.build_report`) with the MLflow run behind
    each stage's metrics; ``round_metrics``: ``rlhf_<round>`` -> that round's metrics, in training order."""
    from llama2_pipeline.evaluation.report import build_report as build
    from llama2_pipeline.evaluation.report import stage_rows

    rounds = {name.removeprefix("rlhf_"): m for name, m in round_metrics.items()}
    timing = cleaning_report.get("timing", {})
    metrics = {"pretrain": pretrain_metrics, "sft": sft_metrics, "reward": reward_metrics, "gatt": gatt_metrics,
               "data_processing": {"clean_seconds": timing.get("seconds"), "clean_mib_per_s": timing.get("mib_per_s")},
               **round_metrics}
    stages = {**STAGES, **round_stages(list(rounds))}
    runs, me = producing_runs(stages)
    provenance = {"git_commit": me.get("git_commit"), "git_dirty": me.get("git_dirty"), "profile": profile,
                  "seed": seed, "experiment": me.get("experiment"), "report_run_id": me.get("run_id"),
                  "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    plots = {"calibration": calibration_plot, "gatt": gatt_plot, "cleaning": cleaning_plot, "pretrain": pretrain_plot}
    return build(sft_metrics=sft_metrics, sft_samples=sft_samples, pretrain_metrics=pretrain_metrics,
                 reward_accuracy=reward_accuracy, gatt_metrics=gatt_metrics,
                 gatt_model_metrics=gatt_model_metrics, gatt_adherence=gatt_adherence, cleaning_report=cleaning_report,
                 plots=plots, world=world.world(seed), rounds=rounds, stages=stage_rows(stages, metrics, runs),
                 provenance=provenance, gatt_select=gatt_select, gatt_case=gatt_case)
