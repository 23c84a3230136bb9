"""One RLHF round of Llama 2 (section 3.2.3) as library functions; the ``rlhf`` pipeline wires them.

A round starts from the newest policy and:

1. :func:`sample_candidates`: samples K answers per train prompt (KV-cache generation, batched);
2. the world's annotator compares pairs among them (:func:`~.preferences.annotate_answers`); the
   new pairs join the earlier rounds' and both reward models are trained on (the previous round's
   on the new pairs, or from SFT on every pair: ``rlhf.reward_models``; the shared reward node);
3. rejection sampling (:mod:`.rejection`): keeps the best of the K answers by the round's reward
   (the paper's R_c, :func:`round_rewards`: the safety RM on safety prompts or when it scores below
   a threshold, else the helpfulness RM) and fine-tunes the policy on them with the SFT machinery;
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

from ..evaluation.answers import win_rate
from .config import CandidateConfig, PPOConfig, RLHFConfig, RoundEvalConfig, round_seed  # noqa: F401
from .ppo import PPOTrainer, ValueModel, combined_reward, logit, train_ppo
from .preferences import sample_answers, torch_threads

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# 1-2. candidates and the annotator's pairs among them
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


def sample_candidates(policy_dir, tokenizer, prompts: Sequence[dict], candidates: CandidateConfig, seed: int, *,
                      num_threads: int = 0, progress: bool = True) -> list[dict]:
    """K answers of the policy per prompt: records ``id, prompt, category, safety, reference, answers``."""
    from ..evaluation.answers import SamplingConfig
    from ..tokenizer import Tokenizer

    tok = tokenizer if hasattr(tokenizer, "encode_batch") else Tokenizer(tokenizer)
    chosen = select_prompts(prompts, candidates.max_prompts, seed, "rlhf-candidates")
    template = SamplingConfig(max_new_tokens=candidates.max_new_tokens, top_p=candidates.top_p,
                              batch_size=candidates.batch_size)
    answers = sample_answers([("policy", policy_dir, [candidates.temperature] * candidates.k)], tok,
                             [p["prompt"] for p in chosen], template, seed, num_threads=num_threads, progress=progress)
    return [candidate_record(p, a, i) for i, (p, a) in enumerate(zip(chosen, answers))]


def candidate_record(prompt: dict, answers: list[str], index: int) -> dict:
    """A prompt's answers as rejection sampling reads them (``id`` defaults to ``index``)."""
    return {"id": prompt.get("id", index), "prompt": prompt["prompt"], "category": prompt.get("category"),
            "safety": bool(prompt.get("safety")), "reference": prompt.get("reference"), "answers": answers}


def annotate_candidates(candidates: Sequence[dict], world, cfg: CandidateConfig, seed: int
                        ) -> tuple[list[dict], dict[str, int]]:
    """The world's annotator on pairs of each prompt's answers (the round's new pairs), and the counts."""
    from .preferences import annotate_answers

    pairs, counts = annotate_answers(world, candidates, [c["answers"] for c in candidates], cfg.pairs, seed,
                                     drop_ties=cfg.drop_ties, max_pairs=cfg.pairs_per_prompt)
    counts["pairs"] = len(pairs)
    if not pairs:
        raise ValueError(f"the annotator found no preference among the {len(candidates)} prompts' answers "
                         "(all identical or tied): raise rlhf.candidates.temperature or k")
    return pairs, counts


# --------------------------------------------------------------------------------------------
# 3. the round's reward (rejection sampling itself: .rejection)
# --------------------------------------------------------------------------------------------


def load_reward_models(helpfulness_dir, safety_dir, device: str | None = None):
    from ..model import default_device
    from .reward import RewardModel

    device = device or default_device()
    return RewardModel.load(helpfulness_dir, device=device), RewardModel.load(safety_dir, device=device)


def round_rewards(rm_h, rm_s, prompts: Sequence[str], answers: Sequence[str], is_safety: Sequence[bool],
                  threshold: float, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Both RMs' scores (as probabilities) and the paper's R_c (as its logit) per (prompt, answer)."""
    h = torch.sigmoid(torch.tensor(rm_h.score(list(prompts), list(answers), batch_size), dtype=torch.float64))
    s = torch.sigmoid(torch.tensor(rm_s.score(list(prompts), list(answers), batch_size), dtype=torch.float64))
    r_c, used = combined_reward(h, s, torch.tensor(list(is_safety), dtype=torch.bool), threshold)
    return {"helpfulness": h.numpy(), "safety": s.numpy(), "reward": logit(r_c).numpy(), "used_safety": used.numpy()}


# --------------------------------------------------------------------------------------------
# 4. PPO
# --------------------------------------------------------------------------------------------


Judge = Callable[[list[dict], list[list[int]], list[list[int]]], "tuple[torch.Tensor, torch.Tensor]"]


def rm_judge(rm_h, rm_s, eos_id: int) -> Judge:
    """R_h and R_s (probabilities) of rollouts from both RMs, on token ids: the chat prompt's ids,
    the answer's ids without EOS, then EOS (what the RMs were trained on)."""

    def judge(records: list[dict], prompts: list[list[int]], answers: list[list[int]]):
        seqs = [list(p) + [t for t in a if t != eos_id] + [eos_id] for p, a in zip(prompts, answers)]
        return (torch.sigmoid(torch.tensor(rm_h.score_ids(seqs), dtype=torch.float32)),
                torch.sigmoid(torch.tensor(rm_s.score_ids(seqs), dtype=torch.float32)))

    return judge


def ppo_finetune(init_dir, value_dir, prompts: Sequence[dict], cfg: PPOConfig, threshold: float, *,
                 safety_dir=None, judge: Judge | None = None, out_dir=None,
                 log_fn: Callable[[dict, int], Any] | None = None, num_threads: int = 0,
                 progress: bool = True) -> tuple[Any, list[dict], dict[str, float]]:
    """PPO from ``init_dir`` (also the frozen KL reference) on ``prompts`` with the score
    LOGIT(R_c), R_c the paper's rule (:func:`~.ppo.combined_reward`) on what ``judge`` says of each
    rollout; the value model starts from the reward model in ``value_dir`` (the paper: the
    helpfulness RM). ``judge`` defaults to both RMs (``value_dir`` and ``safety_dir``, the rounds');
    the headroom benchmark passes the world's judgement. ``cfg.seed`` seeds the run.

    The policy and value model train in fp32 (AdamW's 1e-6 steps vanish in bf16 weights); with
    ``out_dir`` the policy is exported there (HF format, atomically, in the dtype ``init_dir`` was
    stored in) and returned as that folder, else as the module. Returns (policy, per-step
    statistics, summary metrics ``ppo_*``)."""
    from ..model import default_device, export_hf, load_hf, release_device_memory
    from ..model.reward import RewardModel
    from ..tokenizer import Tokenizer, encode_chat_prompt
    from ..tokenizer.hf import save_hf_tokenizer

    torch.manual_seed(cfg.seed)
    init_dir = Path(init_dir)
    tok = Tokenizer(init_dir / "tokenizer.model")
    with torch_threads(num_threads):
        device = default_device()  # policy, reference, value model and both RMs on one device
        reference = load_hf(init_dir, device=device)  # frozen: as stored (bf16 from a GPU run)
        stored = reference.tok_embeddings.weight.dtype
        # the trained models keep fp32 weights (plain AdamW: a 1e-6 step vanishes in bf16's 8-bit
        # mantissa); precision: bf16 autocasts their compute
        policy = copy.deepcopy(reference).float()
        rm_h = RewardModel.load(value_dir, device=device)
        value = ValueModel.from_reward_model(rm_h).float()
        if judge is None:
            judge = rm_judge(rm_h, RewardModel.load(safety_dir, device=device), tok.eos_id)
        chosen = select_prompts(prompts, cfg.max_prompts, cfg.seed, "rlhf-ppo")
        limit = policy.config.max_seq_len - cfg.max_new_tokens
        encoded = [encode_chat_prompt(tok, [{"role": "user", "content": p["prompt"]}])[-limit:] for p in chosen]
        by_ids = {tuple(e): p for e, p in zip(encoded, chosen)}

        def score(prompt_ids: list[list[int]], answer_ids: list[list[int]]) -> torch.Tensor:
            records = [by_ids[tuple(p)] for p in prompt_ids]
            r_h, r_s = judge(records, prompt_ids, answer_ids)
            flags = torch.tensor([bool(r.get("safety")) for r in records])
            return logit(combined_reward(r_h, r_s, flags, threshold)[0])

        trainer = PPOTrainer(policy, value, score, cfg, reference=reference)
        history = train_ppo(trainer, encoded, cfg.steps, log_fn=log_fn, progress=progress)
    for h in history:
        bad = [k for k, v in h.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"PPO step {h['step']}: non-finite {bad}")
    result: Any = trainer.policy
    if out_dir is not None:
        result = Path(export_hf(trainer.policy.to(stored), out_dir, tokenizer_model_path=init_dir / "tokenizer.model"))
        save_hf_tokenizer(init_dir / "tokenizer.model", result)
        del trainer, policy, reference, value, rm_h, judge  # five models, two optimisers: free them
        release_device_memory()
    return result, history, summarise_ppo(history)


def summarise_ppo(history: Sequence[dict]) -> dict[str, float]:
    """``ppo_<stat>``: the mean over the last fifth of the steps; ``ppo_reward_first``: over the first
    fifth; ``ppo_steps``: the updates the policy kept; ``ppo_kl_max``: the furthest from the start
    the rollouts of a kept policy got; ``ppo_kl_bound_hit``: 1 when PPO stopped at its KL bound (the
    step past it is left out of the figures: its policy was discarded, see ``train_ppo``)."""
    if not history:
        return {}
    hit = bool(history[-1].get("kl_bound_hit"))
    kept = list(history[:-1]) if hit and len(history) > 1 else list(history)
    fifth = max(1, len(kept) // 5)
    summary = {f"ppo_{k}": float(np.mean([h[k] for h in kept[-fifth:]])) for k in kept[-1]
               if k not in ("step", "kl_bound_hit")}
    summary["ppo_reward_first"] = float(np.mean([h["reward"] for h in kept[:fifth]]))
    summary["ppo_steps"] = len(history) - hit
    summary["ppo_kl_max"] = float(max(h["kl"] for h in kept))
    summary["ppo_kl_bound_hit"] = float(hit)
    return summary


# --------------------------------------------------------------------------------------------
# 5. evaluation
# --------------------------------------------------------------------------------------------


def kl_to(model, reference, tokenizer, prompts: Sequence[str], max_new_tokens: int, seed: int,
          batch_size: int = 64) -> float:
    """Mean over ``prompts`` of KL(model || reference) of whole answers, estimated on answers
    sampled from ``model`` at temperature 1: sum over tokens of log p_model - log p_reference."""
    from ..evaluation.answers import SamplingConfig, generate_answers
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


def evaluate_round(policy_dir, previous_dir, sft_dir, helpfulness_dir, safety_dir, prompts: Sequence[dict],
                   world, sampling: RoundEvalConfig, threshold: float, seed: int, *, progress: bool = True
                   ) -> tuple[dict[str, float], list[dict]]:
    """The round's policy on the held-out prompts, next to the policy it started from.

    Metrics (the same names every round, so rounds line up): ``policy_*`` (helpfulness, safety,
    refusal_rate, false_refusal_rate, violation_rate, format_compliance, answer_words, per
    category), ``previous_*`` likewise for the starting policy, ``win_rate_vs_previous`` and
    ``win_rate_vs_sft`` (the annotator), ``rm_helpfulness_score``/``rm_safety_score``/``rm_reward``
    (the round's RMs on the policy's answers), ``kl_to_sft`` (per answer, sampled).
    Returns (metrics, one row per prompt with both answers and their scores).
    """
    from ..evaluation.answers import SamplingConfig, evaluate_model
    from ..model import default_device, load_hf
    from ..tokenizer import Tokenizer

    cfg = SamplingConfig(max_new_tokens=sampling.max_new_tokens, temperature=0.0, batch_size=sampling.batch_size,
                         seed=seed)
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
    metrics["kl_to_sft"] = kl_to(loaded["policy"], loaded["sft"], tok, texts[:sampling.kl_samples],
                                 sampling.max_new_tokens, seed)
    samples = []
    for i, p in enumerate(prompts):
        row = {"id": p.get("id", i), "prompt": p["prompt"], "category": p.get("category")}
        for name in ("policy", "previous"):
            row.update({f"{name}_{k}": rows[name][i][k] for k in ("answer", "helpfulness", "safety", "refusal")})
        row["rm_reward"] = round(float(r["reward"][i]), 6)
        samples.append(row)
    return {k: round(float(v), 6) for k, v in metrics.items()}, samples


def round_metrics(policy_dir, previous_dir, sft_dir, helpfulness_dir, safety_dir, prompts: Sequence[dict], world,
                  cfg: RLHFConfig, seed: int, *, reward_metrics: dict, rs_stats: dict,
                  ppo_history: Sequence[dict] | None = None) -> tuple[dict[str, float], list[dict]]:
    """A round's metrics file: :func:`evaluate_round` on the held-out prompts, the round's RM
    figures (``rm_*``, ``reward_*``), rejection sampling's statistics and, after PPO, its summary."""
    with torch_threads(cfg.num_threads):
        metrics, samples = evaluate_round(policy_dir, previous_dir, sft_dir, helpfulness_dir, safety_dir, prompts,
                                          world, cfg.eval, cfg.safety_threshold, seed)
    metrics.update({k: v for k, v in reward_metrics.items() if k.startswith(("rm_", "reward_"))
                    and isinstance(v, (int, float))})
    metrics.update({k: v for k, v in rs_stats.items() if isinstance(v, (int, float))})
    if ppo_history:
        metrics.update(summarise_ppo(ppo_history))
    return {k: round(float(v), 6) for k, v in metrics.items()}, samples


def chat_metrics(model_dir, prefix: str, prompts: Sequence[dict], world, sampling, sft_samples: Sequence[dict]
                 ) -> dict[str, float]:
    """A chat model judged like every other on the held-out ``prompts`` (``<prefix>_helpfulness``,
    ``_safety``, ...) and its win rate against the SFT model's answers to the same prompts
    (``<prefix>_win_rate_vs_sft``, the annotator); ``sft_samples``: the SFT evaluation's rows."""
    from ..evaluation.answers import evaluate_model
    from ..model import default_device, load_hf
    from ..tokenizer import Tokenizer

    sft_answers = {row["id"]: row["sft_answer"] for row in sft_samples}
    missing = [p["id"] for p in prompts if p["id"] not in sft_answers]
    if missing:
        raise ValueError(f"sft_samples has no SFT answer for {len(missing)} held-out prompt(s), e.g. {missing[:3]}: "
                         "rerun the sft stage on the same prompts_eval")
    policy = load_hf(model_dir, device=default_device()).eval()
    metrics, rows = evaluate_model(policy, Tokenizer(Path(model_dir) / "tokenizer.model"), world, prompts, sampling,
                                   prefix)
    metrics[f"{prefix}_win_rate_vs_sft"] = win_rate(world, [p["prompt"] for p in prompts], [r["answer"] for r in rows],
                                                    [sft_answers[p["id"]] for p in prompts])
    return {k: round(float(v), 6) for k, v in metrics.items()}
