"""Benchmark our pretraining step against transformers' LlamaForCausalLM with the same shape.

"ours" is the real thing: ``Llama`` + :func:`build_engine` (DeepSpeed) + :func:`train` with the
pretraining ``lm_loss`` (no copy of the loop). The baselines start from the same weights (HF
loads our export), same micro-batch, sequence length, precision and optimiser (AdamW 0.9/0.95,
eps 1e-5, wd 0.1 on matrices only, the same warm-up + cosine schedule, clip 1.0):

* ``hf``: LlamaForCausalLM in a plain PyTorch loop (forward, cross-entropy, backward, clip,
  AdamW step, scheduler step); bf16/fp16 as fp32 weights + autocast (DeepSpeed's mixed precision
  also keeps fp32 master weights);
* ``hf_ds``: LlamaForCausalLM through our DeepSpeed engine and loop (``--no-hf-ds`` to skip);
* ``ours_compile`` (only if named in ``--impls``): ours with ``torch.compile`` (``engine.compile()``).
* ``ours_fast`` (only if named): the fast path, ``train.compile`` + fused AdamW (foreach on CPU)
  + ``train.loss_chunk`` (``--loss-chunk``); ``ours`` is then the plain path (DeepSpeed's AdamW,
  eager, full logits), whatever the device's defaults.
* ``hf_compile`` (only if named): ``hf`` with ``torch.compile`` on the model.

On CUDA the implementations run one after the other (``--sequential``, the default there): each
is built, warmed up, timed and freed before the next, so that three 1B models with their
optimiser states need not share the GPU, and the peak memory of each is CUDA's max allocated
during its own steps. On CPU they take turns step by step (shared CPUs: a change of load hits all).

Reported: training tokens/s (median step time over ``--steps`` steps, the implementations
taking turns step by step),
MFU (6N + 12·L·d·T FLOPs per token; peak = ``--peak-flops``, default 989e12 on CUDA and, on CPU,
the measured fp32 matmul throughput of this machine), peak memory (CUDA: max allocated; CPU:
peak RSS growth, sampled, of a separate short process per implementation; ``--no-memory`` skips), a step-time
breakdown (forward / backward / optimiser, timed with syncs on extra steps), and the ratios.

    python benchmarks/bench_pretrain.py                                   # CPU, tiny preset
    python benchmarks/bench_pretrain.py --preset 1b --device cuda --dtype bf16 --batch 8 \
        --seq-len 2048 --zero-stage 1 --out results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from llama2_pipeline.core.files import write_json
from llama2_pipeline.model import Llama, ModelConfig, export_hf
from llama2_pipeline.training import (
    CosineSchedule,
    TrainConfig,
    build_engine,
    lm_loss,
    param_groups,
    setup_run,
    train,
)
from llama2_pipeline.training.loop import flops_per_token

IMPLS = ("ours", "hf", "hf_ds", "ours_compile", "ours_fast", "hf_compile")
DEFAULT_IMPLS = ("ours", "hf", "hf_ds")


class CyclingBatches:
    """Pre-generated random micro-batches, cycled (a ResumableBatches with no I/O)."""

    def __init__(self, n: int, batch: int, seq_len: int, vocab: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(3, vocab, (n, batch, seq_len + 1), generator=g)
        self.batches = [{"input_ids": t[:, :-1].contiguous(), "labels": t[:, 1:].contiguous()} for t in tokens]
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def hf_loss(model, batch):
    logits = model(input_ids=batch["input_ids"]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten()), batch["labels"].numel()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measured_matmul_flops(device, dtype, n: int = 2048) -> float:
    """Best-of-5 GEMM FLOP/s of this device: the nominal peak for MFU on CPU."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(5):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


class PlainHF:
    """transformers' model in a plain PyTorch training loop with the same optimiser and schedule."""

    def __init__(self, model, cfg: TrainConfig, device, autocast: torch.dtype | None):
        # bf16/fp16: fp32 master weights + autocast, PyTorch's counterpart of DeepSpeed's
        # mixed precision (bf16 compute, fp32 weights and optimiser states)
        self.model, self.cfg, self.device, self.autocast = model, cfg, device, autocast
        self.opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                     eps=cfg.eps, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, CosineSchedule(cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio))

    def step(self, batch, times: dict | None = None):
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            loss, _ = hf_loss(self.model, batch)
        if times is not None:
            _sync(self.device)
            t1 = time.perf_counter()
        loss.backward()
        if times is not None:
            _sync(self.device)
            t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if times is not None:
            _sync(self.device)
            t3 = time.perf_counter()
            for k, v in (("forward", t1 - t0), ("backward", t2 - t1), ("optimizer", t3 - t2)):
                times.setdefault(k, []).append(v)
        return loss


def engine_breakdown(engine, loss_fn, data, steps: int, device) -> dict[str, list[float]]:
    """Forward / backward / optimiser times of the DeepSpeed engine, synced between phases."""
    times: dict[str, list[float]] = {}
    for _ in range(steps):
        batch = {k: v.to(device) for k, v in next(data).items()}
        _sync(device)
        t0 = time.perf_counter()
        loss, _ = loss_fn(engine, batch)
        _sync(device)
        t1 = time.perf_counter()
        engine.backward(loss)
        _sync(device)
        t2 = time.perf_counter()
        if engine.run_context.precision == "fp32" and engine.zero_optimization_stage() == 0:
            torch.nn.utils.clip_grad_norm_(engine.module.parameters(), 1.0)  # as the loop does
        engine.step()
        _sync(device)
        t3 = time.perf_counter()
        for k, v in (("forward", t1 - t0), ("backward", t2 - t1), ("optimizer", t3 - t2)):
            times.setdefault(k, []).append(v)
    return times


def build(args, impl: str, tmp: Path):
    """(runner(steps) -> median step seconds, breakdown(steps) -> times, module, cfg, device)."""
    device = torch.device(args.device)
    overrides = {"vocab_size": args.vocab_size} if args.vocab_size else {}
    mcfg = ModelConfig.from_preset(args.preset, **overrides)
    cfg = TrainConfig(micro_batch=args.batch, seq_len=args.seq_len, max_steps=args.steps, lr=3e-4,
                      warmup_steps=2, log_every=1, eval_every=0, checkpoint_every=-1, seed=args.seed,
                      device=args.device, precision=args.dtype, zero_stage=args.zero_stage,
                      num_threads=args.threads or 0, compile=args.compile or impl == "ours_compile"
                      or (impl == "ours_fast" and args.device == "cuda"),  # no inductor build on CPU
                      optimizer=("fused" if args.device == "cuda" else "foreach") if impl == "ours_fast" else "deepspeed",
                      loss_chunk=args.loss_chunk if impl == "ours_fast" else 0,
                      activation_checkpointing=args.activation_checkpointing,
                      deterministic=args.deterministic)
    ctx = setup_run(cfg)
    model = Llama(mcfg)
    data = CyclingBatches(args.distinct_batches, args.batch, args.seq_len, mcfg.vocab_size, args.seed)
    if impl.startswith("hf"):
        from transformers import LlamaForCausalLM  # a benchmark/test dependency only

        export_hf(model, tmp / "model")
        model = LlamaForCausalLM.from_pretrained(tmp / "model", attn_implementation="sdpa",
                                                 dtype=torch.float32)
        if args.activation_checkpointing:
            model.gradient_checkpointing_enable()
    if impl in ("hf", "hf_compile"):
        model = model.to(device).train()
        if impl == "hf_compile":
            model.compile()
        runner = PlainHF(model, cfg, device, {"fp32": None, "bf16": torch.bfloat16,
                                              "fp16": torch.float16}[ctx.precision])

        def run(steps):
            out = []
            for _ in range(steps):
                batch = {k: v.to(device) for k, v in next(data).items()}
                _sync(device)
                t = time.perf_counter()
                loss = runner.step(batch)
                loss.item()  # the same one sync per step as our loop with log_every=1
                _sync(device)
                out.append(time.perf_counter() - t)
            return statistics.median(out)

        def breakdown(steps):
            times = {}
            for _ in range(steps):
                runner.step({k: v.to(device) for k, v in next(data).items()}, times)
            return times

        return run, breakdown, model, cfg, device

    engine = build_engine(model, cfg, ctx)
    loss_fn = hf_loss if impl.startswith("hf") else lm_loss
    run_dir = tmp / f"run_{impl}"

    def run(steps):
        res = train(engine, TrainConfig.from_dict({**cfg.to_dict(), "max_steps": steps}), data, loss_fn,
                    run_dir, progress=False)
        return statistics.median(r["step_time_s"] for r in res.history if "step_time_s" in r)

    return run, lambda steps: engine_breakdown(engine, loss_fn, data, steps, device), engine.module, cfg, device


def memory_child(args, impl: str) -> None:
    """Run a few steps of one implementation and print its peak memory (bytes) as JSON: CUDA's
    max allocated, or on CPU the peak RSS above the footprint before the model was built."""
    import deepspeed  # noqa: F401  (imported first so that its footprint is in the baseline)
    from transformers import LlamaForCausalLM  # noqa: F401

    rss_before, peak_rss, done = _rss(), [0], threading.Event()

    def sample():  # peak RSS while building and training (ru_maxrss would include import peaks)
        while not done.wait(0.002):
            peak_rss[0] = max(peak_rss[0], _rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        run, _, _, _, device = build(args, impl, Path(tmp))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run(3)
        done.set()
        sampler.join()
        peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss[0] - rss_before)
    print("PEAK_MEMORY " + json.dumps({"impl": impl, "bytes": peak}))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_memory(argv: list[str], impl: str) -> int | None:
    cmd = [sys.executable, __file__, *argv, "--memory-child", impl]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR":
                                                                  os.environ.get("DS_ACCELERATOR", "cpu")})
    for line in p.stdout.splitlines():
        if line.startswith("PEAK_MEMORY "):
            return json.loads(line.removeprefix("PEAK_MEMORY "))["bytes"]
    print(f"memory measurement of {impl} failed:\n{p.stderr[-2000:]}", file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab-size", type=int, default=None, help="override the preset's vocab")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--batch", type=int, default=8, help="micro-batch (sequences per step)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=8, help="timed steps per implementation (interleaved)")
    p.add_argument("--breakdown-steps", type=int, default=2)
    p.add_argument("--distinct-batches", type=int, default=4, help="random micro-batches, cycled")
    p.add_argument("--zero-stage", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile ours (engine.compile())")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--loss-chunk", type=int, default=4096, help="ours_fast: tokens per loss chunk")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.use_deterministic_algorithms on CUDA (always on for CPU runs; slower)")
    p.add_argument("--peak-flops", type=float, default=None, help="per-device peak FLOP/s for MFU")
    p.add_argument("--no-hf-ds", action="store_true", help="skip transformers under DeepSpeed")
    p.add_argument("--impls", default=",".join(DEFAULT_IMPLS),
                   help=f"comma-separated, 'ours' first; any of {', '.join(IMPLS)}")
    p.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=None,
                   help="one implementation at a time (default: on CUDA)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-implementation memory runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if args.memory_child:
        memory_child(args, args.memory_child)
        return {}

    impls = [i for i in args.impls.split(",") if not (i == "hf_ds" and args.no_hf_ds)]
    if not impls or impls[0] != "ours" or any(i not in IMPLS for i in impls):
        p.error(f"--impls must start with 'ours' and name only {', '.join(IMPLS)}; got {args.impls!r}")
    sequential = args.sequential if args.sequential is not None else args.device == "cuda"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    step_times: dict[str, list[float]] = {}
    breakdowns: dict[str, dict[str, list[float]]] = {}
    peak_memory: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if sequential:
            for impl in impls:
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                t_build = time.perf_counter()
                run, breakdown, module, _, device = build(args, impl, Path(tmp))
                print(f"{impl}: built in {time.perf_counter() - t_build:.1f} s", flush=True)
                if impl == "ours":
                    fpt, n_params = flops_per_token(module, args.seq_len), module.num_params()
                t_warm = time.perf_counter()
                run(2)  # warm-up: allocator, kernels, DeepSpeed's first step, compilation
                print(f"{impl}: warm-up {time.perf_counter() - t_warm:.1f} s", flush=True)
                step_times[impl] = [run(1) for _ in range(args.steps)]
                breakdowns[impl] = breakdown(args.breakdown_steps)
                if device.type == "cuda":
                    peak_memory[impl] = torch.cuda.max_memory_allocated() / 2**20
                print(f"{impl}: median step {statistics.median(step_times[impl]) * 1e3:.1f} ms", flush=True)
                del run, breakdown, module
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        else:
            built = {impl: build(args, impl, Path(tmp)) for impl in impls}
            device = built["ours"][4]
            fpt, n_params = flops_per_token(built["ours"][2], args.seq_len), built["ours"][2].num_params()
            for impl in impls:  # warm-up: allocator, kernels, DeepSpeed's first step
                built[impl][0](2)
            # one step of each implementation in turn, so that a change of machine load (shared
            # CPUs) hits all of them alike; the median step time of each is reported
            step_times = {impl: [] for impl in impls}
            for _ in range(args.steps):
                for impl in impls:
                    step_times[impl].append(built[impl][0](1))
            breakdowns = {impl: built[impl][1](args.breakdown_steps) for impl in impls}
            del built
        if args.peak_flops:
            peak, peak_kind = args.peak_flops, "given"
        elif device.type == "cuda":
            peak, peak_kind = 989e12, "H100 dense bf16 (989 TFLOP/s)"
        else:
            peak, peak_kind = measured_matmul_flops(device, dtype), "measured fp32 matmul of this CPU"

    tokens = args.batch * args.seq_len
    res = {
        "preset": args.preset, "device": str(device), "dtype": args.dtype, "params": n_params,
        "sequential": sequential,
        "batch": args.batch, "seq_len": args.seq_len, "tokens_per_step": tokens, "steps": args.steps,
        "zero_stage": args.zero_stage, "threads": torch.get_num_threads(),
        "compile": args.compile, "flops_per_token": fpt, "peak_flops": peak, "peak_flops_kind": peak_kind,
        "torch": torch.__version__, "python": platform.python_version(), "cpu": _cpu_name(),
    }
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
    for impl in impls:
        step = statistics.median(step_times[impl])
        res[f"{impl}_step_s"] = step
        res[f"{impl}_tokens_per_s"] = tokens / step
        res[f"{impl}_mfu"] = tokens / step * fpt / peak
        for phase, values in breakdowns[impl].items():
            res[f"{impl}_{phase}_s"] = statistics.median(values)
    if peak_memory:
        res.update({f"{impl}_peak_memory_mib": m for impl, m in peak_memory.items()})
    elif not args.no_memory:
        for impl in impls:
            res[f"{impl}_peak_memory_mib"] = (m / 2**20) if (m := child_memory(argv, impl)) else None
    for impl in impls[1:]:
        res[f"speedup_vs_{impl}"] = res["ours_tokens_per_s"] / res[f"{impl}_tokens_per_s"]

    print(f"{args.preset} ({res['params']:,} params) on {res['device']} {args.dtype}, batch {args.batch} x "
          f"{args.seq_len}, {res['threads']} threads; MFU peak: {peak / 1e12:.2f} TFLOP/s ({peak_kind})")
    print(f"{'impl':8} {'tokens/s':>10} {'MFU':>7} {'step ms':>8} {'fwd ms':>7} {'bwd ms':>7} {'opt ms':>7} "
          f"{'peak MiB':>9}")
    for impl in impls:
        mem = res.get(f"{impl}_peak_memory_mib")
        print(f"{impl:8} {res[f'{impl}_tokens_per_s']:10.0f} {res[f'{impl}_mfu']:7.2%} "
              f"{res[f'{impl}_step_s'] * 1e3:8.1f} {res[f'{impl}_forward_s'] * 1e3:7.1f} "
              f"{res[f'{impl}_backward_s'] * 1e3:7.1f} {res[f'{impl}_optimizer_s'] * 1e3:7.1f} "
              f"{'-' if mem is None else round(mem):>9}")
    for impl in impls[1:]:
        print(f"ours / {impl}: {res[f'speedup_vs_{impl}']:.2f}x")
    for fast in ("ours_compile", "ours_fast"):
        if fast not in impls:
            continue
        for base in (i for i in impls if i.startswith("hf") or (fast == "ours_fast" and i == "ours")):
            res[f"{fast}_speedup_vs_{base}"] = res[f"{fast}_tokens_per_s"] / res[f"{base}_tokens_per_s"]
            print(f"{fast} / {base}: {res[f'{fast}_speedup_vs_{base}']:.2f}x")
    if args.out:
        write_json(args.out, res)
    return res


if __name__ == "__main__":
    sys.exit(main() and 0)
