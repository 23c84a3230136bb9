"""How far can RLHF move held-out helpfulness from this SFT model? Upper bounds with a perfect reward.

The RLHF rounds rank answers with trained reward models; this script replaces them with the
simulated world's own scorers (an RM that is never wrong) and measures what is left to gain on the
held-out prompts, each arm starting from the SFT model of the project's last ``dvc repro``:

* ``rs_random``    fine-tune (the rounds' ``rlhf.rejection_sampling`` settings) on a random one of K
                   samples per train prompt: what fine-tuning on its own samples does;
* ``rs_oracle``    the same on the best of the K samples by the world's score (R_c: safety on
                   safety-tagged prompts or when it is below ``rlhf.safety_threshold``, else
                   helpfulness): rejection sampling with a perfect reward model;
* ``rs_reference`` the same on the world's reference answers: the best answers there are;
* ``ppo_oracle``   PPO (``rlhf.ppo`` settings, ``--ppo-steps`` steps) with LOGIT(world R_c) as the
                   score: PPO with a perfect reward model.

Each arm's policy answers the held-out prompts greedily (``rlhf.eval.max_new_tokens``) and the world
judges them, as a round's evaluation does. Printed and written as JSON: held-out helpfulness and
safety per arm, the gain over SFT, and the share of the RLHF issue's target (SFT + 0.15) reached.

    dvc repro reward                                   # the SFT model and the helpfulness RM
    python benchmarks/rlhf_headroom.py --out benchmarks/results/cpu_rlhf_headroom.json
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llama2_pipeline.core.files import read_jsonl, write_json
from llama2_pipeline.evaluation.answers import SamplingConfig, evaluate_model
from llama2_pipeline.model import load_hf
from llama2_pipeline.recipe import load
from llama2_pipeline.tokenizer import Tokenizer
from llama2_pipeline.training.config import PPOConfig
from llama2_pipeline.training.ppo import combined_reward
from llama2_pipeline.training.rlhf import ppo_finetune, sample_candidates
from llama2_pipeline.training.sft import finetune
from llama2_pipeline.world import World

ROOT = Path(__file__).resolve().parents[1]
TARGET_GAIN = 0.15  # the RLHF issue's "final >= SFT + 0.15"


def records(path: Path) -> list[dict]:
    """A JSON-lines file of the project (a bad line names the file and line: ``datasets.read_jsonl``)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (run `dvc repro reward` in the project first)")
    return read_jsonl(path)[0]


def world_score(world: World, prompt: str, answer: str, is_safety: bool, threshold: float) -> float:
    """The world's R_c for one answer: the recipe's R_c rule on the true scores."""
    h, s = world.helpfulness(prompt, answer), world.safety(prompt, answer)
    r_c, _ = combined_reward(torch.tensor([h]), torch.tensor([s]), torch.tensor([is_safety]), threshold)
    return float(r_c)


def world_judge(world: World, tokenizer: Tokenizer):
    """PPO's judge from the world's scores: R_h and R_s of each decoded rollout answer."""

    def judge(records: list[dict], prompt_ids: list[list[int]], answer_ids: list[list[int]]):
        texts = [tokenizer.decode([t for t in a if t != tokenizer.eos_id]).strip() for a in answer_ids]
        h = [world.helpfulness(r["prompt"], a) for r, a in zip(records, texts)]
        s = [world.safety(r["prompt"], a) for r, a in zip(records, texts)]
        return torch.tensor(h, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)

    return judge


def selections(world: World, candidates: list[dict], threshold: float, seed: int) -> tuple[dict, dict]:
    """Per arm, the SFT dialogues (one answer per train prompt) and that answer set's mean train R_c."""
    rng = random.Random(seed)
    arms: dict[str, list[dict]] = {"rs_random": [], "rs_oracle": [], "rs_reference": []}
    scores: dict[str, list[float]] = {k: [] for k in arms}
    for c in candidates:
        answers = [a for a in c["answers"] if a.strip()]
        if not answers:
            continue
        r = [world_score(world, c["prompt"], a, c["safety"], threshold) for a in answers]
        picks = {"rs_random": rng.choice(answers), "rs_oracle": answers[int(np.argmax(r))],
                 "rs_reference": c["reference"]}
        for arm, answer in picks.items():
            arms[arm].append({"messages": [{"role": "user", "content": c["prompt"]},
                                           {"role": "assistant", "content": answer}]})
            scores[arm].append(world_score(world, c["prompt"], answer, c["safety"], threshold))
    return arms, {arm: float(np.mean(v)) for arm, v in scores.items()}


def oracle_ppo(sft_dir: Path, rm_dir: Path, world: World, prompts: list[dict], cfg: PPOConfig,
               threshold: float) -> tuple[torch.nn.Module, list[dict]]:
    """PPO from the SFT model (also the KL reference) on ``prompts`` (records with ``prompt`` and
    ``safety``) with LOGIT(world R_c) as the score: the rounds' PPO (``ppo_finetune``) with the
    world as its judge; the value model starts from the helpfulness RM, as in the rounds."""
    policy, history, _ = ppo_finetune(sft_dir, rm_dir, prompts, cfg, threshold,
                                      judge=world_judge(world, Tokenizer(sft_dir / "tokenizer.model")), progress=False)
    return policy, history


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", type=Path, default=ROOT, help="a project whose sft and reward stages have run")
    p.add_argument("--k", type=int, default=None, help="samples per train prompt (default: rlhf.candidates.k)")
    p.add_argument("--ppo-steps", type=int, default=None, help="oracle PPO steps (default: 4 x rlhf.ppo.steps)")
    p.add_argument("--train-prompts", type=int, default=0, help="train prompts to sample (0 = all; else seeded)")
    p.add_argument("--eval-prompts", type=int, default=0, help="held-out prompts to judge (0 = all; else the first N)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    root = args.project
    recipe = load(root / "params.yaml")
    seed, rlhf = recipe.seed, recipe.rlhf
    threshold = rlhf.safety_threshold
    world = recipe.world.world(seed)
    sft_dir, rm_dir = root / "data/06_models/sft", root / "data/06_models/reward_helpfulness"
    for folder in (sft_dir, rm_dir):
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder}: no model (run `dvc repro reward` in the project first)")
    train = records(root / "data/01_raw/prompts_train.jsonl")
    held_out = records(root / "data/01_raw/prompts_eval.jsonl")
    if args.eval_prompts:
        held_out = held_out[:args.eval_prompts]
    tok = Tokenizer(sft_dir / "tokenizer.model")
    k = args.k or rlhf.candidates.k
    ppo_steps = args.ppo_steps if args.ppo_steps is not None else 4 * rlhf.ppo.steps
    sampling = SamplingConfig(max_new_tokens=rlhf.eval.max_new_tokens, batch_size=rlhf.eval.batch_size, seed=seed)

    def judge(model, arm: str) -> dict:
        m, _ = evaluate_model(model, tok, world, held_out, sampling, arm, progress=False)
        return {"helpfulness": m[f"{arm}_helpfulness"], "safety": m[f"{arm}_safety"],
                "helpfulness_by_category": {c[len(f"{arm}_helpfulness_"):]: v for c, v in m.items()
                                            if c.startswith(f"{arm}_helpfulness_")}}

    results = {"sft": judge(load_hf(sft_dir), "sft")}
    candidates = sample_candidates(sft_dir, tok, train, rlhf.candidates.replace(k=k, max_prompts=args.train_prompts),
                                   seed, progress=False)
    arms, train_scores = selections(world, candidates, threshold, seed)
    with tempfile.TemporaryDirectory() as tmp:
        for arm, dialogues in arms.items():  # the round's fine-tuning settings, as finetune_policy
            hf_dir = Path(tmp) / arm / "model"
            finetune(sft_dir, tok, dialogues, rlhf.rejection_sampling, Path(tmp) / arm / "run", hf_dir=hf_dir,
                     prefix="rs", progress=False)
            results[arm] = {**judge(load_hf(hf_dir), arm), "train_prompts_world_score": round(train_scores[arm], 6)}
    if ppo_steps > 0:
        policy, history = oracle_ppo(sft_dir, rm_dir, world, candidates, rlhf.ppo.replace(steps=ppo_steps, seed=seed),
                                     threshold)
        results["ppo_oracle"] = {**judge(policy, "ppo_oracle"), "steps": ppo_steps,
                                 "train_reward_first": history[0]["reward"], "train_reward_last": history[-1]["reward"],
                                 "kl_last": history[-1]["kl"]}
    base = results["sft"]["helpfulness"]
    for arm, r in results.items():
        r["gain"] = round(r["helpfulness"] - base, 6)
        r["share_of_target_gain"] = round(r["gain"] / TARGET_GAIN, 3)
    out = {"benchmark": "rlhf_headroom", "argv": list(argv if argv is not None else sys.argv[1:]),
           "profile": recipe.profile, "k": k, "held_out_prompts": len(held_out),
           "train_prompts": len(candidates), "target_helpfulness": round(base + TARGET_GAIN, 6),
           "seconds": round(time.perf_counter() - t0, 1), "arms": results}
    print(f"held-out helpfulness ({len(held_out)} prompts, greedy, judged by the world); "
          f"target SFT + {TARGET_GAIN} = {out['target_helpfulness']:.3f}")
    print(f"{'arm':<14}{'helpfulness':>12}{'gain':>9}{'of target':>11}{'safety':>8}{'train R_c':>11}")
    for arm, r in results.items():
        train_score = r.get("train_prompts_world_score")
        print(f"{arm:<14}{r['helpfulness']:>12.4f}{r['gain']:>+9.4f}{r['share_of_target_gain']:>10.0%}"
              f"{r['safety']:>8.3f}{'' if train_score is None else f'{train_score:>11.3f}'}")
    print(f"{out['seconds']:.0f} s")
    if args.out:
        write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
