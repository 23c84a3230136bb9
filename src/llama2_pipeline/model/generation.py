"""Batched sampling with a static KV cache.

Prompts of different lengths are left-padded into one batch (so every row's next token is at the
same column); the padding is hidden by an attention mask and each row's RoPE positions count its
own tokens only, so a padded row generates exactly what it would generate alone.

Decoding (``decode``): ``eager`` runs each new token's forward over the cache written so far;
``static`` gives every decoding step the same shapes (the token is written at a position held in a
device tensor, attention covers the whole preallocated cache behind a mask), and ``graph`` captures
that static step once in a CUDA graph and replays it per token: one launch instead of the ~15 kernel
launches per layer that bound eager decoding of a small batch on a GPU. ``auto`` (the default) is
``graph`` on CUDA and ``eager`` elsewhere (the CPU never captures graphs).

Finished rows (eager decoding): a row that has emitted EOS is dropped from the batch's forward (its
cache rows with it) once a quarter of the batch has finished, so a batch whose answers are mostly
short stops paying for the long ones' padding. Sampling draws the same three uniform numbers per row
and token whether a row is still in the batch or not, so which rows are dropped, and when, changes no
row's tokens.

Log-probabilities: ``logprobs[i][t]`` is ``log softmax(logits)[token]`` of the chosen token under
the model's raw logits at temperature 1, *before* temperature and top-p are applied; this is the
policy probability PPO needs (the sampling distribution only decides which token is chosen).
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from .model import KVCache, Llama, StaticKVCache

CUDA_CHECK_EVERY = 16  # tokens between finished-checks on CUDA (each costs one host sync)
DECODE_MODES = ("auto", "eager", "static", "graph")
STATIC_ALIGN = 64  # static caches are this many columns longer at most: calls whose prompt lengths differ
                   # a little reuse one captured graph, and the mask's rows stay aligned for SDPA's kernels


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # new tokens per prompt, up to and including the EOS token if sampled
    logprobs: list[list[float]]  # per token: log p(token) under the model's logits at temperature 1
    finished: list[bool]  # True where the row stopped at EOS, False where it hit max_new_tokens


UNIFORMS = 3  # uniform numbers drawn per row and sampled token: two candidates and the sorted fallback's
COMPACT_SHARE = 0.25  # eager decoding drops finished rows once this share of the rows still in the batch has finished


def _uniforms(rows: int, generator, device) -> torch.Tensor:
    """The (rows, :data:`UNIFORMS`) uniform numbers of one sampling step: drawn for every row of the
    call, in the batch or not, so a row's draws never depend on which other rows are still decoding."""
    return torch.rand(rows, UNIFORMS, generator=generator, device=device)


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One draw per column of ``u`` (B, n) uniform numbers in [0, 1) from each row of (unnormalised)
    ``probs`` (B, V): (B, n) token ids.

    A binary search in the CDF: much cheaper on CPU than ``torch.multinomial``. With the target
    (1 - u) * total in (0, total], the first index whose cumulative mass reaches it always has
    positive probability.
    """
    cdf = probs.cumsum(dim=-1)
    return torch.searchsorted(cdf, (1.0 - u.to(cdf.dtype)) * cdf[:, -1:]).clamp_(max=probs.size(-1) - 1)


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator,
            sync_free: bool = False, u: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row: argmax if temperature == 0, else from softmax(logits / temperature)
    restricted to the nucleus (the most likely tokens whose mass reaches top_p; ties kept).

    u: the rows' (B, :data:`UNIFORMS`) uniform numbers (:func:`_uniforms`); drawn from ``generator``
    if not given. Every row uses its own three, whichever path it takes, so a row's token depends on
    its logits and its numbers only.
    sync_free: never ask the device whether a row needs the sorted fallback (a host sync per token);
    compute it for every row and keep it where needed (CUDA, where a sort of the batch is cheap).
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    if u is None:
        u = _uniforms(logits.size(0), generator, logits.device)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return _inverse_cdf(probs, u[:, :1]).squeeze(1)
    # Rejection sampling, exact and sort-free: draw candidates from the full distribution and
    # keep the first inside the nucleus (token i is inside iff the mass of strictly more likely
    # tokens is < top_p). Each draw is accepted with probability >= top_p; rows whose draws
    # all miss fall back to sorting.
    cand = _inverse_cdf(probs, u[:, :2])  # (B, 2)
    p_cand = probs.gather(-1, cand)
    above = probs.unsqueeze(1) > p_cand.unsqueeze(2)  # (B, 2, V)
    mass_above = torch.where(above, probs.unsqueeze(1), 0.0).sum(-1)
    inside = mass_above < top_p
    tok = cand.gather(-1, inside.int().argmax(dim=-1, keepdim=True)).squeeze(1)
    missed = ~inside.any(dim=-1)
    if sync_free:
        return torch.where(missed, _nucleus(probs, top_p, u[:, 2:]), tok)
    if bool(missed.any()):
        tok[missed] = _nucleus(probs[missed], top_p, u[missed, 2:])
    return tok


def _nucleus(probs: torch.Tensor, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """One draw per row from the nucleus of ``probs`` (B, V), by sorting; ``u`` (B, 1) uniform numbers."""
    sorted_p, sorted_idx = probs.sort(dim=-1, descending=True)
    kept = ((sorted_p.cumsum(dim=-1) - sorted_p) < top_p).sum(-1, keepdim=True)  # >= 1
    sorted_p[sorted_p < sorted_p.gather(-1, kept - 1)] = 0.0  # same nucleus, ties kept
    choice = _inverse_cdf(sorted_p, u)
    return sorted_idx.gather(-1, choice).squeeze(1)


def _keep_rows(cache: KVCache, rows: torch.Tensor) -> None:
    """Keep only the batch rows ``rows`` (indices into the current batch) of an eager decoding cache."""
    cache.k, cache.v = cache.k.index_select(1, rows), cache.v.index_select(1, rows)
    cache._k, cache._v = cache.k.unbind(0), cache.v.unbind(0)


class _StaticDecoder:
    """The static-shape decoding step of :func:`generate`: its inputs (token, position, write column,
    mask) live in fixed device buffers, so the step can be captured in a CUDA graph once and
    replayed; the cache's length ``max_len`` covers prompt + new tokens, rounded up."""

    def __init__(self, model: Llama, batch: int, max_len: int, device, dtype) -> None:
        self.cache = StaticKVCache(model.config, batch, max_len, device=device, dtype=dtype)
        self.mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.index = torch.zeros(1, dtype=torch.long, device=device)
        self.lengths = torch.zeros(batch, 1, dtype=torch.long, device=device)  # each row's prompt tokens
        self.prompt_len = 0  # columns of the (left-padded) prompts
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_failed = False
        self.logits: torch.Tensor | None = None

    def prefill(self, model: Llama, idx, mask, positions, padded: bool) -> torch.Tensor:
        """The prompt's forward (eager), writing columns [0, L) of the cache; the last column's logits."""
        L = self.prompt_len = idx.size(1)
        self.cache.index, self.cache.pos = None, 0
        self.mask.zero_()
        self.mask[:, :L] = mask[:, :L]
        self.lengths.copy_(mask[:, :L].sum(-1, keepdim=True))
        hidden = model(idx, attention_mask=mask[:, :L] if padded else None, position_ids=positions,
                       cache=self.cache, return_hidden=True)
        self.cache.index = self.index
        return model.output(hidden[:, -1])

    def _forward(self, model: Llama) -> torch.Tensor:
        hidden = model(self.tok, attention_mask=self.mask[:, None, None, :], position_ids=self.pos,
                       cache=self.cache, return_hidden=True)
        return model.output(hidden[:, -1])

    def step(self, model: Llama, tok: torch.Tensor, column: int, graph: bool) -> torch.Tensor:
        """Feed ``tok`` (B,) at cache column ``column`` (each row's next position); the next logits."""
        self.tok.copy_(tok[:, None])
        self.index.fill_(column)
        self.mask[:, column] = True
        torch.add(self.lengths, column - self.prompt_len, out=self.pos)
        self.cache.pos = column  # (only the Python-side length check reads it)
        if graph and self.graph is None and not self.capture_failed:
            self._capture(model)
        if self.graph is None:
            return self._forward(model)
        self.graph.replay()
        return self.logits

    def _capture(self, model: Llama) -> None:
        """Warm up on a side stream (the step is idempotent: it rewrites the same column), then capture.
        Autocast's weight-cast cache is off inside, so the casts are part of the graph: a replay after
        the weights changed in place (PPO's optimiser) reads the new weights."""
        dev = self.tok.device.type
        autocast = (torch.autocast(dev, dtype=torch.get_autocast_dtype(dev), cache_enabled=False)
                    if torch.is_autocast_enabled(dev) else contextlib.nullcontext())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), autocast:
            for _ in range(2):
                self._forward(model)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph), autocast:
                self.logits = self._forward(model)
        except RuntimeError as e:  # a setup the capture does not support: decode the same step eagerly
            self.capture_failed = True
            warnings.warn(f"generate: capturing the decoding step in a CUDA graph failed ({e}); this "
                          "decoder runs the same static step eagerly", RuntimeWarning, stacklevel=4)
            return
        self.graph = graph


#: one captured decoder per model (weakly: it goes with the model), reused while the batch, cache
#: length, dtypes and parameter storages are the same
_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def release_decoders() -> None:
    """Drop every captured decoding graph and its cache (they otherwise live as long as their model)."""
    _DECODERS.clear()


def _static_decoder(model: Llama, batch: int, needed: int, device, graph: bool) -> _StaticDecoder:
    cfg = model.config
    max_len = min(-(-needed // STATIC_ALIGN) * STATIC_ALIGN, cfg.max_seq_len)
    weight_dtype = model.tok_embeddings.weight.dtype
    autocast = torch.is_autocast_enabled(device.type)
    dtype = torch.get_autocast_dtype(device.type) if autocast and weight_dtype == torch.float32 else weight_dtype
    if not graph:
        return _StaticDecoder(model, batch, max_len, device, dtype)
    key = (batch, max_len, dtype, str(device), autocast, tuple(p.data_ptr() for p in model.parameters()))
    held = _DECODERS.get(model)
    if held is None or held[0] != key:
        _DECODERS.pop(model, None)  # free the old graph's pool before allocating the new one
        held = (key, _StaticDecoder(model, batch, max_len, device, dtype))
        _DECODERS[model] = held
    return held[1]


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
    decode: str = "auto",
    drop_finished: bool = True,
) -> GenerationOutput:
    """Sample up to ``max_new_tokens`` tokens after each prompt.

    prompts: token-id lists (any lengths >= 1) or a (batch, time) tensor of equal-length prompts.
    temperature: 0 means greedy (argmax). top_p: nucleus sampling mass (1.0 = off).
    eos_id: stop a row once it emits this token (or any of these); ``None`` = ``config.eos_id``,
    an empty list = never stop early. generator: a ``torch.Generator`` on the model's device for
    seeded sampling (``None`` uses the global RNG). check_every: look whether every row has
    finished (a host sync) only every this many tokens; ``None`` = every token on CPU, every
    :data:`CUDA_CHECK_EVERY` on CUDA, so the GPU is never idle waiting for the host. The outputs
    do not depend on it: rows are independent (each row's sampling draws are its own), and tokens
    after a row's EOS are cut off. Eager decoding drops finished rows from the batch at these checks
    (see the module's docstring).
    decode: ``eager`` | ``static`` | ``graph`` (a CUDA graph per step, CUDA only) | ``auto`` (graph on
    CUDA, else eager); see the module's docstring. ``static`` and ``graph`` compute the same step, so
    they give the same tokens; against ``eager`` the attention sums over a longer (masked) cache, equal
    up to float rounding. A captured graph is kept with the model (weakly) and reused by the next call
    of the same batch size and cache length. drop_finished: eager decoding leaves finished rows out
    of the forward (the module's docstring); ``False`` keeps every row to the end (the same tokens,
    logprobs equal up to float rounding: a smaller batch may round differently).
    """
    if check_every is not None and check_every < 1:
        raise ValueError(f"check_every must be >= 1 token, got {check_every}")
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}; got {decode!r}")
    if max_new_tokens < 0 or temperature < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need max_new_tokens >= 0, temperature >= 0, 0 < top_p <= 1; got "
                         f"{max_new_tokens}, {temperature}, {top_p}")
    cfg = model.config
    device = model.tok_embeddings.weight.device
    check_every = check_every or (CUDA_CHECK_EVERY if device.type == "cuda" else 1)
    if decode == "auto":
        decode = "graph" if device.type == "cuda" else "eager"
    if decode == "graph" and device.type != "cuda":
        raise ValueError(f"decode='graph' captures the decoding step in a CUDA graph: the model is on {device}, "
                         "not a CUDA device (use decode='static' or 'eager')")
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
    sync_free = device.type == "cuda"
    out_tokens = torch.zeros(B, max_new_tokens, dtype=torch.long, device=device)
    lp_dtype = torch.promote_types(model.tok_embeddings.weight.dtype, torch.float32)  # fp32, or fp64
    out_logprobs = torch.zeros(B, max_new_tokens, dtype=lp_dtype, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    rows: torch.Tensor | None = None  # eager decoding: the call's rows still in the batch (None: all)
    try:
        # prefill: the whole prompt, but the output head only on the last column
        if decode == "eager":
            cache = KVCache(cfg, B, L + max_new_tokens, device=device, dtype=model.tok_embeddings.weight.dtype)
            hidden = model(idx, attention_mask=mask[:, :L] if padded else None, position_ids=positions,
                           cache=cache, return_hidden=True)
            logits = model.output(hidden[:, -1])
        else:
            static = _static_decoder(model, B, L + max_new_tokens, device, graph=decode == "graph")
            logits = static.prefill(model, idx, mask, positions, padded)
        next_pos = lengths.unsqueeze(1)  # (B, 1): position of the token being fed next
        steps = 0
        for t in range(max_new_tokens):
            u = _uniforms(B, generator, device) if temperature > 0 else None
            if rows is not None and u is not None:
                u = u[rows]
            tok = _sample(logits, temperature, top_p, generator, sync_free, u=u)
            logp = torch.log_softmax(logits.to(lp_dtype), dim=-1)  # temperature 1, before top-p
            lp = logp.gather(-1, tok[:, None]).squeeze(1)
            if rows is None:
                out_tokens[:, t], out_logprobs[:, t] = tok, lp
            else:
                out_tokens[rows, t], out_logprobs[rows, t] = tok, lp
            steps = t + 1
            if t + 1 == max_new_tokens:
                break
            if len(eos):
                ended = torch.isin(tok, eos_t)
                if rows is None:
                    done |= ended
                else:
                    done.index_fill_(0, rows[ended], True)
                if (t + 1) % check_every == 0:
                    if bool(done.all()):
                        break
                    if decode == "eager" and drop_finished:
                        live = ~(done if rows is None else done[rows])
                        n_live = int(live.sum())
                        if n_live <= (1.0 - COMPACT_SHARE) * live.numel():  # drop the finished rows
                            keep = live.nonzero().squeeze(1)
                            rows = keep if rows is None else rows[keep]
                            _keep_rows(cache, keep)
                            tok, mask, next_pos = tok[keep], mask[keep], next_pos[keep]
            if decode != "eager":
                logits = static.step(model, tok, L + t, graph=decode == "graph")
                continue
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
