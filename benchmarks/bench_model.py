"""Benchmark our Llama against transformers' LlamaForCausalLM with the same weights.

Measures, in one run:
* training tokens/s: forward + backward + AdamW step (same batch, sequence length, optimiser);
* generation new tokens/s: our ``generate`` vs transformers' ``generate`` (same prompts, batch,
  max_new_tokens, sampling settings; EOS disabled on both so every row makes max_new_tokens);
  ``ours`` decodes as ``generate`` does by default (a CUDA graph per step on CUDA, eager on CPU),
  ``--decode-arms`` times other decoding modes of ours beside it (``gen_tokens_per_s_ours_<mode>``);
* greedy outputs (``--greedy-tokens``): ours (default decoding) against transformers on the same
  prompts in float32, where two correct implementations agree token for token (in bf16 a random
  model's near-ties flip on rounding), and ours in each timed arm against ours eager in the run's dtype.

The HF model is loaded from our exported folder, so both start from identical weights.
Timings alternate between the two implementations (``--rounds``) and report the median.

    python benchmarks/bench_model.py                       # CPU, tiny preset
    python benchmarks/bench_model.py --preset 160m --device cuda --dtype bf16 --out bench.json
    python benchmarks/bench_model.py --breakdown     # + where each training step's time goes

``--breakdown`` profiles the training steps of both (``torch.profiler``, self time per operator or
kernel) and groups it into matrix multiplies, attention, the loss's log-softmax and the rest. The
first three are the same library kernels on the same shapes in both models, so their time in our
step bounds what any rewrite of the rest can gain: ``ceiling`` = transformers' step time / ours in
those kernels, the speed-up over transformers if everything else took no time at all.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from llama2_pipeline.core.files import write_json
from llama2_pipeline.model import Llama, ModelConfig, export_hf, generate

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)


def train_step_ours(model, opt, tokens):
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def train_step_hf(model, opt, tokens):
    # HF shifts labels internally: the same T-1 predicted positions as ours on T input columns
    out = model(input_ids=tokens[:, :-1], labels=tokens[:, :-1])
    loss = out.loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
KERNEL_FAMILIES = ("matmul", "attention", "loss")
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def kernel_family(name: str) -> str:
    """matmul | attention | loss | other, for an ATen operator's name."""
    n = name.lower()
    if n in MATMUL_OPS:
        return "matmul"
    if any(s in n for s in ("attention", "fmha", "flash")):
        return "attention"
    if any(s in n for s in ("log_softmax", "nll_loss", "cross_entropy")):
        return "loss"
    return "other"


def step_breakdown(step, device: torch.device, steps: int) -> dict[str, float]:
    """Milliseconds per step in each kernel family and in all: the self time of each operator (CPU),
    or on CUDA the time of the kernels each operator launched itself (the kernels' own profiler
    rows are left out, so nothing is counted twice)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    out = dict.fromkeys(KERNEL_FAMILIES + ("other",), 0.0)
    for event in prof.key_averages():
        if event.device_type == DeviceType.CPU:  # operators (on CUDA, with the time of their kernels)
            out[kernel_family(event.key)] += getattr(event, attr) / 1e3 / steps
    out["total"] = sum(out.values())
    return out


def greedy_identity(ours, hf, prompts, hf_ids, hf_mask, pad, new_tokens, arms) -> dict:
    """Shares of rows whose greedy tokens are identical: ours (default decoding) against transformers'
    ``generate`` on float32 copies of both models (``hf_ids``/``hf_mask``: the prompts left-padded with
    ``pad``), and each of our decoding modes against ours eager in the models' own dtype."""
    import copy

    def same(a, b):
        return sum(x == y for x, y in zip(a, b)) / len(a)

    def ours_greedy(model, decode="auto"):
        return generate(model, prompts, new_tokens, temperature=0, eos_id=[], decode=decode).tokens

    with torch.inference_mode():
        runs = {a: ours_greedy(ours, a) for a in {"eager", *arms}}
        res = {f"greedy_identical_{a}_vs_eager": same(runs[a], runs["eager"]) for a in arms if a != "eager"}
        res["greedy_identical_default_vs_eager"] = same(ours_greedy(ours), runs["eager"])
        ours32, hf32 = copy.deepcopy(ours).float(), copy.deepcopy(hf).float()
        theirs = hf32.generate(input_ids=hf_ids, attention_mask=hf_mask, max_new_tokens=new_tokens, do_sample=False,
                               pad_token_id=pad)[:, hf_ids.size(1):].tolist()
        res["greedy_identical_vs_hf"] = same(ours_greedy(ours32), theirs)
        del ours32, hf32
    res["greedy_tokens"], res["greedy_check_dtype_vs_hf"] = new_tokens, "fp32"
    return res


def time_it(fn, device, steps, clock=time.perf_counter):
    _sync(device)
    t0 = clock()
    for _ in range(steps):
        fn()
    _sync(device)
    return (clock() - t0) / steps


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab-size", type=int, default=None, help="override the preset's vocab")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--batch", type=int, default=8, help="training batch size")
    p.add_argument("--seq-len", type=int, default=256, help="training sequence length")
    p.add_argument("--train-steps", type=int, default=2, help="timed steps per round")
    p.add_argument("--gen-batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=32, help="longest prompt; others are shorter")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--decode-arms", default=None,
                   help="comma-separated decode modes of ours timed beside the default (eager | static | graph; "
                        "default: eager on CUDA, static on CPU)")
    p.add_argument("--greedy-tokens", type=int, default=32,
                   help="new tokens of the greedy-identity check (0 = skip it)")
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="cpu = process CPU time: with --threads 1 on a shared CPU it ignores time "
                        "spent descheduled by other processes")
    p.add_argument("--breakdown", action="store_true",
                   help="also profile the training steps: time in matmul / attention / loss kernels and the rest")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if bad := [a for a in (args.decode_arms or "").split(",") if a and a not in ("eager", "static", "graph")]:
        p.error(f"--decode-arms: unknown decode mode(s) {bad}; expected eager, static or graph")

    import transformers  # a test/benchmark dependency only
    from transformers import LlamaForCausalLM

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        p.error("--clock cpu needs --device cpu and --threads 1")
    clock = CLOCKS[args.clock]
    overrides = {"vocab_size": args.vocab_size} if args.vocab_size else {}
    config = ModelConfig.from_preset(args.preset, **overrides)
    torch.manual_seed(args.seed)
    ours = Llama(config)
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(ours, f"{tmp}/model")
        hf = LlamaForCausalLM.from_pretrained(f"{tmp}/model", dtype=dtype, attn_implementation="sdpa")
    ours, hf = ours.to(device=device, dtype=dtype), hf.to(device)
    hf.generation_config.eos_token_id = None  # run every row to max_new_tokens, as ours below

    g = torch.Generator().manual_seed(args.seed)
    low = 3  # keep clear of special ids
    tokens = torch.randint(low, config.vocab_size, (args.batch, args.seq_len + 1), generator=g).to(device)
    lengths = torch.randint(max(1, args.prompt_len // 2), args.prompt_len + 1, (args.gen_batch,), generator=g)
    lengths[0] = args.prompt_len
    prompts = [torch.randint(low, config.vocab_size, (int(n),), generator=g).tolist() for n in lengths]
    pad = 0
    hf_ids = torch.tensor([[pad] * (args.prompt_len - len(q)) + q for q in prompts], device=device)
    hf_mask = torch.tensor([[0] * (args.prompt_len - len(q)) + [1] * len(q) for q in prompts], device=device)
    sample = dict(do_sample=args.temperature > 0)
    if args.temperature > 0:
        sample.update(temperature=args.temperature, top_p=args.top_p, top_k=0)

    opt_ours, opt_hf = _adamw(ours), _adamw(hf)
    ours.train(), hf.train()
    gen_ours = torch.Generator(device).manual_seed(args.seed)

    arms = [a for a in (args.decode_arms or ("eager" if device.type == "cuda" else "static")).split(",") if a]

    def run_gen_ours(decode="auto"):
        out = generate(ours, prompts, args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                       eos_id=[], generator=gen_ours, decode=decode)
        assert all(len(t) == args.max_new_tokens for t in out.tokens)

    def run_gen_hf():
        with torch.inference_mode():
            out = hf.generate(input_ids=hf_ids, attention_mask=hf_mask, max_new_tokens=args.max_new_tokens,
                              min_new_tokens=None, pad_token_id=pad, **sample)
        assert out.shape[1] == args.prompt_len + args.max_new_tokens

    def step_ours():
        return train_step_ours(ours, opt_ours, tokens)

    def step_hf():
        return train_step_hf(hf, opt_hf, tokens)

    # before any training step: the two models still have the same weights
    greedy = (greedy_identity(ours, hf, prompts, hf_ids, hf_mask, pad, args.greedy_tokens, arms)
              if args.greedy_tokens else {})

    # warm-up (allocator, kernels, HF's first-call setup)
    for _ in range(2):
        step_ours()
        step_hf()
    run_gen_ours(), run_gen_hf()
    for arm in arms:
        run_gen_ours(arm)

    # alternate the two implementations so that load from other processes hits both alike
    t_train = {"ours": [], "hf": []}
    t_gen = {"ours": [], "hf": [], **{f"ours_{a}": [] for a in arms}}
    for _ in range(args.rounds):
        t_train["ours"].append(time_it(step_ours, device, args.train_steps, clock))
        t_train["hf"].append(time_it(step_hf, device, args.train_steps, clock))
        t_gen["ours"].append(time_it(run_gen_ours, device, 1, clock))
        t_gen["hf"].append(time_it(run_gen_hf, device, 1, clock))
        for arm in arms:
            t_gen[f"ours_{arm}"].append(time_it(lambda a=arm: run_gen_ours(a), device, 1, clock))

    train_tokens = args.batch * args.seq_len
    new_tokens = args.gen_batch * args.max_new_tokens
    res = {
        "preset": args.preset, "device": str(device), "dtype": args.dtype, "params": ours.num_params(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "transformers": transformers.__version__, "batch": args.batch, "seq_len": args.seq_len,
        "gen_batch": args.gen_batch, "prompt_len": args.prompt_len, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "top_p": args.top_p, "rounds": args.rounds, "clock": args.clock,
    }
    # headline: median over rounds; "best" (fastest round) is the least disturbed by other load
    for kind, times, n in (("train", t_train, train_tokens), ("gen", t_gen, new_tokens)):
        for name in ("ours", "hf"):
            res[f"{kind}_tokens_per_s_{name}"] = n / statistics.median(times[name])
            res[f"{kind}_tokens_per_s_{name}_best"] = n / min(times[name])
        res[f"{kind}_speedup"] = res[f"{kind}_tokens_per_s_ours"] / res[f"{kind}_tokens_per_s_hf"]
        res[f"{kind}_speedup_best"] = res[f"{kind}_tokens_per_s_ours_best"] / res[f"{kind}_tokens_per_s_hf_best"]
    for arm in arms:
        res[f"gen_tokens_per_s_ours_{arm}"] = new_tokens / statistics.median(t_gen[f"ours_{arm}"])
        res[f"gen_speedup_{arm}"] = res[f"gen_tokens_per_s_ours_{arm}"] / res["gen_tokens_per_s_hf"]
    res["gen_decode_default"] = "graph" if device.type == "cuda" else "eager"
    res.update(greedy)

    print(f"{args.preset} ({res['params']:,} params) on {device} {args.dtype}, {res['threads']} threads, "
          f"{args.clock} clock, median (best) of {args.rounds} alternating rounds")
    for kind, label in (("train", "training tokens/s  "), ("gen", "generation tokens/s")):
        print(f"{label}: ours {res[f'{kind}_tokens_per_s_ours']:8.0f} ({res[f'{kind}_tokens_per_s_ours_best']:.0f})"
              f"   transformers {res[f'{kind}_tokens_per_s_hf']:8.0f} ({res[f'{kind}_tokens_per_s_hf_best']:.0f})"
              f"   ratio {res[f'{kind}_speedup']:.2f}x ({res[f'{kind}_speedup_best']:.2f}x)")
    for arm in arms:
        print(f"generation tokens/s, ours decode={arm}: {res[f'gen_tokens_per_s_ours_{arm}']:8.0f}   "
              f"ratio to transformers {res[f'gen_speedup_{arm}']:.2f}x")
    if args.greedy_tokens:
        print(f"greedy, {args.greedy_tokens} tokens: rows identical to transformers (fp32) "
              f"{res['greedy_identical_vs_hf']:.3f}; " + ", ".join(
                  f"ours {a} vs eager ({args.dtype}) {res[f'greedy_identical_{a}_vs_eager']:.3f}"
                  for a in ("default", *arms) if a != "eager"))
    if args.breakdown:
        parts = {"ours": step_breakdown(step_ours, device, args.train_steps),
                 "hf": step_breakdown(step_hf, device, args.train_steps)}
        kernels = sum(parts["ours"][k] for k in KERNEL_FAMILIES)
        res["train_breakdown_ms"] = parts
        res["train_kernel_ceiling"] = parts["hf"]["total"] / kernels
        print("training step, profiled (ms per step, self time):")
        for name, label in (("ours", "ours        "), ("hf", "transformers")):
            cells = (f"{k} {parts[name][k]:7.1f}" for k in (*KERNEL_FAMILIES, "other", "total"))
            print(f"  {label} " + "  ".join(cells))
        print(f"  ceiling: transformers' step / ours in matmul+attention+loss = {res['train_kernel_ceiling']:.2f}x "
              "(ours over transformers if everything else took no time)")
    if args.out:
        write_json(args.out, res)
    return res


if __name__ == "__main__":
    sys.exit(main() and 0)
