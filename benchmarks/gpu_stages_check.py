"""Every training stage of the recipe on the device, through the library entry points (no Kedro,
no MLflow): pretraining, SFT, both reward models, rejection sampling (candidates, best of K and
its fine-tune), PPO with the reward models, and GAtt (sampling its dialogues and fine-tuning).

A small simulated world (the project's world rules, few entities) gives the data; the models have
the shape ``--preset`` (``160m`` on a GPU; ``tiny`` on the CPU) with the world tokenizer's 512-token
vocabulary; each stage runs a few steps with the recipe's own configuration of that stage
(``params.yaml``'s ``--profile``: ``gpu`` = bf16, ZeRO-1 and the fast path's options) and only the
step counts, batch shapes and evaluation cadence overridden. For each stage: seconds, peak device
memory, and where it trains the mean training loss of the first and of the last third of its steps,
which must be finite and falling (PPO: its reward, rising; with ``--learning report`` falling is
recorded but not required: a tiny model's few steps on the CPU path are too noisy to judge). The JSON
is written after every stage, so a failure keeps the rest.

    python benchmarks/gpu_stages_check.py --preset 160m --profile gpu --out /tmp/stages_160m.json
    python benchmarks/gpu_stages_check.py --preset tiny --profile smoke --steps 4 --learning report  # the CPU path
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_rlhf_check import small_world, world_tokenizer  # noqa: E402  (this folder's device check)

from llama2_pipeline.core.files import write_json  # noqa: E402
from llama2_pipeline.model import default_device  # noqa: E402
from llama2_pipeline.recipe import load  # noqa: E402
from llama2_pipeline.tokenizer import Tokenizer  # noqa: E402
from llama2_pipeline.tokenizer.shards import encode_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("pretrain", "sft", "reward", "rejection_sampling", "ppo", "gatt")


def losses(run_dir: Path, key: str = "train_loss") -> tuple[float | None, float | None, int]:
    """The mean ``key`` of the first and of the last third of a run's metrics.jsonl records (each
    step's batch differs: single steps are noisy), and how many records had it."""
    values = [r[key] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if r.get(key) is not None]
    k = max(1, len(values) // 3)
    return (sum(values[:k]) / k, sum(values[-k:]) / k, len(values)) if values else (None, None, 0)


class Check:
    """Times each stage, records its peak memory and loss, writes the JSON after each one."""

    def __init__(self, device: str, out: Path | None, header: dict, require_learning: bool = True):
        self.device, self.out, self.result = device, out, {**header, "stages": {}}
        self.require_learning = require_learning

    def __call__(self, name: str, fn) -> dict:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            row = fn() or {}
            if self.device == "cuda":
                torch.cuda.synchronize()
            first, last = row.get("loss_first"), row.get("loss_last")
            finite = all(v is None or math.isfinite(v) for v in (first, last))
            falling = None if first is None or last is None else last < first
            if row.get("higher_is_better") and falling is not None:
                falling = not falling  # a reward: rising is learning
            row.update(ok=finite and (falling is not False or not self.require_learning), finite=finite,
                       learning=falling)
        except Exception as exc:  # noqa: BLE001 - the other stages still run; the failure is reported
            row = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        row["seconds"] = round(time.perf_counter() - start, 2)
        row["peak_mib"] = (round(torch.cuda.max_memory_allocated() / 2**20, 1) if self.device == "cuda"
                           else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))  # CPU: process RSS
        self.result["stages"][name] = row
        print(f"{name:20} {'ok' if row['ok'] else 'FAILED'}  {row['seconds']:7.2f} s  {row['peak_mib']:9.1f} MiB  "
              f"loss {row.get('loss_first')} -> {row.get('loss_last')} {row.get('error', '')}", flush=True)
        if self.out:
            write_json(self.out, self.result)
        return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="model shape (160m on a GPU)")
    p.add_argument("--profile", default="smoke", help="params.yaml profile whose stage configurations are used")
    p.add_argument("--steps", type=int, default=8, help="optimiser steps of each training stage (PPO: steps)")
    p.add_argument("--seq-len", type=int, default=256, help="training rows (tokens)")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--compile", choices=["auto", "on", "off"], default="off",
                   help="train.compile (off by default here: compiling each stage costs minutes of device time)")
    p.add_argument("--learning", choices=["require", "report"], default="require",
                   help="whether a stage whose loss does not fall fails the check (report: only recorded)")
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    recipe = load(ROOT / "params.yaml", profile=args.profile)
    seed, device = recipe.seed, default_device()
    world = small_world(recipe, seed, sft_dialogues=160, corpus_mb=1.0)
    prompts = world.prompts("train")
    train = {"max_steps": args.steps, "seq_len": args.seq_len, "micro_batch": args.micro_batch, "grad_accum": 1,
             "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 0, "log_every": 1,
             "compile": {"on": True, "off": False, "auto": "auto"}[args.compile]}
    check = Check(device, Path(args.out) if args.out else None, {
        "device": device, "cuda": torch.cuda.get_device_name() if device == "cuda" else None,
        "preset": args.preset, "profile": args.profile, "steps": args.steps, "seq_len": args.seq_len,
        "micro_batch": args.micro_batch, "learning": args.learning, "torch": torch.__version__},
        require_learning=args.learning == "require")
    tmp_dir = tempfile.TemporaryDirectory()
    root = Path(tmp_dir.name)
    m: dict[str, Path] = {}

    # the world's texts: the tokenizer's training data and the pretraining corpus
    texts = [d["text"] for shard in world.corpus_shards() for d in shard]
    texts += [msg["content"] for d in world.sft_dialogues() for msg in d["messages"]]
    tok_path = world_tokenizer(root, texts)
    tok = Tokenizer(tok_path)
    encode_corpus(root / "corpus", tok, root / "shards", val_fraction=0.05, seed=seed, workers=1, progress=False)

    def pretrain():
        from llama2_pipeline.training.pretrain import pretrain as run

        cfg = recipe.pretrain.train.to_dict() | train | {"eval_every": args.steps, "eval_batches": 2}
        out = run(root / "shards", {"preset": args.preset}, cfg, root / "pretrain_run", hf_dir=root / "pretrained",
                  tokenizer_model=tok.path, progress=False)
        m["policy"] = root / "pretrained"
        first, last, n = losses(root / "pretrain_run")
        return {"loss_first": first, "loss_last": last, "logged": n, "tokens_per_s": out.get("pretrain_tokens_per_s"),
                "mfu": out.get("pretrain_mfu"), "params": out.get("pretrain_params")}

    def finetune(name: str, init: Path, dialogues: list[dict], stage_cfg) -> dict:
        from llama2_pipeline.training.sft import finetune as run

        # epochs None: train.max_steps steps (cycling over the rows)
        cfg = stage_cfg.replace(val_fraction=0.0, epochs=None, train=stage_cfg.train.replace(**train))
        run(init, tok, dialogues, cfg, root / f"{name}_run", hf_dir=root / name, progress=False)
        first, last, n = losses(root / f"{name}_run")
        return {"loss_first": first, "loss_last": last, "logged": n, "dialogues": len(dialogues)}

    def sft():
        row = finetune("sft", m["policy"], world.sft_dialogues(), recipe.sft)
        m["sft"] = root / "sft"
        return row

    def reward():
        from llama2_pipeline.training.preferences import collect_preferences
        from llama2_pipeline.training.reward import train_reward_models

        sampling = recipe.reward.preferences.replace(max_prompts=48, max_new_tokens=32, variant_temperatures=[])
        pairs = collect_preferences(m["sft"], tok, prompts, world, sampling, seed, progress=False)
        rm_train = recipe.reward.train.replace(**{k: v for k, v in train.items() if k != "max_steps"})
        cfg = recipe.reward.replace(train=rm_train,  # RM steps come from epochs: ~steps, each RM on its half
                                    epochs=args.steps * args.micro_batch / max(1, len(pairs) // 2))
        out = {"helpfulness": root / "rm_helpfulness", "safety": root / "rm_safety"}
        metrics = train_reward_models(pairs, m["sft"], cfg, root / "rm_run", out, progress=False)
        m.update(out)
        runs = {c: losses(root / "rm_run" / c) for c in out}
        return {"loss_first": sum(r[0] for r in runs.values()), "loss_last": sum(r[1] for r in runs.values()),
                "per_model": {c: {"loss_first": r[0], "loss_last": r[1]} for c, r in runs.items()},
                "pairs": len(pairs), **{k: v for k, v in metrics.items() if k.endswith("_steps")}}

    def rejection_sampling():
        from llama2_pipeline.training.rejection import best_of_k
        from llama2_pipeline.training.rlhf import sample_candidates

        rlhf = recipe.rlhf
        sampling = rlhf.candidates.replace(k=4, max_prompts=48, max_new_tokens=32)
        start = time.perf_counter()
        candidates = sample_candidates(m["sft"], tok, prompts, sampling, seed, progress=False)
        sample_s = time.perf_counter() - start
        # ranked as the stage ranks them: R_c and the starting policy's likelihood (rlhf.candidates.likelihood_weight)
        dialogues, _, stats = best_of_k(candidates, m["helpfulness"], m["safety"], rlhf, policy_dir=m["sft"],
                                        tokenizer_path=tok_path)
        row = finetune("rs", m["sft"], dialogues, rlhf.rejection_sampling)
        m["rs"] = root / "rs"
        return {**row, "sample_seconds": round(sample_s, 2), "candidates": len(candidates)}

    def ppo():
        from llama2_pipeline.training.rlhf import ppo_finetune

        rlhf = recipe.rlhf
        cfg = rlhf.ppo.replace(steps=args.steps, max_prompts=0, rollouts=16, minibatch=8, micro_batch=0,
                               max_new_tokens=32, seed=seed)
        _, history, summary = ppo_finetune(m["rs"], m["helpfulness"], prompts, cfg, rlhf.safety_threshold,
                                           safety_dir=m["safety"], out_dir=root / "ppo", progress=False)
        k = max(1, len(history) // 3)
        return {"loss_first": sum(h["reward"] for h in history[:k]) / k,
                "loss_last": sum(h["reward"] for h in history[-k:]) / k, "higher_is_better": True,
                "logged": len(history), "kl_max": summary.get("ppo_kl_max")}

    def gatt():
        from llama2_pipeline.training.gatt import build_gatt_dialogues

        g = recipe.gatt
        start = time.perf_counter()
        records, stats = build_gatt_dialogues(m["rs"], prompts, g.replace(dialogues=16, tries=2), seed,
                                              reward_dir=m["helpfulness"], safety_dir=m["safety"])
        sample_s = time.perf_counter() - start
        return {**finetune("gatt", m["rs"], records, g.finetune), "sample_seconds": round(sample_s, 2),
                "adherent_share": stats.get("gatt_adherent_share")}

    for name, fn in zip(STAGES, (pretrain, sft, reward, rejection_sampling, ppo, gatt)):
        if check(name, fn)["ok"] is False and name in ("pretrain", "sft"):
            break  # the later stages start from these models
    tmp_dir.cleanup()
    check.result["ok"] = all(r["ok"] for r in check.result["stages"].values()) and \
        len(check.result["stages"]) == len(STAGES)
    if args.out:
        write_json(Path(args.out), check.result)
    return check.result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
