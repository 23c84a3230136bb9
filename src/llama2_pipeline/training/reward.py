"""Reward models: a Llama backbone with a scalar head, the margin loss, training, evaluation, scoring.

The paper's recipe (Touvron et al. 2023, section 3.2.2), on the shared engine and loop:

* :class:`RewardModel`: the chat model's transformer (its LM head removed) and a linear head
  ``dim -> 1`` (no bias) on the final normalised hidden state of the **last token**. An input is
  ``encode_chat_prompt(prompt) + answer tokens + EOS`` (exactly :func:`encode_chat` of the
  dialogue, the way SFT saw it), so the score is read at the EOS.
* :func:`pairwise_loss`: ``-log(sigmoid(r_chosen - r_rejected - m(rating)))`` with the margin
  tables :data:`MARGINS` (``small`` 1, 2/3, 1/3, 0; ``large`` 3, 2, 1, 0; ``none``).
* :func:`train_reward_model`: one RM from an HF folder (SFT or pretrained ``LlamaForCausalLM``,
  or an earlier RM), ``epochs`` passes over the pairs (paper: 1) through :func:`train` with a
  :class:`PairBatches` stream (resumable, exact position in every checkpoint), then an export
  that transformers loads as ``LlamaForSequenceClassification`` with the same scores.
* :func:`evaluate_scores` / :func:`accuracy_by_rating` / plots: held-out accuracy overall and
  per rating level (the paper's Table 8 layout), score histograms and calibration.
* Scoring API for rejection sampling, PPO and evaluation::

      rm = RewardModel.load("data/06_models/reward_safety")
      rm.score(["How do I kill a Python process?"], ["Use the kill command with the process id."])

Pairs are preference records (``prompt``/``messages``, ``chosen``, ``rejected``, ``rating``,
``category``), checked by :func:`~llama2_pipeline.training.preferences.validate_preferences`;
:mod:`llama2_pipeline.training.preferences` also collects, merges, splits and mixes them.

Multi-rank runs (``world_size``/``num_nodes`` > 1) write ``run_config.json`` and the pairs into
the run folder and re-run this module under torchrun / DeepSpeed's launcher, like pretraining.
Nothing here imports Kedro or MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io_utils import atomic_path, write_json, write_jsonl
from ..model import Llama, ModelConfig, load_hf
from ..model.hf import _read_tensors, config_from_hf, from_hf_state_dict, hf_config, to_hf_state_dict
from ..tokenizer import Tokenizer, encode_chat, encode_chat_prompt, save_hf_tokenizer
from .config import TrainConfig
from .engine import barrier, build_engine, gathered_module, setup_run
from .launcher import launch, rank_main, read_run_config
from .loop import train
from .preferences import CATEGORIES, PAIR_KINDS, RATINGS, chat_of, validate_preferences

log = logging.getLogger(__name__)

#: m(rating) of the loss; the paper's two tables (its Table 28) and no margin
MARGINS: dict[str, dict[str, float]] = {
    "small": {"significantly_better": 1.0, "better": 2 / 3, "slightly_better": 1 / 3, "negligibly_better": 0.0},
    "large": {"significantly_better": 3.0, "better": 2.0, "slightly_better": 1.0, "negligibly_better": 0.0},
    "none": {r: 0.0 for r in RATINGS},
}
#: the paper's per-rating accuracy (Table 8), for reports next to ours
PAPER_TABLE_8 = {
    "safety": {"test_set": "Meta Safety", "significantly_better": 0.943, "better": 0.763,
               "slightly_better": 0.657, "negligibly_better": 0.553, "avg": 0.645},
    "helpfulness": {"test_set": "Meta Helpful.", "significantly_better": 0.899, "better": 0.732,
                    "slightly_better": 0.638, "negligibly_better": 0.545, "avg": 0.628},
}
MODULE = "llama2_pipeline.training.reward"
RUN_CONFIG, RESULT_FILE = "run_config.json", "result.json"
TRAIN_PAIRS, EVAL_PAIRS = "pairs_train.jsonl", "pairs_eval.jsonl"
SEQ_CLS = "LlamaForSequenceClassification"


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def margin_of(rating: str, table: str | dict[str, float]) -> float:
    """m(rating) of a margin table (a name in :data:`MARGINS` or a dict)."""
    if isinstance(table, str):
        if table not in MARGINS:
            raise ValueError(f"unknown margin table {table!r}; expected one of {list(MARGINS)}")
        table = MARGINS[table]
    return float(table.get(rating, 0.0))


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float = 0.0,
                  reduction: str = "mean") -> torch.Tensor:
    """The paper's binary ranking loss ``-log(sigmoid(r_chosen - r_rejected - m))`` (float32)."""
    diff = r_chosen.float() - r_rejected.float() - (margin.float() if torch.is_tensor(margin) else margin)
    loss = -F.logsigmoid(diff)
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class RewardModel(nn.Module):
    """A Llama decoder without its LM head plus a scalar head on the last token's hidden state.

    ``forward(input_ids, last_index=None, attention_mask=None) -> (B,)`` scores. Batches are
    right-padded: real tokens never attend to the padding that follows them, so the plain causal
    kernel serves and ``last_index`` (default: the last column) says where each row ends. With an
    ``attention_mask`` (1 = real token; any padding side) the row's score is read at its
    rightmost real token, as transformers does.
    """

    def __init__(self, config: ModelConfig, backbone: Llama | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else Llama(config)
        self.backbone.output = None  # no LM head: the RM only reads hidden states
        self.head = nn.Linear(config.dim, 1, bias=False)
        nn.init.normal_(self.head.weight, 0.0, 1.0 / math.sqrt(config.dim + 1))
        self.tokenizer: Tokenizer | None = None  # set by load(); needed by score()

    @property
    def gradient_checkpointing(self) -> bool:
        return self.backbone.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.backbone.gradient_checkpointing = value

    def forward(self, input_ids: torch.Tensor, last_index: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        hidden = self.backbone(input_ids, attention_mask=attention_mask, return_hidden=True)  # (B, T, D)
        if last_index is None:
            if attention_mask is not None:
                cols = torch.arange(T, device=input_ids.device)
                last_index = (cols * attention_mask.long()).argmax(dim=-1)
            else:
                last_index = torch.full((B,), T - 1, device=input_ids.device)
        rows = torch.arange(B, device=input_ids.device)
        return self.head(hidden[rows, last_index.long()]).squeeze(-1)

    # -- building and loading -----------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, pad_id: int | None = None,
                        dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> RewardModel:
        """An RM initialised from an HF folder: a ``LlamaForCausalLM`` (SFT / pretrained: the LM
        head is dropped, a new scalar head drawn from the current torch RNG) or an RM folder
        (:meth:`load`). ``pad_id``: the padding id written to exports (default: the folder's,
        else the tokenizer's, else 0)."""
        folder = Path(path)
        if _is_reward_folder(folder):
            rm = cls.load(folder, dtype=dtype, device=device)
        else:
            backbone = load_hf(folder, dtype=dtype, device=device)
            rm = cls(backbone.config, backbone=backbone).to(device)
            rm.head.to(dtype or backbone.tok_embeddings.weight.dtype)
            rm.tokenizer = _folder_tokenizer(folder)
        if pad_id is None and rm.config.pad_id is None:
            pad_id = rm.tokenizer.pad_id if rm.tokenizer is not None and rm.tokenizer.pad_id >= 0 else 0
        if pad_id is not None:
            rm.set_pad_id(pad_id)
        return rm.train()

    @classmethod
    def load(cls, path: str | os.PathLike, *, dtype: torch.dtype | None = None,
             device: str | torch.device = "cpu") -> RewardModel:
        """An RM folder written by :func:`export_reward_hf` (or transformers' ``save_pretrained``
        of a one-label ``LlamaForSequenceClassification``), in eval mode, with its tokenizer."""
        folder = Path(path)
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{folder}: no config.json (not a reward model folder)")
        hf = json.loads(cfg_file.read_text())
        if not _is_reward_folder(folder):
            raise ValueError(f"{cfg_file}: architectures {hf.get('architectures')} / num_labels "
                             f"{_num_labels(hf)}: expected a one-label {SEQ_CLS}")
        config = config_from_hf(hf, str(cfg_file))
        tensors = _read_tensors(folder)
        if "score.weight" not in tensors:
            raise KeyError(f"{folder}: missing tensor 'score.weight' (the reward head)")
        head = tensors.pop("score.weight")
        if "score.bias" in tensors:
            raise ValueError(f"{folder}: a reward head with a bias is not supported")
        sd = from_hf_state_dict(tensors, config, source=str(folder))
        sd.pop("output.weight")  # from_hf_state_dict fills the absent LM head with the embedding
        with torch.device("meta"):
            rm = cls(config)
        state = {f"backbone.{k}": v for k, v in sd.items()}
        state["head.weight"] = head.reshape(1, config.dim)
        state = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in state.items()}
        rm.load_state_dict(state, strict=True, assign=True)
        rm.tokenizer = _folder_tokenizer(folder)
        return rm.eval()

    def set_pad_id(self, pad_id: int) -> None:
        if not 0 <= pad_id < self.config.vocab_size:
            raise ValueError(f"pad id {pad_id} is outside the vocabulary [0, {self.config.vocab_size})")
        self.config.pad_id = pad_id
        self.backbone.config.pad_id = pad_id

    # -- scoring --------------------------------------------------------------------------------

    def score_ids(self, sequences: Sequence[Sequence[int]], batch_size: int = 32) -> list[float]:
        """Scores of token-id sequences (each ending with EOS), batched by similar length."""
        was_training = self.training
        self.eval()
        try:
            pad = self.config.pad_id if self.config.pad_id is not None else 0
            return score_sequences(self, sequences, batch_size, pad)
        finally:
            self.train(was_training)

    def score(self, prompts: Sequence[str | list[dict]], answers: Sequence[str], batch_size: int = 32,
              tokenizer: Tokenizer | None = None) -> list[float]:
        """The reward of each (prompt, answer): a prompt is a user message or a conversation
        ending with a user turn. ``tokenizer`` defaults to the one loaded with the model."""
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("RewardModel.score needs a tokenizer: load the model from a folder with "
                             "tokenizer.model or pass tokenizer=")
        if len(prompts) != len(answers):
            raise ValueError(f"score got {len(prompts)} prompts but {len(answers)} answers")
        seqs = [encode_example(tokenizer, p, a, self.config.max_seq_len) for p, a in zip(prompts, answers)]
        return self.score_ids(seqs, batch_size)


def _num_labels(hf: dict) -> int | None:
    if "num_labels" in hf:
        return hf["num_labels"]
    return len(hf["id2label"]) if isinstance(hf.get("id2label"), dict) else None


def _is_reward_folder(folder: Path) -> bool:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return False
    hf = json.loads(cfg.read_text())
    return SEQ_CLS in (hf.get("architectures") or []) and _num_labels(hf) == 1


def _folder_tokenizer(folder: Path) -> Tokenizer | None:
    return Tokenizer(folder / "tokenizer.model") if (folder / "tokenizer.model").is_file() else None


def reward_hf_config(config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """``config.json`` of a one-label ``LlamaForSequenceClassification`` with our shape."""
    if config.pad_id is None:
        raise ValueError("a reward model export needs pad_id: transformers finds each row's last token "
                         "as the rightmost one that is not pad_token_id")
    return {**hf_config(config, dtype), "architectures": [SEQ_CLS], "num_labels": 1,
            "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "problem_type": "regression"}


def reward_hf_state_dict(rm: RewardModel) -> dict[str, torch.Tensor]:
    """HF names: the backbone as ``model.*`` (as a ``LlamaForCausalLM`` minus ``lm_head``) and
    the head as ``score.weight`` (1, dim)."""
    sd = {k: v for k, v in rm.backbone.state_dict().items()}
    sd["output.weight"] = torch.empty(0)  # to_hf_state_dict renames an LM head the RM does not have
    out = to_hf_state_dict(SimpleNamespace(config=rm.config, state_dict=lambda: sd))
    out.pop("lm_head.weight")
    out["score.weight"] = rm.head.weight.detach().cpu().contiguous()
    return out


def export_reward_hf(rm: RewardModel, out_dir: str | os.PathLike, tokenizer_model: str | os.PathLike | None = None,
                     dtype: torch.dtype | None = None) -> Path:
    """Write ``rm`` as a transformers ``LlamaForSequenceClassification`` folder (atomically):
    ``config.json`` (``num_labels: 1``, ``pad_token_id``), ``model.safetensors`` and, given
    ``tokenizer_model``, the tokenizer files (``tokenizer.model``, ``tokenizer.json``,
    ``tokenizer_config.json``)."""
    from safetensors.torch import save_file

    dtype = dtype or rm.head.weight.dtype
    tensors = {k: v.to(dtype).contiguous() for k, v in reward_hf_state_dict(rm).items()}
    with atomic_path(out_dir, is_dir=True) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "config.json", reward_hf_config(rm.config, dtype))
        if tokenizer_model is not None:
            save_hf_tokenizer(tokenizer_model, tmp, model_max_length=rm.config.max_seq_len)
    return Path(out_dir)


# --------------------------------------------------------------------------------------------
# Encoding and batches
# --------------------------------------------------------------------------------------------


def encode_example(tokenizer, prompt: str | list[dict], answer: str, max_len: int | None = None) -> list[int]:
    """RM input ids: ``encode_chat_prompt(prompt) + answer tokens + EOS`` (= :func:`encode_chat`
    of the dialogue, the form SFT trains on). A blank answer is the prompt plus EOS. Longer than
    ``max_len``: the oldest tokens are dropped, so the sequence still ends at the answer's EOS."""
    messages = chat_of(prompt)
    if answer.strip():
        ids = encode_chat(tokenizer, messages + [{"role": "assistant", "content": answer}]).ids
    else:
        ids = encode_chat_prompt(tokenizer, messages) + [tokenizer.eos_id]
    return ids[-max_len:] if max_len and len(ids) > max_len else ids


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) right-padded ids and each row's last real index."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return ids, torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long)


def encode_pairs(tokenizer, records: Sequence[dict], max_len: int, margin: str | dict) -> list[dict]:
    """Tokenised pairs: ``{"chosen": ids, "rejected": ids, "margin": m(rating), "rating": ...}``."""
    out = []
    for r in records:
        out.append({"chosen": encode_example(tokenizer, chat_of(r), r["chosen"], max_len),
                    "rejected": encode_example(tokenizer, chat_of(r), r["rejected"], max_len),
                    "margin": margin_of(r["rating"], margin), "rating": r["rating"]})
    return out


class PairBatches:
    """Endless micro-batches of preference pairs in seeded, length-bucketed epochs (resumable).

    The stream is the concatenation of one ordering of the pairs per epoch, a function of
    ``seed`` and the epoch alone, so the position ``pos`` is the whole state. An epoch's ordering:
    a seeded permutation, cut into blocks of ``length_blocks`` global batches; inside a block the
    pairs are sorted by length and cut into global batches, whose order is then shuffled (so a
    micro-batch pads little, and batch lengths still come in random order; ``length_blocks`` 0 =
    plain permutation). Each optimiser step consumes one global batch of ``micro_batch *
    grad_accum * num_ranks`` consecutive pairs; rank ``r`` takes rows ``[(a * num_ranks + r) *
    micro_batch, ... + micro_batch)`` for its accumulation micro-step ``a`` (disjoint across ranks;
    1 rank x ``grad_accum`` 2 sees what 2 ranks together see). A micro-batch is ``input_ids``
    (2B, T): the B chosen answers, then the B rejected ones, right-padded; ``last_index`` (2B,);
    ``margin`` (B,).
    """

    def __init__(self, pairs: Sequence[dict], micro_batch: int, pad_id: int, *, grad_accum: int = 1,
                 rank: int = 0, num_ranks: int = 1, seed: int = 0, length_blocks: int = 8):
        if not pairs:
            raise ValueError("no preference pairs to train on")
        self.pairs, self.micro_batch, self.pad_id = pairs, micro_batch, pad_id
        self.grad_accum, self.rank, self.num_ranks, self.seed = grad_accum, rank, num_ranks, seed
        self.global_batch = micro_batch * grad_accum * num_ranks
        self.length_blocks = length_blocks
        self.lengths = np.array([max(len(p["chosen"]), len(p["rejected"])) for p in pairs])
        self.pos, self.micro = 0, 0
        self._order: tuple[int, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The pair indices of one epoch, in stream order."""
        rng = np.random.default_rng([self.seed, epoch, 0x9A1])
        perm = rng.permutation(len(self.pairs))
        if self.length_blocks <= 0:
            return perm
        G, block = self.global_batch, self.global_batch * self.length_blocks
        batches = []
        for start in range(0, len(perm), block):
            chunk = perm[start:start + block]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + G] for i in range(0, len(chunk), G)]
        return np.concatenate([batches[i] for i in rng.permutation(len(batches))])

    def _index(self, i: int) -> int:
        epoch, k = divmod(i, len(self.pairs))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.epoch_order(epoch))
        return int(self._order[1][k])

    def __iter__(self) -> PairBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        first = self.pos + (self.micro * self.num_ranks + self.rank) * self.micro_batch
        rows = [self.pairs[self._index(i)] for i in range(first, first + self.micro_batch)]
        self.micro += 1
        if self.micro == self.grad_accum:
            self.micro = 0
            self.pos += self.global_batch
        ids, last = pad_right([r["chosen"] for r in rows] + [r["rejected"] for r in rows], self.pad_id)
        return {"input_ids": ids, "last_index": last,
                "margin": torch.tensor([r["margin"] for r in rows], dtype=torch.float32)}

    def state_dict(self) -> dict[str, Any]:
        return {"pos": self.pos, "micro": self.micro, "n_pairs": len(self.pairs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("n_pairs", len(self.pairs)) != len(self.pairs):
            raise ValueError(f"the checkpoint's pair stream had {state['n_pairs']} pairs, this run has "
                             f"{len(self.pairs)}: resume with the same data")
        self.pos, self.micro = int(state["pos"]), int(state["micro"])


def reward_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The loop's ``loss_fn``: mean margin loss of the micro-batch's pairs."""
    scores = model(batch["input_ids"], last_index=batch["last_index"])
    b = batch["margin"].numel()
    return pairwise_loss(scores[:b], scores[b:], batch["margin"]), b


@torch.no_grad()
def length_batches(sequences: Sequence[Sequence[int]], batch_size: int, pad_id: int):
    """``(indices, ids, last)`` batches of ``sequences`` grouped by similar length (little padding):
    the indices into ``sequences``, their right-padded ids and each row's last real index."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        yield (chunk, *pad_right([sequences[i] for i in chunk], pad_id))


def score_sequences(model, sequences: Sequence[Sequence[int]], batch_size: int, pad_id: int) -> list[float]:
    """Scores of token-id sequences under ``model`` (an RM or its engine), in their order; the
    batches group sequences of similar length, so little is padded."""
    if not sequences:
        return []
    device = next(model.parameters()).device
    out = [0.0] * len(sequences)
    for chunk, ids, last in length_batches(sequences, batch_size, pad_id):
        for i, s in zip(chunk, model(ids.to(device), last_index=last.to(device)).float().cpu().tolist()):
            out[i] = s
    return out


def pair_scores(model, pairs: Sequence[dict], batch_size: int, pad_id: int) -> tuple[list[float], list[float]]:
    """(chosen scores, rejected scores) of tokenised pairs under ``model`` (an RM or its engine)."""
    out = score_sequences(model, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], batch_size, pad_id)
    return out[:len(pairs)], out[len(pairs):]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def reward_train_config(train_cfg: TrainConfig | dict, n_pairs: int, epochs: float = 1.0,
                        warmup_fraction: float = 0.03, min_warmup_steps: int = 5) -> TrainConfig:
    """The :class:`TrainConfig` of an RM run: ``max_steps`` covers ``epochs`` passes over
    ``n_pairs`` (rounded up); unless a dict gives it, ``warmup_steps`` is the paper's 3 % of the
    steps, at least 5 (never more than the run). A TrainConfig's own two values are replaced."""
    if isinstance(train_cfg, TrainConfig):
        d = {k: v for k, v in train_cfg.to_dict().items() if k not in ("max_steps", "warmup_steps")}
    else:
        d = dict(train_cfg)
        if "max_steps" in d:
            raise ValueError("reward.train.max_steps is derived from reward.epochs and the number of pairs; "
                             "remove it")
    if not epochs > 0:
        raise ValueError(f"reward epochs must be > 0, got {epochs!r}")
    probe = TrainConfig.from_dict({**d, "max_steps": 1})
    steps = max(1, math.ceil(epochs * n_pairs / probe.global_batch))
    d["max_steps"] = steps
    if "warmup_steps" not in d:
        d["warmup_steps"] = min(steps, max(min_warmup_steps, math.ceil(warmup_fraction * steps)))
    return TrainConfig.from_dict(d)


def _inside_launch() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_reward_model(
    pairs: Sequence[dict],
    init_dir: str | os.PathLike,
    train_cfg: TrainConfig | dict,
    run_dir: str | os.PathLike,
    *,
    margin: str = "small",
    epochs: float = 1.0,
    warmup_fraction: float = 0.03,
    eval_pairs: Sequence[dict] | None = None,
    out_dir: str | os.PathLike | None = None,
    log_fn=None,
    progress: bool = True,
    name: str = "rm",
) -> dict[str, float]:
    """Train one reward model on preference records; export it; return flat ``<name>_*`` metrics.

    Args:
        pairs: preference records (validated with :func:`validate_preferences`).
        init_dir: HF folder to start from (SFT/pretrained ``LlamaForCausalLM`` or an RM) with its
            ``tokenizer.model``.
        train_cfg: :class:`TrainConfig` or its dict without ``max_steps`` (derived from ``epochs``);
            ``seq_len`` is the longest RM input (longer ones lose their oldest tokens).
        run_dir: checkpoints, ``metrics.jsonl``, ``result.json``; a rerun resumes from its last
            checkpoint (bit-identical weights on CPU).
        margin: a :data:`MARGINS` table name. epochs: passes over the pairs (paper: 1).
        eval_pairs: held-out records for ``val_loss``/``val_acc`` every ``eval_every`` steps
            (monitoring only; at most ``eval_batches * micro_batch`` pairs, 0 = all).
        out_dir: the exported ``LlamaForSequenceClassification`` folder (default ``run_dir/hf``).
        log_fn: ``log_fn(metrics, step)`` for every log/eval record (rank 0).

    Returns: ``<name>_train_loss``, ``_train_pairs``, ``_steps``, ``_seconds``, ``_tokens_per_s``
    and, with ``eval_pairs``, ``_val_acc`` / ``_val_loss``.
    """
    if margin not in MARGINS:
        raise ValueError(f"unknown margin table {margin!r}; expected one of {list(MARGINS)}")
    records = validate_preferences(pairs, source=f"{name} training pairs")
    evals = validate_preferences(eval_pairs, source=f"{name} eval pairs") if eval_pairs else []
    cfg = reward_train_config(train_cfg, len(records), epochs, warmup_fraction)
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "hf"
    if cfg.multi_process and not _inside_launch():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(run_dir / TRAIN_PAIRS, records, sort_keys=True)
        write_jsonl(run_dir / EVAL_PAIRS, evals, sort_keys=True)
        write_json(run_dir / RUN_CONFIG, {
            "init_dir": str(Path(init_dir).resolve()), "train": cfg.to_dict(), "run_dir": str(run_dir.resolve()),
            "margin": margin, "out_dir": str(out_dir.resolve()), "progress": progress, "name": name})
        (run_dir / RESULT_FILE).unlink(missing_ok=True)
        launch(MODULE, run_dir / RUN_CONFIG, cfg, run_dir, log_fn=log_fn)
        return json.loads((run_dir / RESULT_FILE).read_text())["metrics"]
    return _train_rank(records, evals, Path(init_dir), cfg, run_dir, margin=margin, out_dir=out_dir,
                       log_fn=log_fn, progress=progress, name=name)


def _train_rank(records: list[dict], evals: list[dict], init_dir: Path, cfg: TrainConfig, run_dir: Path, *,
                margin: str, out_dir: Path, log_fn, progress: bool, name: str) -> dict[str, float]:
    ctx = setup_run(cfg)  # seeds the head's init: the same on every rank and every run
    rm = RewardModel.from_pretrained(init_dir)
    if rm.tokenizer is None:
        raise FileNotFoundError(f"{init_dir}: no tokenizer.model next to the model (needed to encode pairs)")
    if cfg.seq_len > rm.config.max_seq_len:
        raise ValueError(f"reward train seq_len {cfg.seq_len} exceeds the model's max_seq_len {rm.config.max_seq_len}")
    tok, pad = rm.tokenizer, rm.config.pad_id
    train_pairs = encode_pairs(tok, records, cfg.seq_len, margin)
    n_eval = len(evals) if not cfg.eval_batches else min(len(evals), cfg.eval_batches * cfg.micro_batch)
    eval_tok = encode_pairs(tok, evals[:n_eval], cfg.seq_len, margin) if n_eval else []
    engine = build_engine(rm, cfg, ctx)
    data = PairBatches(train_pairs, cfg.micro_batch, pad, grad_accum=cfg.grad_accum, rank=ctx.rank,
                       num_ranks=ctx.world_size, seed=cfg.seed)

    def eval_fn(model) -> dict[str, float]:
        chosen, rejected = pair_scores(model, eval_tok, 2 * cfg.micro_batch, pad)
        c, r = torch.tensor(chosen), torch.tensor(rejected)
        m = torch.tensor([p["margin"] for p in eval_tok])
        return {"val_acc": float((c > r).float().mean()), "val_loss": float(pairwise_loss(c, r, m))}

    if ctx.is_main:
        log.info("%s: %d pairs, %d steps of %d pairs, margin %s", name, len(train_pairs), cfg.max_steps,
                 cfg.global_batch, margin)
    digest = hashlib.sha256(json.dumps([[p["chosen"], p["rejected"], p["margin"]] for p in train_pairs]).encode())
    result = train(engine, cfg, data, reward_loss, run_dir, eval_fn=eval_fn if eval_tok else None,
                   log_fn=log_fn, progress=progress,
                   checkpoint_meta={"init_dir": str(init_dir), "pairs_sha256": digest.hexdigest(), "margin": margin})
    with gathered_module(engine) as module:
        if ctx.is_main:
            export_reward_hf(module, out_dir, tokenizer_model=tok.path)
    metrics = {
        f"{name}_train_loss": result.train_loss,
        f"{name}_train_pairs": len(train_pairs),
        f"{name}_steps": result.steps,
        f"{name}_seconds": round(result.train_seconds if result.train_seconds is not None else result.seconds, 3),
        f"{name}_tokens_per_s": result.tokens_per_s,
    }
    if eval_tok:
        metrics[f"{name}_val_acc"] = result.eval.get("val_acc")
        metrics[f"{name}_val_loss"] = result.eval.get("val_loss")
    metrics = {k: v for k, v in metrics.items() if v is not None}
    if ctx.is_main:
        write_json(run_dir / RESULT_FILE, {"metrics": metrics, "out_dir": str(out_dir), "train_config": cfg.to_dict(),
                                           "resumed_from": result.resumed_from,
                                           "checkpoint": str(result.checkpoint) if result.checkpoint else None})
    barrier()
    return metrics


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def likelihood_scores(model: Llama, tokenizer, records: Sequence[dict], batch_size: int = 32,
                      max_len: int | None = None) -> tuple[list[float], list[float]]:
    """A baseline judge for the RMs: (chosen, rejected) mean log-probability per token that
    ``model`` (a language model, e.g. the SFT model the RMs start from, untrained for the task)
    gives each answer after its chat prompt: the answer's tokens and EOS, as SFT trains them.
    Longer than ``max_len`` (default: the model's context): the oldest prompt tokens are dropped."""
    max_len = max_len or model.config.max_seq_len
    device = next(model.parameters()).device
    seqs: list[tuple[list[int], int]] = []  # (ids, index of the first answer token)
    for side in ("chosen", "rejected"):
        for r in records:
            messages = chat_of(r)
            full = encode_example(tokenizer, messages, r[side])
            answer_len = len(full) - len(encode_chat_prompt(tokenizer, messages))
            ids = full[-max_len:]
            seqs.append((ids, max(1, len(ids) - answer_len)))
    from .ppo import logprobs_of

    pad = model.config.pad_id if model.config.pad_id is not None else 0
    was_training = model.training
    model.eval()
    out = [0.0] * len(seqs)
    for chunk, ids, _ in length_batches([ids for ids, _ in seqs], batch_size, pad):
        ids = ids.to(device)
        logp = logprobs_of(model(ids)[:, :-1], ids[:, 1:])
        for row, i in enumerate(chunk):
            ids_i, first = seqs[i]
            out[i] = float(logp[row, first - 1:len(ids_i) - 1].mean())
    model.train(was_training)
    return out[:len(records)], out[len(records):]


def accuracy_by_rating(chosen: Sequence[float], rejected: Sequence[float], ratings: Sequence[str]) -> dict[str, Any]:
    """Accuracy (chosen scored strictly higher) overall (``avg``) and per rating level, with counts;
    a level without pairs has accuracy None."""
    c, r = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    ok = c > r
    out: dict[str, Any] = {"avg": float(ok.mean()) if len(ok) else None, "n": int(len(ok))}
    ratings = np.asarray(ratings)
    for level in RATINGS:
        sel = ratings == level
        out[level] = float(ok[sel].mean()) if sel.any() else None
        out[f"n_{level}"] = int(sel.sum())
    return out


def calibration(chosen: Sequence[float], rejected: Sequence[float], bins: int = 10) -> dict[str, Any]:
    """Score gap vs. the probability that the annotator prefers the first answer.

    Each pair counts in both orientations (gap ``d`` with outcome 1, ``-d`` with outcome 0), so
    the curve is symmetric; pairs are binned by gap quantiles. Returns bin centres (mean gap),
    empirical probability, the Bradley-Terry prediction ``mean(sigmoid(gap))`` per bin, counts,
    and ``ece``: the count-weighted mean |empirical - predicted|.
    """
    d = np.asarray(chosen, dtype=np.float64) - np.asarray(rejected, dtype=np.float64)
    gaps, y = np.concatenate([d, -d]), np.concatenate([np.ones_like(d), np.zeros_like(d)])
    if not len(gaps):
        return {"gap": [], "p_annotator": [], "p_model": [], "count": [], "ece": None}
    order = np.argsort(gaps, kind="stable")
    gaps, y = gaps[order], y[order]
    edges = np.linspace(0, len(gaps), min(bins, len(gaps)) + 1).round().astype(int)
    out = {"gap": [], "p_annotator": [], "p_model": [], "count": []}
    err = 0.0
    for a, b in zip(edges[:-1], edges[1:]):
        if b <= a:
            continue
        g, yy = gaps[a:b], y[a:b]
        p_model = float((1 / (1 + np.exp(-g))).mean())
        out["gap"].append(float(g.mean()))
        out["p_annotator"].append(float(yy.mean()))
        out["p_model"].append(p_model)
        out["count"].append(int(b - a))
        err += (b - a) * abs(float(yy.mean()) - p_model)
    out["ece"] = err / len(gaps)
    return out


def evaluate_scores(rm: RewardModel, records: Sequence[dict], batch_size: int = 64) -> tuple[list[float], list[float]]:
    """(chosen scores, rejected scores) of preference records under ``rm`` (eval mode)."""
    if rm.tokenizer is None:
        raise ValueError("evaluate_scores needs an RM loaded with its tokenizer")
    pairs = encode_pairs(rm.tokenizer, records, rm.config.max_seq_len, "none")
    return pair_scores(rm.eval(), pairs, batch_size, rm.config.pad_id if rm.config.pad_id is not None else 0)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_score_histograms(scores: dict[str, tuple[Sequence[float], Sequence[float]]], title: str = ""):
    """One panel per RM: histograms of chosen vs rejected scores (a matplotlib Figure)."""
    fig = _figure(5.2 * max(1, len(scores)), 3.8)
    for k, (name, (chosen, rejected)) in enumerate(scores.items()):
        ax = fig.add_subplot(1, max(1, len(scores)), k + 1)
        both = np.concatenate([np.asarray(chosen, float), np.asarray(rejected, float)]) if len(chosen) else np.zeros(1)
        bins = np.linspace(both.min(), both.max() + 1e-9, 31)
        ax.hist(chosen, bins=bins, alpha=0.6, label=f"chosen (n={len(chosen)})", color="tab:green")
        ax.hist(rejected, bins=bins, alpha=0.6, label=f"rejected (n={len(rejected)})", color="tab:red")
        ax.set_title(f"{name} RM: held-out scores")
        ax.set_xlabel("reward score")
        ax.set_ylabel("pairs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_calibration(curves: dict[str, dict], title: str = ""):
    """Score gap vs. P(annotator prefers), one line per RM, with the logistic curve sigmoid(gap)."""
    fig = _figure(6.2, 4.4)
    ax = fig.add_subplot()
    lo = min([min(c["gap"]) for c in curves.values() if c["gap"]] + [-4.0])
    hi = max([max(c["gap"]) for c in curves.values() if c["gap"]] + [4.0])
    xs = np.linspace(lo, hi, 200)
    ax.plot(xs, 1 / (1 + np.exp(-xs)), color="grey", ls="--", lw=1, label="sigmoid(gap) (Bradley-Terry)")
    for name, c in curves.items():
        ece = f", ECE {c['ece']:.3f}" if c.get("ece") is not None else ""
        ax.plot(c["gap"], c["p_annotator"], "o-", ms=4, lw=1.2, label=f"{name} RM{ece}")
    ax.set_xlabel("score gap r(a) - r(b)")
    ax.set_ylabel("P(annotator prefers a)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "reward model calibration (held-out pairs)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------

_GROUP_KEYS = {"preferences", "margin", "epochs", "warmup_fraction", "helpfulness_mix", "safety_mix", "num_threads",
               "train", "eval"}
_PREF_KEYS = {"collect", "temperatures", "variant_temperatures", "top_p", "max_new_tokens", "batch_size",
              "max_prompts", "pairs", "drop_ties", "eval_fraction"}
_EVAL_KEYS = {"batch_size", "calibration_bins"}


def check_sections(sections) -> None:
    """Each ``(keys, prefix, mapping)``: the mapping exists and has exactly ``keys``; a
    ValueError names the first unknown or missing key by its dotted path."""
    for keys, prefix, d in sections:
        if not isinstance(d, dict):
            raise ValueError(f"missing key '{prefix}' (a mapping)")
        unknown, missing = sorted(set(d) - keys), sorted(keys - set(d))
        if unknown:
            raise ValueError(f"unknown key(s) {[f'{prefix}.{k}' for k in unknown]}; expected some of {sorted(keys)}")
        if missing:
            raise ValueError(f"missing key(s) {[f'{prefix}.{k}' for k in missing]}")


def validate_reward_params(group: dict) -> dict:
    """Check the ``reward`` params group; raise ValueError naming the key. Returns ``group``."""
    def need(cond: bool, key: str, expected: str) -> None:
        if not cond:
            value = group
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            raise ValueError(f"key 'reward.{key}' is {value!r}, expected {expected}")

    def num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def integer(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(group, dict):
        raise ValueError(f"params group 'reward' must be a mapping, got {type(group).__name__}")
    check_sections(((_GROUP_KEYS, "reward", group), (_PREF_KEYS, "reward.preferences", group.get("preferences")),
                    (_EVAL_KEYS, "reward.eval", group.get("eval"))))
    p = group["preferences"]
    need(isinstance(p["collect"], bool), "preferences.collect", "true or false")
    need(isinstance(p["temperatures"], list) and all(num(t) and t >= 0 for t in p["temperatures"])
         and (len(p["temperatures"]) >= 2 or not p["collect"]), "preferences.temperatures",
         "a list of at least two temperatures >= 0 (one sample each per prompt)")
    need(isinstance(p["variant_temperatures"], list) and all(num(t) and t >= 0 for t in p["variant_temperatures"]),
         "preferences.variant_temperatures", "a list of temperatures >= 0 ([] = no variant model samples)")
    need(isinstance(p["drop_ties"], bool), "preferences.drop_ties", "true or false")
    need(num(p["top_p"]) and 0 < p["top_p"] <= 1, "preferences.top_p", "a number in (0, 1]")
    need(integer(p["max_new_tokens"]) and p["max_new_tokens"] >= 1, "preferences.max_new_tokens", "an integer >= 1")
    need(integer(p["batch_size"]) and p["batch_size"] >= 1, "preferences.batch_size", "an integer >= 1")
    need(integer(p["max_prompts"]) and p["max_prompts"] >= 0, "preferences.max_prompts", "an integer >= 0 (0 = all)")
    need(isinstance(p["pairs"], list) and p["pairs"] and all(k in PAIR_KINDS for k in p["pairs"]),
         "preferences.pairs", f"a non-empty list of {list(PAIR_KINDS)}")
    need(num(p["eval_fraction"]) and 0 < p["eval_fraction"] < 1, "preferences.eval_fraction", "a number in (0, 1)")
    need(group["margin"] in MARGINS, "margin", f"one of {list(MARGINS)}")
    need(num(group["epochs"]) and group["epochs"] > 0, "epochs", "a number > 0")
    need(integer(group["num_threads"]) and 0 <= group["num_threads"] <= 1024, "num_threads",
         "an integer in [0, 1024] (0 = torch's default)")
    need(num(group["warmup_fraction"]) and 0 <= group["warmup_fraction"] <= 1, "warmup_fraction", "a number in [0, 1]")
    for mix in ("helpfulness_mix", "safety_mix"):
        m = group[mix]
        need(isinstance(m, dict) and set(m) <= set(CATEGORIES) and all(num(v) and v >= 0 for v in m.values())
             and sum(m.values()) > 0, mix, f"a mapping of {list(CATEGORIES)} to shares >= 0 with a positive sum")
    e = group["eval"]
    need(integer(e["batch_size"]) and e["batch_size"] >= 1, "eval.batch_size", "an integer >= 1")
    need(integer(e["calibration_bins"]) and e["calibration_bins"] >= 2, "eval.calibration_bins", "an integer >= 2")
    train_d = group["train"]
    if not isinstance(train_d, dict):
        raise ValueError("key 'reward.train' must be a mapping of TrainConfig keys")
    if "max_steps" in train_d:
        raise ValueError("key 'reward.train.max_steps' is derived from reward.epochs; remove it")
    try:
        TrainConfig.from_dict({**train_d, "max_steps": 1})
    except ValueError as e:
        raise ValueError(f"reward.train: {e}") from None
    return group


# --------------------------------------------------------------------------------------------
# CLI (the rank entry point of multi-rank runs)
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    def run(config: str) -> dict:
        required = {"init_dir", "train", "run_dir", "margin", "out_dir"}
        rc = read_run_config(config, required | {"progress", "name"}, required)
        run_dir = Path(rc["run_dir"])
        records = _read_jsonl(run_dir / TRAIN_PAIRS)
        evals = _read_jsonl(run_dir / EVAL_PAIRS) if (run_dir / EVAL_PAIRS).is_file() else []
        return _train_rank(records, evals, Path(rc["init_dir"]), TrainConfig.from_dict(rc["train"]), run_dir,
                           margin=rc["margin"], out_dir=Path(rc["out_dir"]), log_fn=None,
                           progress=rc.get("progress", True), name=rc.get("name", "rm"))

    return rank_main(argv, f"python -m {MODULE}", "Train (or resume) a reward model from a run_config.json.",
                     "run_config.json written by train_reward_model", run)


if __name__ == "__main__":
    sys.exit(main())
