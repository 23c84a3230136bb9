"""The fast training path trains the same model as the plain one: ``ours`` (DeepSpeed's AdamW, the
full logits, no compilation) and ``ours_fast`` (fused AdamW on CUDA / foreach on the CPU,
``torch.compile`` on CUDA, chunked loss) each train ``--steps`` steps from the same weights on the
same batches (``--distinct-batches`` random micro-batches, cycled), built exactly as
``bench_pretrain.py`` builds them. The mean training loss of every ``--window`` steps is compared:
the largest difference must stay within ``--tolerance`` nats (bf16 rounding noise on a GPU; in
fp32 on the CPU the two paths agree to ~1e-5), and both curves must fall.

    python benchmarks/gpu_loss_curve.py --preset 160m --device cuda --dtype bf16 --batch 8 --seq-len 1024 \\
        --steps 200 --out /tmp/loss_curve_160m.json
    python benchmarks/gpu_loss_curve.py --preset tiny --steps 20 --window 5   # the CPU path (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pretrain import build  # noqa: E402  (this folder's benchmark: the same builder)

from llama2_pipeline.core.files import write_json  # noqa: E402

IMPLS = ("ours", "ours_fast")


def windows(losses: list[float], size: int) -> list[float]:
    return [sum(losses[i:i + size]) / len(losses[i:i + size]) for i in range(0, len(losses), size)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--batch", type=int, default=2, help="micro-batch (sequences per step)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--window", type=int, default=10, help="steps per compared mean")
    p.add_argument("--distinct-batches", type=int, default=16, help="random micro-batches cycled")
    p.add_argument("--loss-chunk", type=int, default=4096, help="ours_fast: tokens per loss chunk")
    p.add_argument("--tolerance", type=float, default=0.02, help="largest allowed |difference| of a window mean")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    ns = argparse.Namespace(**vars(args), vocab_size=None, zero_stage=0, threads=None, compile=False,
                            activation_checkpointing=False, deterministic=False)
    curves, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in IMPLS:
            run, *_ = build(ns, impl, Path(tmp))
            start = time.perf_counter()
            run(args.steps)
            seconds[impl] = round(time.perf_counter() - start, 2)
            records = [json.loads(line) for line in (Path(tmp) / f"run_{impl}/metrics.jsonl").read_text().splitlines()]
            curves[impl] = [r["train_loss"] for r in records if r.get("train_loss") is not None]
            del run
    means = {impl: windows(curves[impl], args.window) for impl in IMPLS}
    diffs = [abs(a - b) for a, b in zip(means["ours"], means["ours_fast"])]
    finite = all(math.isfinite(v) for c in curves.values() for v in c)
    falling = {impl: means[impl][-1] < means[impl][0] for impl in IMPLS}
    res = {"preset": args.preset, "device": args.device, "dtype": args.dtype, "batch": args.batch,
           "seq_len": args.seq_len, "steps": args.steps, "window": args.window, "tolerance": args.tolerance,
           "seconds": seconds, "window_means": means, "max_abs_diff": max(diffs) if diffs else None,
           "finite": finite, "falling": falling, "logged_steps": {k: len(v) for k, v in curves.items()}}
    res["ok"] = (finite and all(falling.values()) and bool(diffs) and max(diffs) <= args.tolerance
                 and all(len(c) == args.steps for c in curves.values()))
    print(f"{args.preset} {args.dtype} on {args.device}, {args.steps} steps: window means (ours | ours_fast)")
    for i, (a, b) in enumerate(zip(means["ours"], means["ours_fast"])):
        print(f"  steps {i * args.window + 1:4d}-{min((i + 1) * args.window, args.steps):4d}  {a:.4f} | {b:.4f}")
    print(f"largest difference {res['max_abs_diff']:.2e} nats (tolerance {args.tolerance}): "
          f"{'OK' if res['ok'] else 'NOT OK'}")
    if args.out:
        write_json(args.out, res)
    return res


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
