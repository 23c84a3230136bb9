"""Rejection sampling in an RLHF round (the paper's section 3.2.3): each prompt's K answers, pooled
with what earlier rounds kept (:func:`pool_earlier`), ranked by the round's reward R_c
(:func:`rs_rank`; with ``rlhf.candidates.likelihood_weight``, on prompts not tagged safety, also by
the starting policy's likelihood: :func:`policy_likelihood`) and the best kept
(:func:`keep_best`, :func:`rejection_sample`, :func:`best_of_k`); with
``rlhf.candidates.instructed_safety`` the kept answers to safety-tagged prompts are learned under a
system instruction too (:func:`instructed_copies`). The rlhf pipeline's rejection_sampling node
calls :func:`best_of_k`.

Nothing here imports Kedro or MLflow.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import numpy as np

from ..world import constraints
from .config import RLHFConfig
from .gatt import conversation
from .preferences import torch_threads
from .rlhf import candidate_record, load_reward_models, round_rewards


def pool_earlier(candidates: Sequence[dict], earlier: Sequence[dict], prompts: Sequence[dict]) -> list[dict]:
    """Each prompt's pool of answers plus what the earlier rounds kept (the paper's fix, from RLHF V3
    on, for regressions between rounds: best samples of all prior iterations, re-ranked by the
    newest reward models).

    ``earlier``: the previous round's rejection-sampling dialogues (``{"messages": [user,
    assistant]}``; they already pool every round before it). An earlier answer is appended to the
    answers of its prompt in ``candidates``; a prompt only earlier rounds answered joins the pool
    with that answer alone (``safety``, ``category``, ``id`` from ``prompts``). Every pooled
    candidate gets ``earlier``: how many of its last answers came from earlier rounds.
    """
    by_prompt = {c["prompt"]: dict(c, answers=list(c["answers"]), earlier=0) for c in candidates}
    known = {p["prompt"]: p for p in prompts if isinstance(p, dict) and p.get("prompt")}
    for row, record in enumerate(earlier):
        messages = record.get("messages") if isinstance(record, dict) else None
        if isinstance(messages, list) and messages and messages[0].get("role") == "system":
            continue  # an instructed copy (instructed_copies) of a kept answer pooled as it was written
        if not (isinstance(messages, list) and len(messages) >= 2
                and [m.get("role") for m in messages[-2:]] == ["user", "assistant"]):
            raise ValueError(f"earlier rounds' rejection-sampling dialogues, row {row}: expected 'messages' ending "
                             f"with a user and an assistant message, got {str(record)[:120]}")
        prompt, answer = messages[-2]["content"], messages[-1]["content"]
        if prompt not in by_prompt:
            if prompt not in known:
                raise ValueError(f"earlier rounds' rejection-sampling dialogues, row {row}: the prompt {prompt[:80]!r} "
                                 "is not in prompts_train (rerun the earlier rounds on these prompts)")
            by_prompt[prompt] = dict(candidate_record(known[prompt], [], row), earlier=0)
        pool = by_prompt[prompt]
        if answer.strip() and answer not in pool["answers"]:
            pool["answers"].append(answer)
            pool["earlier"] += 1
    return list(by_prompt.values())


def rs_rank(reward: np.ndarray, helpful: np.ndarray, likelihood: np.ndarray | None = None,
            weight: float = 0.0) -> np.ndarray:
    """What rejection sampling ranks answers by: R_c (``reward``) and, with a ``likelihood`` and a
    ``weight`` w > 0, on the ``helpful`` answers (non-blank answers to prompts not tagged safety)
    ``R_c / sd + w * likelihood / sd``, each spread over those answers (R_c alone where a spread is 0)."""
    rank = np.asarray(reward, dtype=np.float64).copy()
    if likelihood is None or weight <= 0 or helpful.sum() < 2:
        return rank
    sd_r, sd_l = float(rank[helpful].std()), float(likelihood[helpful].std())
    if sd_r > 0 and sd_l > 0:
        rank[helpful] = rank[helpful] / sd_r + weight * likelihood[helpful] / sd_l
    return rank


def keep_best(candidates: Sequence[dict], rank: Sequence[float]) -> list[int | None]:
    """Each candidate's kept answer under ``rank`` (one value per answer, the candidates' answers in
    order): the index of its highest non-blank answer, the first on a tie; None where every answer
    is blank."""
    out, at = [], 0
    for c in candidates:
        options = [j for j, a in enumerate(c["answers"]) if a.strip()]
        out.append(max(options, key=lambda j: (rank[at + j], -j)) if options else None)
        at += len(c["answers"])
    return out


def instructed_copies(candidates: Sequence[dict], seed: int, share: float, *,
                      max_constraints: int = 2) -> list[dict]:
    """The kept answers to safety-tagged prompts under a system instruction: an instruction must not
    unlock what the policy refuses (the rounds sample without one, and a policy that refuses an
    unsafe request plainly plays along with it under "Start every answer with 'Ahoy!'").

    ``candidates``: :func:`rejection_sample`'s scored candidates (``best`` the kept answer's index).
    Each safety-tagged one with a kept answer is, with probability ``share`` (seeded by ``seed``),
    copied as ``[system: instruction, user, assistant]``: the instruction one of GAtt's (one or two
    compatible constraints of :mod:`llama2_pipeline.world.constraints`, drawn from those a rewrite
    can enforce: case, prefix, suffix) and the answer rewritten to it
    (:func:`llama2_pipeline.world.constraints.repair`), so the refusal to an unsafe request, and the
    helpful answer to a borderline one, are learned in the instruction's form. Copies whose
    rewritten answer still breaks the instruction (no letters to put in a case) are left out."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"rlhf.candidates.instructed_safety must be in [0, 1], got {share}")
    combos = [c for c in constraints.combinations(max_constraints) if not constraints.has_length(c)]
    rng = random.Random(f"rlhf-instructed-{seed}")
    out = []
    for c in candidates:
        if not c.get("safety") or c.get("best") is None:
            continue
        draw, names = rng.random(), rng.choice(combos)  # two draws per prompt whatever the share
        if draw >= share:
            continue
        answer = constraints.repair(names, c["answers"][c["best"]])
        if constraints.check(names, answer):
            out.append({"messages": conversation([c["prompt"]], [answer], names, every_turn=False)})
    return out


def rejection_sample(candidates: Sequence[dict], rm_h, rm_s, threshold: float, *, batch_size: int = 64,
                     likelihood: Callable[[list[str], list[str]], Sequence[float]] | None = None,
                     likelihood_weight: float = 0.0) -> tuple[list[dict], list[dict], dict[str, float]]:
    """The best of each prompt's K answers by R_c.

    With ``likelihood`` (``likelihood(prompts, answers)``: the starting policy's mean log-probability
    per answer token) and a ``likelihood_weight`` w > 0, answers to prompts not tagged safety are
    ranked by ``R_c / sd(R_c) + w * likelihood / sd(likelihood)`` (both spreads over those prompts'
    non-blank answers): the policy's knowledge of facts next to RMs that cannot check one (they
    score a wrong answer said well above a right one said plainly). Safety prompts are ranked by
    R_c alone.

    Returns (SFT dialogues ``{"messages": [user, assistant]}``, the scored candidates (each answer
    with ``rm_helpfulness``, ``rm_safety``, ``reward`` and, when ranked with it, ``likelihood``;
    ``best`` its index), statistics: mean reward of all answers and of the kept ones, the share of
    answers judged by the safety RM and, with a likelihood, the share of prompts whose kept answer it
    changed).
    Blank answers are never kept (a prompt with only blank answers is skipped).
    """
    flat = [(i, j, c["prompt"], a, c.get("safety", False)) for i, c in enumerate(candidates)
            for j, a in enumerate(c["answers"])]
    if not flat:
        raise ValueError("rejection sampling got no candidate answers")
    r = round_rewards(rm_h, rm_s, [f[2] for f in flat], [f[3] for f in flat], [f[4] for f in flat], threshold,
                      batch_size)
    reward = np.asarray([round(float(v), 6) for v in r["reward"]])  # as the scored candidates record it
    lik = None
    if likelihood is not None and likelihood_weight > 0:
        lik = np.asarray(likelihood([f[2] for f in flat], [f[3] for f in flat]), dtype=np.float64)
        if lik.shape != reward.shape or not np.isfinite(lik).all():
            raise ValueError(f"rejection sampling: the policy's likelihoods must be {len(flat)} finite numbers, "
                             f"got {lik.shape[0]} ({int((~np.isfinite(lik)).sum())} not finite)")
        lik = np.asarray([round(float(v), 6) for v in lik])
    rank = rs_rank(reward, np.asarray([not f[4] and bool(f[3].strip()) for f in flat]), lik, likelihood_weight)
    best = keep_best(candidates, rank)
    by_reward = keep_best(candidates, reward) if lik is not None else best
    scored = [dict(c, rm_helpfulness=[], rm_safety=[], reward=[], **({"likelihood": []} if lik is not None else {}))
              for c in candidates]
    for n, (i, _, _, _, _) in enumerate(flat):
        scored[i]["rm_helpfulness"].append(round(float(r["helpfulness"][n]), 6))
        scored[i]["rm_safety"].append(round(float(r["safety"][n]), 6))
        scored[i]["reward"].append(float(reward[n]))
        if lik is not None:
            scored[i]["likelihood"].append(float(lik[n]))
    dialogues, kept, changed = [], [], []
    for c, b, b_reward in zip(scored, best, by_reward):
        c["best"] = b
        if b is None:
            continue
        kept.append(c["reward"][b])
        changed.append(b != b_reward)
        dialogues.append({"messages": [{"role": "user", "content": c["prompt"]},
                                       {"role": "assistant", "content": c["answers"][b]}]})
    if not dialogues:
        raise ValueError("rejection sampling kept nothing: every candidate answer is blank")
    stats = {"rs_reward_mean": float(np.mean(r["reward"])), "rs_reward_best": float(np.mean(kept)),
             "rs_prompts": len(dialogues), "rs_safety_rm_share": float(np.mean(r["used_safety"]))}
    if lik is not None:
        stats["rs_likelihood_changed_share"] = float(np.mean(changed))
    # the share of kept answers that came from earlier rounds (pool_earlier; 0 in the first round)
    stats["rs_kept_earlier_share"] = float(np.mean(
        [c["best"] >= len(c["answers"]) - c.get("earlier", 0) for c in scored if c["best"] is not None]))
    return dialogues, scored, stats


def policy_likelihood(policy_dir, tokenizer_path, batch_size: int = 64):
    """``likelihood(prompts, answers)`` for :func:`rejection_sample`: the mean log-probability per
    answer token (and EOS) under the policy in ``policy_dir`` (an HF folder)."""
    from .reward_eval import answer_likelihoods
    from ..model import default_device, load_hf
    from ..tokenizer import Tokenizer

    model = load_hf(policy_dir).to(default_device()).eval()
    tokenizer = Tokenizer(tokenizer_path)

    def likelihood(prompts: list[str], answers: list[str]) -> list[float]:
        return answer_likelihoods(model, tokenizer, prompts, answers, batch_size)

    return likelihood


def best_of_k(candidates: Sequence[dict], helpfulness_dir, safety_dir, cfg: RLHFConfig, *,
              earlier: Sequence[dict] | None = None, prompts: Sequence[dict] | None = None,
              policy_dir=None, tokenizer_path=None, seed: int = 0) -> tuple[list[dict], list[dict], dict[str, float]]:
    """Rejection sampling with the round's RMs: the earlier rounds' kept answers pooled in when asked
    (:func:`pool_earlier`), then :func:`rejection_sample` by R_c, with the starting policy's
    likelihood (``policy_dir``, ``tokenizer_path``) when ``cfg.candidates.likelihood_weight`` is set;
    with ``cfg.candidates.instructed_safety`` > 0 the dialogues end with :func:`instructed_copies`
    (drawn with the round's ``seed``; ``rs_instructed_copies`` in the stats)."""
    weight = cfg.candidates.likelihood_weight
    if weight > 0 and (policy_dir is None or tokenizer_path is None):
        raise ValueError("rlhf.candidates.likelihood_weight > 0 ranks by the round's starting policy's likelihood: "
                         "pass policy_dir and tokenizer_path")
    if earlier is not None and cfg.candidates.earlier_rounds:
        candidates = pool_earlier(candidates, earlier, prompts or [])
    with torch_threads(cfg.num_threads):
        rm_h, rm_s = load_reward_models(helpfulness_dir, safety_dir)
        likelihood = policy_likelihood(policy_dir, tokenizer_path) if weight > 0 else None
        dialogues, scored, stats = rejection_sample(candidates, rm_h, rm_s, cfg.safety_threshold,
                                                    likelihood=likelihood, likelihood_weight=weight)
    if cfg.candidates.instructed_safety > 0:
        copies = instructed_copies(scored, seed, cfg.candidates.instructed_safety)
        dialogues, stats = dialogues + copies, {**stats, "rs_instructed_copies": len(copies)}
    return dialogues, scored, stats
