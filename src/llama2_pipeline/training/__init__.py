"""Training shared by every stage: one DeepSpeed engine, one resumable loop, one metrics path.

* :class:`TrainConfig` (``config.py``): every hyper-parameter of a run, validated.
* :func:`setup_run`, :func:`build_engine`, :class:`Checkpointer` (``engine.py``): device and
  torch.distributed, the DeepSpeed engine (ZeRO 0-3, AdamW with decay on matrices only, warm-up
  + cosine to 10 %), atomic rotating checkpoints with data position and RNG states.
* :func:`train` (``loop.py``): the loop SFT and reward models reuse with their own ``loss_fn``.
* :func:`launch` (``launcher.py``): torchrun / DeepSpeed-launcher subprocess for multi-rank runs.
* ``pretrain.py``: causal-LM pretraining on token shards (also a CLI); import the function as
  ``from llama2_pipeline.training.pretrain import pretrain`` (the package attribute ``pretrain``
  is the submodule once anything has imported it, so the package does not re-export the function).

Nothing here imports Kedro or MLflow; metrics reach a tracker through ``log_fn(metrics, step)``
and ``run_dir/metrics.jsonl``. DeepSpeed is imported on first use.
"""

import importlib

from .config import TrainConfig
from .engine import (CheckpointMismatchError, Checkpointer, CosineSchedule, RunContext, build_engine,
                     decay_parameter_names, deepspeed_config, full_state_dict, param_groups, setup_run)
from .launcher import LaunchError, launch, launch_command
from .loop import NonFiniteLossError, ResumableBatches, TrainResult, read_metrics, train

_PRETRAIN = ("RandomWindows", "lm_loss")


def __getattr__(name: str):
    # imported on demand, so ``python -m llama2_pipeline.training.pretrain`` runs a fresh module
    if name in _PRETRAIN:
        module = importlib.import_module(f"{__name__}.pretrain")
        for attr in _PRETRAIN:
            globals()[attr] = getattr(module, attr)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "CheckpointMismatchError",
    "Checkpointer",
    "CosineSchedule",
    "LaunchError",
    "NonFiniteLossError",
    "RandomWindows",
    "ResumableBatches",
    "RunContext",
    "TrainConfig",
    "TrainResult",
    "build_engine",
    "decay_parameter_names",
    "deepspeed_config",
    "full_state_dict",
    "launch",
    "launch_command",
    "lm_loss",
    "param_groups",
    "read_metrics",
    "setup_run",
    "train",
]
