"""Nodes and helpers more than one pipeline uses: fine-tuning (SFT, rejection sampling, GAtt), the
reward models (the ``reward`` stage and every RLHF round), preference merging and splitting, and the
run folders that keep a training stage's checkpoints between runs of the same configuration (the
last ``train.keep_runs`` configurations' folders stay).

Each node reads its inputs and typed parameters and calls one library function.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llama2_pipeline.core.files import sha256_path
from llama2_pipeline.project.datasets import run_folder, staging_dir
from llama2_pipeline.project.tracking import mlflow_log_fn
from llama2_pipeline.recipe import WorldParams
from llama2_pipeline.training.config import RewardConfig, SFTConfig
from llama2_pipeline.training.preferences import merge_preferences, split_preferences  # noqa: F401 (nodes)


def finetune_model(dialogues: list[dict], init: Path, workspace: Path, sft: SFTConfig, prefix: str = "sft"):
    """Fine-tune ``init`` on ``dialogues`` (SFT; rejection sampling with ``prefix="rs"``, GAtt with
    ``"gatt"``); returns the HF-format model (staged), the training metrics (``<prefix>_*``) and the
    loss curve. The run folder is keyed by the params and the digests of the dialogues and of the
    starting model, so only a rerun of the same configuration resumes its checkpoints."""
    from llama2_pipeline.tokenizer import Tokenizer
    from llama2_pipeline.training.packing import encode_examples, examples_digest
    from llama2_pipeline.training.sft import finetune

    tokenizer = Tokenizer(Path(init) / "tokenizer.model")
    # encode (and so validate) every dialogue before the workspace is touched
    examples = encode_examples(tokenizer, dialogues, only_last_answer=sft.only_last_answer)
    options = {k: v for k, v in sft.to_dict().items() if k not in ("train", "eval")}
    identity = {"train": sft.train.to_dict(), "sft": options, "examples": examples_digest(examples),
                "init": sha256_path(init)}
    run_dir = run_folder(workspace, identity, keep=sft.train.keep_runs)
    hf_dir = staging_dir(prefix) / "model"
    metrics = finetune(init, tokenizer, examples, sft, run_dir, hf_dir=hf_dir, log_fn=mlflow_log_fn(f"{prefix}/"),
                       prefix=prefix)
    return hf_dir, metrics, run_dir / "loss_curve.png"


def train_reward_models(train_prefs: list[dict], init_model_dir: Path | dict[str, Path], reward: RewardConfig,
                        workspace: Path, heldout: list[dict] | None = None) -> tuple[Path, Path, dict]:
    """Both RMs from ``init_model_dir`` (the SFT model, or ``{"helpfulness": ..., "safety": ...}``
    to continue earlier RMs); returns the staged helpfulness and safety model folders and the
    training metrics (``rm_<name>_train_loss``, ...)."""
    from llama2_pipeline.training.reward import train_reward_models as train

    init = ({name: sha256_path(folder) for name, folder in init_model_dir.items()}
            if isinstance(init_model_dir, dict) else sha256_path(init_model_dir))
    identity = {"params": {k: v for k, v in reward.to_dict().items() if k != "eval"}, "init": init,
                "prefs": hashlib.sha256(json.dumps(train_prefs, sort_keys=True).encode()).hexdigest()}
    out = {name: staging_dir(f"reward_{name}") / "model" for name in ("helpfulness", "safety")}
    run_dir = run_folder(Path(workspace), identity, keep=reward.train.keep_runs)
    metrics = train(train_prefs, init_model_dir, reward, run_dir, out, heldout=heldout,
                    log_fn=lambda name: mlflow_log_fn(f"reward/{name}/"))
    return out["helpfulness"], out["safety"], metrics


def evaluate_reward_models(helpfulness_dir: Path, safety_dir: Path, heldout: list[dict], reward: RewardConfig,
                           world: WorldParams, seed: int, train_metrics: dict, init_model_dir: Path,
                           new_prefs: list[dict] | None = None):
    """Held-out accuracy of both RMs (:func:`~llama2_pipeline.training.reward_eval.evaluate_reward_models`;
    ``new_prefs``: an RLHF round's new pairs, for the accuracy on them and on the earlier ones);
    returns (flat metrics with the training metrics, the per-rating table, the score histograms and
    the calibration plot)."""
    from llama2_pipeline.evaluation.plots import plot_calibration, plot_score_histograms
    from llama2_pipeline.training.reward_eval import evaluate_reward_models as evaluate
    from llama2_pipeline.model import default_device
    from llama2_pipeline.training.preferences import torch_threads

    with torch_threads(reward.num_threads):
        metrics, table, scores, curves = evaluate(
            helpfulness_dir, safety_dir, heldout, batch_size=reward.eval.batch_size,
            calibration_bins=reward.eval.calibration_bins, margin=reward.margin, world=world.world(seed),
            init_model_dir=init_model_dir, device=default_device(), new=new_prefs)
    metrics = {**{k: round(float(v), 6) for k, v in train_metrics.items() if v is not None}, **metrics}
    rate = metrics.get("reward_disagreement_rate")
    suffix = f" (annotator disagreement {rate:.0%})" if rate is not None else ""
    return (metrics, table, plot_score_histograms(scores, title=f"reward scores, chosen vs rejected{suffix}"),
            plot_calibration(curves, title=f"reward model calibration, held-out pairs{suffix}"))
