"""Training shared by every stage: one DeepSpeed engine, one resumable loop, one stage runner.

* :class:`TrainConfig` (``config.py``): every hyper-parameter of a run, validated.
* :func:`setup_run`, :func:`build_engine`, :class:`Checkpointer` (``engine.py``): device and
  torch.distributed, the DeepSpeed engine (ZeRO 0-3, AdamW with decay on matrices only, warm-up
  + cosine to 10 %), atomic rotating checkpoints with data position and RNG states.
* :func:`train` (``loop.py``): the resumable loop, with a stage's own ``loss_fn``.
* :func:`run_stage` (``runner.py``): what every training stage does around its model, batches and
  loss: relaunch on several ranks or run in place, engine, loop, export, metrics, result file;
  :func:`launch` (``launcher.py``) is its torchrun / DeepSpeed-launcher subprocess.
* the stages, each a small :class:`~.runner.Stage` and one function: ``pretrain.py`` (causal LM on
  token shards), ``sft.py`` (:func:`finetune`: answer-only loss on packed dialogues; SFT, rejection
  sampling and GAtt), ``reward.py`` (the reward models' margin loss); then ``preferences.py``
  (collecting and splitting pairs), ``ppo.py`` (PPO's maths and trainer), ``rlhf.py`` (a round),
  ``gatt.py`` (Ghost Attention). Import a stage's function from its module
  (``from llama2_pipeline.training.pretrain import pretrain``): the package attribute is the module.

Nothing here imports Kedro or MLflow; metrics reach a tracker through ``log_fn(metrics, step)``
and ``run_dir/metrics.jsonl``. Every name (torch, DeepSpeed) is imported on first use.
"""

from llama2_pipeline.core.lazy import lazy_exports

# name -> submodule; imported on first use, so that importing the package (Kedro imports every
# pipeline's nodes to register them, also for stages that never train) does not import torch
_LAZY = {
    "TrainConfig": "config",
    **dict.fromkeys(("CheckpointMismatchError", "Checkpointer", "CosineSchedule", "RunContext", "build_engine",
                     "decay_parameter_names", "deepspeed_config", "param_groups", "setup_run"),
                    "engine"),
    **dict.fromkeys(("Parts", "run_stage", "weights_digest"), "runner"),
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
    "Parts",
    "RandomWindows",
    "ResumableBatches",
    "RunContext",
    "TrainConfig",
    "TrainResult",
    "build_engine",
    "decay_parameter_names",
    "deepspeed_config",
    "launch",
    "launch_command",
    "lm_loss",
    "param_groups",
    "read_metrics",
    "run_stage",
    "setup_run",
    "train",
    "weights_digest",
]
