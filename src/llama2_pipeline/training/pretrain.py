"""Pretraining: a Llama from scratch on packed token shards, through the shared engine and loop.

``pretrain(shards_dir, model_cfg, train_cfg, run_dir)`` trains on random windows of the train
split (a seeded numpy Generator whose state is checkpointed), evaluates loss and perplexity on
fixed blocks of the val split, compares with the unigram perplexity of the same val tokens
(unigram estimated on the train split, add-one smoothing), draws ``loss_curve.png``, exports
the model in Hugging Face format and returns flat metrics. With ``world_size``/``num_nodes``
> 1 it writes ``run_config.json`` and re-runs itself under torchrun (or DeepSpeed's launcher),
streaming the ranks' output and metrics; rank 0 writes the outputs.

Run folder::

    run_config.json     everything the CLI needs (written for multi-rank runs and the CLI)
    checkpoints/        DeepSpeed checkpoints (``latest`` + the newest ``keep_checkpoints``)
    metrics.jsonl       one JSON line per log / eval step (rank 0)
    loss_curve.png      train and val loss vs step
    result.json         final metrics, weights digest, paths
    hf/                 the exported model (unless ``hf_dir`` is given)

CLI: ``python -m llama2_pipeline.training.pretrain --config run_dir/run_config.json``; run it
again after a crash (even ``kill -9``) and it resumes from the last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..io_utils import atomic_path, write_json
from ..model import Llama, ModelConfig, export_hf
from ..tokenizer.shards import INDEX_FILE, TokenShards
from .config import TrainConfig
from .engine import RunContext, barrier, build_engine, gathered_module, setup_run
from .launcher import launch, rank_main, read_run_config
from .loop import flops_per_token, train

log = logging.getLogger(__name__)

MODULE = "llama2_pipeline.training.pretrain"  # the CLI module the launcher starts on every rank
RUN_CONFIG = "run_config.json"
RESULT_FILE = "result.json"
_RUN_CONFIG_KEYS = {"shards_dir", "model", "train", "run_dir", "tokenizer_model", "hf_dir", "progress"}


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
    """Causal LM loss: mean next-token cross-entropy over every target of the micro-batch."""
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


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors' names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def plot_loss_curve(history: list[dict[str, Any]], path: Path, unigram_loss: float | None = None,
                    title: str = "pretraining") -> Path:
    """Train and val loss vs step as a PNG (matplotlib's Agg canvas; no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    train = [(r["step"], r["train_loss"]) for r in history if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", lw=1.2, ms=3)
    if unigram_loss is not None:
        ax.axhline(unigram_loss, color="grey", ls="--", lw=1, label="unigram (val)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _inside_launch() -> bool:
    """True in a rank started by torchrun / DeepSpeed's launcher (a multi-process world)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


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
        train_cfg: a :class:`TrainConfig` or its dict (validated by ``TrainConfig.from_dict``).
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
        ``pretrain_seconds`` (training time of the whole run, resumed parts included; evaluation and
        checkpoint writes excluded).
    """
    cfg = train_cfg if isinstance(train_cfg, TrainConfig) else TrainConfig.from_dict(train_cfg)
    run_dir = Path(run_dir)
    hf_dir = Path(hf_dir) if hf_dir is not None else run_dir / "hf"
    train_shards = TokenShards(shards_dir, "train")
    model_config = resolve_model_config(model_cfg, train_shards)
    if cfg.seq_len > model_config.max_seq_len:
        raise ValueError(f"TrainConfig.seq_len {cfg.seq_len} exceeds the model's max_seq_len "
                         f"{model_config.max_seq_len}")
    if cfg.multi_process and not _inside_launch():
        run_config = {"shards_dir": str(Path(shards_dir).resolve()), "model": model_config.to_dict(),
                      "train": cfg.to_dict(), "run_dir": str(run_dir.resolve()),
                      "tokenizer_model": str(Path(tokenizer_model).resolve()) if tokenizer_model else None,
                      "hf_dir": str(hf_dir.resolve()), "progress": progress}
        write_json(run_dir / RUN_CONFIG, run_config)
        (run_dir / RESULT_FILE).unlink(missing_ok=True)
        launch(MODULE, run_dir / RUN_CONFIG, cfg, run_dir, log_fn=log_fn)
        return json.loads((run_dir / RESULT_FILE).read_text())["metrics"]
    return _pretrain_rank(train_shards, model_config, cfg, run_dir, tokenizer_model=tokenizer_model,
                          log_fn=log_fn, hf_dir=hf_dir, progress=progress)


def _pretrain_rank(train_shards: TokenShards, model_config: ModelConfig, cfg: TrainConfig, run_dir: Path,
                   *, tokenizer_model, log_fn, hf_dir: Path, progress: bool) -> dict[str, float]:
    """One rank's share of :func:`pretrain` (the whole of it for a single process)."""
    ctx = setup_run(cfg)
    val_shards = TokenShards(train_shards.path, "val")
    blocks = val_blocks(val_shards, cfg.seq_len, cfg.eval_batches * cfg.micro_batch)
    counts = unigram_counts(train_shards, train_shards.vocab_size)
    unigram_ppl = unigram_perplexity(counts, blocks[:, 1:])

    model = Llama(model_config)  # seeded by setup_run: the same init on every rank and every run
    engine = build_engine(model, cfg, ctx)
    data = RandomWindows(train_shards, cfg.micro_batch, cfg.seq_len, grad_accum=cfg.grad_accum,
                         rank=ctx.rank, num_ranks=ctx.world_size, seed=cfg.seed)
    if ctx.is_main:
        log.info("pretraining %s params, global batch %d sequences x %d tokens = %d tokens/step",
                 f"{model.num_params():,}", cfg.global_batch, cfg.seq_len, cfg.global_batch_tokens)
    result = train(engine, cfg, data, lm_loss, run_dir,
                   eval_fn=lambda m: evaluate_blocks(m, blocks, cfg.micro_batch, ctx),
                   log_fn=log_fn, progress=progress,
                   checkpoint_meta={"shards": str(train_shards.path),
                                    "tokenizer_sha256": train_shards.index.get("tokenizer_sha256")})

    digest = None
    with gathered_module(engine) as module:
        if ctx.is_main:
            export_hf(module, hf_dir, tokenizer_model_path=tokenizer_model)
            digest = weights_digest(module.state_dict())
    history = result.history
    val_loss = result.eval.get("val_loss", float("nan"))
    initial = next((r["val_loss"] for r in history if r.get("step") == 0 and "val_loss" in r), None)
    tokens_per_s = result.tokens_per_s or _last(history, "tokens_per_s")
    step_time = result.step_time_s or _last(history, "step_time_s")
    metrics = {
        "pretrain_val_loss": val_loss,
        "pretrain_val_ppl": math.exp(min(val_loss, 700.0)),
        "pretrain_unigram_ppl": unigram_ppl,
        "pretrain_ppl_ratio": math.exp(min(val_loss, 700.0)) / unigram_ppl,
        "pretrain_train_loss": result.train_loss,
        "pretrain_tokens": result.tokens,
        "pretrain_tokens_per_s": tokens_per_s,
        "pretrain_step_time_s": step_time,
        "pretrain_steps": result.steps,
        "pretrain_params": model_config.num_params(),
        "pretrain_params_non_embedding": model_config.num_params(exclude_embedding=True),
        "pretrain_global_batch_tokens": cfg.global_batch_tokens,
        "pretrain_flops_per_token": flops_per_token(engine.module, cfg.seq_len),
        "pretrain_seconds": round(result.train_seconds if result.train_seconds is not None else result.seconds, 3),
    }
    if initial is not None:
        metrics["pretrain_val_loss_initial"] = initial
    mfu = result.mfu or _last(history, "mfu")
    if mfu is not None:
        metrics["pretrain_mfu"] = mfu
    metrics = {k: v for k, v in metrics.items() if v is not None}
    if ctx.is_main:
        plot_loss_curve(history, run_dir / "loss_curve.png", unigram_loss=math.log(unigram_ppl),
                        title=f"pretraining: {metrics['pretrain_params']:,} params, "
                              f"{cfg.global_batch_tokens:,} tokens/step")
        write_json(run_dir / RESULT_FILE, {
            "metrics": metrics, "weights_sha256": digest, "hf_dir": str(hf_dir),
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "resumed_from": result.resumed_from, "model_config": model_config.to_dict(),
            "train_config": cfg.to_dict()})
    barrier()
    return metrics


def _last(history: list[dict[str, Any]], key: str) -> Any:
    return next((r[key] for r in reversed(history) if key in r), None)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def load_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ``run_config.json`` (unknown or missing keys raise, naming the file)."""
    rc = read_run_config(path, _RUN_CONFIG_KEYS, {"shards_dir", "model", "run_dir"})
    try:
        rc["train"] = TrainConfig.from_dict(rc.get("train") or {})
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return rc


def main(argv: list[str] | None = None) -> int:
    def run(config: str) -> dict:
        rc = load_run_config(config)
        return pretrain(rc["shards_dir"], rc["model"], rc["train"], rc["run_dir"],
                        tokenizer_model=rc.get("tokenizer_model"), hf_dir=rc.get("hf_dir"),
                        progress=rc.get("progress", True))

    return rank_main(argv, "python -m llama2_pipeline.training.pretrain",
                     "Pretrain (or resume) a Llama from a run_config.json.",
                     "run_config.json: shards_dir, model, train, run_dir, tokenizer_model, hf_dir, progress", run)


if __name__ == "__main__":
    sys.exit(main())
