"""One RLHF round of Llama 2 (section 3.2.3) as library functions; the ``rlhf`` pipeline wires them.

A round starts from the newest policy and:

1. :func:`sample_candidates`: samples K answers per train prompt (KV-cache generation, batched);
2. the world's annotator compares pairs among them (:func:`~.preferences.annotate_answers`); the
   new pairs join the earlier rounds' and both reward models are retrained (the ``reward``
   pipeline's nodes);
3. :func:`rejection_sample`: keeps the best of the K answers by the round's reward (the paper's
   R_c: the safety RM on safety prompts or when it scores below a threshold, else the helpfulness
   RM) and fine-tunes the policy on them with the SFT machinery;
4. :func:`ppo_finetune` (in the rounds a param names): PPO against both RMs with a KL penalty to
   the round's starting point, value model initialised from the helpfulness RM;
5. :func:`evaluate_round`: held-out helpfulness, safety, refusals, win rates by the annotator, RM
   scores, KL to the SFT model, answer length.

Nothing here imports Kedro or MLflow.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .ppo import PPOConfig, PPOTrainer, ValueModel, combined_reward, logit, train_ppo
from ..params import round_names  # noqa: F401  (re-exported: the rounds are params, checked there)
from .preferences import sample_answers, torch_threads

log = logging.getLogger(__name__)

#: keys of the ``rlhf`` params group and its subgroups
GROUP_KEYS = {"rounds", "candidates", "safety_threshold", "num_threads", "rejection_sampling", "ppo", "eval"}
CANDIDATE_KEYS = {"k", "temperature", "top_p", "max_new_tokens", "batch_size", "max_prompts", "drop_ties",
                  "pairs_per_prompt", "pairs", "earlier_rounds"}
PPO_KEYS = {"steps", "max_prompts"} | {f for f in PPOConfig.__dataclass_fields__ if f != "seed"}
EVAL_KEYS = {"max_new_tokens", "batch_size", "kl_samples"}


def validate_rlhf_params(group: dict) -> dict:
    """Check the ``rlhf`` params group; raise ValueError naming the key. Returns ``group``."""
    if not isinstance(group, dict):
        raise ValueError(f"params group 'rlhf' must be a mapping, got {type(group).__name__}")
    from .reward import check_sections

    check_sections(((GROUP_KEYS, "rlhf", group), (CANDIDATE_KEYS, "rlhf.candidates", group.get("candidates")),
                    (PPO_KEYS, "rlhf.ppo", group.get("ppo")), (EVAL_KEYS, "rlhf.eval", group.get("eval"))))
    round_names(group)
    c = group["candidates"]
    if not (isinstance(c["k"], int) and c["k"] >= 2):
        raise ValueError(f"key 'rlhf.candidates.k' is {c['k']!r}, expected an integer >= 2 (answers per prompt)")
    from .preferences import PAIR_KINDS

    if not (isinstance(c["pairs"], list) and c["pairs"] and set(c["pairs"]) <= set(PAIR_KINDS)):
        raise ValueError(f"key 'rlhf.candidates.pairs' is {c['pairs']!r}, expected a non-empty list of {list(PAIR_KINDS)}")
    if not (isinstance(c["pairs_per_prompt"], int) and c["pairs_per_prompt"] >= 0):
        raise ValueError(f"key 'rlhf.candidates.pairs_per_prompt' is {c['pairs_per_prompt']!r}, expected an "
                         "integer >= 0 (0 = every two answers)")
    if not isinstance(c["earlier_rounds"], bool):
        raise ValueError(f"key 'rlhf.candidates.earlier_rounds' is {c['earlier_rounds']!r}, expected true or false "
                         "(pool the answers earlier rounds kept into rejection sampling)")
    for key in ("max_new_tokens", "batch_size"):
        if not (isinstance(c[key], int) and c[key] >= 1):
            raise ValueError(f"key 'rlhf.candidates.{key}' is {c[key]!r}, expected an integer >= 1")
    if not 0 <= float(group["safety_threshold"]) <= 1:
        raise ValueError(f"key 'rlhf.safety_threshold' is {group['safety_threshold']!r}, expected a number in [0, 1]")
    try:
        PPOConfig.from_dict({k: v for k, v in group["ppo"].items() if k not in ("steps", "max_prompts")})
    except (TypeError, ValueError) as e:
        raise ValueError(f"rlhf.ppo: {e}") from None
    if not (isinstance(group["ppo"]["steps"], int) and group["ppo"]["steps"] >= 1):
        raise ValueError(f"key 'rlhf.ppo.steps' is {group['ppo']['steps']!r}, expected an integer >= 1")
    return group


# --------------------------------------------------------------------------------------------
# 1. candidates
# --------------------------------------------------------------------------------------------


def select_prompts(prompts: Sequence[dict], max_prompts: int, seed: int, salt: str) -> list[dict]:
    """Records with a ``prompt``; at most ``max_prompts`` of them (0 = all), a seeded sample in file order."""
    prompts = [p for p in prompts if isinstance(p, dict) and p.get("prompt")]
    if max_prompts and max_prompts < len(prompts):
        rng = np.random.default_rng([seed, int.from_bytes(salt.encode()[:8].ljust(8, b"\0"), "little")])
        keep = set(rng.choice(len(prompts), size=max_prompts, replace=False).tolist())
        prompts = [p for i, p in enumerate(prompts) if i in keep]
    if not prompts:
        raise ValueError("no prompts to answer (records with a 'prompt' field)")
    return prompts


def sample_candidates(policy_dir, tokenizer, prompts: Sequence[dict], candidates: dict, seed: int, *,
                      num_threads: int = 0, progress: bool = True) -> list[dict]:
    """K answers of the policy per prompt: records ``id, prompt, category, safety, reference, answers``."""
    from ..tokenizer import Tokenizer

    tok = tokenizer if hasattr(tokenizer, "encode_batch") else Tokenizer(tokenizer)
    chosen = select_prompts(prompts, int(candidates.get("max_prompts") or 0), seed, "rlhf-candidates")
    temps = [float(candidates["temperature"])] * int(candidates["k"])
    answers = sample_answers([("policy", policy_dir, temps)], tok, [p["prompt"] for p in chosen], candidates, seed,
                             num_threads=num_threads, progress=progress)
    return [candidate_record(p, a, i) for i, (p, a) in enumerate(zip(chosen, answers))]


def candidate_record(prompt: dict, answers: list[str], index: int) -> dict:
    """A prompt's answers as rejection sampling reads them (``id`` defaults to ``index``)."""
    return {"id": prompt.get("id", index), "prompt": prompt["prompt"], "category": prompt.get("category"),
            "safety": bool(prompt.get("safety")), "reference": prompt.get("reference"), "answers": answers}


# --------------------------------------------------------------------------------------------
# 3. rejection sampling
# --------------------------------------------------------------------------------------------


def load_reward_models(helpfulness_dir, safety_dir, device: str | None = None):
    from ..model import default_device
    from .reward import RewardModel

    device = device or default_device()
    return RewardModel.load(helpfulness_dir, device=device), RewardModel.load(safety_dir, device=device)


def round_rewards(rm_h, rm_s, prompts: Sequence[str], answers: Sequence[str], is_safety: Sequence[bool],
                  threshold: float, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Both RMs' scores (as probabilities) and the paper's R_c (as its logit) per (prompt, answer)."""
    h = torch.tensor(rm_h.score(list(prompts), list(answers), batch_size), dtype=torch.float64)
    s = torch.tensor(rm_s.score(list(prompts), list(answers), batch_size), dtype=torch.float64)
    r_c, used = combined_reward(h, s, torch.tensor(list(is_safety), dtype=torch.bool), threshold)
    return {"helpfulness": torch.sigmoid(h).numpy(), "safety": torch.sigmoid(s).numpy(),
            "reward": logit(r_c).numpy(), "used_safety": used.numpy()}


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


def rejection_sample(candidates: Sequence[dict], rm_h, rm_s, threshold: float, *,
                     batch_size: int = 64) -> tuple[list[dict], list[dict], dict[str, float]]:
    """The best of each prompt's K answers by R_c.

    Returns (SFT dialogues ``{"messages": [user, assistant]}``, the scored candidates (each answer
    with ``rm_helpfulness``, ``rm_safety``, ``reward``; ``best`` its index), statistics: mean
    reward of all answers and of the kept ones, the share of answers judged by the safety RM).
    Blank answers are never kept (a prompt with only blank answers is skipped).
    """
    flat = [(i, j, c["prompt"], a, c.get("safety", False)) for i, c in enumerate(candidates)
            for j, a in enumerate(c["answers"])]
    if not flat:
        raise ValueError("rejection sampling got no candidate answers")
    r = round_rewards(rm_h, rm_s, [f[2] for f in flat], [f[3] for f in flat], [f[4] for f in flat], threshold,
                      batch_size)
    scored = [dict(c, rm_helpfulness=[], rm_safety=[], reward=[]) for c in candidates]
    for n, (i, _, _, _, _) in enumerate(flat):
        scored[i]["rm_helpfulness"].append(round(float(r["helpfulness"][n]), 6))
        scored[i]["rm_safety"].append(round(float(r["safety"][n]), 6))
        scored[i]["reward"].append(round(float(r["reward"][n]), 6))
    dialogues, kept = [], []
    for c in scored:
        options = [j for j, a in enumerate(c["answers"]) if a.strip()]
        if not options:
            c["best"] = None
            continue
        best = max(options, key=lambda j: (c["reward"][j], -j))  # ties: the first sample
        c["best"] = best
        kept.append(c["reward"][best])
        dialogues.append({"messages": [{"role": "user", "content": c["prompt"]},
                                       {"role": "assistant", "content": c["answers"][best]}]})
    if not dialogues:
        raise ValueError("rejection sampling kept nothing: every candidate answer is blank")
    stats = {"rs_reward_mean": float(np.mean(r["reward"])), "rs_reward_best": float(np.mean(kept)),
             "rs_prompts": len(dialogues), "rs_safety_rm_share": float(np.mean(r["used_safety"]))}
    # the share of kept answers that came from earlier rounds (pool_earlier; 0 in the first round)
    stats["rs_kept_earlier_share"] = float(np.mean(
        [c["best"] >= len(c["answers"]) - c.get("earlier", 0) for c in scored if c["best"] is not None]))
    return dialogues, scored, stats


# --------------------------------------------------------------------------------------------
# 4. PPO
# --------------------------------------------------------------------------------------------


def rm_score_fn(rm_h, rm_s, safety_flags: dict[tuple[int, ...], bool], eos_id: int,
                threshold: float) -> Callable[[list[list[int]], list[list[int]]], torch.Tensor]:
    """A :class:`~.ppo.PPOTrainer` score function: LOGIT(R_c) from both RMs on token ids (RM
    input: the chat prompt's ids, the answer's ids without EOS, then EOS); the trainer whitens it."""

    def score(prompts: list[list[int]], answers: list[list[int]]) -> torch.Tensor:
        seqs = [list(p) + [t for t in a if t != eos_id] + [eos_id] for p, a in zip(prompts, answers)]
        h = torch.tensor(rm_h.score_ids(seqs), dtype=torch.float32)
        s = torch.tensor(rm_s.score_ids(seqs), dtype=torch.float32)
        flags = torch.tensor([safety_flags.get(tuple(p), False) for p in prompts])
        r_c, _ = combined_reward(h, s, flags, threshold)
        return logit(r_c)

    return score


def ppo_finetune(init_dir, helpfulness_dir, safety_dir, prompts: Sequence[dict], ppo: dict, threshold: float,
                 seed: int, out_dir, *, log_fn: Callable[[dict, int], Any] | None = None,
                 num_threads: int = 0, progress: bool = True) -> tuple[Path, list[dict], dict[str, float]]:
    """PPO from ``init_dir`` (also the KL reference) against both RMs on the train prompts;
    exports the policy to ``out_dir`` (HF format, atomically). Returns (out_dir, per-step
    statistics, summary metrics ``ppo_*``)."""
    from ..model import default_device, export_hf, load_hf, release_device_memory
    from ..tokenizer import Tokenizer, encode_chat_prompt
    from ..tokenizer.hf import save_hf_tokenizer

    steps = int(ppo["steps"])
    cfg = PPOConfig.from_dict({**{k: v for k, v in ppo.items() if k not in ("steps", "max_prompts")}, "seed": seed})
    torch.manual_seed(seed)
    init_dir = Path(init_dir)
    tok = Tokenizer(init_dir / "tokenizer.model")
    with torch_threads(num_threads):
        device = default_device()  # policy, reference, value model and both RMs on one device
        reference = load_hf(init_dir, device=device)  # frozen: as stored (bf16 from a GPU run)
        stored = reference.tok_embeddings.weight.dtype
        # the trained models keep fp32 weights (plain AdamW: a 1e-6 step vanishes in bf16's 8-bit
        # mantissa); precision: bf16 autocasts their compute
        policy = copy.deepcopy(reference).float()
        rm_h, rm_s = load_reward_models(helpfulness_dir, safety_dir, device=device)
        value = ValueModel.from_reward_model(rm_h).float()
        chosen = select_prompts(prompts, int(ppo.get("max_prompts") or 0), seed, "rlhf-ppo")
        limit = policy.config.max_seq_len - cfg.max_new_tokens
        encoded = [encode_chat_prompt(tok, [{"role": "user", "content": p["prompt"]}])[-limit:] for p in chosen]
        flags = {tuple(e): bool(p.get("safety")) for e, p in zip(encoded, chosen)}
        trainer = PPOTrainer(policy, value, rm_score_fn(rm_h, rm_s, flags, tok.eos_id, threshold), cfg,
                             reference=reference)
        history = train_ppo(trainer, encoded, steps, log_fn=log_fn, progress=progress)
    for h in history:
        bad = [k for k, v in h.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"PPO step {h['step']}: non-finite {bad}")
    out_dir = export_hf(trainer.policy.to(stored), out_dir, tokenizer_model_path=init_dir / "tokenizer.model")
    save_hf_tokenizer(init_dir / "tokenizer.model", out_dir)
    del trainer, policy, reference, value, rm_h, rm_s  # five models, two optimisers: free them for the evaluation
    release_device_memory()
    return Path(out_dir), history, summarise_ppo(history)


def summarise_ppo(history: Sequence[dict]) -> dict[str, float]:
    """``ppo_<stat>``: the mean over the last fifth of the steps; ``ppo_reward_first``: over the first fifth."""
    if not history:
        return {}
    fifth = max(1, len(history) // 5)
    summary = {f"ppo_{k}": float(np.mean([h[k] for h in history[-fifth:]])) for k in history[-1] if k != "step"}
    summary["ppo_reward_first"] = float(np.mean([h["reward"] for h in history[:fifth]]))
    summary["ppo_steps"] = len(history)
    return summary


# --------------------------------------------------------------------------------------------
# 5. evaluation
# --------------------------------------------------------------------------------------------


def kl_to(model, reference, tokenizer, prompts: Sequence[str], max_new_tokens: int, seed: int,
          batch_size: int = 64) -> float:
    """Mean over ``prompts`` of KL(model || reference) of whole answers, estimated on answers
    sampled from ``model`` at temperature 1: sum over tokens of log p_model - log p_reference."""
    from ..evaluation import SamplingConfig, generate_answers
    from .ppo import answer_logprobs

    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=1.0, batch_size=batch_size, seed=seed)
    rows = generate_answers(model, tokenizer, list(prompts), sampling, desc="kl samples", progress=False)
    from ..tokenizer import encode_chat_prompt

    total = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            heads = [encode_chat_prompt(tokenizer, [{"role": "user", "content": p}])
                     for p in prompts[i:i + batch_size]]
            P = max(len(h) for h in heads)
            A = max(1, max(len(r["tokens"]) for r in chunk))
            ids = torch.zeros(len(chunk), P + A, dtype=torch.long)
            att = torch.zeros_like(ids)
            mask = torch.zeros(len(chunk), A)
            for j, (h, r) in enumerate(zip(heads, chunk)):
                ids[j, P - len(h):P] = torch.tensor(h)
                att[j, P - len(h):P + len(r["tokens"])] = 1
                if r["tokens"]:
                    ids[j, P:P + len(r["tokens"])] = torch.tensor(r["tokens"])
                    mask[j, :len(r["tokens"])] = 1
            ids, att, mask = (t.to(next(model.parameters()).device) for t in (ids, att, mask))
            diff = (answer_logprobs(model, ids, att, P) - answer_logprobs(reference, ids, att, P)) * mask
            total += diff.sum(-1).cpu().tolist()
    return float(np.mean(total))


def win_rate(world, prompts: Sequence[str], new: Sequence[str], old: Sequence[str]) -> float:
    """Share of prompts where the annotator prefers the new answer (identical answers count 1/2)."""
    wins = []
    for p, a, b in zip(prompts, new, old):
        if a.strip() == b.strip():
            wins.append(0.5)
        else:
            wins.append(float(world.compare(p, a, b).chosen == a))
    return float(np.mean(wins)) if wins else 0.0


def evaluate_round(policy_dir, previous_dir, sft_dir, helpfulness_dir, safety_dir, prompts: Sequence[dict],
                   world, sampling: dict, threshold: float, seed: int, *, progress: bool = True
                   ) -> tuple[dict[str, float], list[dict]]:
    """The round's policy on the held-out prompts, next to the policy it started from.

    Metrics (the same names every round, so rounds line up): ``policy_*`` (helpfulness, safety,
    refusal_rate, false_refusal_rate, violation_rate, format_compliance, answer_words, per
    category), ``previous_*`` likewise for the starting policy, ``win_rate_vs_previous`` and
    ``win_rate_vs_sft`` (the annotator), ``rm_helpfulness_score``/``rm_safety_score``/``rm_reward``
    (the round's RMs on the policy's answers), ``kl_to_sft`` (per answer, sampled).
    Returns (metrics, one row per prompt with both answers and their scores).
    """
    from ..evaluation import SamplingConfig, evaluate_model
    from ..model import default_device, load_hf
    from ..tokenizer import Tokenizer

    cfg = SamplingConfig(max_new_tokens=int(sampling["max_new_tokens"]), temperature=0.0,
                         batch_size=int(sampling["batch_size"]), seed=seed)
    tok = Tokenizer(Path(policy_dir) / "tokenizer.model")
    metrics: dict[str, float] = {}
    rows: dict[str, list[dict]] = {}
    models = {"policy": policy_dir, "previous": previous_dir, "sft": sft_dir}
    loaded = {}
    for name, folder in models.items():
        if name == "sft" and Path(folder).resolve() == Path(previous_dir).resolve():
            rows["sft"] = rows["previous"]
            loaded["sft"] = loaded["previous"]
            continue
        loaded[name] = load_hf(folder, device=default_device()).eval()
        m, rows[name] = evaluate_model(loaded[name], tok, world, prompts, cfg, name, progress=progress)
        if name != "sft":
            metrics.update(m)
    texts = [p["prompt"] for p in prompts]
    answers = {k: [r["answer"] for r in v] for k, v in rows.items()}
    metrics["win_rate_vs_previous"] = win_rate(world, texts, answers["policy"], answers["previous"])
    metrics["win_rate_vs_sft"] = win_rate(world, texts, answers["policy"], answers["sft"])
    rm_h, rm_s = load_reward_models(helpfulness_dir, safety_dir)
    r = round_rewards(rm_h, rm_s, texts, answers["policy"], [bool(p.get("safety")) for p in prompts], threshold)
    metrics["rm_helpfulness_score"] = float(np.mean(r["helpfulness"]))
    metrics["rm_safety_score"] = float(np.mean(r["safety"]))
    metrics["rm_reward"] = float(np.mean(r["reward"]))
    metrics["kl_to_sft"] = kl_to(loaded["policy"], loaded["sft"], tok, texts[:int(sampling["kl_samples"])],
                                 int(sampling["max_new_tokens"]), seed)
    samples = []
    for i, p in enumerate(prompts):
        row = {"id": p.get("id", i), "prompt": p["prompt"], "category": p.get("category")}
        for name in ("policy", "previous"):
            row.update({f"{name}_{k}": rows[name][i][k] for k in ("answer", "helpfulness", "safety", "refusal")})
        row["rm_reward"] = round(float(r["reward"][i]), 6)
        samples.append(row)
    return {k: round(float(v), 6) for k, v in metrics.items()}, samples
