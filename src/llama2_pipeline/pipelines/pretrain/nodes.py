"""Nodes of ``pretrain``: a thin wrapper over :func:`llama2_pipeline.training.pretrain.pretrain`."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from llama2_pipeline.datasets import staging_dir
from llama2_pipeline.io_utils import sha256_path
from llama2_pipeline.tokenizer import save_hf_tokenizer
from llama2_pipeline.tracking import mlflow_log_fn


def run_folder(workspace: Path, config: dict) -> Path:
    """The run folder for this exact configuration inside the stage's workspace.

    Checkpoints are resumed only by a rerun of the same configuration (same params, same input
    digests): a changed parameter starts afresh instead of resuming a stale run. Folders of other
    configurations are removed.
    """
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    for old in workspace.iterdir():
        if old.is_dir() and old.name != key:
            shutil.rmtree(old, ignore_errors=True)
    return workspace / key


def pretrain_model(token_shards: Path, tokenizer_dir: Path, workspace: Path, pretrain: dict, seed: int):
    """Pretrain; returns the HF-format model folder (staged), the flat metrics and the loss curve."""
    from llama2_pipeline.training.pretrain import pretrain as run_pretrain

    train_cfg = {**pretrain["train"], "seed": seed}
    model_cfg = dict(pretrain["model"])
    identity = {"model": model_cfg, "train": train_cfg, "shards": sha256_path(Path(token_shards) / "index.json")}
    run_dir = run_folder(workspace, identity)
    hf_dir = staging_dir("pretrained") / "model"
    metrics = run_pretrain(token_shards, model_cfg, train_cfg, run_dir,
                           tokenizer_model=Path(tokenizer_dir) / "tokenizer.model",
                           log_fn=mlflow_log_fn("pretrain/"), hf_dir=hf_dir)
    save_hf_tokenizer(tokenizer_dir, hf_dir)
    return hf_dir, metrics, run_dir / "loss_curve.png"
