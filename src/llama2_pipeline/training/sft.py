"""Supervised fine-tuning (SFT): a pretrained Llama on chat dialogues, loss on answer tokens only.

``finetune(init, tokenizer, dialogues, config, run_dir)`` is the one SFT routine of the recipe:
the SFT stage calls it on the writers' dialogues, rejection sampling and GAtt call it later on
their own. The dialogues become packed rows (:mod:`.packing`: encode with the chat template,
hold out a seeded validation share, pack with block-diagonal attention); :class:`SFTStage` runs
them through the shared stage runner (:func:`~.runner.run_stage`), so checkpoints, exact resume,
metrics and multi-rank launch are those of pretraining. ``epochs`` sets
``max_steps = ceil(epochs * rows / global_batch)``.

:class:`~.config.SFTConfig` (the packing options and the :class:`~.config.TrainConfig`) is the ``sft``
params group and, as is, ``rlhf.rejection_sampling`` and ``gatt.finetune``.

Knows nothing of Kedro or MLflow.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..model import Llama, export_hf, load_hf
from ..model.hf import config_from_hf
from ..model.loss import chunked_cross_entropy
from ..tokenizer import save_hf_tokenizer
from .config import SFTConfig, TrainConfig
from .engine import META_FILE, Checkpointer, CheckpointMismatchError, RunContext
from .packing import (
    IGNORE,
    PackedBatches,
    PackedRows,
    encode_examples,
    examples_digest,
    load_examples,
    pack_examples,
    save_examples,
    split_examples,
)
from .runner import Parts, run_stage

log = logging.getLogger(__name__)

EXAMPLES_FILE = "examples.npz"


# --------------------------------------------------------------------------------------------
# Loss and evaluation
# --------------------------------------------------------------------------------------------


def answer_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over the answer targets of the micro-batch (prompts and
    padding carry ``IGNORE``), and how many targets that is (a tensor: no host sync).

    The output head runs on the answer positions only (a third of the tokens in the world's
    dialogues): the same loss as full logits, at a fraction of the head's cost.
    """
    labels = batch["labels"]
    keep = labels != IGNORE
    hidden = model(batch["input_ids"], doc_ids=batch.get("doc_ids"), return_hidden=True)
    # through a DeepSpeed engine: its module's head (ZeRO-3 gathers it through the submodule's
    # own forward hooks; tested here under ZeRO 0 and 2 only; the chunked loss is refused with ZeRO-3)
    module = getattr(model, "module", model)
    n = keep.sum()
    if getattr(module, "loss_chunk", 0):  # TrainConfig.loss_chunk: head + loss a chunk of tokens at a time
        total = chunked_cross_entropy(hidden[keep], module.output.weight, labels[keep], module.loss_chunk, "sum")
        return total / n.clamp(min=1), n
    logits = module.output(hidden[keep])
    total = F.cross_entropy(logits.float(), labels[keep], reduction="sum")
    return total / n.clamp(min=1), n


def evaluate_rows(model, rows: PackedRows, micro_batch: int, ctx: RunContext,
                  max_rows: int = 0) -> dict[str, float]:
    """Answer-token-mean loss (``val_loss``) and perplexity over the first ``max_rows`` rows (0 =
    all); ranks split the rows round-robin with equal forward counts and sum."""
    idx = np.arange(len(rows) if max_rows <= 0 else min(max_rows, len(rows)))
    mine = idx[ctx.rank::ctx.world_size]
    per_rank = -(-len(idx) // ctx.world_size)
    totals = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    for b in range(-(-per_rank // micro_batch)):
        sel, weight = mine[b * micro_batch:(b + 1) * micro_batch], 1.0
        if len(sel) == 0:  # keep forward counts equal across ranks (ZeRO-3); contributes nothing
            sel, weight = idx[:1], 0.0
        batch = {k: v.to(ctx.device) for k, v in rows.batch(sel).items()}
        loss, n = answer_loss(model, batch)
        totals[0] += loss.double() * n * weight
        totals[1] += n * weight
    if ctx.world_size > 1:
        torch.distributed.all_reduce(totals)
    loss = float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}


# --------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------


def _model_config(init):
    if isinstance(init, Llama):
        return init.config
    path = Path(init)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json (the starting model must be a Hugging Face folder)")
    return config_from_hf(json.loads((path / "config.json").read_text()), str(path / "config.json"))


def _tokenizer_file(init, tokenizer, tokenizer_model) -> Path | None:
    for candidate in (tokenizer_model, getattr(tokenizer, "path", None),
                      None if isinstance(init, Llama) else Path(init) / "tokenizer.model"):
        if candidate is not None:
            p = Path(candidate)
            p = p / "tokenizer.model" if p.is_dir() else p
            if p.is_file():
                return p
    return None


def plan_steps(n_rows: int, cfg: TrainConfig, epochs: float | None) -> int:
    """Optimiser steps of ``epochs`` passes over ``n_rows`` rows (``cfg.max_steps`` if None)."""
    if epochs is None:
        return cfg.max_steps
    return max(1, math.ceil(epochs * n_rows / cfg.global_batch))


def prepare_rows(examples, cfg: SFTConfig, pad_id: int) -> tuple[PackedRows, PackedRows | None]:
    """Split ``examples`` (seeded) and pack the train and validation parts."""
    train_idx, val_idx = split_examples(len(examples), cfg.val_fraction, cfg.train.seed)
    kw = dict(pack=cfg.pack, overlong=cfg.overlong, pad_id=pad_id, seed=cfg.train.seed, shuffle=cfg.shuffle)
    train_rows = pack_examples([examples[i] for i in train_idx], cfg.train.seq_len, **kw)
    val_rows = pack_examples([examples[i] for i in val_idx], cfg.train.seq_len, **kw) if len(val_idx) else None
    return train_rows, (val_rows if val_rows is not None and len(val_rows) else None)


@dataclass
class SFTStage:
    """Fine-tuning as a :class:`~.runner.Stage`: the starting model, the encoded dialogues, the options."""

    init: Path | Llama  # an HF folder, or a model trained in place (one process only)
    examples: list  # encoded (ids, mask) pairs
    config: SFTConfig
    tokenizer_model: Path | None = None
    prefix: str = "sft"
    rows: tuple[PackedRows, PackedRows | None] | None = None  # packed by finetune(); a launched rank packs again

    def to_json(self, run_dir: Path) -> dict[str, Any]:
        if isinstance(self.init, Llama):
            raise ValueError("a multi-rank fine-tuning run needs `init` as a model folder, not a Llama object")
        save_examples(run_dir / EXAMPLES_FILE, self.examples)
        return {"init": str(Path(self.init).resolve()), "examples": str((run_dir / EXAMPLES_FILE).resolve()),
                "config": self.config.to_dict(), "prefix": self.prefix,
                "tokenizer_model": str(self.tokenizer_model) if self.tokenizer_model else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SFTStage:
        return cls(Path(data["init"]), load_examples(data["examples"]), SFTConfig.from_dict(data["config"]),
                   Path(data["tokenizer_model"]) if data.get("tokenizer_model") else None, data["prefix"])

    def model_config(self):
        return _model_config(self.init)

    def packed(self) -> tuple[PackedRows, PackedRows | None]:
        if self.rows is None:
            pad = self.model_config().pad_id
            self.rows = prepare_rows(self.examples, self.config, pad if pad is not None else 0)
        return self.rows

    def parts(self, cfg: TrainConfig, ctx: RunContext) -> Parts:
        train_rows, val_rows = self.packed()
        model = self.init if isinstance(self.init, Llama) else load_hf(self.init)
        stats = train_rows.stats
        if ctx.is_main:
            log.info("fine-tuning on %d dialogues (%d truncated, %d dropped) packed into %d rows of %d tokens "
                     "(%.0f %% filled): %d steps of %d rows", stats["used"], stats["truncated"],
                     stats["dropped_overlong"] + stats["dropped_no_answer"], len(train_rows), cfg.seq_len,
                     100 * stats["packing_efficiency"], cfg.max_steps, cfg.global_batch)
        eval_fn = None
        if val_rows is not None:
            eval_fn = lambda m: evaluate_rows(m, val_rows, cfg.micro_batch, ctx, cfg.eval_batches * cfg.micro_batch)

        def export(module, out: Path) -> None:
            export_hf(module, out, tokenizer_model_path=self.tokenizer_model)
            if self.tokenizer_model is not None:
                save_hf_tokenizer(self.tokenizer_model, out, model_max_length=module.config.max_seq_len)

        def metrics(result, common: dict[str, Any]) -> dict[str, Any]:
            parts = [r for r in (train_rows, val_rows) if r is not None]
            out = {**{k: common[k] for k in ("train_loss", "steps")},
                   "epochs": result.steps * cfg.global_batch / len(train_rows),
                   **{k: common[k] for k in ("tokens", "global_batch_tokens")},
                   "answer_tokens": stats["answer_tokens"], "dialogues": stats["used"],
                   "dialogues_val": val_rows.stats["used"] if val_rows is not None else 0,
                   "truncated": sum(r.stats["truncated"] for r in parts),
                   "dropped": sum(r.stats[k] for r in parts for k in ("dropped_overlong", "dropped_no_answer")),
                   "rows": len(train_rows), "packing_efficiency": stats["packing_efficiency"],
                   **{k: common[k] for k in ("tokens_per_s", "step_time_s", "flops_per_token", "seconds")}}
            if "val_loss" in result.eval:
                out.update(val_loss=common["val_loss"], val_loss_initial=common["val_loss_initial"])
            return {f"{self.prefix}_{k}": v for k, v in out.items()}

        digest = examples_digest(self.examples)
        return Parts(
            model=model,
            data=PackedBatches(train_rows, cfg.micro_batch, grad_accum=cfg.grad_accum, rank=ctx.rank,
                               num_ranks=ctx.world_size, seed=cfg.seed),
            loss_fn=answer_loss, eval_fn=eval_fn, export=export, metrics=metrics,
            checkpoint_meta={"sft_data_sha256": digest, "sft": self.config.to_dict(),
                             "init": None if isinstance(self.init, Llama) else str(self.init)},
            result={"data_sha256": digest, "packing": stats, "model_config": model.config.to_dict(),
                    "sft": self.config.to_dict()},
            plot_title=f"{self.prefix}: answer-token loss, {len(train_rows)} rows x {cfg.seq_len} tokens")


def finetune(
    init: str | os.PathLike | Llama,
    tokenizer,
    dialogues: Sequence[Any],
    config: SFTConfig | dict,
    run_dir: str | os.PathLike,
    *,
    hf_dir: str | os.PathLike | None = None,
    tokenizer_model: str | os.PathLike | None = None,
    log_fn=None,
    progress: bool = True,
    prefix: str = "sft",
) -> dict[str, float]:
    """Fine-tune ``init`` on ``dialogues`` with the loss on answer tokens; return flat metrics.

    Args:
        init: the starting model: a Hugging Face folder (:func:`~llama2_pipeline.model.load_hf`),
            or a :class:`Llama` (trained in place; single process only).
        tokenizer: a :class:`~llama2_pipeline.tokenizer.Tokenizer` (``None`` if every dialogue is
            already encoded).
        dialogues: ``{"messages": [...]}`` records and/or encoded ``(ids, mask)`` pairs (see
            :func:`encode_examples`).
        config: :class:`SFTConfig` or its dict (pack, overlong, epochs, val_fraction,
            only_last_answer, shuffle, and ``train``: the :class:`TrainConfig`, whose ``max_steps``
            ``epochs`` sets unless it is null).
        run_dir: checkpoints, metrics.jsonl, loss_curve.png, result.json; a rerun with the same
            data and config resumes from the newest checkpoint.
        hf_dir: where to export the model (default ``run_dir/hf``), with the tokenizer files of
            ``tokenizer_model`` (a ``tokenizer.model`` or its folder; default: the tokenizer's
            file, else ``init/tokenizer.model``).
        log_fn: ``log_fn(metrics, step)`` for every log/eval record (rank 0).
        prefix: prefix of the returned metric names (``sft_train_loss``, ...).

    Returns ``<prefix>_``: ``train_loss``, ``val_loss``, ``val_loss_initial`` (with a validation
    split), ``steps``, ``epochs``, ``tokens`` (positions trained, padding included),
    ``answer_tokens`` (per epoch), ``dialogues``, ``dialogues_val``, ``truncated``, ``dropped``,
    ``rows``, ``packing_efficiency``, ``tokens_per_s``, ``step_time_s``, ``seconds``.
    """
    cfg = config if isinstance(config, SFTConfig) else SFTConfig.from_dict(config)
    run_dir = Path(run_dir)
    model_config = _model_config(init)
    if cfg.train.seq_len > model_config.max_seq_len:
        raise ValueError(f"TrainConfig.seq_len {cfg.train.seq_len} exceeds the model's max_seq_len "
                         f"{model_config.max_seq_len}")
    if tokenizer is not None and tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                         f"{model_config.vocab_size}: not the tokenizer this model was trained with")
    examples = encode_examples(tokenizer, dialogues, only_last_answer=cfg.only_last_answer,
                               vocab_size=model_config.vocab_size)
    stage = SFTStage(init, examples, cfg, _tokenizer_file(init, tokenizer, tokenizer_model), prefix)
    train_rows, _ = stage.packed()
    train_cfg = cfg.train.replace(max_steps=plan_steps(len(train_rows), cfg.train, cfg.epochs))
    _check_resumable(run_dir, examples_digest(examples))
    return run_stage(stage, train_cfg, run_dir, Path(hf_dir) if hf_dir is not None else run_dir / "hf",
                     log_fn=log_fn, progress=progress)


def _check_resumable(run_dir: Path, digest: str) -> None:
    """Refuse to resume a checkpoint trained on other data (it would silently mix two runs)."""
    try:
        latest = Checkpointer(run_dir / "checkpoints").latest()
    except FileNotFoundError:
        return  # the loop reports an incomplete checkpoint itself
    if latest is None:
        return
    saved = json.loads((latest / META_FILE).read_text()).get("sft_data_sha256")
    if saved is not None and saved != digest:
        raise CheckpointMismatchError(
            f"checkpoint {latest} was trained on other SFT data (sha256 {saved[:12]}..., this run "
            f"{digest[:12]}...); use another run folder or remove {run_dir / 'checkpoints'}")


