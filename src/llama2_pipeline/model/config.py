"""Model shapes: the :class:`ModelConfig` dataclass and the named presets.

Presets go from ``smoke`` (tests) and ``tiny`` (the CPU default profile) to the paper's 7B..70B
shapes. The feed-forward width follows Meta's rule (``multiple_of`` / ``ffn_dim_multiplier``)
unless ``ffn_dim`` is given, so ``ModelConfig.from_preset("7b").ffn_dim == 11008``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..core.schema import Config, FieldError, optional, require


@dataclass
class ModelConfig:
    """Shape and constants of a Llama decoder. Every field is plain data (JSON-serialisable)."""

    dim: int  # width of the residual stream (d_model)
    n_layers: int  # number of transformer blocks
    n_heads: int  # query heads; head_dim = dim // n_heads (must be even for RoPE)
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); None = n_heads
    ffn_dim: int | None = None  # SwiGLU hidden width; None = Meta's rule from the two fields below
    multiple_of: int = 256  # Meta's rule: round the SwiGLU width up to a multiple of this
    ffn_dim_multiplier: float | None = None  # Meta's rule: scale 8/3*dim by this before rounding
    vocab_size: int = 32000  # token ids are in [0, vocab_size); set it from the trained tokenizer
    max_seq_len: int = 2048  # longest sequence (prompt + generation); RoPE tables cover this many
    norm_eps: float = 1e-5  # RMSNorm epsilon
    rope_theta: float = 10000.0  # RoPE base wavelength
    init_std: float = 0.02  # std of the normal init; residual projections get std/sqrt(2*n_layers)
    bos_id: int | None = 1  # beginning-of-sequence token (sentencepiece default)
    eos_id: int | None = 2  # end-of-sequence token; generation stops a row when it samples it
    pad_id: int | None = None  # padding token written to exported configs; padding is always masked

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "vocab_size", "max_seq_len", "multiple_of"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if not isinstance(self.n_kv_heads, int) or self.n_kv_heads <= 0:
            raise ValueError(f"ModelConfig.n_kv_heads must be a positive integer, got {self.n_kv_heads!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads}) "
                "for grouped-query attention"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim = dim / n_heads = {self.head_dim} must be even for RoPE")
        if self.ffn_dim is None:
            hidden = int(2 * 4 * self.dim / 3)
            if self.ffn_dim_multiplier is not None:
                hidden = int(self.ffn_dim_multiplier * hidden)
            self.ffn_dim = self.multiple_of * math.ceil(hidden / self.multiple_of)
        if not isinstance(self.ffn_dim, int) or self.ffn_dim <= 0:
            raise ValueError(f"ModelConfig.ffn_dim must be a positive integer, got {self.ffn_dim!r}")
        if not self.norm_eps > 0 or not self.rope_theta > 0 or not self.init_std > 0:
            raise ValueError("ModelConfig.norm_eps, rope_theta and init_std must be positive")
        for name in ("bos_id", "eos_id", "pad_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"ModelConfig.{name} = {value} is outside the vocabulary [0, {self.vocab_size})"
                )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    # -- presets and serialisation -------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """The named shape (see ``PRESETS``), with any field overridden (e.g. ``vocab_size``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(
                f"unknown ModelConfig field(s) {unknown}; expected some of {sorted(fields)}"
            )
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Parameter count of :class:`Llama` with this config, computed without building it.

        ``exclude_embedding`` drops the input embedding table (a lookup, no FLOPs); the output
        projection is a real matmul and is always counted.
        """
        kv_dim = self.n_kv_heads * self.head_dim
        attn = self.dim * (self.dim + 2 * kv_dim) + self.dim * self.dim
        ffn = 3 * self.dim * self.ffn_dim
        per_layer = attn + ffn + 2 * self.dim  # + the two RMSNorm weights
        embedding = self.vocab_size * self.dim
        total = self.n_layers * per_layer + self.dim + embedding  # + final norm + output head
        return total if exclude_embedding else total + embedding


# Every preset uses Meta's FFN rule; the comment gives the resulting ffn_dim and parameter count.
PRESETS: dict[str, dict[str, Any]] = {
    # tests: ffn 192, ~0.14M params
    "smoke": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32, vocab_size=512,
                  max_seq_len=256),
    # CPU default profile (the whole recipe in minutes on 2 cores): ffn 384, ~1.8M params with a
    # 4096 vocab (~1.3M with the default tokenizer's 2048)
    "tiny": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, multiple_of=64, vocab_size=4096,
                 max_seq_len=512),
    # one GPU: ffn 2048, ~162M params
    "160m": dict(dim=768, n_layers=18, n_heads=12, n_kv_heads=4, vocab_size=32000,
                 max_seq_len=2048),
    # TinyLlama-1.1B shape: ffn 5632, 1,100,048,384 params
    "1b": dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, vocab_size=32000,
               max_seq_len=2048),
    # the paper's shapes (Touvron et al. 2023, table 1); 34B and 70B use GQA with 8 KV heads
    "7b": dict(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, max_seq_len=4096),  # 11008
    "13b": dict(dim=5120, n_layers=40, n_heads=40, vocab_size=32000, max_seq_len=4096),  # 13824
    "34b": dict(dim=8192, n_layers=48, n_heads=64, n_kv_heads=8, vocab_size=32000,
                max_seq_len=4096),  # 22016
    "70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096,
                ffn_dim_multiplier=1.3, vocab_size=32000, max_seq_len=4096),  # 28672
}


@dataclass(frozen=True, kw_only=True)
class ModelSpec(Config):
    """A model shape as the ``pretrain.model`` params give it: a preset and any fields to override
    (``vocab_size``, ``bos_id`` and ``eos_id`` default to the trained tokenizer's)."""

    preset: str  # a name of :data:`PRESETS`
    dim: int | None = optional(None)
    n_layers: int | None = optional(None)
    n_heads: int | None = optional(None)
    n_kv_heads: int | None = optional(None)
    ffn_dim: int | None = optional(None)
    multiple_of: int | None = optional(None)
    ffn_dim_multiplier: float | None = optional(None)
    vocab_size: int | None = optional(None)
    max_seq_len: int | None = optional(None)
    norm_eps: float | None = optional(None)
    rope_theta: float | None = optional(None)
    init_std: float | None = optional(None)

    def check(self) -> None:
        require(self.preset in PRESETS, "preset", f"one of {', '.join(PRESETS)}", self.preset)
        try:
            self.config()
        except ValueError as e:
            raise FieldError("preset", f"with these overrides does not make a model: {e}") from None

    def overrides(self) -> dict[str, Any]:
        """The fields given, as :meth:`ModelConfig.from_preset` takes them."""
        return {k: v for k, v in self.to_dict().items() if k != "preset" and v is not None}

    def config(self, **defaults: Any) -> ModelConfig:
        """The :class:`ModelConfig`; ``defaults`` (e.g. the tokenizer's vocab_size) where not overridden."""
        return ModelConfig.from_preset(self.preset, **{**defaults, **self.overrides()})


@dataclass(frozen=True, kw_only=True)
class SamplingConfig(Config):
    """How answers are sampled: greedy by default, so evaluations are comparable and deterministic."""

    max_new_tokens: int = 48  # most answer tokens
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass (1.0 = off; used when temperature > 0)
    batch_size: int = 32  # prompts per generation batch
    seed: int = optional(0)  # the sampling generator's seed (the recipe's seed)

    def check(self) -> None:
        require(self.max_new_tokens >= 1, "max_new_tokens", "an integer >= 1", self.max_new_tokens)
        require(self.temperature >= 0, "temperature", "a number >= 0", self.temperature)
        require(0 < self.top_p <= 1, "top_p", "a number in (0, 1]", self.top_p)
        require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
