"""The Llama 2 decoder in one file: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Layout choices (so that :mod:`llama2_pipeline.model.hf` is a pure renaming):

* RoPE uses the Hugging Face "rotate half" layout (dimension ``i`` pairs with ``i + head_dim/2``),
  so HF ``q_proj``/``k_proj`` weights load without the permutation Meta's interleaved layout needs.
* Query, key and value projections are fused into one matrix ``wqkv`` (rows: q heads, then k
  heads, then v heads) and SwiGLU's gate and up projections into ``w13`` (rows: gate ``w1``,
  then up ``w3``), one matmul each instead of three and two. Export splits them.
* Attention is ``F.scaled_dot_product_attention`` with ``enable_gqa=True``: key/value heads are
  broadcast to their query-head group inside the kernel, never materialised per query head.

Masks: plain causal by default (flash/efficient kernel); ``doc_ids`` makes it block-diagonal
causal for packed sequences (positions then restart per document); ``attention_mask`` (1 = real
token, one column per key including cached ones) handles left padding in generation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (batch, time, heads, head_dim) by position; cos/sin: (batch|1, time, 1, head_dim).

    HF's ``x * cos + rotate_half(x) * sin`` with rotate_half(x) = [-x2, x1]; the sign lives in
    the table (``sin`` is [-sin, +sin], see :meth:`Llama.rope_tables`), saving one op.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((x2, x1), dim=-1) * sin


class KVCache:
    """Preallocated keys/values of every layer, written in place as generation advances.

    ``pos`` is the number of positions already written (the same for every row: left padding
    keeps prompts right-aligned, and the attention mask hides the padding).
    """

    def __init__(self, config: ModelConfig, batch: int, max_len: int, device=None, dtype=None) -> None:
        shape = (config.n_layers, batch, config.n_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self._k, self._v = self.k.unbind(0), self.v.unbind(0)  # per-layer views
        self.max_len, self.pos = max_len, 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k/v (B, n_kv_heads, T, head_dim) at ``pos``; return all keys/values so far."""
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > cache length {self.max_len}")
        ck, cv = self._k[layer], self._v[layer]
        ck[:, :, self.pos:end] = k
        cv[:, :, self.pos:end] = v
        return ck[:, :, :end], cv[:, :, :end]


class StaticKVCache(KVCache):
    """A :class:`KVCache` whose decode steps have static shapes, so one step can be captured in a CUDA
    graph and replayed: once ``index`` (a (1,) device tensor, the column the next token is written
    to) is set, :meth:`update` writes there with ``index_copy_`` and returns the whole preallocated
    cache; the caller hides the columns not written yet with a (B, 1, 1, max_len) attention mask.
    Before that (the prompt's prefill) it writes at ``pos`` like a :class:`KVCache`. Its one-token steps
    fold each KV head's query group into the query axis (see :class:`Attention`).
    """

    def __init__(self, config: ModelConfig, batch: int, max_len: int, device=None, dtype=None) -> None:
        super().__init__(config, batch, max_len, device=device, dtype=dtype)
        self.index: torch.Tensor | None = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.index is None:
            return super().update(layer, k, v)
        ck, cv = self._k[layer], self._v[layer]
        ck.index_copy_(2, self.index, k.to(ck.dtype))
        cv.index_copy_(2, self.index, v.to(cv.dtype))
        return ck, cv


#: devices where attention the flash kernel cannot take (a padding/document mask, or fp32) repeats
#: the KV heads instead of passing ``enable_gqa``: on CUDA that keeps SDPA off its O(T^2)-memory math
#: kernel. The CPU keeps enable_gqa (its outputs stay bit-identical to earlier runs).
REPEAT_KV_ON = ("cuda",)
FLASH_DTYPES = (torch.float16, torch.bfloat16)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_heads, self.n_kv_heads = layer, config.n_heads, config.n_kv_heads
        self.head_dim = config.head_dim
        qkv_dim = (config.n_heads + 2 * config.n_kv_heads) * self.head_dim
        self.wqkv = nn.Linear(config.dim, qkv_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * self.head_dim, config.dim, bias=False)

    def forward(self, x, cos, sin, mask, cache):
        B, T, _ = x.shape
        # split (not slicing): its backward is one cat, not a zero-filled copy per slice
        qkv = self.wqkv(x).view(B, T, -1, self.head_dim)
        qk, v = qkv.split([self.n_heads + self.n_kv_heads, self.n_kv_heads], dim=2)
        q, k = apply_rope(qk, cos, sin).split([self.n_heads, self.n_kv_heads], 2)  # q and k in one pass
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, head_dim)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        gqa = self.n_kv_heads != self.n_heads
        if gqa and T == 1 and isinstance(cache, StaticKVCache):
            # a static decoding step: the query heads sharing a KV head become that head's query rows,
            # (B, n_kv_heads, group, head_dim), so SDPA sees no GQA and takes the (B, 1, 1, S) mask in its
            # memory-efficient kernel, reading the cache once (never repeated per query head)
            y = F.scaled_dot_product_attention(q.reshape(B, self.n_kv_heads, -1, self.head_dim), k, v,
                                               attn_mask=None if isinstance(mask, bool) else mask)
            return self.wo(y.reshape(B, self.n_heads, self.head_dim).reshape(B, T, -1))
        if (gqa and T > 1 and q.device.type in REPEAT_KV_ON
                and (not isinstance(mask, bool) or q.dtype not in FLASH_DTYPES)):
            # only the flash kernel takes enable_gqa, and it needs fp16/bf16 and no explicit mask; else
            # SDPA falls back to its math kernel, which materialises the (B, heads, T, S) scores. With the
            # KV heads repeated, the memory-efficient kernel takes masks and fp32 in O(T) memory. (A
            # one-token decoding step's scores are small: it keeps enable_gqa, copying no cache.)
            k, v = (t.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1) for t in (k, v))
            gqa = False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if isinstance(mask, bool) else mask, is_causal=mask is True, enable_gqa=gqa)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.w13 = nn.Linear(config.dim, 2 * config.ffn_dim, bias=False)  # gate (w1) and up (w3)
        self.w2 = nn.Linear(config.ffn_dim, config.dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, cos, sin, mask, cache=None):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    """Decoder-only transformer: token ids (batch, time) -> logits (batch, time, vocab)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)  # untied from the input
        self.gradient_checkpointing = False  # recompute each block in backward (saves memory)
        self.loss_chunk = 0  # training losses: tokens per chunk of head + cross-entropy (0 = full logits)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None  # cos/sin tables, built lazily
        self.init_weights()

    def rope_tables(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin, (max_seq_len, head_dim) each, in the rotate-half layout:
        ``cos = [cos a, cos a]`` and ``sin = [-sin a, sin a]`` for the head_dim/2 angles ``a``.

        Built on first use for the current device/dtype (so a model materialised from the meta
        device, moved or cast needs no extra step). Angles are float32 products, exactly as Meta
        and Hugging Face compute them; cos/sin are then evaluated in float64 and rounded once.
        """
        if self._rope is None or self._rope[0].device != device or self._rope[0].dtype != dtype:
            with torch.inference_mode(False), torch.no_grad():  # usable by autograd later too
                self._rope = self._build_rope(device, dtype)
        return self._rope

    def _build_rope(self, device, dtype):
        c = self.config
        inv_freq = 1.0 / c.rope_theta ** (torch.arange(0, c.head_dim, 2, device=device).float() / c.head_dim)
        angles = torch.outer(torch.arange(c.max_seq_len, device=device).float(), inv_freq).double()
        cos, sin = angles.cos(), angles.sin()
        return torch.cat((cos, cos), dim=-1).to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-style init: N(0, init_std); residual projections (wo, w2) get init_std/sqrt(2*n_layers)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_embeddings.weight.numel() if exclude_embedding else n

    def forward(
        self,
        idx: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab), or the final normalised hidden states (B, T, dim) if ``return_hidden``.

        idx: token ids (B, T). doc_ids: (B, T) document id of each token of a packed sequence
        (a document is a run of equal ids): attention never crosses a document and positions
        restart at each one. attention_mask: (B, cache.pos + T) padding mask, 1/True for real
        tokens (padding keys are masked; positions count real tokens only, so left and right
        padding both work), or a ready boolean (B, 1, T, cache.pos + T) mask, True = may attend.
        position_ids: (B, T), overriding the derived positions. cache: a :class:`KVCache` this
        call appends to (generation; not with doc_ids).
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len {self.config.max_seq_len}")
        if doc_ids is not None and (cache is not None or attention_mask is not None):
            raise ValueError("doc_ids (packed training sequences) cannot be combined with a cache "
                             "or an attention_mask")
        if doc_ids is not None:
            doc_ids, doc_pos = documents(doc_ids)
            position_ids = doc_pos if position_ids is None else position_ids
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, start:]
            else:
                position_ids = torch.arange(start, start + T, device=idx.device).unsqueeze(0)
        cos, sin = self.rope_tables(idx.device, self.tok_embeddings.weight.dtype)
        cos, sin = cos[position_ids].unsqueeze(2), sin[position_ids].unsqueeze(2)
        mask = self._mask(T, start, idx.device, attention_mask, doc_ids)

        x = self.tok_embeddings(idx)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache)
        if cache is not None:
            cache.pos += T
        x = self.norm(x)
        return x if return_hidden else self.output(x)

    @staticmethod
    def _mask(T, start, device, attention_mask, doc_ids):
        """True: plain causal (the kernel's is_causal); False: no mask; else a bool (B, 1, T, S) mask."""
        if attention_mask is not None and attention_mask.dim() == 4:
            return attention_mask.bool()  # given as is
        if doc_ids is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
            return (causal & (doc_ids[:, :, None] == doc_ids[:, None, :])).unsqueeze(1)
        if attention_mask is None:
            if start == 0:
                return True
            if T == 1:
                return False
        S = start + T
        if T == 1:  # a decode step: the new token sees every real key, itself included
            return attention_mask.bool()[:, None, None, :S]
        q_pos = torch.arange(start, S, device=device)[:, None]
        k_pos = torch.arange(S, device=device)
        mask = (k_pos <= q_pos).unsqueeze(0)
        if attention_mask is not None:
            # a padding query sees only itself, so no row is empty (an empty row would give NaN)
            mask = (mask & attention_mask.bool()[:, None, :S]) | (k_pos == q_pos)
        return mask.unsqueeze(1)


def documents(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment index and position within the segment of each token of a packed (B, T) batch.

    A document is a maximal run of equal ``doc_ids``: [7, 7, 3, 3, 3, 7] has three documents
    (segments [0, 0, 1, 1, 1, 2], positions [0, 1, 0, 1, 2, 0]), so reusing an id is harmless.
    """
    T = doc_ids.size(1)
    idx = torch.arange(T, device=doc_ids.device).expand_as(doc_ids)
    new_doc = torch.ones_like(doc_ids, dtype=torch.bool)
    new_doc[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return new_doc.cumsum(dim=1), idx - torch.where(new_doc, idx, 0).cummax(dim=1).values
