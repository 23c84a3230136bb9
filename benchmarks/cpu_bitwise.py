"""Are the CPU runs bit-identical across x86-64 machines? A short pretraining and SFT under forced code paths.

On one machine, the code paths another machine would take are forced through the libraries' own
switches: ATen's vectorised kernels (``ATEN_CPU_CAPABILITY=default|avx2|avx512``), MKL's instruction
set (``MKL_ENABLE_INSTRUCTIONS``) and its conditional numerical reproducibility (``MKL_CBWR``), oneDNN's
ISA (``ONEDNN_MAX_CPU_ISA``) or oneDNN switched off, and the thread count. Each configuration trains
the default profile's ``tiny`` model for ``--steps`` steps on the project's token shards (the
``pretrain`` stage's training config), then fine-tunes the same starting model (the native run's)
on ``--dialogues`` SFT dialogues (the ``sft`` stage's config), each in a fresh process, and records
the sha256 of the exported weights, the final losses, the largest weight difference to the native
run and the training time (wall and CPU seconds of the process: on a shared machine the CPU time is
the fairer cost). Configurations with equal digests are bit-identical.

    dvc repro tokenizer_encode          # token shards, tokenizer and SFT dialogues of a profile
    python benchmarks/cpu_bitwise.py --out benchmarks/results/cpu_bitwise.json
    python benchmarks/cpu_bitwise.py --configs native portable_on_native --stages pretrain --repeat 3   # the cost

``--repeat`` runs every configuration several times, interleaved, and reports the median times and
whether each configuration gave the same bits every time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the switches of each library, one at a time, then whole "machines" and the candidate settings
AVX2_MACHINE = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
OLD_MACHINE = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}
PORTABLE = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}
AVX2_PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
CONFIGS: dict[str, dict[str, str]] = {
    "native": {},
    "aten_avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten_default": {"ATEN_CPU_CAPABILITY": "default"},
    "mkl_avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "mkl_cbwr_compatible": {"MKL_CBWR": "COMPATIBLE"},
    "onednn_off": {"LLAMA2_BITWISE_MKLDNN": "0"},
    "threads_1": {"LLAMA2_BITWISE_THREADS": "1"},
    "avx2_machine": AVX2_MACHINE,
    "portable_on_native": PORTABLE,
    "portable_on_avx2_machine": {**AVX2_MACHINE, **PORTABLE},
    "portable_on_sse_machine": {**OLD_MACHINE, **PORTABLE},
    "avx2_pinned_on_native": AVX2_PINNED,
    "avx2_pinned_on_avx2_machine": {**AVX2_MACHINE, **AVX2_PINNED},
}
#: pairs that must agree for a setting to make two machines' runs bit-identical
MACHINE_PAIRS = {"none (as shipped)": ("native", "avx2_machine"),
                 "portable: ATen default, MKL_CBWR=COMPATIBLE, oneDNN SSE4.1": ("portable_on_native",
                                                                                "portable_on_avx2_machine"),
                 "portable, AVX-512 vs SSE4.2-only machine": ("portable_on_native", "portable_on_sse_machine"),
                 "avx2 pinned: ATen avx2, MKL_CBWR=AVX2, oneDNN AVX2": ("avx2_pinned_on_native",
                                                                        "avx2_pinned_on_avx2_machine")}


def worker(stage: str, project: Path, out: Path, steps: int, dialogues: int, init: Path | None) -> dict:
    """One training run in this process (its environment selects the code paths)."""
    import torch

    if os.environ.get("LLAMA2_BITWISE_MKLDNN") == "0":
        torch.backends.mkldnn.enabled = False
    from llama2_pipeline.core.files import read_jsonl, sha256_file
    from llama2_pipeline.recipe import load

    recipe = load(ROOT / "params.yaml", profile="default")  # the default profile's training configs
    threads = int(os.environ.get("LLAMA2_BITWISE_THREADS", "0"))
    t0, c0 = time.perf_counter(), time.process_time()
    if stage == "pretrain":
        from llama2_pipeline.training.pretrain import pretrain

        cfg = recipe.pretrain.train.replace(max_steps=steps, warmup_steps=min(10, steps), eval_every=0,
                                            checkpoint_every=-1, num_threads=threads)
        metrics = pretrain(project / "data/05_model_input/token_shards", {"preset": recipe.pretrain.model.preset},
                           cfg, out / "run", hf_dir=out / "model", progress=False,
                           tokenizer_model=project / "data/06_models/tokenizer/tokenizer.model")
        loss = metrics["pretrain_val_loss"]
    else:
        from llama2_pipeline.tokenizer import Tokenizer
        from llama2_pipeline.training.sft import finetune

        records = read_jsonl(project / "data/01_raw/sft_dialogues.jsonl")[0][:dialogues]
        sft = recipe.sft.replace(epochs=1, train=recipe.sft.train.replace(eval_every=0, checkpoint_every=-1,
                                                                           num_threads=threads))
        metrics = finetune(init, Tokenizer(init / "tokenizer.model"), records, sft, out / "run", hf_dir=out / "model",
                           progress=False)
        loss = metrics["sft_val_loss"]
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"sha256": sha256_file(out / "model" / "model.safetensors"), "val_loss": loss, "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2),
            "train_seconds": round(metrics.get(f"{stage}_seconds", seconds), 2),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def run_config(name: str, env: dict, stage: str, args, folder: Path, init: Path | None, rep: int = 0) -> dict:
    out = folder / (f"{stage}-{name}" + (f"-{rep}" if rep else ""))
    cmd = [sys.executable, __file__, "--worker", stage, "--project", str(args.project), "--work", str(out),
           "--steps", str(args.steps), "--dialogues", str(args.dialogues)] + (["--init", str(init)] if init else [])
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                **env}
    p = subprocess.run(cmd, env=full_env, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{stage} {name} failed:\n{p.stderr[-3000:]}")
    result = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"{stage:8} {name:28} {result['sha256'][:12]} loss {result['val_loss']:.6f} "
          f"{result['train_seconds']:7.1f} s, {result['cpu_seconds']:7.1f} CPU s ({result['cpu_capability']}, "
          f"{result['threads']} threads)", flush=True)
    return {**result, "env": env, "model": str(out / "model" / "model.safetensors")}


def max_abs_diff(a: str, b: str) -> float:
    from safetensors.torch import load_file

    ta, tb = load_file(a), load_file(b)
    return max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta)


def summarise(results: dict[str, dict]) -> dict:
    """Groups of bit-identical configurations, each run's distance to the native run, the machine pairs."""
    groups: dict[str, list[str]] = {}
    for name, r in results.items():
        groups.setdefault(r["sha256"], []).append(name)
    native = results["native"]
    for r in results.values():
        r["max_abs_weight_diff_vs_native"] = max_abs_diff(native["model"], r["model"])
        r["val_loss_diff_vs_native"] = r["val_loss"] - native["val_loss"]
        r["cpu_cost_vs_native"] = round(r["cpu_seconds"] / native["cpu_seconds"], 2)
    pairs = {label: {"identical": results[a]["sha256"] == results[b]["sha256"],
                     "max_abs_weight_diff": max_abs_diff(results[a]["model"], results[b]["model"]),
                     "val_loss": [results[a]["val_loss"], results[b]["val_loss"]]}
             for label, (a, b) in MACHINE_PAIRS.items() if a in results and b in results}
    return {"identical_groups": sorted(groups.values(), key=len, reverse=True), "machine_pairs": pairs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, default=ROOT, help="a project with token shards, tokenizer, SFT dialogues")
    ap.add_argument("--steps", type=int, default=40, help="pretraining steps per configuration")
    ap.add_argument("--dialogues", type=int, default=200, help="SFT dialogues per configuration")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), help="which configurations (default: all)")
    ap.add_argument("--stages", nargs="*", default=["pretrain", "sft"], choices=["pretrain", "sft"],
                    help="which stages (sft starts from the native pretraining run)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each configuration (interleaved; times: median)")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    ap.add_argument("--worker", choices=["pretrain", "sft"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--init", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.project = args.project.resolve()
    if args.worker:
        print(json.dumps(worker(args.worker, args.project, args.work, args.steps, args.dialogues, args.init)))
        return 0
    import platform

    from llama2_pipeline.core.files import write_json
    from llama2_pipeline.project.environment import environment

    with tempfile.TemporaryDirectory(prefix="cpu-bitwise-") as tmp:
        folder = Path(tmp)
        report: dict = {"machine": environment(), "steps": args.steps, "dialogues": args.dialogues, "repeat": args.repeat,
                        "python": platform.python_version(), "configs": CONFIGS}
        for stage in args.stages:
            init = folder / "pretrain-native" / "model" if stage == "sft" else None
            if init is not None and not init.exists():
                run_config("native", {}, "pretrain", args, folder, None)
            names = ["native", *(c for c in args.configs if c != "native")]
            rounds = [{name: run_config(name, CONFIGS[name], stage, args, folder, init, rep) for name in names}
                      for rep in range(args.repeat)]  # interleaved: a change of the machine's load hits all alike
            results = rounds[0]
            for name, r in results.items():
                r["train_seconds_all"] = [rnd[name]["train_seconds"] for rnd in rounds]
                r["cpu_seconds_all"] = [rnd[name]["cpu_seconds"] for rnd in rounds]
                r["train_seconds"] = statistics.median(r["train_seconds_all"])
                r["cpu_seconds"] = statistics.median(r["cpu_seconds_all"])
                r["same_bits_every_repeat"] = len({rnd[name]["sha256"] for rnd in rounds}) == 1
            report[stage] = {"runs": results, **summarise(results)}
            for r in results.values():
                r.pop("model")
            print(json.dumps(report[stage]["machine_pairs"], indent=1))
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
