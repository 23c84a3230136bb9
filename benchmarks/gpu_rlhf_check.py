"""Where the RLHF stage's models live: a short PPO run and a round evaluation on
:func:`llama2_pipeline.model.default_device` (the GPU when one is visible), without Kedro or MLflow.

A random smoke-shape policy and reward model (tokenizer trained on the simulated world's texts) go
through ``ppo_finetune`` (policy, reference, value model and both RMs on one device) and
``evaluate_round`` (greedy answers, RM scores, KL to SFT); printed and written as JSON: the device,
the CUDA memory the run allocated (0 on CPU), seconds, the PPO summary and the evaluation metrics.
``--preset 1b`` and the rollout/memory options check that PPO at a 1B-class shape fits one GPU
(five models: policy, reference, value model, two RMs; the vocabulary stays the world tokenizer's).

    python benchmarks/gpu_rlhf_check.py --out /tmp/rlhf_device.json
    python benchmarks/gpu_rlhf_check.py --preset 1b --rollouts 64 --minibatch 64 --micro-batch 8 \
        --max-new-tokens 256 --precision bf16 --steps 2 --out /tmp/rlhf_1b.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from llama2_pipeline.core.files import write_json
from llama2_pipeline.model import Llama, ModelConfig, default_device, export_hf
from llama2_pipeline.model.reward import RewardModel, export_reward_hf
from llama2_pipeline.recipe import load
from llama2_pipeline.tokenizer import save_hf_tokenizer, train_tokenizer
from llama2_pipeline.training.rlhf import evaluate_round, ppo_finetune
from llama2_pipeline.world import World

ROOT = Path(__file__).resolve().parents[1]


def small_world(recipe, seed: int, *, sft_dialogues: int = 100, corpus_mb: float | None = None) -> World:
    """The recipe's world rules with few entities and prompts (the device checks' data)."""
    w = recipe.world.to_dict()
    params = {**w, "seed": seed, "n_entities": 8,
              "prompts": {**w["prompts"], "n_arithmetic": 60, "n_list": 30, "n_string": 30},
              "sft": {**w["sft"], "n_dialogues": sft_dialogues}}
    if corpus_mb is not None:
        params["corpus"] = {**w["corpus"], "size_mb": corpus_mb, "shard_docs": 2000}
    return World.from_params(params)


def world_tokenizer(root: Path, texts: list[str]) -> Path:
    """``texts`` as one Parquet shard in ``root/corpus`` and a 512-token sentencepiece model
    trained on them in ``root/tok``; returns the model file."""
    (root / "corpus").mkdir(parents=True)
    pd.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts, "source": "world"}).to_parquet(
        root / "corpus/part-00000.parquet")
    train_tokenizer(root / "corpus", root / "tok", vocab_size=512, num_threads=1, progress=False)
    return root / "tok/tokenizer.model"


def build_models(root: Path, world: World, seed: int, preset: str = "smoke") -> tuple[Path, Path]:
    """A random policy of ``preset``'s shape (HF folder) and a reward model drawn on top of it."""
    texts = [p["prompt"] + " " + p["reference"] for p in world.prompts("train")]
    texts += [m["content"] for d in world.sft_dialogues() for m in d["messages"]]
    tok_model = world_tokenizer(root, texts)
    torch.manual_seed(seed)
    policy = export_hf(Llama(ModelConfig.from_preset(preset, vocab_size=512)), root / "policy",
                       tokenizer_model_path=tok_model)
    save_hf_tokenizer(root / "tok", policy)
    rm = export_reward_hf(RewardModel.from_pretrained(policy), root / "rm", tokenizer_model=tok_model)
    return policy, rm


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="PPO steps")
    p.add_argument("--preset", default="smoke", help="model shape of the policy and RMs (vocabulary 512)")
    p.add_argument("--rollouts", type=int, default=8, help="prompts per PPO step")
    p.add_argument("--minibatch", type=int, default=4, help="rollouts per gradient step")
    p.add_argument("--micro-batch", type=int, default=0, help="rollouts per forward/backward (0 = minibatch)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="longest rollout and evaluation answer")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="autocast of PPO's forward passes")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing in PPO")
    p.add_argument("--eval-prompts", type=int, default=32, help="held-out prompts the round evaluation answers")
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    recipe = load(ROOT / "params.yaml")
    seed = recipe.seed
    world = small_world(recipe, seed)
    rlhf = recipe.rlhf
    cfg = rlhf.ppo.replace(steps=args.steps, rollouts=args.rollouts, minibatch=args.minibatch,
                           micro_batch=args.micro_batch, max_new_tokens=args.max_new_tokens, precision=args.precision,
                           gradient_checkpointing=args.checkpointing, seed=seed)
    ppo = cfg.to_dict()
    device = default_device()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result: dict = {"device": device, "cuda": torch.cuda.get_device_name() if device == "cuda" else None,
                    "preset": args.preset, "ppo_config": {k: ppo[k] for k in (
                        "steps", "rollouts", "minibatch", "micro_batch", "max_new_tokens", "precision",
                        "gradient_checkpointing")}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        policy, rm = build_models(tmp, world, seed, args.preset)
        result["build_seconds"] = round(time.perf_counter() - start, 2)
        result["params_per_model"] = ModelConfig.from_preset(args.preset, vocab_size=512).num_params()
        if device == "cuda":
            torch.cuda.synchronize()
        marks = [time.perf_counter()]
        out, history, summary = ppo_finetune(policy, rm, world.prompts("train"), cfg, rlhf.safety_threshold,
                                             safety_dir=rm, out_dir=tmp / "ppo", progress=False,
                                             log_fn=lambda stats, step: marks.append(time.perf_counter()))
        # per step; the first also loads the five models
        result["ppo_step_seconds"] = [round(b - a, 2) for a, b in zip(marks, marks[1:])]
        result["ppo_answer_tokens"] = [h["answer_tokens"] for h in history]
        result["ppo_seconds"] = round(time.perf_counter() - marks[0], 2)  # loading the five models included
        if device == "cuda":
            result["ppo_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            result["cuda_after_ppo_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)  # ~0: all released
            torch.cuda.reset_peak_memory_stats()
        result["ppo"] = {k: round(v, 6) for k, v in summary.items()}
        if args.out:  # PPO's figures survive a failing evaluation
            write_json(Path(args.out), result)
        start = time.perf_counter()
        metrics, _ = evaluate_round(out, policy, policy, rm, rm, world.prompts("eval")[:args.eval_prompts], world,
                                    rlhf.eval.replace(max_new_tokens=args.max_new_tokens, kl_samples=8),
                                    rlhf.safety_threshold, seed, progress=False)
        result["eval_seconds"] = round(time.perf_counter() - start, 2)
        result["eval_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else 0.0
        result["eval"] = {k: round(v, 6) for k, v in metrics.items()
                          if k in ("policy_helpfulness", "policy_safety", "kl_to_sft", "rm_reward", "win_rate_vs_sft")}
    result["cuda_peak_mib"] = max(result.get("ppo_peak_mib", 0.0), result["eval_peak_mib"])
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
