"""Hugging Face interop without importing transformers: write and read ``LlamaForCausalLM`` folders.

A folder is ``config.json`` + ``model.safetensors`` (+ ``tokenizer.model`` if given). Our RoPE
already uses HF's rotate-half layout, so conversion is renaming plus splitting/concatenating the
fused ``wqkv`` and ``w13`` matrices; no permutation of q/k rows is needed either way.
:func:`load_hf` also reads folders written by ``save_pretrained`` (sharded safetensors with an
index, or ``pytorch_model*.bin``) for plain Llama configs (default RoPE, no biases, SiLU).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..core.files import atomic_path, write_json
from .config import ModelConfig
from .model import Llama

# one-to-one renames (ours -> HF); wqkv and w13 are split/concatenated separately
_GLOBAL = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_PER_LAYER = {"attention_norm.weight": "input_layernorm.weight",
              "ffn_norm.weight": "post_attention_layernorm.weight",
              "attention.wo.weight": "self_attn.o_proj.weight",
              "feed_forward.w2.weight": "mlp.down_proj.weight"}


def hf_config(config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """The ``config.json`` of a ``LlamaForCausalLM`` with our shape (readable by transformers 4 and 5)."""
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,  # transformers 4 spelling
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},  # 5
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": config.init_std,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": config.bos_id,
        "eos_token_id": config.eos_id,
        "pad_token_id": config.pad_id,
        "torch_dtype": dtype_name,  # transformers 4 spelling
        "dtype": dtype_name,  # 5
    }


def to_hf_state_dict(model: Llama) -> dict[str, torch.Tensor]:
    """Our parameters under HF names (fused matrices split), as contiguous CPU tensors."""
    c, sd = model.config, {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out = {hf: sd.pop(ours) for ours, hf in _GLOBAL.items()}
    for i in range(c.n_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        q, k, v = sd.pop(ours + "attention.wqkv.weight").split(
            [c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim])
        gate, up = sd.pop(ours + "feed_forward.w13.weight").chunk(2)
        out.update({hf + "self_attn.q_proj.weight": q, hf + "self_attn.k_proj.weight": k,
                    hf + "self_attn.v_proj.weight": v, hf + "mlp.gate_proj.weight": gate,
                    hf + "mlp.up_proj.weight": up})
        out.update({hf + h: sd.pop(ours + o) for o, h in _PER_LAYER.items()})
    if sd:
        raise KeyError(f"parameters without a LlamaForCausalLM name: {sorted(sd)[:5]}")
    return {k: v.contiguous() for k, v in out.items()}


def from_hf_state_dict(sd: dict[str, torch.Tensor], config: ModelConfig, source: str = "state dict") -> dict:
    """Inverse of :func:`to_hf_state_dict`; ``source`` names the origin in error messages."""
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}  # old HF buffers
    if "lm_head.weight" not in sd and "model.embed_tokens.weight" in sd:  # tied: embedding only
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise KeyError(f"{source}: missing tensor {key!r}")
        return sd.pop(key)

    out = {ours: take(hf) for ours, hf in _GLOBAL.items()}
    for i in range(config.n_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        out[ours + "attention.wqkv.weight"] = torch.cat(
            [take(hf + f"self_attn.{x}_proj.weight") for x in "qkv"])
        out[ours + "feed_forward.w13.weight"] = torch.cat(
            [take(hf + "mlp.gate_proj.weight"), take(hf + "mlp.up_proj.weight")])
        out.update({ours + o: take(hf + h) for o, h in _PER_LAYER.items()})
    if sd:
        raise KeyError(f"{source}: unexpected tensors {sorted(sd)[:5]} (biases or another architecture?)")
    return out


def export_hf(model: Llama, out_dir: str | os.PathLike, tokenizer_model_path: str | os.PathLike | None = None,
              dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as a transformers ``LlamaForCausalLM`` folder (atomically); return its path.

    dtype: tensor dtype to store (default: the model's). ``tokenizer_model_path``: a sentencepiece
    ``.model`` file copied to ``tokenizer.model``.
    """
    dtype = dtype or model.tok_embeddings.weight.dtype
    tensors = {k: v.to(dtype).contiguous() for k, v in to_hf_state_dict(model).items()}
    with atomic_path(out_dir, is_dir=True) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "config.json", hf_config(model.config, dtype))
        if tokenizer_model_path is not None:
            shutil.copyfile(tokenizer_model_path, tmp / "tokenizer.model")
    return Path(out_dir)


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """A :class:`ModelConfig` from an HF Llama ``config.json`` dict; unsupported variants raise."""
    if hf.get("model_type") != "llama":
        raise ValueError(f"{source}: model_type is {hf.get('model_type')!r}, expected 'llama'")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    scaling_type = scaling.get("rope_type", scaling.get("type", "default"))
    for rope_type in (rope.get("rope_type", "default"), scaling_type):
        if rope_type != "default":
            raise ValueError(f"{source}: RoPE type {rope_type!r} is not supported (only 'default')")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError(f"{source}: only SiLU activations without biases are supported")
    n_heads = hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // n_heads):
        raise ValueError(f"{source}: head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
    eos = hf.get("eos_token_id", 2)
    return ModelConfig(
        dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, ffn_dim=hf["intermediate_size"],
        vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        init_std=hf.get("initializer_range", 0.02), bos_id=hf.get("bos_token_id"),
        eos_id=eos[0] if isinstance(eos, list) else eos, pad_id=hf.get("pad_token_id"))


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    for index_name, loader in (("model.safetensors.index.json", load_file),
                               ("pytorch_model.bin.index.json", _load_bin)):
        if (folder / index_name).exists():
            shards = sorted(set(json.loads((folder / index_name).read_text())["weight_map"].values()))
            return {k: v for s in shards for k, v in loader(str(folder / s)).items()}
    if (folder / "model.safetensors").exists():
        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").exists():
        return _load_bin(str(folder / "pytorch_model.bin"))
    raise FileNotFoundError(f"{folder}: no model.safetensors, pytorch_model.bin or shard index")


def _load_bin(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def default_device() -> str:
    """Where the stages put models that are not trained through DeepSpeed (sampling, scoring, PPO,
    evaluation): ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def release_device_memory() -> None:
    """Collect dropped models (reference cycles too) and hand the GPU's cached blocks back, so the
    next node of the same process (a round's evaluation after PPO) starts with the memory free."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_hf(path: str | os.PathLike, dtype: torch.dtype | None = None,
            device: str | torch.device = "cpu") -> Llama:
    """Import an HF Llama folder (ours or ``save_pretrained``'s) as a :class:`Llama`.

    dtype: convert to this dtype (default: keep the stored one). Weights are assigned, not
    copied into a randomly initialised model (the model is built on the meta device).
    """
    folder = Path(path)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: no config.json (not a Hugging Face model folder)")
    config = config_from_hf(json.loads((folder / "config.json").read_text()), str(folder / "config.json"))
    sd = from_hf_state_dict(_read_tensors(folder), config, source=str(folder))
    with torch.device("meta"):
        model = Llama(config)
    sd = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()
