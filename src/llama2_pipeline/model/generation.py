"""Batched sampling with a static KV cache.

Prompts of different lengths are left-padded into one batch (so every row's next token is at the
same column); the padding is hidden by an attention mask and each row's RoPE positions count its
own tokens only, so a padded row generates exactly what it would generate alone.

Log-probabilities: ``logprobs[i][t]`` is ``log softmax(logits)[token]`` of the chosen token under
the model's raw logits at temperature 1, *before* temperature and top-p are applied; this is the
policy probability PPO needs (the sampling distribution only decides which token is chosen).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from .model import KVCache, Llama


CUDA_CHECK_EVERY = 16  # tokens between finished-checks on CUDA (each costs one host sync)


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # new tokens per prompt, up to and including the EOS token if sampled
    logprobs: list[list[float]]  # per token: log p(token) under the model's logits at temperature 1
    finished: list[bool]  # True where the row stopped at EOS, False where it hit max_new_tokens


def _inverse_cdf(probs: torch.Tensor, n: int, generator) -> torch.Tensor:
    """``n`` independent draws per row from (unnormalised) ``probs`` (B, V): (B, n) token ids.

    One uniform number per draw and a binary search in the CDF: much cheaper on CPU than
    ``torch.multinomial``. With u in (0, total], the first index whose cumulative mass reaches u
    always has positive probability.
    """
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(probs.size(0), n, generator=generator, device=probs.device, dtype=cdf.dtype)
    return torch.searchsorted(cdf, (1.0 - u) * cdf[:, -1:]).clamp_(max=probs.size(-1) - 1)


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
    """One token per row: argmax if temperature == 0, else from softmax(logits / temperature)
    restricted to the nucleus (the most likely tokens whose mass reaches top_p; ties kept)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return _inverse_cdf(probs, 1, generator).squeeze(1)
    # Rejection sampling, exact and sort-free: draw candidates from the full distribution and
    # keep the first inside the nucleus (token i is inside iff the mass of strictly more likely
    # tokens is < top_p). Each draw is accepted with probability >= top_p; rows whose draws
    # all miss fall back to sorting.
    cand = _inverse_cdf(probs, 2, generator)  # (B, 2)
    p_cand = probs.gather(-1, cand)
    above = probs.unsqueeze(1) > p_cand.unsqueeze(2)  # (B, 2, V)
    mass_above = torch.where(above, probs.unsqueeze(1), 0.0).sum(-1)
    inside = mass_above < top_p
    tok = cand.gather(-1, inside.int().argmax(dim=-1, keepdim=True)).squeeze(1)
    missed = ~inside.any(dim=-1)
    if bool(missed.any()):
        sorted_p, sorted_idx = probs[missed].sort(dim=-1, descending=True)
        kept = ((sorted_p.cumsum(dim=-1) - sorted_p) < top_p).sum(-1, keepdim=True)  # >= 1
        sorted_p[sorted_p < sorted_p.gather(-1, kept - 1)] = 0.0  # same nucleus, ties kept
        choice = _inverse_cdf(sorted_p, 1, generator)
        tok[missed] = sorted_idx.gather(-1, choice).squeeze(1)
    return tok


@torch.inference_mode()
def generate(
    model: Llama,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_id: int | Iterable[int] | None = None,
    generator: torch.Generator | None = None,
    check_every: int | None = None,
) -> GenerationOutput:
    """Sample up to ``max_new_tokens`` tokens after each prompt.

    prompts: token-id lists (any lengths >= 1) or a (batch, time) tensor of equal-length prompts.
    temperature: 0 means greedy (argmax). top_p: nucleus sampling mass (1.0 = off).
    eos_id: stop a row once it emits this token (or any of these); ``None`` = ``config.eos_id``,
    an empty list = never stop early. generator: a ``torch.Generator`` on the model's device for
    seeded sampling (``None`` uses the global RNG). check_every: look whether every row has
    finished (a host sync) only every this many tokens; ``None`` = every token on CPU, every
    :data:`CUDA_CHECK_EVERY` on CUDA, so the GPU is never idle waiting for the host. The outputs
    do not depend on it: rows are independent, and tokens after a row's EOS are cut off.
    """
    if check_every is not None and check_every < 1:
        raise ValueError(f"check_every must be >= 1 token, got {check_every}")
    if max_new_tokens < 0 or temperature < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need max_new_tokens >= 0, temperature >= 0, 0 < top_p <= 1; got "
                         f"{max_new_tokens}, {temperature}, {top_p}")
    cfg = model.config
    device = model.tok_embeddings.weight.device
    check_every = check_every or (CUDA_CHECK_EVERY if device.type == "cuda" else 1)
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    prompts = [list(p) for p in prompts]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and every prompt needs >= 1 token")
    eos = [cfg.eos_id] if eos_id is None and cfg.eos_id is not None else (
        [] if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id))
    B, L = len(prompts), max(len(p) for p in prompts)
    if L + max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"longest prompt ({L}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"max_seq_len ({cfg.max_seq_len})")
    if max_new_tokens == 0:
        return GenerationOutput([[] for _ in prompts], [[] for _ in prompts], [False] * B)

    bad = next(((i, t) for i, p in enumerate(prompts) for t in p if not 0 <= t < cfg.vocab_size), None)
    if bad is not None:
        raise ValueError(f"prompt {bad[0]} has token id {bad[1]} outside the vocabulary "
                         f"[0, {cfg.vocab_size})")
    pad = cfg.pad_id if cfg.pad_id is not None else 0
    idx = torch.tensor([[pad] * (L - len(p)) + p for p in prompts], dtype=torch.long, device=device)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    padded = bool((lengths < L).any())
    mask = torch.zeros(B, L + max_new_tokens, dtype=torch.bool, device=device)
    mask[:, :L] = torch.arange(L, device=device) >= (L - lengths)[:, None]
    positions = (mask[:, :L].long().cumsum(-1) - 1).clamp_min(0)
    eos_t = torch.tensor(eos, dtype=torch.long, device=device)

    was_training = model.training
    model.eval()
    cache = KVCache(cfg, B, L + max_new_tokens, device=device, dtype=model.tok_embeddings.weight.dtype)
    out_tokens = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)
    lp_dtype = torch.promote_types(model.tok_embeddings.weight.dtype, torch.float32)  # fp32, or fp64
    out_logprobs = torch.empty(B, max_new_tokens, dtype=lp_dtype, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    try:
        # prefill: the whole prompt, but the output head only on the last column
        hidden = model(idx, attention_mask=mask[:, :L] if padded else None, position_ids=positions,
                       cache=cache, return_hidden=True)
        logits = model.output(hidden[:, -1])
        next_pos = lengths.unsqueeze(1)  # (B, 1): position of the token being fed next
        steps = 0
        for t in range(max_new_tokens):
            tok = _sample(logits, temperature, top_p, generator)
            out_tokens[:, t] = tok
            logp = torch.log_softmax(logits.to(lp_dtype), dim=-1)  # temperature 1, before top-p
            out_logprobs[:, t] = logp.gather(-1, tok[:, None]).squeeze(1)
            steps = t + 1
            if len(eos):
                done |= torch.isin(tok, eos_t)
                if (t + 1) % check_every == 0 and bool(done.all()):
                    break
            if t + 1 == max_new_tokens:
                break
            mask[:, L + t] = True
            hidden = model(tok[:, None], attention_mask=mask[:, :L + t + 1] if padded else None,
                           position_ids=next_pos, cache=cache, return_hidden=True)
            logits = model.output(hidden[:, -1])
            next_pos = next_pos + 1
    finally:
        model.train(was_training)

    tokens, logprobs, finished = [], [], []
    eos_set = set(eos)
    for row_tok, row_lp in zip(out_tokens[:, :steps].tolist(), out_logprobs[:, :steps].tolist()):
        end = next((i + 1 for i, x in enumerate(row_tok) if x in eos_set), None)
        finished.append(end is not None)
        end = end or steps
        tokens.append(row_tok[:end])
        logprobs.append(row_lp[:end])
    return GenerationOutput(tokens, logprobs, finished)
