"""Where the RLHF stage's models live: a short PPO run and a round evaluation on
:func:`llama2_pipeline.model.default_device` (the GPU when one is visible), without Kedro or MLflow.

A random smoke-shape policy and reward model (tokenizer trained on the simulated world's texts) go
through ``ppo_finetune`` (policy, reference, value model and both RMs on one device) and
``evaluate_round`` (greedy answers, RM scores, KL to SFT); printed and written as JSON: the device,
the CUDA memory the run allocated (0 on CPU), seconds, the PPO summary and the evaluation metrics.

    python benchmarks/gpu_rlhf_check.py --out /tmp/rlhf_device.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from llama2_pipeline.io_utils import write_json
from llama2_pipeline.model import Llama, ModelConfig, default_device, export_hf
from llama2_pipeline.tokenizer import save_hf_tokenizer, train_tokenizer
from llama2_pipeline.training.reward import RewardModel, export_reward_hf
from llama2_pipeline.training.rlhf import evaluate_round, ppo_finetune
from llama2_pipeline.world import World

ROOT = Path(__file__).resolve().parents[1]


def build_models(root: Path, world: World, seed: int) -> tuple[Path, Path]:
    """A random smoke-preset policy (HF folder) and a reward model drawn on top of it."""
    texts = [p["prompt"] + " " + p["reference"] for p in world.prompts("train")]
    texts += [m["content"] for d in world.sft_dialogues() for m in d["messages"]]
    (root / "corpus").mkdir(parents=True)
    pd.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts, "source": "world"}).to_parquet(
        root / "corpus/part-00000.parquet")
    train_tokenizer(root / "corpus", root / "tok", vocab_size=512, num_threads=1, progress=False)
    torch.manual_seed(seed)
    policy = export_hf(Llama(ModelConfig.from_preset("smoke", vocab_size=512)), root / "policy",
                       tokenizer_model_path=root / "tok/tokenizer.model")
    save_hf_tokenizer(root / "tok", policy)
    rm = export_reward_hf(RewardModel.from_pretrained(policy), root / "rm", tokenizer_model=root / "tok/tokenizer.model")
    return policy, rm


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="PPO steps")
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    seed = params["seed"]
    world = World.from_params({**params["world"], "seed": seed, "n_entities": 8,
                               "prompts": {**params["world"]["prompts"], "n_arithmetic": 60, "n_list": 30,
                                           "n_string": 30},
                               "sft": {**params["world"]["sft"], "n_dialogues": 100}})
    rlhf = params["rlhf"]
    ppo = {**rlhf["ppo"], "steps": args.steps, "rollouts": 8, "minibatch": 4, "max_new_tokens": 16}
    device = default_device()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result: dict = {"device": device, "cuda": torch.cuda.get_device_name() if device == "cuda" else None}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        policy, rm = build_models(tmp, world, seed)
        start = time.perf_counter()
        out, history, summary = ppo_finetune(policy, rm, rm, world.prompts("train"), ppo, rlhf["safety_threshold"],
                                             seed, tmp / "ppo", progress=False)
        result["ppo_seconds"] = round(time.perf_counter() - start, 2)
        result["ppo"] = {k: round(v, 6) for k, v in summary.items()}
        start = time.perf_counter()
        metrics, _ = evaluate_round(out, policy, policy, rm, rm, world.prompts("eval")[:32], world,
                                    {**rlhf["eval"], "max_new_tokens": 16, "kl_samples": 8},
                                    rlhf["safety_threshold"], seed, progress=False)
        result["eval_seconds"] = round(time.perf_counter() - start, 2)
        result["eval"] = {k: round(v, 6) for k, v in metrics.items()
                          if k in ("policy_helpfulness", "policy_safety", "kl_to_sft", "rm_reward", "win_rate_vs_sft")}
    result["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else 0.0
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
