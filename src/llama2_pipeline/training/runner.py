"""The one runner of the DeepSpeed training stages (pretraining, SFT, the reward models).

A stage is a small object (:class:`Stage`) that knows its inputs and builds, inside a rank, the
parts that differ between stages (:class:`Parts`: model, batches, loss, evaluation, export,
metrics). :func:`run_stage` does what every stage does around them, once:

* more than one rank and not yet launched: write ``run_config.json`` (and the stage's data files)
  into the run folder, start this module on every rank with torchrun / DeepSpeed's launcher
  (:func:`~.launcher.launch`, which streams output and metrics), and return rank 0's result;
* otherwise (one process, or a launched rank): seed the process (:func:`~.engine.setup_run`),
  build the parts, the DeepSpeed engine and run the resumable loop (:func:`~.loop.train`); rank 0
  exports the model (ZeRO-3 parameters gathered), draws the loss curve and writes ``result.json``
  (metrics, weights digest, checkpoint, resume step, train config); all ranks meet at a barrier.

Run folder: ``checkpoints/``, ``metrics.jsonl``, ``loss_curve.png``, ``result.json``, and for
multi-rank runs ``run_config.json`` plus the stage's data. A launched rank runs
``python -m llama2_pipeline.training.runner --config run_dir/run_config.json``.

Nothing here imports Kedro or MLflow.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from ..core.files import write_json
from .config import TrainConfig
from .engine import RunContext, barrier, build_engine, gathered_module, setup_run
from .launcher import launch, rank_main, read_run_config
from .loop import LogFn, LossFn, ResumableBatches, TrainResult, flops_per_token, train

MODULE = "llama2_pipeline.training.runner"  # what the launcher starts on every rank
RUN_CONFIG, RESULT_FILE = "run_config.json", "result.json"


@dataclass
class Parts:
    """What a stage builds inside a rank, after :func:`~.engine.setup_run` seeded it."""

    model: nn.Module
    data: ResumableBatches
    loss_fn: LossFn
    export: Callable[[nn.Module, Path], None]  # rank 0 writes the model folder (full parameters)
    metrics: Callable[[TrainResult, dict[str, Any]], dict[str, Any]]  # the stage's metrics from the
    #                                                                     run and the common figures
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None
    checkpoint_meta: dict[str, Any] = field(default_factory=dict)  # checked facts stored in checkpoints
    result: dict[str, Any] = field(default_factory=dict)  # extra facts for result.json
    plot_title: str | None = None  # the loss curve's title (None: no curve)
    plot_baseline: float | None = None  # a dashed reference loss on the curve (pretraining: unigram)


class Stage(Protocol):
    """A training stage's inputs; JSON for launched ranks, plus any data it writes to files."""

    def parts(self, cfg: TrainConfig, ctx: RunContext) -> Parts: ...

    def to_json(self, run_dir: Path) -> dict[str, Any]:
        """The stage's inputs as JSON (write large data into ``run_dir``, give its path)."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stage: ...


def inside_launch() -> bool:
    """True in a rank started by torchrun / DeepSpeed's launcher (a multi-process world)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_stage(stage: Stage, cfg: TrainConfig, run_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
              log_fn: LogFn | None = None, progress: bool = True) -> dict[str, Any]:
    """Train ``stage`` under ``cfg`` in ``run_dir`` (resuming its checkpoints), export the model to
    ``out_dir``; return the stage's flat metrics."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if cfg.max_steps is None:
        raise ValueError("TrainConfig.max_steps is not set (the stage derives it before running)")
    if cfg.multi_process and not inside_launch():
        run_dir.mkdir(parents=True, exist_ok=True)
        kind = type(stage)
        write_json(run_dir / RUN_CONFIG, {"stage": f"{kind.__module__}:{kind.__qualname__}",
                                          "inputs": stage.to_json(run_dir), "train": cfg.to_dict(),
                                          "run_dir": str(run_dir.resolve()), "out_dir": str(out_dir.resolve()),
                                          "progress": progress})
        (run_dir / RESULT_FILE).unlink(missing_ok=True)
        launch(MODULE, run_dir / RUN_CONFIG, cfg, run_dir, log_fn=log_fn)
        return json.loads((run_dir / RESULT_FILE).read_text())["metrics"]
    return _run_rank(stage, cfg, run_dir, out_dir, log_fn=log_fn, progress=progress)


def _run_rank(stage: Stage, cfg: TrainConfig, run_dir: Path, out_dir: Path, *, log_fn: LogFn | None,
              progress: bool) -> dict[str, Any]:
    ctx = setup_run(cfg)  # seeds the model init: the same on every rank and in every run
    parts = stage.parts(cfg, ctx)
    engine = build_engine(parts.model, cfg, ctx)
    result = train(engine, cfg, parts.data, parts.loss_fn, run_dir, eval_fn=parts.eval_fn, log_fn=log_fn,
                   progress=progress, checkpoint_meta=parts.checkpoint_meta)
    digest = None
    with gathered_module(engine) as module:
        if ctx.is_main:
            parts.export(module, out_dir)
            digest = weights_digest(module.state_dict())
    metrics = {k: v for k, v in parts.metrics(result, common_metrics(result, cfg, engine.module)).items()
               if v is not None}
    if ctx.is_main:
        if parts.plot_title is not None:
            from ..evaluation.plots import plot_loss_curve

            plot_loss_curve(result.history, run_dir / "loss_curve.png", baseline=parts.plot_baseline,
                            title=parts.plot_title)
        write_json(run_dir / RESULT_FILE, {
            "metrics": metrics, "out_dir": str(out_dir), "weights_sha256": digest,
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "resumed_from": result.resumed_from, "train_config": cfg.to_dict(), **parts.result})
    barrier()
    return metrics


def common_metrics(result: TrainResult, cfg: TrainConfig, module: nn.Module) -> dict[str, Any]:
    """The figures every stage reports (unprefixed): train and validation loss, steps, tokens,
    throughput, step time, MFU, FLOPs per token and the run's training seconds."""
    history = result.history
    initial = next((r["val_loss"] for r in history if r.get("step") == 0 and "val_loss" in r), None)
    seconds = result.train_seconds if result.train_seconds is not None else result.seconds
    return {
        "train_loss": result.train_loss, "steps": result.steps, "tokens": result.tokens,
        "global_batch_tokens": cfg.global_batch_tokens,
        "tokens_per_s": result.tokens_per_s or last(history, "tokens_per_s"),
        "step_time_s": result.step_time_s or last(history, "step_time_s"),
        "mfu": result.mfu or last(history, "mfu"),
        "flops_per_token": flops_per_token(module, cfg.seq_len),
        "seconds": round(seconds, 3),
        "val_loss": result.eval.get("val_loss"), "val_loss_initial": initial,
    }


def last(history: list[dict[str, Any]], key: str) -> Any:
    """The newest value of ``key`` in a metrics history (None if it never occurs)."""
    return next((r[key] for r in reversed(history) if key in r), None)


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors' names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_run_config(path: str | os.PathLike) -> tuple[Stage, TrainConfig, Path, Path, bool]:
    """A launched rank's ``run_config.json``: (stage, train config, run folder, export folder,
    progress). Unknown or missing keys, or a bad train config, raise naming the file."""
    keys = {"stage", "inputs", "train", "run_dir", "out_dir", "progress"}
    rc = read_run_config(path, keys, keys - {"progress"})
    module_name, _, name = rc["stage"].partition(":")
    if not module_name.startswith("llama2_pipeline.training."):
        raise ValueError(f"{path}: stage {rc['stage']!r} is not a training stage of this project")
    kind = getattr(importlib.import_module(module_name), name)
    try:
        cfg = TrainConfig.from_dict(rc["train"], "train")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return kind.from_json(rc["inputs"]), cfg, Path(rc["run_dir"]), Path(rc["out_dir"]), rc.get("progress", True)


def main(argv: list[str] | None = None) -> int:
    def run(config: str) -> dict:
        stage, cfg, run_dir, out_dir, progress = load_run_config(config)
        return _run_rank(stage, cfg, run_dir, out_dir, log_fn=None, progress=progress)

    return rank_main(argv, f"python -m {MODULE}", "Run (or resume) one rank of a training stage.",
                     "run_config.json written by run_stage()", run)


if __name__ == "__main__":
    sys.exit(main())
