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

from ..io_utils import atomic_path
from .config import TrainConfig
from .engine import (H100_BF16_PEAK_FLOPS, META_FILE, Checkpointer, barrier, model_config_of, rng_state,
                     self_clipping, set_rng_state)

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
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


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
    ctx = engine.run_context
    run_dir = Path(run_dir)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    module = engine.module
    ckpt = Checkpointer(run_dir / "checkpoints", keep=cfg.keep_checkpoints)
    metrics = MetricsLog(run_dir / METRICS_FILE, enabled=ctx.is_main)
    model_config = model_config_of(module)
    meta = {"model_config": model_config, "train_config": cfg.to_dict(), **(checkpoint_meta or {})}

    # -- resume ---------------------------------------------------------------------------
    step, resumed_from, history = 0, None, []
    last = ckpt.latest()
    if last is not None:
        step, state = ckpt.load(engine, last, model_config)
        saved_cfg = json.loads((last / META_FILE).read_text()).get("train_config", {})
        changed = sorted(k for k, v in cfg.to_dict().items() if k in saved_cfg and saved_cfg[k] != v)
        if changed and ctx.is_main:
            log.warning("resuming %s with changed TrainConfig keys %s: the run will not match an "
                        "uninterrupted one", last, changed)
        data.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        resumed_from = step
        history = metrics.truncate_after(step)
        log.info("resumed from %s (step %d)", last, step)
        if log_fn is not None:  # replay the history (a new tracking run gets the whole curve)
            for record in history:
                log_fn({k: v for k, v in record.items() if k != "step"}, record["step"])
    else:
        metrics.reset()
    barrier()

    peak = peak_flops or cfg.peak_flops or (H100_BF16_PEAK_FLOPS if ctx.device.type == "cuda" else None)
    fpt = flops_per_token(module, cfg.seq_len)
    self_clip = self_clipping(cfg, ctx.precision)
    device = ctx.device

    def emit(record: dict[str, Any]) -> None:
        history.append(record)
        metrics.append(record)
        if log_fn is not None and ctx.is_main:
            log_fn({k: v for k, v in record.items() if k != "step"}, record["step"])

    def run_eval(at_step: int) -> dict[str, float]:
        t = time.perf_counter()
        module.eval()
        with torch.no_grad():
            out = dict(eval_fn(engine))
        module.train()
        out["eval_seconds"] = round(time.perf_counter() - t, 3)
        emit({"step": at_step, **out})
        return out

    last_eval: dict[str, float] = {}
    if eval_fn is not None and step == 0 and cfg.eval_every:
        last_eval = run_eval(0)  # the untrained model's score: the baseline of the curve

    bar = tqdm(total=cfg.max_steps, initial=step, desc="training", unit="step",
               disable=not (progress and ctx.is_main), dynamic_ncols=True)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # sum of loss * n over the window
    n_sum = torch.zeros((), dtype=torch.float64, device=device)
    no_bad = 2**62
    bad_step = torch.full((), no_bad, dtype=torch.long, device=device)  # first step with a non-finite loss
    grad_norm: torch.Tensor | float | None = None
    lr_used = 0.0
    window_steps, window_t0, excluded = 0, time.perf_counter(), 0.0
    timed_steps, timed_seconds = 0, 0.0
    train_loss = None
    saved = last
    module.train()

    def check_finite() -> None:
        b = int(_all_reduce_min(bad_step.clone()))
        if b != no_bad:
            bar.close()
            raise NonFiniteLossError(b, saved)

    while step < cfg.max_steps:
        step += 1
        for micro in range(cfg.grad_accum):
            batch = _to_device(next(data), device)
            loss, n = loss_fn(engine, batch)
            engine.backward(loss)
            detached = loss.detach()
            bad_step = torch.where(torch.isfinite(detached), bad_step, bad_step.clamp(max=step))
            loss_sum += detached.double() * n
            n_sum += n
            if micro == cfg.grad_accum - 1:
                lr_used = engine.optimizer.param_groups[0]["lr"]
                if self_clip:
                    grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
            engine.step()
        window_steps += 1
        bar.update(1)

        is_last = step == cfg.max_steps
        if step % cfg.log_every == 0 or is_last:
            total = _all_reduce_sum(torch.stack([loss_sum, n_sum]))
            check_finite()
            elapsed = time.perf_counter() - window_t0 - excluded
            train_loss = float(total[0] / total[1])
            if not self_clip:
                grad_norm = engine.get_global_grad_norm()
            step_time = elapsed / window_steps
            tps = cfg.global_batch_tokens / step_time
            record = {"step": step, "train_loss": train_loss, "lr": lr_used,
                      "tokens": step * cfg.global_batch_tokens, "tokens_per_s": tps,
                      "step_time_s": step_time}
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            if fpt is not None and peak is not None:
                record["mfu"] = tps * fpt / (peak * ctx.world_size)
            emit(record)
            bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr_used:.2e}", tok_s=f"{tps:,.0f}")
            timed_steps += window_steps
            timed_seconds += elapsed
            loss_sum.zero_(), n_sum.zero_()
            window_steps, window_t0, excluded = 0, time.perf_counter(), 0.0

        t_side = time.perf_counter()
        if eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or is_last):
            check_finite()
            last_eval = run_eval(step)
        if cfg.checkpoint_every >= 0 and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                                          or is_last):
            check_finite()  # never write a checkpoint after a bad step
            saved = ckpt.save(engine, step, {"data": data.state_dict(), "rng": rng_state()}, meta)
        excluded += time.perf_counter() - t_side
    bar.close()
    if not last_eval:  # a finished run called again: its final evaluation is in the history
        last_eval = {k: v for k, v in _last_record(history, "eval_seconds").items() if k != "step"}
    if eval_fn is not None and not last_eval:
        last_eval = run_eval(step)

    tokens_per_s = cfg.global_batch_tokens * timed_steps / timed_seconds if timed_seconds else None
    step_time_s = timed_seconds / timed_steps if timed_steps else None
    train_seconds, run_steps = run_training_time(history)
    if not timed_steps and train_seconds:  # a finished run called again: report the run it recorded
        step_time_s = train_seconds / run_steps
        tokens_per_s = cfg.global_batch_tokens / step_time_s
    return TrainResult(
        steps=step, tokens=step * cfg.global_batch_tokens, global_batch_tokens=cfg.global_batch_tokens,
        train_loss=train_loss if train_loss is not None else _last(history, "train_loss"),
        eval=last_eval,
        tokens_per_s=tokens_per_s,
        step_time_s=step_time_s,
        mfu=(tokens_per_s * fpt / (peak * ctx.world_size)) if tokens_per_s and fpt and peak else None,
        resumed_from=resumed_from, checkpoint=saved, seconds=time.perf_counter() - t_call,
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

