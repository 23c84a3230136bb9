"""Training hyper-parameters: the :class:`TrainConfig` dataclass shared by every training stage.

Pretraining, SFT and the reward models all run through the same engine and loop
(:mod:`llama2_pipeline.training.loop`), so they share this one config; a stage only picks
other values (SFT: ``lr=2e-5`` and a step count derived from its epochs). Defaults are the
paper's optimiser (AdamW 0.9/0.95, eps 1e-5, wd 0.1, cosine to 10 %, clip 1.0) with a small
CPU-friendly batch.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from ..hints import value_matches

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LAUNCHERS = ("torchrun", "deepspeed")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """Every knob of a training run. All fields are plain JSON data (``to_dict``/``from_dict``)."""

    # -- batch and length -------------------------------------------------------------------
    micro_batch: int = 8  # sequences per rank per forward/backward pass
    grad_accum: int = 1  # micro-batches accumulated per optimiser step (per rank)
    seq_len: int = 128  # tokens per training sequence (model inputs; targets are shifted by one)
    max_steps: int = 1000  # optimiser steps of the whole run (SFT: epochs * steps_per_epoch)

    # -- optimiser and schedule (Llama 2: AdamW, cosine to 10 %, clip 1.0) -----------------
    lr: float = 3e-4  # peak learning rate, reached at the end of warm-up
    min_lr_ratio: float = 0.1  # the cosine decays to min_lr_ratio * lr at max_steps
    warmup_steps: int = 100  # linear warm-up steps from lr/warmup_steps to lr (paper: 2000)
    weight_decay: float = 0.1  # AdamW decoupled weight decay on matrices (not norms / 1-D params)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW beta1, beta2
    eps: float = 1e-5  # AdamW epsilon
    grad_clip: float = 1.0  # clip the global gradient L2 norm to this (0 = no clipping)

    # -- evaluation, checkpoints, logging ---------------------------------------------------
    eval_every: int = 100  # run the eval function every N steps (0 = only at the end)
    eval_batches: int = 8  # micro-batches per evaluation (0 = the whole validation split)
    checkpoint_every: int = 100  # save a resumable checkpoint every N steps (0 = only at the
    #                              end, -1 = never: throw-away runs and benchmarks)
    keep_checkpoints: int = 2  # how many of the newest checkpoints to keep on disk (>= 1)
    log_every: int = 10  # log loss, lr, grad norm, tokens/s, MFU every N steps
    seed: int = 1234  # seeds python, numpy, torch and the data sampler

    # -- precision and device ---------------------------------------------------------------
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; auto = bf16 on CUDA, fp32 on CPU
    #                          (bf16/fp16 on CPU raise a ValueError: DeepSpeed's mixed-precision
    #                          optimisers are GPU-only here)
    device: str = "auto"  # auto | cpu | cuda; auto = cuda when available
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3 (1: optimiser states, 2: + grads, 3: + params)
    compile: bool = False  # torch.compile the model (engine.compile())
    activation_checkpointing: bool = False  # recompute each transformer block in backward
    deterministic: bool = True  # torch.use_deterministic_algorithms (always on for CPU runs)
    num_threads: int = 0  # torch intra-op threads per rank (0 = torch's default)
    peak_flops: float | None = None  # per-device peak FLOP/s for MFU; None = 989e12 on CUDA
    #                                  (H100 dense bf16), no MFU on CPU

    # -- processes --------------------------------------------------------------------------
    world_size: int = 1  # ranks (processes) on each node; > 1 launches a subprocess per rank
    num_nodes: int = 1  # nodes; > 1 needs launcher=deepspeed + hostfile, or torchrun run
    #                     per node with NODE_RANK and MASTER_ADDR set by the scheduler
    hostfile: str | None = None  # DeepSpeed hostfile ("host slots=N" lines) for multi-node
    launcher: str = "torchrun"  # torchrun | deepspeed: how world_size/num_nodes > 1 is launched
    master_port: int = 0  # rendezvous port for multi-process runs (0 = pick a free one)
    deepspeed: dict = field(default_factory=dict)  # extra DeepSpeed config, merged over ours
    #                                                (e.g. {"zero_optimization": {"offload_optimizer": ...}})

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        positive = ("micro_batch", "grad_accum", "seq_len", "max_steps", "keep_checkpoints",
                    "log_every", "world_size", "num_nodes")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "eval_every", "eval_batches", "num_threads", "master_port", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.checkpoint_every < -1:
            raise ValueError(f"TrainConfig.checkpoint_every must be >= -1, got {self.checkpoint_every!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.weight_decay < 0 or self.grad_clip < 0 or not self.eps > 0:
            raise ValueError("TrainConfig.weight_decay and grad_clip must be >= 0 and eps > 0, got "
                             f"{self.weight_decay!r}, {self.grad_clip!r}, {self.eps!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"TrainConfig.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        for name, allowed in (("precision", PRECISIONS), ("launcher", LAUNCHERS), ("device", DEVICES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise ValueError(f"TrainConfig.peak_flops must be > 0 or null, got {self.peak_flops!r}")
        if self.num_nodes > 1 and self.launcher == "deepspeed" and not self.hostfile:
            raise ValueError("TrainConfig.hostfile is required with launcher 'deepspeed' and num_nodes > 1")

    # -- derived ----------------------------------------------------------------------------

    @property
    def total_ranks(self) -> int:
        """Data-parallel ranks over all nodes."""
        return self.world_size * self.num_nodes

    @property
    def global_batch(self) -> int:
        """Sequences per optimiser step: micro_batch * grad_accum * world_size * num_nodes."""
        return self.micro_batch * self.grad_accum * self.total_ranks

    @property
    def global_batch_tokens(self) -> int:
        """Tokens per optimiser step: global_batch * seq_len."""
        return self.global_batch * self.seq_len

    @property
    def multi_process(self) -> bool:
        """True when the run needs a launcher (more than one rank)."""
        return self.total_ranks > 1

    # -- serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TrainConfig:
        """Build from plain data; unknown keys or values of the wrong type raise a ValueError
        naming the key (ints are accepted for float fields; bools are not ints)."""
        d = dict(d or {})
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; expected some of {sorted(fields)}")
        for key, value in d.items():
            if not value_matches(value, hints[key]):
                raise ValueError(f"TrainConfig.{key} must be {_type_name(hints[key])}, "
                                 f"got {type(value).__name__} {value!r}")
        return cls(**d)


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if args and origin is not tuple and origin is not dict:
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        return f"a list of {len(args)} {_type_name(args[0])}s"
    if hint is type(None):
        return "null"
    return {bool: "a bool", int: "an int", float: "a number", str: "a string"}.get(hint, str(hint))
