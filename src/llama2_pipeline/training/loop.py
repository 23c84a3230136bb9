"""The resumable training loop every stage runs (pretraining, SFT, reward models).

``train(engine, cfg, data, loss_fn, run_dir)`` runs optimiser steps up to ``cfg.max_steps``:

* ``data`` is a :class:`ResumableBatches`: an iterator of micro-batches (dicts of tensors) with
  ``state_dict()``/``load_state_dict()`` giving its exact position, saved in every checkpoint;
* ``loss_fn(model, batch) -> (loss, n_tokens)``: mean loss of the micro-batch and how many
  tokens (or pairs) it averages over, so a stage plugs in its own objective (causal LM,
  answer-only SFT loss, pairwise reward loss);
* ``eval_fn(model) -> dict`` runs every ``cfg.eval_every`` steps (and at the end), on all ranks;
* every ``cfg.log_every`` steps: train loss, lr, grad norm, tokens/s, MFU, step time go to
  ``run_dir/metrics.jsonl`` (rank 0; one JSON object per line, which a Kedro node can tail for
  a subprocess run), to ``log_fn(metrics, step)`` and to the tqdm bar. Between log steps the
  loop makes no host sync (no ``.item()``): the loss is accumulated on the device.
* a checkpoint every ``cfg.checkpoint_every`` steps and at the end (:class:`Checkpointer`);
  if ``run_dir/checkpoints`` has one, the run resumes from it (same weights bit for bit on CPU
  as a run that was never interrupted).
* a NaN/inf loss raises :class:`NonFiniteLossError` naming the first bad step, before any
  later checkpoint is written, so the newest checkpoint on disk is the last good one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.files import atomic_path
from .config import TrainConfig
from .engine import (
    H100_BF16_PEAK_FLOPS,
    META_FILE,
    Checkpointer,
    barrier,
    model_config_of,
    self_clipping,
)
from .state import rng_state, set_rng_state

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], "tuple[torch.Tensor, int | torch.Tensor]"]
EvalFn = Callable[[nn.Module], dict[str, float]]
LogFn = Callable[[dict[str, float], int], None]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; ``step`` is the first optimiser step (1-based)
    where it happened, ``checkpoint`` the newest (good) checkpoint on disk, if any."""

    def __init__(self, step: int, checkpoint: Path | None):
        self.step, self.checkpoint = step, checkpoint
        where = f"; the last good checkpoint is {checkpoint}" if checkpoint else "; no checkpoint was saved"
        super().__init__(f"non-finite training loss (NaN or inf) at step {step}{where}. Lower the "
                         "learning rate or check the data; the run stopped before saving later state.")


@runtime_checkable
class ResumableBatches(Protocol):
    """An endless iterator of micro-batches whose exact position can be saved and restored."""

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]: ...

    def __next__(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    """What a :func:`train` call did. ``history`` is the whole metrics log of the run (resumed
    parts included); throughput figures cover the steps this call ran."""

    steps: int  # optimiser steps completed (cfg.max_steps unless stopped)
    tokens: int  # tokens trained on over the whole run: steps * cfg.global_batch_tokens
    global_batch_tokens: int  # tokens per optimiser step
    train_loss: float | None  # mean loss of the last log window
    eval: dict[str, float]  # the last eval_fn result
    tokens_per_s: float | None  # mean training throughput of this call (eval/checkpoint excluded);
    #                             of the whole run, from its history, when this call trained no step
    step_time_s: float | None  # mean optimiser-step time, likewise
    mfu: float | None  # model FLOPs utilisation, likewise (None without a peak)
    resumed_from: int | None  # the checkpoint step this call resumed from, if any
    checkpoint: Path | None  # the newest checkpoint folder
    seconds: float  # wall time of this call
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float | None = None  # training time of the whole run (all calls; eval/checkpoints excluded)


def flops_per_token(model: nn.Module, seq_len: int) -> float | None:
    """Training FLOPs per token, 6N + 12·L·d·T (PaLM appendix B), N without the input embedding."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_params"):
        return None
    n = config.num_params(exclude_embedding=True)
    return 6.0 * n + 12.0 * config.n_layers * config.dim * seq_len


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch on ``device``; to CUDA from pinned host memory, so the copy is asynchronous (the
    host queues the step's kernels behind it instead of waiting for it)."""
    pin = device.type == "cuda"
    return {k: (v.pin_memory() if pin and v.device.type == "cpu" else v).to(device, non_blocking=True)
            if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t)
    return t


class MetricsLog:
    """``run_dir/metrics.jsonl``: one JSON object per line with a ``step`` key (rank 0 writes)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Drop records after ``step`` (left by an interrupted attempt); return the kept ones."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        if self.enabled:
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def reset(self) -> None:
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a torn last line from a killed writer is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def train(
    engine,
    cfg: TrainConfig,
    data: ResumableBatches,
    loss_fn: LossFn,
    run_dir: str | os.PathLike,
    *,
    eval_fn: EvalFn | None = None,
    log_fn: LogFn | None = None,
    progress: bool = True,
    checkpoint_meta: dict[str, Any] | None = None,
    peak_flops: float | None = None,
) -> TrainResult:
    """Train ``engine`` (from :func:`~llama2_pipeline.training.engine.build_engine`) to
    ``cfg.max_steps``, resuming from ``run_dir/checkpoints`` when it holds a checkpoint.

    ``checkpoint_meta``: extra JSON facts stored in each checkpoint (the model config is added
    from ``engine.module.config`` and checked on resume). ``peak_flops``: per-device peak for
    MFU (default ``cfg.peak_flops``, else the H100 bf16 peak on CUDA, else no MFU).
    """
    t_call = time.perf_counter()
    run = _Run(engine, cfg, Path(run_dir), eval_fn, log_fn, checkpoint_meta, peak_flops)
    step = run.resume(data)
    if eval_fn is not None and step == 0 and cfg.eval_every:
        run.evaluate(0)  # the untrained model's score: the baseline of the curve
    bar = tqdm(total=cfg.max_steps, initial=step, desc="training", unit="step",
               disable=not (progress and run.ctx.is_main), dynamic_ncols=True)
    window = _Window(run.ctx.device)
    engine.module.train()
    while step < cfg.max_steps:
        step += 1
        grad_norm, lr = _optimizer_step(engine, cfg, data, loss_fn, window, step, run.self_clip)
        window.steps += 1
        bar.update(1)
        is_last = step == cfg.max_steps
        if step % cfg.log_every == 0 or is_last:
            run.log_window(window, step, grad_norm, lr, bar)
        t_side = time.perf_counter()
        if eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or is_last):
            run.check_finite(window, bar)
            run.evaluate(step)
        if cfg.checkpoint_every >= 0 and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or is_last):
            run.check_finite(window, bar)  # never write a checkpoint after a bad step
            run.saved = run.ckpt.save(engine, step, {"data": data.state_dict(), "rng": rng_state()}, run.meta)
        window.excluded += time.perf_counter() - t_side
    bar.close()
    return run.result(step, t_call)


class _Window:
    """The running log window: loss sums on the device (no host sync between log steps), the first
    step with a non-finite loss, and its wall time minus evaluation and checkpoint writes."""

    NO_BAD = 2**62

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # sum of loss * n
        self.n_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.bad_step = torch.full((), self.NO_BAD, dtype=torch.long, device=device)
        self.steps, self.t0, self.excluded = 0, time.perf_counter(), 0.0

    def add(self, loss: torch.Tensor, n, step: int) -> None:
        detached = loss.detach()
        self.bad_step = torch.where(torch.isfinite(detached), self.bad_step, self.bad_step.clamp(max=step))
        self.loss_sum += detached.double() * n
        self.n_sum += n

    def reset(self) -> None:
        self.loss_sum.zero_(), self.n_sum.zero_()
        self.steps, self.t0, self.excluded = 0, time.perf_counter(), 0.0


def _optimizer_step(engine, cfg: TrainConfig, data: ResumableBatches, loss_fn: LossFn, window: _Window, step: int,
                    self_clip: bool) -> tuple[torch.Tensor | float | None, float]:
    """One optimiser step over ``grad_accum`` micro-batches; returns (the gradient norm when the
    loop clips it itself, the learning rate the step used)."""
    grad_norm, lr = None, 0.0
    for micro in range(cfg.grad_accum):
        batch = _to_device(next(data), engine.run_context.device)
        loss, n = loss_fn(engine, batch)
        engine.backward(loss)
        window.add(loss, n, step)
        if micro == cfg.grad_accum - 1:
            lr = engine.optimizer.param_groups[0]["lr"]
            if self_clip:
                grad_norm = torch.nn.utils.clip_grad_norm_(engine.module.parameters(), cfg.grad_clip)
        engine.step()
    return grad_norm, lr


class _Run:
    """What :func:`train` keeps across steps: the run folder's checkpoints and metrics log, the
    history, the last evaluation, the throughput totals."""

    def __init__(self, engine, cfg: TrainConfig, run_dir: Path, eval_fn: EvalFn | None, log_fn: LogFn | None,
                 checkpoint_meta: dict[str, Any] | None, peak_flops: float | None):
        self.engine, self.cfg, self.eval_fn, self.log_fn = engine, cfg, eval_fn, log_fn
        self.ctx = ctx = engine.run_context
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        barrier()
        self.ckpt = Checkpointer(run_dir / "checkpoints", keep=cfg.keep_checkpoints)
        self.metrics = MetricsLog(run_dir / METRICS_FILE, enabled=ctx.is_main)
        self.model_config = model_config_of(engine.module)
        self.meta = {"model_config": self.model_config, "train_config": cfg.to_dict(), **(checkpoint_meta or {})}
        self.peak = peak_flops or cfg.peak_flops or (H100_BF16_PEAK_FLOPS if ctx.device.type == "cuda" else None)
        self.fpt = flops_per_token(engine.module, cfg.seq_len)
        self.self_clip = self_clipping(cfg, ctx.precision)
        self.history: list[dict[str, Any]] = []
        self.last_eval: dict[str, float] = {}
        self.resumed_from: int | None = None
        self.saved: Path | None = None
        self.train_loss: float | None = None
        self.timed_steps, self.timed_seconds = 0, 0.0

    def resume(self, data: ResumableBatches) -> int:
        """Load the newest checkpoint, if any (weights, optimiser, data position, RNG, history)."""
        step, last = 0, self.ckpt.latest()
        if last is not None:
            step, state = self.ckpt.load(self.engine, last, self.model_config)
            saved_cfg = json.loads((last / META_FILE).read_text()).get("train_config", {})
            changed = sorted(k for k, v in self.cfg.to_dict().items() if k in saved_cfg and saved_cfg[k] != v)
            if changed and self.ctx.is_main:
                log.warning("resuming %s with changed TrainConfig keys %s: the run will not match an "
                            "uninterrupted one", last, changed)
            data.load_state_dict(state["data"])
            set_rng_state(state["rng"])
            self.resumed_from = step
            self.history = self.metrics.truncate_after(step)
            log.info("resumed from %s (step %d)", last, step)
            if self.log_fn is not None:  # replay the history (a new tracking run gets the whole curve)
                for record in self.history:
                    self.log_fn({k: v for k, v in record.items() if k != "step"}, record["step"])
        else:
            self.metrics.reset()
        self.saved = last
        barrier()
        return step

    def emit(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        self.metrics.append(record)
        if self.log_fn is not None and self.ctx.is_main:
            self.log_fn({k: v for k, v in record.items() if k != "step"}, record["step"])

    def evaluate(self, at_step: int) -> None:
        t = time.perf_counter()
        module = self.engine.module
        module.eval()
        with torch.no_grad():
            out = dict(self.eval_fn(self.engine))
        module.train()
        out["eval_seconds"] = round(time.perf_counter() - t, 3)
        self.emit({"step": at_step, **out})
        self.last_eval = out

    def check_finite(self, window: _Window, bar) -> None:
        b = int(_all_reduce_min(window.bad_step.clone()))
        if b != _Window.NO_BAD:
            bar.close()
            raise NonFiniteLossError(b, self.saved)

    def log_window(self, window: _Window, step: int, grad_norm, lr: float, bar) -> None:
        """Train loss, lr, grad norm, throughput and MFU of the steps since the last log."""
        cfg = self.cfg
        total = _all_reduce_sum(torch.stack([window.loss_sum, window.n_sum]))
        self.check_finite(window, bar)
        elapsed = time.perf_counter() - window.t0 - window.excluded
        self.train_loss = float(total[0] / total[1])
        if not self.self_clip:
            grad_norm = self.engine.get_global_grad_norm()
        step_time = elapsed / window.steps
        tps = cfg.global_batch_tokens / step_time
        record = {"step": step, "train_loss": self.train_loss, "lr": lr, "tokens": step * cfg.global_batch_tokens,
                  "tokens_per_s": tps, "step_time_s": step_time}
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        if self.fpt is not None and self.peak is not None:
            record["mfu"] = tps * self.fpt / (self.peak * self.ctx.world_size)
        self.emit(record)
        bar.set_postfix(loss=f"{self.train_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        self.timed_steps += window.steps
        self.timed_seconds += elapsed
        window.reset()

    def result(self, step: int, t_call: float) -> TrainResult:
        cfg, history = self.cfg, self.history
        if not self.last_eval:  # a finished run called again: its final evaluation is in the history
            self.last_eval = {k: v for k, v in _last_record(history, "eval_seconds").items() if k != "step"}
        if self.eval_fn is not None and not self.last_eval:
            self.evaluate(step)
        tokens_per_s = cfg.global_batch_tokens * self.timed_steps / self.timed_seconds if self.timed_seconds else None
        step_time_s = self.timed_seconds / self.timed_steps if self.timed_steps else None
        train_seconds, run_steps = run_training_time(history)
        if not self.timed_steps and train_seconds:  # a finished run called again: report the run it recorded
            step_time_s = train_seconds / run_steps
            tokens_per_s = cfg.global_batch_tokens / step_time_s
        mfu = tokens_per_s * self.fpt / (self.peak * self.ctx.world_size) if tokens_per_s and self.fpt and self.peak \
            else None
        return TrainResult(
            steps=step, tokens=step * cfg.global_batch_tokens, global_batch_tokens=cfg.global_batch_tokens,
            train_loss=self.train_loss if self.train_loss is not None else _last(history, "train_loss"),
            eval=self.last_eval, tokens_per_s=tokens_per_s, step_time_s=step_time_s, mfu=mfu,
            resumed_from=self.resumed_from, checkpoint=self.saved, seconds=time.perf_counter() - t_call,
            history=history, train_seconds=train_seconds)


def run_training_time(history: list[dict[str, Any]]) -> tuple[float | None, int]:
    """(training seconds, steps) of a run from its metrics log: each training record covers the
    steps since the previous one at its ``step_time_s``; steps logged again after a resume count
    once (the later record wins)."""
    by_step = {r["step"]: r["step_time_s"] for r in history if "step_time_s" in r and "step" in r}
    seconds, prev = 0.0, 0
    for step in sorted(by_step):
        seconds += (step - prev) * by_step[step]
        prev = step
    return (seconds, prev) if prev else (None, 0)


def _all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return t


def _last(history: list[dict[str, Any]], key: str) -> Any:
    for record in reversed(history):
        if key in record:
            return record[key]
    return None


def _last_record(history: list[dict[str, Any]], key: str) -> dict[str, Any]:
    for record in reversed(history):
        if key in record:
            return record
    return {}

