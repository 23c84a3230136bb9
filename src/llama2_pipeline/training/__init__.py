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
and ``run_dir/metrics.jsonl``. Every name (torch, DeepSpeed) is imported on first use.
"""

from llama2_pipeline.lazy import lazy_exports

# name -> submodule; imported on first use, so that importing the package (Kedro imports every
# pipeline's nodes to register them, also for stages that never train) does not import torch
_LAZY = {
    "TrainConfig": "config",
    **dict.fromkeys(("CheckpointMismatchError", "Checkpointer", "CosineSchedule", "RunContext", "build_engine",
                     "decay_parameter_names", "deepspeed_config", "full_state_dict", "param_groups", "setup_run"),
                    "engine"),
    **dict.fromkeys(("LaunchError", "launch", "launch_command"), "launcher"),
    **dict.fromkeys(("NonFiniteLossError", "ResumableBatches", "TrainResult", "read_metrics", "train"), "loop"),
    # ``python -m llama2_pipeline.training.pretrain`` must run a fresh module: never imported eagerly
    **dict.fromkeys(("RandomWindows", "lm_loss"), "pretrain"),
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


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
