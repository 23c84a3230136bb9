"""Nodes of ``sft``: fine-tune with :func:`llama2_pipeline.training.sft.finetune`, then answer the
held-out prompts with the pretrained and the SFT model (same prompts, same sampling) and judge both."""

from __future__ import annotations

from pathlib import Path

from llama2_pipeline.datasets import staging_dir
from llama2_pipeline.io_utils import sha256_path
from llama2_pipeline.tracking import mlflow_log_fn

#: keys of the ``sft`` params group that are not :class:`~llama2_pipeline.training.sft.SFTConfig` fields
_SUBGROUPS = ("train", "eval")
#: the evaluation metrics compared between the two models (``sft_<name>_gain`` = sft - pretrained)
GAINS = ("helpfulness", "safety", "format_compliance")


def split_params(sft: dict, seed: int) -> tuple[dict, dict, dict]:
    """(TrainConfig dict with the global seed, SFTConfig dict, sampling dict) of the ``sft`` group,
    each validated (a bad key raises a ValueError naming it) before any work starts."""
    from llama2_pipeline.evaluation import SamplingConfig
    from llama2_pipeline.training.config import TrainConfig
    from llama2_pipeline.training.sft import SFTConfig

    train = {**(sft.get("train") or {}), "seed": seed}
    options = {k: v for k, v in sft.items() if k not in _SUBGROUPS}
    sampling = {**(sft.get("eval") or {}), "seed": seed}
    try:
        TrainConfig.from_dict(train)
        SFTConfig.from_dict(options)
        SamplingConfig.from_dict(sampling)
    except (TypeError, ValueError) as e:
        raise ValueError(f"params 'sft' are not valid: {e}") from e
    return train, options, sampling


def finetune_model(dialogues: list[dict], pretrained_model: Path, workspace: Path, sft: dict, seed: int,
                   prefix: str = "sft"):
    """Fine-tune the pretrained model; returns the HF-format SFT model (staged), the training
    metrics (``<prefix>_*``) and the loss curve. The RLHF rounds' rejection sampling reuses it
    with ``prefix="rs"`` (the round's policy instead of the pretrained model).

    The run folder inside ``workspace`` is keyed by the params and the digests of the dialogues
    and of the starting model, so only a rerun of the same configuration resumes its checkpoints.
    """
    from llama2_pipeline.pipelines.pretrain.nodes import run_folder
    from llama2_pipeline.tokenizer import Tokenizer
    from llama2_pipeline.training.sft import encode_examples, examples_digest, finetune

    train, options, _ = split_params(sft, seed)
    tokenizer = Tokenizer(Path(pretrained_model) / "tokenizer.model")
    # encode (and so validate) every dialogue before the workspace is touched
    examples = encode_examples(tokenizer, dialogues, only_last_answer=options.get("only_last_answer", False))
    identity = {"train": train, "sft": options, "examples": examples_digest(examples),
                "init": sha256_path(pretrained_model)}
    run_dir = run_folder(workspace, identity)
    hf_dir = staging_dir(prefix) / "model"
    metrics = finetune(pretrained_model, tokenizer, examples, train, run_dir, sft=options, hf_dir=hf_dir,
                       log_fn=mlflow_log_fn(f"{prefix}/"), prefix=prefix)
    return hf_dir, metrics, run_dir / "loss_curve.png"


def evaluate_sft(pretrained_model: Path, sft_model: Path, prompts: list[dict], training: dict, world: dict,
                 sft: dict, seed: int) -> tuple[dict, list[dict]]:
    """Answer ``prompts`` with both models (the ``sft.eval`` sampling settings, seeded), judge the
    answers with the world; returns the flat ``metrics/sft.json`` (``pretrained_*``, ``sft_*``,
    ``sft_*_gain`` and the training metrics) and one sample row per prompt with both answers."""
    from llama2_pipeline.evaluation import SamplingConfig, evaluate_model
    from llama2_pipeline.model import default_device, load_hf
    from llama2_pipeline.tokenizer import Tokenizer
    from llama2_pipeline.world import World

    _, _, sampling = split_params(sft, seed)
    sampling = SamplingConfig.from_dict(sampling)
    judge_world = World.from_params({**world, "seed": seed})
    metrics: dict[str, float] = {}
    samples = [{"id": p.get("id", i), "prompt": p["prompt"], "category": p["category"]}
               for i, p in enumerate(prompts)]
    for name, folder in (("pretrained", pretrained_model), ("sft", sft_model)):
        model = load_hf(folder, device=default_device())
        tokenizer = Tokenizer(Path(folder) / "tokenizer.model")
        m, rows = evaluate_model(model, tokenizer, judge_world, prompts, sampling, name)
        metrics.update(m)
        for sample, row in zip(samples, rows):
            sample.update({f"{name}_{k}": row[k] for k in
                           ("answer", "helpfulness", "safety", "refusal", "violation", "format_ok")})
    for key in GAINS:
        metrics[f"sft_{key}_gain"] = round(metrics[f"sft_{key}"] - metrics[f"pretrained_{key}"], 6)
    metrics.update(training)
    metrics["sft_eval_prompts"] = len(prompts)
    return metrics, samples
