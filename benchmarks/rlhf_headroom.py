"""How far can RLHF move held-out helpfulness from this SFT model? Arms with a perfect judge.

The RLHF rounds rank answers with trained reward models; this script measures, from the SFT model of
the project's last ``dvc repro`` (or, with ``--start rlhf_v2``, from a round's policy: what the next
round can reach), what fine-tuning on various answer sets and PPO reach when the world itself
judges (an RM that is never wrong). Every fine-tuning arm uses the rounds' own
``rlhf.rejection_sampling`` settings, on one answer per train prompt:

* ``random``          a random one of the policy's K samples (what fine-tuning on its own samples does);
* ``demonstrations``  the writers' demonstrations of those prompts (``sft_dialogues.jsonl``: more of SFT);
* ``longest``         the longest of the K samples (a length heuristic);
* ``ideal``           the world's ideal answers (``Task.reference``): the ceiling a fine-tune can learn;
* ``best_of_k``       the best of the K samples by the world's judgement: rejection sampling with a
                      perfect reward model; with ``--best-of 4 16 32`` also ``best_of_4`` … at those K
                      (each K its own samples): how the arm's gain grows with K;
* ``ppo``             PPO (``rlhf.ppo`` settings, ``--ppo-steps`` steps) from the start with the
                      world's judgement as its reward (the value model from the start's helpfulness RM).

The world's judgement of an answer is the annotator's noiseless score: helpfulness, and on
safety-tagged prompts ``(safety + 0.3 helpfulness) / 1.3``. Each arm's policy answers the held-out
prompts greedily (``rlhf.eval.max_new_tokens``) and the world judges them, as a round's evaluation
does. Printed and written as JSON: held-out helpfulness, safety and the answer components' rates per
arm, the gain over SFT, and the world's score of the answers each arm trained on.

    dvc repro reward                                   # the SFT model and the helpfulness RM
    python benchmarks/rlhf_headroom.py --best-of 4 16 32 --out benchmarks/results/cpu_rlhf_headroom.json
    python benchmarks/rlhf_headroom.py --start rlhf_v2 --arms best_of_k,ideal --ppo-steps 0   # the third round's
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
from llama2_pipeline.evaluation.answers import DIMENSIONS, SamplingConfig, evaluate_model
from llama2_pipeline.model import load_hf
from llama2_pipeline.recipe import load
from llama2_pipeline.tokenizer import Tokenizer
from llama2_pipeline.training.config import PPOConfig
from llama2_pipeline.training.rlhf import ppo_finetune, sample_candidates
from llama2_pipeline.training.sft import finetune
from llama2_pipeline.world import World

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("random", "demonstrations", "longest", "ideal", "best_of_k")


def records(path: Path) -> list[dict]:
    """A JSON-lines file of the project (a bad line names the file and line)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (run `dvc repro reward` in the project first)")
    return read_jsonl(path)[0]


def world_score(world: World, prompt: str, answer: str) -> float:
    """The world's judgement of an answer: the annotator's noiseless score (helpfulness; on
    safety-tagged prompts safety and helpfulness combined)."""
    task = world.task(prompt)
    return world.annotator.score(task, answer, "safety" if task is not None and task.safety else "helpfulness")


def world_judge(world: World, tokenizer: Tokenizer):
    """PPO's judge from the world: R_h the world's judgement (above), R_s its safety score, so the
    recipe's R_c rule scores a safety-tagged prompt by the combined score's safety side."""

    def judge(records: list[dict], prompt_ids: list[list[int]], answer_ids: list[list[int]]):
        texts = [tokenizer.decode([t for t in a if t != tokenizer.eos_id]).strip() for a in answer_ids]
        h = [world_score(world, r["prompt"], a) for r, a in zip(records, texts)]
        s = [world_score(world, r["prompt"], a) if r.get("safety") else world.safety(r["prompt"], a)
             for r, a in zip(records, texts)]
        return torch.tensor(h, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)

    return judge


def demonstrations_by_prompt(dialogues: list[dict]) -> dict[str, str]:
    """The writers' first answer to each prompt that opens a single-turn, unconstrained dialogue."""
    out: dict[str, str] = {}
    for d in dialogues:
        msgs = [m for m in d["messages"] if m["role"] != "system"]
        if len(msgs) == 2 and not d.get("constraints"):
            out.setdefault(msgs[0]["content"], msgs[1]["content"])
    return out


def selections(world: World, candidates: list[dict], demos: dict[str, str], seed: int) -> tuple[dict, dict]:
    """Per arm, the SFT dialogues (one answer per train prompt) and the world's mean score of them."""
    rng = random.Random(seed)
    arms: dict[str, list[dict]] = {a: [] for a in ARMS}
    scores: dict[str, list[float]] = {a: [] for a in ARMS}
    for c in candidates:
        answers = [a for a in c["answers"] if a.strip()]
        if not answers:
            continue
        judged = [world_score(world, c["prompt"], a) for a in answers]
        picks = {"random": rng.choice(answers), "demonstrations": demos.get(c["prompt"]),
                 "longest": max(answers, key=len), "ideal": c["reference"],
                 "best_of_k": answers[int(np.argmax(judged))]}
        for arm, answer in picks.items():
            if answer is None:  # no single-turn demonstration of this prompt
                continue
            arms[arm].append({"messages": [{"role": "user", "content": c["prompt"]},
                                           {"role": "assistant", "content": answer}]})
            scores[arm].append(world_score(world, c["prompt"], answer))
    return arms, {arm: float(np.mean(v)) if v else None for arm, v in scores.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", type=Path, default=ROOT, help="a project whose sft and reward stages have run")
    p.add_argument("--start", default="sft",
                   help="the model the arms start from: sft, or a round of rlhf.rounds (rlhf_v1, ...)")
    p.add_argument("--k", type=int, default=None, help="samples per train prompt (default: rlhf.candidates.k)")
    p.add_argument("--ppo-steps", type=int, default=None, help="PPO steps (default: rlhf.ppo.steps; 0 = no PPO arm)")
    p.add_argument("--train-prompts", type=int, default=0, help="train prompts to sample (0 = all; else seeded)")
    p.add_argument("--eval-prompts", type=int, default=0, help="held-out prompts to judge (0 = all; else the first N)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"fine-tuning arms to run (of {', '.join(ARMS)})")
    p.add_argument("--best-of", type=int, nargs="*", default=[], metavar="K",
                   help="more best-of-K arms at these K (best_of_<K>; each K its own samples)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if any(n < 1 for n in args.best_of):
        p.error(f"--best-of takes sample counts >= 1, got {args.best_of}")

    t0 = time.perf_counter()
    root = args.project
    recipe = load(root / "params.yaml")
    seed, rlhf = recipe.seed, recipe.rlhf
    world = recipe.world.world(seed)
    starts = ["sft"] + [f"rlhf_{name}" for name in rlhf.rounds]
    if args.start not in starts:
        p.error(f"--start {args.start!r}: expected one of {starts}")
    models = root / "data/06_models"
    start = args.start
    start_dir, rm_dir = ((models / "sft", models / "reward_helpfulness") if start == "sft" else
                         (models / start / "policy", models / start / "reward_helpfulness"))
    ppo_steps = args.ppo_steps if args.ppo_steps is not None else rlhf.ppo.steps
    for folder in (start_dir, rm_dir) if ppo_steps > 0 else (start_dir,):  # the RM: PPO's value model
        if not (folder / "config.json").exists():
            stage = "reward" if start == "sft" else f"rlhf@{start.removeprefix('rlhf_')}"
            raise FileNotFoundError(f"{folder}: no model (run `dvc repro {stage}` in the project first)")
    train_prompts = records(root / "data/01_raw/prompts_train.jsonl")
    held_out = records(root / "data/01_raw/prompts_eval.jsonl")
    if args.eval_prompts:
        held_out = held_out[:args.eval_prompts]
    demos = demonstrations_by_prompt(records(root / "data/01_raw/sft_dialogues.jsonl"))
    tok = Tokenizer(start_dir / "tokenizer.model")
    k = args.k or rlhf.candidates.k
    sampling = SamplingConfig(max_new_tokens=rlhf.eval.max_new_tokens, batch_size=rlhf.eval.batch_size, seed=seed)

    def judge(model, arm: str) -> dict:
        m, _ = evaluate_model(model, tok, world, held_out, sampling, arm, progress=False)
        return {"helpfulness": m[f"{arm}_helpfulness"], "safety": m[f"{arm}_safety"],
                "rates": {d: m[f"{arm}_{d}_rate"] for d in DIMENSIONS if f"{arm}_{d}_rate" in m},
                "helpfulness_by_category": {c[len(f"{arm}_helpfulness_"):]: v for c, v in m.items()
                                            if c.startswith(f"{arm}_helpfulness_")}}

    results = {start: judge(load_hf(start_dir), start)}
    candidates = sample_candidates(start_dir, tok, train_prompts,
                                   rlhf.candidates.replace(k=k, max_prompts=args.train_prompts), seed, progress=False)
    arms, train_scores = selections(world, candidates, demos, seed)
    wanted = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(wanted) - set(ARMS))
    if unknown:
        p.error(f"unknown arm(s) {unknown}; expected some of {list(ARMS)}")
    more = sorted(set(args.best_of) - {k})
    with tempfile.TemporaryDirectory() as tmp:
        def train(arm: str, dialogues: list[dict], score: float, **extra) -> None:
            hf_dir = Path(tmp) / arm / "model"  # the round's fine-tuning settings, as finetune_policy
            finetune(start_dir, tok, dialogues, rlhf.rejection_sampling, Path(tmp) / arm / "run", hf_dir=hf_dir,
                     prefix="rs", progress=False)
            results[arm] = {**judge(load_hf(hf_dir), arm), "train_answers": len(dialogues),
                            "train_world_score": round(score, 6), **extra}

        for arm in wanted:
            train(arm, arms[arm], train_scores[arm], **({"k": k} if arm == "best_of_k" else {}))
        for n in more:  # the best-of-K arm at other K, from samples of its own
            cfg_n = rlhf.candidates.replace(k=n, max_prompts=args.train_prompts)
            cands = sample_candidates(start_dir, tok, train_prompts, cfg_n, seed, progress=False)
            picked, scores = selections(world, cands, demos, seed)
            train(f"best_of_{n}", picked["best_of_k"], scores["best_of_k"], k=n)
    if ppo_steps > 0:
        cfg: PPOConfig = rlhf.ppo.replace(steps=ppo_steps, seed=seed)
        policy, history, _ = ppo_finetune(start_dir, rm_dir, candidates, cfg, rlhf.safety_threshold,
                                          judge=world_judge(world, tok), progress=False)
        results["ppo"] = {**judge(policy, "ppo"), "steps": ppo_steps, "train_reward_first": history[0]["reward"],
                          "train_reward_last": history[-1]["reward"], "kl_last": history[-1]["kl"]}
    base = results[start]["helpfulness"]
    for r in results.values():
        r["gain"] = round(r["helpfulness"] - base, 6)
    out = {"benchmark": "rlhf_headroom", "argv": list(argv if argv is not None else sys.argv[1:]),
           "profile": recipe.profile, "world_version": recipe.world.version, "start": start, "k": k,
           "held_out_prompts": len(held_out), "train_prompts": len(candidates),
           "seconds": round(time.perf_counter() - t0, 1), "arms": results}
    print(f"held-out helpfulness ({len(held_out)} prompts, greedy, judged by the world), arms from {start}")
    print(f"{'arm':<16}{'helpfulness':>12}{'gain':>9}{'safety':>8}{'restate':>9}{'explain':>9}{'train score':>13}")
    for arm, r in results.items():
        score = r.get("train_world_score")
        print(f"{arm:<16}{r['helpfulness']:>12.4f}{r['gain']:>+9.4f}{r['safety']:>8.3f}"
              f"{r['rates'].get('restate', 0):>9.3f}{r['rates'].get('explain', 0):>9.3f}"
              f"{'' if score is None else f'{score:>13.3f}'}")
    print(f"{out['seconds']:.0f} s")
    if args.out:
        write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
