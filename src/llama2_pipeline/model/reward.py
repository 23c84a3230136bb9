"""The reward model: the chat model's transformer with a scalar head on the last token (Llama 2,
section 3.2.2), its Hugging Face export and its scoring API.

* :class:`RewardModel`: the chat model's decoder (its LM head removed) and a linear head
  ``dim -> 1`` (no bias) on the final normalised hidden state of the **last token**. An input is
  ``encode_chat_prompt(prompt) + answer tokens + EOS`` (exactly :func:`encode_chat` of the
  dialogue, the way SFT saw it), so the score is read at the EOS.
* :func:`export_reward_hf`: a folder transformers loads as a one-label
  ``LlamaForSequenceClassification`` with the same scores; :meth:`RewardModel.load` reads it back.
* Scoring, batched by similar length (rejection sampling, PPO, evaluation)::

      rm = RewardModel.load("data/06_models/reward_safety")
      rm.score(["How do I kill a Python process?"], ["Use the kill command with the process id."])

Training (the margin loss, pair batches) is :mod:`llama2_pipeline.training.reward`'s.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import torch
from torch import nn

from ..core.files import atomic_path, write_json
from ..tokenizer import (
    Tokenizer,
    chat_of,
    encode_chat,
    encode_chat_prompt,
    save_hf_tokenizer,
)
from .config import ModelConfig
from .hf import (
    _read_tensors,
    config_from_hf,
    from_hf_state_dict,
    hf_config,
    load_hf,
    to_hf_state_dict,
)
from .model import Llama

SEQ_CLS = "LlamaForSequenceClassification"


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
# Inputs and batched scoring
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


def length_batches(sequences: Sequence[Sequence[int]], batch_size: int, pad_id: int):
    """``(indices, ids, last)`` batches of ``sequences`` grouped by similar length (little padding):
    the indices into ``sequences``, their right-padded ids and each row's last real index."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        yield (chunk, *pad_right([sequences[i] for i in chunk], pad_id))


@torch.no_grad()
def score_sequences(model, sequences: Sequence[Sequence[int]], batch_size: int, pad_id: int) -> list[float]:
    """Scores of token-id sequences under ``model`` (an RM or its engine), in their order; the
    batches group sequences of similar length, so little is padded. Gradients are off: the scores
    leave as floats, so no autograd graph is recorded (on a GPU it would hold every batch's
    activations)."""
    if not sequences:
        return []
    device = next(model.parameters()).device
    out = [0.0] * len(sequences)
    for chunk, ids, last in length_batches(sequences, batch_size, pad_id):
        for i, s in zip(chunk, model(ids.to(device), last_index=last.to(device)).float().cpu().tolist()):
            out[i] = s
    return out
