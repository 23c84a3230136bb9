"""Nodes of ``pretrain``: a thin wrapper over :func:`llama2_pipeline.training.pretrain.pretrain`."""

from __future__ import annotations

from pathlib import Path

from llama2_pipeline.core.files import sha256_path
from llama2_pipeline.project.datasets import run_folder, staging_dir
from llama2_pipeline.project.tracking import mlflow_log_fn
from llama2_pipeline.recipe import PretrainStage
from llama2_pipeline.tokenizer import save_hf_tokenizer


def pretrain_model(token_shards: Path, tokenizer_dir: Path, workspace: Path, pretrain: PretrainStage):
    """Pretrain; returns the HF-format model folder (staged), the flat metrics and the loss curve."""
    from llama2_pipeline.training.pretrain import pretrain as run_pretrain

    model = {"preset": pretrain.model.preset, **pretrain.model.overrides()}
    identity = {"model": model, "train": pretrain.train.to_dict(),
                "shards": sha256_path(Path(token_shards) / "index.json")}
    run_dir = run_folder(workspace, identity, keep=pretrain.train.keep_runs)
    hf_dir = staging_dir("pretrained") / "model"
    metrics = run_pretrain(token_shards, model, pretrain.train, run_dir,
                           tokenizer_model=Path(tokenizer_dir) / "tokenizer.model",
                           log_fn=mlflow_log_fn("pretrain/"), hf_dir=hf_dir)
    save_hf_tokenizer(tokenizer_dir, hf_dir)
    return hf_dir, metrics, run_dir / "loss_curve.png"
