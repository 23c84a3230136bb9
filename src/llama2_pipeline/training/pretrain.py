"""Pretraining: a Llama from scratch on packed token shards, through the shared stage runner.

``pretrain(shards_dir, model_cfg, train_cfg, run_dir)`` trains on random windows of the train
split (a seeded numpy Generator whose state is checkpointed), evaluates loss and perplexity on
fixed blocks of the val split, compares with the unigram perplexity of the same val tokens
(unigram estimated on the train split, add-one smoothing), draws ``loss_curve.png``, exports
the model in Hugging Face format and returns flat metrics. Everything around the model, the
batches and the loss (launching ranks, the engine, the loop, the export, ``result.json``) is
:func:`~.runner.run_stage`'s; after a crash (even ``kill -9``) the same call resumes from the last
checkpoint, and a multi-rank run is resumed with
``python -m llama2_pipeline.training.runner --config run_dir/run_config.json``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..model import Llama, ModelConfig, export_hf
from ..model.loss import chunked_cross_entropy
from ..tokenizer.shards import INDEX_FILE, TokenShards
from .config import TrainConfig
from .engine import RunContext
from .runner import Parts, run_stage

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


class RandomWindows:
    """Endless micro-batches of random ``seq_len + 1`` windows of a token split.

    Each optimiser step draws the start offsets of the whole global batch
    (``micro_batch * grad_accum * num_ranks`` windows) from one seeded numpy Generator; rank
    ``r`` takes rows ``[(a * num_ranks + r) * micro_batch, ... + micro_batch)`` for its
    accumulation micro-step ``a``. So every rank reads a disjoint slice, and 1 rank with
    ``grad_accum=2`` sees exactly the windows that 2 ranks with ``grad_accum=1`` see together.
    ``state_dict()`` holds the Generator state and the position inside the global batch.
    """

    def __init__(self, shards: TokenShards, micro_batch: int, seq_len: int, *, grad_accum: int = 1,
                 rank: int = 0, num_ranks: int = 1, seed: int = 0):
        if len(shards) < seq_len + 1:
            raise ValueError(f"{shards.path} split {shards.split!r} has {len(shards)} tokens, fewer than "
                             f"one window of seq_len+1 = {seq_len + 1}")
        self.shards, self.micro_batch, self.seq_len = shards, micro_batch, seq_len
        self.grad_accum, self.rank, self.num_ranks = grad_accum, rank, num_ranks
        self.rng = np.random.default_rng([seed, 0x5EED])
        self.micro = 0  # accumulation micro-step within the current global batch
        self.starts: np.ndarray | None = None  # start offsets of the current global batch

    def __iter__(self) -> RandomWindows:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.micro == 0:
            n = self.micro_batch * self.grad_accum * self.num_ranks
            self.starts = self.rng.integers(0, len(self.shards) - self.seq_len, size=n)
        first = (self.micro * self.num_ranks + self.rank) * self.micro_batch
        rows = self.starts[first:first + self.micro_batch]
        self.micro = (self.micro + 1) % self.grad_accum
        windows = torch.from_numpy(
            np.stack([self.shards.read(int(s), self.seq_len + 1) for s in rows]).astype(np.int64))
        return {"input_ids": windows[:, :-1].contiguous(), "labels": windows[:, 1:].contiguous()}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "micro": self.micro,
                "starts": None if self.starts is None else self.starts.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.micro = state["micro"]
        self.starts = None if state["starts"] is None else np.asarray(state["starts"], dtype=np.int64)


def val_blocks(shards: TokenShards, seq_len: int, n_blocks: int) -> np.ndarray:
    """``(n, seq_len + 1)`` int64 blocks spread evenly over the split (all of them if
    ``n_blocks`` is 0 or exceeds what the split holds): the fixed validation set."""
    total = shards.num_blocks(seq_len)
    if total == 0:
        raise ValueError(f"{shards.path} split {shards.split!r} has {len(shards)} tokens, fewer than one "
                         f"validation block of seq_len+1 = {seq_len + 1}; encode with a larger val_fraction")
    n = total if n_blocks <= 0 else min(n_blocks, total)
    index = np.unique(np.linspace(0, total - 1, n).round().astype(np.int64))
    return np.stack([shards.read(int(b) * seq_len, seq_len + 1) for b in index]).astype(np.int64)


def unigram_counts(shards: TokenShards, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
    """Token counts of a split (read in chunks; works for splits larger than memory)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(shards), chunk):
        part = shards.read(start, min(chunk, len(shards) - start))
        counts += np.bincount(part, minlength=vocab_size)[:vocab_size]
    return counts


def unigram_perplexity(counts: np.ndarray, targets: np.ndarray) -> float:
    """Perplexity of ``targets`` under the add-one smoothed unigram of ``counts``."""
    logp = np.log(counts + 1.0) - math.log(counts.sum() + len(counts))
    return float(math.exp(-logp[targets.reshape(-1)].mean()))


# --------------------------------------------------------------------------------------------
# Loss and evaluation
# --------------------------------------------------------------------------------------------


def lm_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Causal LM loss: mean next-token cross-entropy over every target of the micro-batch.

    With the model's ``loss_chunk`` set (``TrainConfig.loss_chunk``), the head and the loss run
    that many tokens at a time (:func:`~llama2_pipeline.model.loss.chunked_cross_entropy`)."""
    module = getattr(model, "module", model)  # through a DeepSpeed engine: its module
    chunk = getattr(module, "loss_chunk", 0)
    if chunk:
        hidden = model(batch["input_ids"], return_hidden=True)
        return chunked_cross_entropy(hidden, module.output.weight, batch["labels"], chunk), batch["labels"].numel()
    logits = model(batch["input_ids"])
    loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten())
    return loss, batch["labels"].numel()


def evaluate_blocks(model, blocks: np.ndarray, micro_batch: int, ctx: RunContext) -> dict[str, float]:
    """Token-mean validation loss and perplexity over ``blocks``; ranks split the blocks
    round-robin (each runs the same number of forward passes, as ZeRO-3 needs) and sum."""
    mine = blocks[ctx.rank::ctx.world_size]
    per_rank = -(-len(blocks) // ctx.world_size)
    totals = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # nll sum, token count
    for b in range(-(-per_rank // micro_batch)):
        rows = mine[b * micro_batch:(b + 1) * micro_batch]
        weight = 1.0
        if len(rows) == 0:  # keep forward counts equal across ranks; contributes nothing
            rows, weight = blocks[:1], 0.0
        x = torch.from_numpy(rows).to(ctx.device)
        logits = model(x[:, :-1])
        nll = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten(), reduction="sum")
        totals[0] += nll.double() * weight
        totals[1] += x[:, 1:].numel() * weight
    if ctx.world_size > 1:
        torch.distributed.all_reduce(totals)
    loss = float(totals[0] / totals[1])
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}


# --------------------------------------------------------------------------------------------
# Pretraining
# --------------------------------------------------------------------------------------------


def resolve_model_config(model_cfg: ModelConfig | dict, shards: TokenShards) -> ModelConfig:
    """A :class:`ModelConfig` from a config or a dict (``{"preset": "tiny", **overrides}``).

    A dict without ``vocab_size`` / ``bos_id`` / ``eos_id`` takes them from the shards' index.
    The shards' vocabulary must fit the model's.
    """
    if isinstance(model_cfg, ModelConfig):
        config = model_cfg
    else:
        d = dict(model_cfg)
        preset = d.pop("preset", None)
        d.setdefault("vocab_size", shards.vocab_size)
        for key in ("bos_id", "eos_id"):
            value = shards.index.get(key)
            if key not in d and isinstance(value, int) and 0 <= value < d["vocab_size"]:
                d[key] = value
        config = ModelConfig.from_preset(preset, **d) if preset else ModelConfig.from_dict(d)
    if shards.vocab_size > config.vocab_size:
        raise ValueError(
            f"{shards.path / INDEX_FILE}: the token shards use a vocabulary of {shards.vocab_size} ids "
            f"but the model's vocab_size is {config.vocab_size}; set the model's vocab_size to at "
            f"least {shards.vocab_size} (or leave it out to take it from the shards)")
    return config


@dataclass
class PretrainStage:
    """Pretraining as a :class:`~.runner.Stage`: the shards, the model shape, the tokenizer file."""

    shards_dir: Path
    model: ModelConfig
    tokenizer_model: Path | None = None

    def to_json(self, run_dir: Path) -> dict[str, Any]:
        return {"shards_dir": str(Path(self.shards_dir).resolve()), "model": self.model.to_dict(),
                "tokenizer_model": str(Path(self.tokenizer_model).resolve()) if self.tokenizer_model else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PretrainStage:
        return cls(Path(data["shards_dir"]), ModelConfig.from_dict(data["model"]),
                   Path(data["tokenizer_model"]) if data.get("tokenizer_model") else None)

    def parts(self, cfg: TrainConfig, ctx: RunContext) -> Parts:
        train_shards = TokenShards(self.shards_dir, "train")
        blocks = val_blocks(TokenShards(self.shards_dir, "val"), cfg.seq_len, cfg.eval_batches * cfg.micro_batch)
        unigram_ppl = unigram_perplexity(unigram_counts(train_shards, train_shards.vocab_size), blocks[:, 1:])
        model = Llama(self.model)  # seeded by setup_run: the same init on every rank and every run
        if ctx.is_main:
            log.info("pretraining %s params, global batch %d sequences x %d tokens = %d tokens/step",
                     f"{model.num_params():,}", cfg.global_batch, cfg.seq_len, cfg.global_batch_tokens)

        def metrics(result, common: dict[str, Any]) -> dict[str, Any]:
            val_loss = result.eval.get("val_loss", float("nan"))
            ppl = math.exp(min(val_loss, 700.0))
            out = {"val_loss": val_loss, "val_ppl": ppl, "unigram_ppl": unigram_ppl, "ppl_ratio": ppl / unigram_ppl,
                   **{k: common[k] for k in ("train_loss", "tokens", "tokens_per_s", "step_time_s", "steps")},
                   "params": self.model.num_params(), "params_non_embedding": self.model.num_params(exclude_embedding=True),
                   **{k: common[k] for k in ("global_batch_tokens", "flops_per_token", "seconds", "val_loss_initial",
                                             "mfu")}}
            return {f"pretrain_{k}": v for k, v in out.items()}

        return Parts(
            model=model,
            data=RandomWindows(train_shards, cfg.micro_batch, cfg.seq_len, grad_accum=cfg.grad_accum, rank=ctx.rank,
                               num_ranks=ctx.world_size, seed=cfg.seed),
            loss_fn=lm_loss, eval_fn=lambda m: evaluate_blocks(m, blocks, cfg.micro_batch, ctx),
            export=lambda module, out: export_hf(module, out, tokenizer_model_path=self.tokenizer_model),
            metrics=metrics,
            checkpoint_meta={"shards": str(train_shards.path),
                             "tokenizer_sha256": train_shards.index.get("tokenizer_sha256")},
            result={"model_config": self.model.to_dict()},
            plot_title=f"pretraining: {self.model.num_params():,} params, {cfg.global_batch_tokens:,} tokens/step",
            plot_baseline=math.log(unigram_ppl))


def pretrain(
    shards_dir: str | os.PathLike,
    model_cfg: ModelConfig | dict,
    train_cfg: TrainConfig | dict,
    run_dir: str | os.PathLike,
    *,
    tokenizer_model: str | os.PathLike | None = None,
    log_fn=None,
    hf_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Pretrain a Llama on the token shards in ``shards_dir``; return flat ``pretrain_*`` metrics.

    Args:
        shards_dir: token-shard folder (``index.json`` + ``.bin``) with ``train`` and ``val`` splits.
        model_cfg: a :class:`ModelConfig`, or a dict ``{"preset": name, **overrides}`` /
            full field dict; vocab_size/bos/eos default to the shards'.
        train_cfg: a :class:`TrainConfig` or its dict (``max_steps`` required).
        run_dir: the run folder (checkpoints, metrics.jsonl, loss_curve.png, result.json); a run
            with the same config and folder resumes from its last checkpoint.
        tokenizer_model: a sentencepiece ``.model`` copied into the exported folder.
        log_fn: ``log_fn(metrics, step)`` called for every log/eval record (rank 0).
        hf_dir: where to export the HF model (default ``run_dir/hf``).
        progress: show a tqdm bar.

    Returns: ``pretrain_val_loss``, ``pretrain_val_ppl``, ``pretrain_unigram_ppl``,
        ``pretrain_ppl_ratio`` (val ppl / unigram ppl), ``pretrain_val_loss_initial``,
        ``pretrain_train_loss``, ``pretrain_tokens``, ``pretrain_tokens_per_s``,
        ``pretrain_step_time_s``, ``pretrain_mfu`` (when a peak is known), ``pretrain_steps``,
        ``pretrain_params``, ``pretrain_params_non_embedding``, ``pretrain_global_batch_tokens``,
        ``pretrain_flops_per_token``, ``pretrain_seconds`` (training time of the whole run, resumed
        parts included; evaluation and checkpoint writes excluded).
    """
    cfg = train_cfg if isinstance(train_cfg, TrainConfig) else TrainConfig.from_dict(train_cfg)
    run_dir = Path(run_dir)
    model_config = resolve_model_config(model_cfg, TokenShards(shards_dir, "train"))
    if cfg.seq_len > model_config.max_seq_len:
        raise ValueError(f"TrainConfig.seq_len {cfg.seq_len} exceeds the model's max_seq_len "
                         f"{model_config.max_seq_len}")
    stage = PretrainStage(Path(shards_dir), model_config, Path(tokenizer_model) if tokenizer_model else None)
    return run_stage(stage, cfg, run_dir, Path(hf_dir) if hf_dir is not None else run_dir / "hf", log_fn=log_fn,
                     progress=progress)
