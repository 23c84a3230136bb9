"""The DeepSpeed engine, optimiser, LR schedule and atomic checkpoints shared by every stage.

* :func:`setup_run` prepares the process (device, torch.distributed, threads, determinism, seeds);
  call it before building the model so that the weight init is seeded.
* :func:`build_engine` wraps a model in a DeepSpeed engine: ZeRO 0-3, fp32/bf16/fp16, micro-batch
  and gradient accumulation, clipping, AdamW with weight decay on matrices only, and the
  warm-up + cosine schedule as a ``torch`` ``LambdaLR`` (so DeepSpeed checkpoints its state).
* :class:`Checkpointer` saves DeepSpeed checkpoints atomically (staged, then renamed; ``latest``
  is rewritten last) and keeps the newest K; each stores model, optimiser, scheduler, the model
  config, and per rank the data position and the python/numpy/torch RNG states.

DeepSpeed is imported lazily (it takes seconds), so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.files import atomic_path, write_json
from .config import TrainConfig
from .state import (
    load_legacy_rank_state,
    rank_state_from_json,
    rank_state_to_json,
    safe_checkpoint_loading,
)

log = logging.getLogger(__name__)

H100_BF16_PEAK_FLOPS = 989e12  # dense bf16 tensor-core peak of an H100 SXM
SINGLE_PROCESS_ENV = "LLAMA2_PIPELINE_SINGLE_PROCESS"  # marks RANK/WORLD_SIZE/... set by init_distributed


class CheckpointMismatchError(ValueError):
    """A checkpoint that cannot be resumed by this run (another model shape or rank layout)."""


# --------------------------------------------------------------------------------------------
# Process setup
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunContext:
    """Where this process runs: its device, precision and rank."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16 (resolved from "auto")
    rank: int  # global rank
    local_rank: int
    world_size: int  # ranks over all nodes

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("TrainConfig.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    """``auto`` is bf16 on CUDA and fp32 on CPU; bf16/fp16 on CPU are refused with a clear error."""
    if cfg.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if cfg.precision != "fp32" and device.type != "cuda":
        raise ValueError(
            f"TrainConfig.precision {cfg.precision!r} needs a CUDA GPU (DeepSpeed's mixed-precision "
            "optimisers do not run on CPU here); use precision 'fp32' or 'auto' for CPU runs")
    return cfg.precision


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _import_deepspeed(device: torch.device):
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if device.type == "cpu":
        # DeepSpeed JIT-compiles a shared-memory all-reduce (for CPU *inference*) the first time
        # it initialises torch.distributed: minutes of C++ build that training never uses.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def init_distributed(device: torch.device) -> tuple[int, int, int]:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on CUDA) if needed.

    A plain single process gets RANK=0, WORLD_SIZE=1 and a free MASTER_PORT; under torchrun or
    DeepSpeed's launcher the launcher's environment is used. Returns (rank, local_rank, world).
    """
    deepspeed = _import_deepspeed(device)
    if not torch.distributed.is_initialized():
        # no launcher: a world of one. The variables we set are marked, so that a subprocess
        # inheriting them (e.g. the CLI run from a process that trained) picks its own port.
        if "WORLD_SIZE" not in os.environ or os.environ.get(SINGLE_PROCESS_ENV) == "1":
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(free_port()), **{SINGLE_PROCESS_ENV: "1"})
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo",
                                   verbose=False)
    return (torch.distributed.get_rank(), int(os.environ.get("LOCAL_RANK", 0)),
            torch.distributed.get_world_size())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_run(cfg: TrainConfig) -> RunContext:
    """Prepare this process for a run of ``cfg``: device, distributed init, threads, determinism
    (always on CPU, ``cfg.deterministic`` on CUDA) and seeds. Call before building the model."""
    device = resolve_device(cfg)
    precision = resolve_precision(cfg, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rank, local_rank, world = init_distributed(device)
    if world != cfg.total_ranks:
        raise ValueError(f"TrainConfig asks for {cfg.total_ranks} ranks (world_size {cfg.world_size} x "
                         f"num_nodes {cfg.num_nodes}) but torch.distributed has {world}")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cpu" or cfg.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.seed)
    return RunContext(device=device, precision=precision, rank=rank, local_rank=local_rank,
                      world_size=world)


def barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


# --------------------------------------------------------------------------------------------
# Optimiser, schedule, engine
# --------------------------------------------------------------------------------------------


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices (>= 2-D: linear layers and embeddings), none on
    1-D parameters (RMSNorm gains, biases). Frozen parameters are left out."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def decay_parameter_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """(names with weight decay, names without): the split :func:`param_groups` makes."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(name)
    return decay, no_decay


@dataclass
class CosineSchedule:
    """LR multiplier for optimiser step ``s`` (0-based): linear warm-up ``(s+1)/warmup_steps``,
    then a cosine from 1 at ``s = warmup_steps`` to ``min_ratio`` at ``s = max_steps`` (flat
    afterwards). A callable object, so ``LambdaLR.state_dict`` records it."""

    warmup_steps: int
    max_steps: int
    min_ratio: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def self_clipping(cfg: TrainConfig, precision: str) -> bool:
    """True when the loop clips (and measures) the gradient norm itself: ZeRO-0 fp32, where
    DeepSpeed clips without keeping the norm. Every other mode clips inside DeepSpeed."""
    return cfg.zero_stage == 0 and precision == "fp32" and cfg.grad_clip > 0


def optimizer_kind(cfg: TrainConfig, device: torch.device) -> str:
    """``cfg.optimizer`` resolved: ``auto`` is ``fused`` on CUDA and ``deepspeed`` on CPU."""
    if cfg.optimizer == "auto":
        return "fused" if device.type == "cuda" else "deepspeed"
    if cfg.optimizer == "fused" and device.type != "cuda":
        raise ValueError("TrainConfig.optimizer 'fused' needs a CUDA GPU; use 'foreach', 'deepspeed' or 'auto'")
    return cfg.optimizer


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer | None:
    """The AdamW handed to DeepSpeed, or None where DeepSpeed builds its own from the config
    (``optimizer: deepspeed``). Fused: one CUDA kernel per parameter group for the whole update
    (DeepSpeed's ZeRO-1/2 flattens each group into one fp32 partition) instead of one pass per
    elementwise op; the same hyper-parameters and weight-decay groups as DeepSpeed's."""
    kind = optimizer_kind(cfg, device)
    if kind == "deepspeed":
        return None
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=kind == "fused", foreach=kind == "foreach")


def compile_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    """``cfg.compile`` resolved: ``auto`` compiles on CUDA only."""
    return cfg.compile is True or (cfg.compile == "auto" and device.type == "cuda")


def deepspeed_config(cfg: TrainConfig, precision: str, n_params: int | None = None, *,
                     client_optimizer: bool = False) -> dict[str, Any]:
    """The DeepSpeed JSON config of ``cfg`` (``cfg.deepspeed`` merged over it).

    ``n_params`` caps ZeRO's communication buckets at the model size: DeepSpeed's defaults
    (5e8 elements) allocate gigabytes and make small models on CPU seconds per step slower.
    ``client_optimizer``: the optimiser is built here (:func:`build_optimizer`), so the config
    names none (DeepSpeed refuses both).
    """
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if n_params and cfg.zero_stage in (1, 2):
        bucket = int(min(5e8, max(2**20, n_params)))
        zero.update(reduce_bucket_size=bucket, allgather_bucket_size=bucket)
    elif n_params and cfg.zero_stage == 3:
        zero.update(reduce_bucket_size=int(min(5e8, max(2**20, n_params))),
                    stage3_prefetch_bucket_size=int(min(5e7, max(2**20, n_params))))
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.global_batch,
        "gradient_clipping": 0.0 if self_clipping(cfg, precision) else cfg.grad_clip,
        "optimizer": {
            "type": "AdamW",
            # torch_adam: torch.optim.AdamW, no JIT-built FusedAdam/CPUAdam
            "params": {"lr": cfg.lr, "betas": list(cfg.betas), "eps": cfg.eps,
                       "weight_decay": cfg.weight_decay, "torch_adam": True},
        },
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "FAIL"},
    }
    if client_optimizer:
        del ds["optimizer"]
    return _merge(ds, cfg.deepspeed)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_engine(model: nn.Module, cfg: TrainConfig, ctx: RunContext | None = None):
    """A DeepSpeed engine for ``model`` under ``cfg`` (call :func:`setup_run` first, or pass its
    context). The engine carries ``engine.run_context`` for the loop."""
    ctx = ctx or setup_run(cfg)
    deepspeed = _import_deepspeed(ctx.device)
    if cfg.activation_checkpointing:
        if not hasattr(model, "gradient_checkpointing"):
            raise ValueError(f"{type(model).__name__} has no gradient_checkpointing switch")
        model.gradient_checkpointing = True
    if hasattr(model, "loss_chunk"):  # the LM loss's chunking (a reward model's scalar head has none)
        model.loss_chunk = cfg.loss_chunk
    model.to(ctx.device)
    schedule = CosineSchedule(cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
    optimizer = build_optimizer(model, cfg, ctx.device)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=param_groups(model, cfg.weight_decay), optimizer=optimizer,
        config=deepspeed_config(cfg, ctx.precision, sum(p.numel() for p in model.parameters()),
                                client_optimizer=optimizer is not None),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
    if compile_enabled(cfg, ctx.device):
        engine.compile()
    engine.run_context = ctx
    return engine


@contextlib.contextmanager
def gathered_module(engine):
    """The engine's module with full parameters (ZeRO-3 gathers them for the block), e.g. to
    export it; other stages yield the module as is."""
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            yield engine.module
    else:
        yield engine.module


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

CLIENT_KEY = "llama2_pipeline"  # our entry in DeepSpeed's client_state
META_FILE = "meta.json"  # written last into a staged tag: a tag folder with it is complete


def model_config_of(module: nn.Module) -> dict[str, Any] | None:
    config = getattr(module, "config", None)
    if config is None:
        return None
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return None


class Checkpointer:
    """Atomic, rotating DeepSpeed checkpoints in ``folder`` (``run_dir/checkpoints``).

    Layout: ``step_00000010/`` (DeepSpeed's files + ``trainer_state_rank00000.json`` per rank, the
    data position and RNG states as JSON, + ``meta.json``) and ``latest`` (the newest complete tag). A save is staged in ``.staging/``
    and renamed into place only when every rank has written its files; ``latest`` is replaced
    atomically after that. A crash mid-save therefore leaves ``latest`` on the previous tag and
    no complete-looking tag behind. For multi-node runs ``folder`` must be on a shared filesystem.
    """

    def __init__(self, folder: str | os.PathLike, keep: int = 2):
        self.folder = Path(folder)
        self.keep = keep
        self.staging = self.folder / ".staging"

    @staticmethod
    def tag(step: int) -> str:
        return f"step_{step:08d}"

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, or None when there is none."""
        pointer = self.folder / "latest"
        if not pointer.is_file():
            return None
        tag_dir = self.folder / pointer.read_text().strip()
        if not (tag_dir / META_FILE).is_file():
            raise FileNotFoundError(f"{pointer} names {tag_dir.name}, which is missing or incomplete "
                                    f"(no {META_FILE}); remove {pointer} to start afresh")
        return tag_dir

    def save(self, engine, step: int, rank_state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Save on every rank (collective). ``rank_state``: this rank's data position and RNG;
        ``meta``: JSON-able facts (model config, train config), also put in DeepSpeed's client_state."""
        ctx = engine.run_context
        tag = self.tag(step)
        staged = self.staging / tag
        if ctx.is_main:
            shutil.rmtree(staged, ignore_errors=True)
            self.staging.mkdir(parents=True, exist_ok=True)
        barrier()
        meta = {**meta, "step": step, "tag": tag, "ranks": ctx.world_size,
                "zero_stage": engine.zero_optimization_stage(), "saved_at": time.time()}
        engine.save_checkpoint(str(self.staging), tag=tag, client_state={CLIENT_KEY: meta},
                               save_latest=False)
        write_json(staged / f"trainer_state_rank{ctx.rank:05d}.json", rank_state_to_json(rank_state))
        barrier()
        final = self.folder / tag
        if ctx.is_main:
            write_json(staged / META_FILE, meta)
            if final.exists():  # re-saving a step (e.g. the final step of a finished run)
                trash = self.staging / f"{tag}.old"
                shutil.rmtree(trash, ignore_errors=True)
                os.replace(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(staged, final)
            with atomic_path(self.folder / "latest") as tmp:
                tmp.write_text(tag)
            self._prune(keep_tag=tag)
        barrier()
        return final

    def _prune(self, keep_tag: str) -> None:
        tags = sorted(p.name for p in self.folder.glob("step_*") if p.is_dir())
        for name in tags[:-self.keep] if self.keep else tags:
            if name != keep_tag:
                shutil.rmtree(self.folder / name, ignore_errors=True)
        shutil.rmtree(self.staging, ignore_errors=True)

    def load(self, engine, tag_dir: Path, model_config: dict | None) -> tuple[int, dict[str, Any]]:
        """Resume ``engine`` from ``tag_dir``: checks the model config (and the rank layout under
        ZeRO) first, then loads model, optimiser and scheduler; returns (step, this rank's state)."""
        ctx = engine.run_context
        meta = json.loads((tag_dir / META_FILE).read_text())
        check_model_config(tag_dir, meta.get("model_config"), model_config)
        if meta.get("zero_stage", 0) != engine.zero_optimization_stage():
            raise CheckpointMismatchError(
                f"checkpoint {tag_dir} was saved under ZeRO stage {meta.get('zero_stage')}, this run uses "
                f"stage {engine.zero_optimization_stage()}; resume with the same zero_stage")
        if meta.get("zero_stage", 0) > 0 and meta.get("ranks") != ctx.world_size:
            raise CheckpointMismatchError(
                f"checkpoint {tag_dir} holds ZeRO-{meta['zero_stage']} shards of {meta.get('ranks')} ranks, "
                f"this run has {ctx.world_size}; resume with the same number of ranks")
        with safe_checkpoint_loading(engine):
            path, _ = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name,
                                             load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {tag_dir}")
        rank_file = tag_dir / f"trainer_state_rank{ctx.rank:05d}.json"
        legacy = rank_file.with_suffix(".pt")
        if not rank_file.is_file() and legacy.is_file():  # written by an earlier version
            return int(meta["step"]), load_legacy_rank_state(legacy)
        if not rank_file.is_file():
            raise CheckpointMismatchError(f"checkpoint {tag_dir} has no {rank_file.name} (saved by "
                                          f"{meta.get('ranks')} ranks, this is rank {ctx.rank})")
        return int(meta["step"]), rank_state_from_json(json.loads(rank_file.read_text()))


def check_model_config(source: Path, saved: dict | None, current: dict | None) -> None:
    """Raise :class:`CheckpointMismatchError` naming ``source`` and every differing field."""
    if saved is None or current is None:
        return
    diffs = [f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} in this run"
             for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointMismatchError(
            f"checkpoint {source} was saved from a different model: " + "; ".join(diffs)
            + ". Use another run folder, or the model config the checkpoint was trained with.")
