"""The arithmetic of Llama 2's PPO (Touvron et al., 2023, section 3.2.3), separate from any model.

Per prompt ``p`` and sampled answer ``g`` the paper optimises

    R(g | p) = R~_c(g | p) - beta * D_KL(pi_theta(g | p) || pi_0(g | p))
    R_c(g | p) = R_s(g | p)  if IS_SAFETY(p) or R_s(g | p) < 0.15   else R_h(g | p)
    R~_c(g | p) = WHITEN(LOGIT(R_c(g | p)))

with ``R_s``, ``R_h`` the safety and helpfulness reward models read as probabilities (the sigmoid
of their scalar score), ``pi_0`` the round's initial policy, beta 0.01 (7B, 13B) or 0.005, and
PPO's clipped surrogate on advantages from GAE (gamma 1, lambda 0.95).

Tensors are ``(batch, answer_tokens)`` with a ``mask`` of real answer tokens (1) and padding (0)
after each answer's end; answers are left-aligned (token 0 is the first answer token). Nothing
here imports Kedro or MLflow.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .config import PPOConfig


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None,
                count: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (all of them, or along ``dim``).
    ``count``: divide the masked sum by this instead of ``mask.sum()`` (a micro-batch's share of a
    minibatch's mean: the shares of its micro-batches add up to the minibatch's mean)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / (mask.sum().clamp(min=1) if count is None else count)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / std`` over the batch (the masked positions only, if a mask is given); with
    ``shift_mean=False`` the mean is added back (scale only). One element: unchanged."""
    m = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    n = m.sum()
    if n < 2:
        return x
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / (n - 1)  # unbiased, as torch.std
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m if mask is not None else out


def logit(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """log(p / (1 - p)), with ``p`` clamped to [eps, 1 - eps] so that 0 and 1 stay finite."""
    p = p.clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


def combined_reward(helpfulness: torch.Tensor, safety: torch.Tensor, is_safety: torch.Tensor,
                    threshold: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's piecewise R_c and which answers used the safety score: the one R_c of the
    recipe (rejection sampling, PPO, the headroom benchmark's perfect judge).

    Args:
        helpfulness, safety: R_h and R_s per answer as probabilities in [0, 1] (an RM's score
            through a sigmoid, or the world's scores), shape (B,).
        is_safety: True where the prompt is safety-tagged, shape (B,).
        threshold: R_s below it selects the safety score on any prompt (paper: 0.15).

    Returns ``(R_c, used_safety)``.
    """
    used_safety = is_safety.bool() | (safety < threshold)
    return torch.where(used_safety, safety, helpfulness), used_safety


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(a_t) - log pi_0(a_t) on the sampled tokens (its sum estimates KL(pi || pi_0) of the
    answer); zero on padding."""
    return (logprobs - ref_logprobs) * mask.to(logprobs.dtype)


def token_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """Per-token rewards: -beta * KL term on every answer token, plus the answer's score on its
    last real token. Shape (B, T); zero on padding. An answer with no tokens gets nothing."""
    rewards = -beta * kl_per_token(logprobs, ref_logprobs, mask)
    lengths = mask.long().sum(-1)
    rows = torch.nonzero(lengths > 0).squeeze(-1)
    rewards[rows, lengths[rows] - 1] += score[rows].to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over answer tokens.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, where
    the value after an answer's last token is 0 (the episode ends). Returns ``(advantages,
    returns = advantages + values)``, both zero on padding.
    """
    m = mask.to(values.dtype)
    T = rewards.shape[-1]
    adv = torch.zeros_like(values)
    next_value = torch.zeros_like(values[..., 0])
    next_adv = torch.zeros_like(values[..., 0])
    for t in reversed(range(T)):
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        a = (delta + gamma * lam * next_adv) * m[..., t]
        adv[..., t] = a
        next_value = values[..., t] * m[..., t]
        next_adv = a
    return adv, (adv + values) * m


def ppo_losses(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
               values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2, value_clip: float = 0.2,
               n_tokens: torch.Tensor | float | None = None) -> dict[str, torch.Tensor]:
    """PPO's clipped surrogate and clipped value loss, averaged over answer tokens.

    ``policy_loss = mean(max(-A * ratio, -A * clip(ratio, 1 - clip, 1 + clip)))`` with
    ``ratio = exp(logp - old_logp)``; ``value_loss = 0.5 * mean(max((V - G)^2, (V_clip - G)^2))``
    with ``V_clip = old_V + clip(V - old_V, -value_clip, value_clip)``. Also returns
    ``clip_frac`` (share of tokens whose ratio was clipped), ``approx_kl`` (mean of
    ``0.5 * (logp - old_logp)^2``) and ``value_clip_frac``.

    ``n_tokens``: the ``count`` of :func:`masked_mean` (a micro-batch's share of a minibatch's values).
    """
    def mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return masked_mean(x, m, count=n_tokens)

    ratio = torch.exp(logprobs - old_logprobs)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1 - clip, 1 + clip)
    policy_loss = mean(torch.maximum(pg1, pg2), mask)
    v_clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
    vl1, vl2 = (values - returns) ** 2, (v_clipped - returns) ** 2
    value_loss = 0.5 * mean(torch.maximum(vl1, vl2), mask)
    with torch.no_grad():
        clip_frac = mean((pg2 > pg1).to(logprobs.dtype), mask)
        value_clip_frac = mean((vl2 > vl1).to(values.dtype), mask)
        approx_kl = mean(0.5 * (logprobs - old_logprobs) ** 2, mask)
    return {"policy_loss": policy_loss, "value_loss": value_loss, "clip_frac": clip_frac,
            "value_clip_frac": value_clip_frac, "approx_kl": approx_kl}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's next-token distribution, shape ``logits.shape[:-1]``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log-probability of each of ``tokens`` under ``logits`` at the same position, fp32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


# --------------------------------------------------------------------------------------------
# The PPO loop: rollouts with the KV cache, a value model, clipped updates
# --------------------------------------------------------------------------------------------

class ValueModel(nn.Module):
    """A Llama backbone with a scalar head read at every position: V(state before each token)."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    @classmethod
    def from_reward_model(cls, rm: nn.Module) -> "ValueModel":
        """The paper initialises the value model from the reward model: a copy of its weights."""
        return cls(copy.deepcopy(rm.backbone), copy.deepcopy(rm.head))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.backbone(input_ids, attention_mask=attention_mask, return_hidden=True)
        return self.head(hidden).squeeze(-1)


@dataclasses.dataclass
class Rollouts:
    """A step's samples, laid out ``[left-padded prompt | answer, right-padded]`` in ``ids``."""

    ids: torch.Tensor            # (B, P + A) token ids
    attention: torch.Tensor      # (B, P + A) 1 on real tokens
    mask: torch.Tensor           # (B, A) 1 on real answer tokens
    prompt_len: int              # P: the answer region starts there
    answers: list[list[int]]     # answer token ids (EOS included when sampled)
    scores: torch.Tensor         # (B,) each answer's score from score_fn (before whitening and the KL term)
    logprobs: torch.Tensor       # (B, A) policy log-probs of the answer tokens when sampled
    ref_logprobs: torch.Tensor   # (B, A) reference-policy log-probs
    values: torch.Tensor         # (B, A) value estimates when sampled
    advantages: torch.Tensor     # (B, A)
    returns: torch.Tensor        # (B, A)


def _answer_slice(x: torch.Tensor, prompt_len: int, answer_len: int) -> torch.Tensor:
    """Positions whose outputs predict the answer tokens: P-1 .. P+A-2."""
    return x[:, prompt_len - 1: prompt_len - 1 + answer_len]


def answer_logprobs(model: nn.Module, ids: torch.Tensor, attention: torch.Tensor, prompt_len: int,
                    with_entropy: bool = False):
    """Log-probs (B, A) of the answer tokens under ``model`` (and the entropies, if asked)."""
    A = ids.shape[1] - prompt_len
    logits = _answer_slice(model(ids, attention_mask=attention), prompt_len, A)
    lp = logprobs_of(logits, ids[:, prompt_len:])
    return (lp, entropy_from_logits(logits)) if with_entropy else lp


def answer_values(value_model: nn.Module, ids: torch.Tensor, attention: torch.Tensor, prompt_len: int) -> torch.Tensor:
    return _answer_slice(value_model(ids, attention_mask=attention), prompt_len, ids.shape[1] - prompt_len).float()


class PPOTrainer:
    """PPO on a Llama policy against a frozen reference (the round's initial policy).

    ``score_fn(prompts, answers) -> (B,) tensor``: the score of each answer, given the prompt and
    answer token ids (the RLHF stage passes LOGIT(R_c) of both RMs); the trainer whitens it over
    the step's rollouts (``whiten_rewards``) and subtracts the KL penalty. The logged ``reward``
    is the mean score before whitening.
    Each :meth:`step` samples ``rollouts`` prompts, scores them, and updates the policy and the
    value model; it returns the step's statistics (mean reward, KL, entropy, clip fraction,
    value loss, answer length). CPU runs are deterministic for a seed.
    """

    def __init__(self, policy: nn.Module, value_model: nn.Module, score_fn: Callable[..., torch.Tensor],
                 config: PPOConfig | dict, *, reference: nn.Module | None = None) -> None:
        self.cfg = config if isinstance(config, PPOConfig) else PPOConfig.from_dict(config, "ppo")
        self.policy, self.value_model, self.score_fn = policy, value_model, score_fn
        self.reference = (reference if reference is not None else copy.deepcopy(policy)).eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        cfg = self.cfg
        self.policy_opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-5,
                                            weight_decay=cfg.weight_decay)
        self.value_opt = torch.optim.AdamW(value_model.parameters(), lr=cfg.value_lr, betas=(0.9, 0.95), eps=1e-5,
                                           weight_decay=cfg.weight_decay)
        self.device = next(policy.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.steps = 0
        if cfg.gradient_checkpointing:
            for model in (policy, getattr(value_model, "backbone", value_model)):
                if not hasattr(model, "gradient_checkpointing"):
                    raise ValueError(f"gradient_checkpointing: {type(model).__name__} does not support it")
                model.gradient_checkpointing = True

    def _autocast(self):
        """bf16 autocast of forward passes when ``precision: bf16`` (a no-op context for fp32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    def _micro(self, n: int) -> list[slice]:
        """Slices of ``n`` rows, ``micro_batch`` at a time (all at once for 0)."""
        size = self.cfg.micro_batch or n
        return [slice(i, i + size) for i in range(0, n, size)]

    # -- sampling ------------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, prompts: Sequence[Sequence[int]]) -> Rollouts:
        from ..model.generation import generate

        cfg, pad = self.cfg, self.policy.config.pad_id or 0
        self.policy.eval()
        with self._autocast():
            out = generate(self.policy, prompts, cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           generator=self.generator)
        P, A = max(len(p) for p in prompts), max(1, max(len(a) for a in out.tokens))
        ids = torch.full((len(prompts), P + A), pad, dtype=torch.long)
        attention = torch.zeros_like(ids)
        mask = torch.zeros(len(prompts), A)
        for i, (p, a) in enumerate(zip(prompts, out.tokens)):
            ids[i, P - len(p):P] = torch.tensor(p)
            attention[i, P - len(p):P + len(a)] = 1
            if a:
                ids[i, P:P + len(a)] = torch.tensor(a)
                mask[i, :len(a)] = 1
        ids, attention, mask = ids.to(self.device), attention.to(self.device), mask.to(self.device)
        self.value_model.eval()
        parts = self._micro(len(prompts))
        with self._autocast():
            logprobs = torch.cat([answer_logprobs(self.policy, ids[s], attention[s], P) for s in parts]) * mask
            ref_logprobs = torch.cat([answer_logprobs(self.reference, ids[s], attention[s], P) for s in parts]) * mask
            values = torch.cat([answer_values(self.value_model, ids[s], attention[s], P) for s in parts]) * mask
            scores = torch.as_tensor(self.score_fn([list(p) for p in prompts], out.tokens),
                                     dtype=torch.float32).to(self.device)
        rewards = token_rewards(whiten(scores) if cfg.whiten_rewards else scores, logprobs, ref_logprobs, mask,
                                cfg.beta)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask)
        return Rollouts(ids, attention, mask, P, out.tokens, scores, logprobs, ref_logprobs, values,
                        advantages, returns)

    # -- one PPO step --------------------------------------------------------------------------

    def step(self, prompts: Sequence[Sequence[int]]) -> dict[str, float]:
        """Roll out ``prompts`` (``cfg.rollouts`` of them, normally), then ``ppo_epochs`` passes of
        minibatch updates; returns the step's statistics."""
        cfg = self.cfg
        ro = self.rollout(prompts)
        B = ro.ids.shape[0]
        rng = np.random.default_rng([cfg.seed, self.steps, 0x990])
        sums: dict[str, float] = {}
        n = 0
        self.policy.train()
        self.value_model.train()
        for _ in range(cfg.ppo_epochs):
            order = rng.permutation(B)
            for start in range(0, B, cfg.minibatch):
                batch = torch.as_tensor(order[start:start + cfg.minibatch], device=self.device)
                n_tokens = ro.mask[batch].sum().clamp(min=1)  # the minibatch's mean, over its micro-batches
                self.policy_opt.zero_grad(set_to_none=True)
                self.value_opt.zero_grad(set_to_none=True)
                stats: dict[str, torch.Tensor] = {}
                for part in self._micro(len(batch)):
                    idx = batch[part]
                    ids, att, mask = ro.ids[idx], ro.attention[idx], ro.mask[idx]
                    with self._autocast():
                        logprobs, entropy = answer_logprobs(self.policy, ids, att, ro.prompt_len, with_entropy=True)
                        values = answer_values(self.value_model, ids, att, ro.prompt_len)
                    losses = ppo_losses(logprobs, ro.logprobs[idx], ro.advantages[idx], values, ro.values[idx],
                                        ro.returns[idx], mask, cfg.clip, cfg.value_clip, n_tokens=n_tokens)
                    for name in ("policy_loss", "value_loss"):
                        if not torch.isfinite(losses[name]):
                            raise FloatingPointError(f"PPO step {self.steps + 1}: non-finite {name} "
                                                     f"{float(losses[name])}")
                    # two separate models: one backward fills both models' gradients
                    (losses["policy_loss"] + losses["value_loss"]).backward()
                    losses["entropy"] = masked_mean(entropy.detach(), mask, count=n_tokens)
                    for k, v in losses.items():
                        stats[k] = stats[k] + v.detach() if k in stats else v.detach()
                for model, opt in ((self.policy, self.policy_opt), (self.value_model, self.value_opt)):
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n += 1
        self.steps += 1
        kl = kl_per_token(ro.logprobs, ro.ref_logprobs, ro.mask).sum(-1)
        out = {k: v / n for k, v in sums.items()}
        out.update({"reward": float(ro.scores.mean()), "kl": float(kl.mean()),
                    "answer_tokens": float(ro.mask.sum(-1).mean()), "step": self.steps})
        return out


def train_ppo(trainer: PPOTrainer, prompts: Sequence[Sequence[int]], steps: int, *,
              log_fn: Callable[[dict, int], Any] | None = None, progress: bool = True) -> list[dict[str, float]]:
    """``steps`` PPO steps over ``prompts`` (a seeded shuffled cycle, ``rollouts`` per step);
    returns each step's statistics (also given to ``log_fn(stats, step)``).

    ``cfg.max_kl`` is the round's bound on how far PPO may take the policy: a step's rollouts
    measure the KL to the reference (nats per answer) of the policy that sampled them; at the first
    step past the bound training stops and the policy goes back to the newest one whose rollouts
    stayed within it (that step's statistics carry ``kl_bound_hit: 1``; the policy state before
    each update is kept in memory for this). Without a hit the policy is the last update's."""
    from tqdm.auto import tqdm

    if not prompts:
        raise ValueError("train_ppo needs at least one prompt")
    cfg = trainer.cfg
    rng = np.random.default_rng([cfg.seed, 0x5EED])
    order: list[int] = []
    history = []
    within = None  # the newest policy state whose rollouts stayed within cfg.max_kl
    bar = tqdm(range(steps), desc="ppo", disable=not progress)
    for _ in bar:
        while len(order) < cfg.rollouts:
            order += rng.permutation(len(prompts)).tolist()
        batch, order = order[:cfg.rollouts], order[cfg.rollouts:]
        before = {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()} if cfg.max_kl else None
        stats = trainer.step([prompts[i] for i in batch])
        hit = bool(cfg.max_kl) and stats["kl"] > cfg.max_kl
        if cfg.max_kl:
            stats["kl_bound_hit"] = float(hit)
        history.append(stats)
        if log_fn is not None:
            log_fn({k: v for k, v in stats.items() if k != "step"}, trainer.steps)
        bar.set_postfix(reward=f"{stats['reward']:.3f}", kl=f"{stats['kl']:.3f}")
        if hit:
            if within is not None:
                trainer.policy.load_state_dict(within)
            bar.close()
            break
        within = before
    return history
