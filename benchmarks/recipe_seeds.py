"""Is a gain the recipe's or one run's? The whole default recipe at several seeds, mean ± sd.

For each seed the project's working tree is copied to a fresh folder (as ``bench_e2e.py`` does),
its ``seed`` set in ``params.yaml`` (the one seed: the simulated world and every random draw of
every stage) and reproduced with ``dvc repro``. From each copy's ``metrics/`` this tabulates every
model's held-out figures (the report's ``report_<model>_<metric>``), every model's helpfulness
gain over SFT and over the model before it, the reward models' accuracies and GAtt's adherence, per
seed and as mean ± sd (sample standard deviation) over the seeds. All copies run one after another
on this machine, so the spread is the seeds', not the machines'.

    python benchmarks/recipe_seeds.py --seeds 1234 7 42 --out benchmarks/results/cpu_recipe_seeds.json
    python benchmarks/recipe_seeds.py --tabulate /tmp/seeds/seed_1234 /tmp/seeds/seed_7   # runs already made
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import copy_project, timed_repro

#: the models of the report's table in recipe order: these, the run's RLHF rounds (``rlhf_<name>``, as
#: many as its ``rlhf.rounds``), then these; a model a run lacks is left out of its column
BEFORE_ROUNDS, AFTER_ROUNDS = ("pretrained", "sft", "sft_quality_only"), ("gatt",)
MODEL_METRICS = ("helpfulness", "safety", "refusal_rate", "false_refusal_rate", "answer_words",
                 "rate_correct", "rate_restate", "rate_explain", "rate_reason", "rate_redirect")
#: other headline figures: (metrics file, key)
OTHER = (("reward", "rm_helpfulness_acc"), ("reward", "rm_safety_acc"),
         ("reward", "rm_helpfulness_acc_beyond_correctness_significantly_better"),
         ("reward", "rm_helpfulness_acc_beyond_correctness_better"),
         ("reward", "rm_helpfulness_acc_style"), ("reward", "reward_likelihood_helpfulness_acc_style"),
         ("reward", "rm_helpfulness_acc_correctness_significantly_better"),
         ("reward", "rm_helpfulness_acc_significantly_better"), ("reward", "rm_helpfulness_acc_better"),
         ("reward", "rm_helpfulness_acc_slightly_better"), ("reward", "rm_helpfulness_acc_negligibly_better"),
         ("gatt", "gatt_after_adherence_turn1"), ("gatt", "gatt_after_adherence_turn4plus"),
         ("gatt", "gatt_turn4plus_over_turn1"), ("gatt", "gatt_helpfulness_change"),
         ("gatt", "gatt_before_instructed_refusal_rate"), ("gatt", "gatt_after_instructed_refusal_rate"),
         ("gatt", "gatt_after_instructed_false_refusal_rate"))
#: the last round's reward-model figures (``<round>.<key>``)
LAST_ROUND = ("rm_helpfulness_acc", "rm_safety_acc", "rm_helpfulness_acc_new", "rm_helpfulness_acc_earlier",
              "rm_safety_acc_new", "rm_safety_acc_earlier")


def set_seed(project: Path, seed: int) -> None:
    params = project / "params.yaml"
    text, n = re.subn(r"(?m)^seed: *\d+", f"seed: {seed}", params.read_text(), count=1)
    if n != 1:
        raise SystemExit(f"{params}: no top-level 'seed:' line to set")
    params.write_text(text)


def figures(project: Path) -> dict[str, float]:
    """The tabulated figures of one reproduced project, from its ``metrics/`` files."""
    def read(name: str) -> dict:
        path = project / "metrics" / f"{name}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (did `dvc repro` finish in {project}?)")
        return json.loads(path.read_text())

    report, out = read("report"), {}
    found = sorted((m.group(1) for k in report if (m := re.fullmatch(r"report_(rlhf_\w+?)_helpfulness", k))),
                   key=lambda name: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", name)])  # v2 before v10
    rounds = [m for m in (*BEFORE_ROUNDS, *found, *AFTER_ROUNDS) if f"report_{m}_helpfulness" in report]
    for m in rounds:
        for k in MODEL_METRICS:
            if (v := report.get(f"report_{m}_{k}")) is not None:
                out[f"{m}.{k}"] = v
    chain = [m for m in rounds if m.startswith("rlhf_")]
    for m in chain:  # PPO's KL and whether its bound stopped it (PPO rounds only)
        if (project / "metrics" / f"{m}.json").exists():
            for key in ("ppo_kl_max", "ppo_kl_bound_hit", "ppo_steps", "kl_to_sft"):
                if (v := read(m).get(key)) is not None:
                    out[f"{m}.{key}"] = v
    for m in rounds:
        if m not in ("pretrained", "sft"):
            out[f"gain.{m}_vs_sft"] = out[f"{m}.helpfulness"] - out["sft.helpfulness"]
    out["gain.sft_vs_pretrained"] = out["sft.helpfulness"] - out["pretrained.helpfulness"]
    for before, after in zip(["sft", *chain], chain):
        out[f"gain.{after}_vs_{before}"] = out[f"{after}.helpfulness"] - out[f"{before}.helpfulness"]
    if chain:
        out["gain.final_vs_sft"] = out[f"{chain[-1]}.helpfulness"] - out["sft.helpfulness"]
        out["gain.final_safety_vs_sft"] = out[f"{chain[-1]}.safety"] - out["sft.safety"]
    for name, key in (*OTHER, *((chain[-1], key) for key in LAST_ROUND if chain)):
        try:
            value = read(name).get(key)
        except FileNotFoundError:
            value = None
        if value is not None:
            out[f"{name}.{key}"] = value
    return {k: round(float(v), 6) for k, v in out.items()}


def mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def tabulate(per_seed: dict[int | str, dict[str, float]]) -> dict[str, dict]:
    """{figure: {"mean", "sd", "n", "min", "max"}} over the seeds that have the figure."""
    keys = sorted({k for f in per_seed.values() for k in f})
    out = {}
    for k in keys:
        values = [f[k] for f in per_seed.values() if k in f]
        mean, sd = mean_sd(values)
        out[k] = {"mean": round(mean, 4), "sd": round(sd, 4), "n": len(values),
                  "min": min(values), "max": max(values)}
    return out


def print_table(per_seed: dict, summary: dict) -> None:
    seeds = list(per_seed)
    print(f"\n{'figure':<62}" + "".join(f"{s!s:>10}" for s in seeds) + f"{'mean ± sd':>18}")
    for k, s in summary.items():
        cells = "".join(f"{per_seed[seed][k]:>10.3f}" if k in per_seed[seed] else f"{'–':>10}" for seed in seeds)
        print(f"{k:<62}{cells}{s['mean']:>11.3f} ± {s['sd']:.3f}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1234, 7, 42])
    p.add_argument("--profile", default="default")
    p.add_argument("--workdir", default=None, help="where the copies go (kept); default: a temporary folder")
    p.add_argument("--tabulate", nargs="+", type=Path, default=None,
                   help="tabulate these reproduced projects instead of running (their params give the seed)")
    p.add_argument("--out", default=None, help="write per-seed figures and the summary as JSON here")
    args = p.parse_args(argv)

    t0, per_seed, runs = time.perf_counter(), {}, {}
    if args.tabulate:
        for project in args.tabulate:
            seed = re.search(r"(?m)^seed: *(\d+)", (project / "params.yaml").read_text())
            key = int(seed.group(1)) if seed else str(project)
            per_seed[key] = figures(project)
            runs[key] = {"project": str(project.resolve()), "tabulated": True}
    else:
        tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="llama2-seeds-"))
        for seed in args.seeds:
            dest = tmp / f"seed_{seed}"
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            project = copy_project(dest, args.profile)
            set_seed(project, seed)
            print(f"seed {seed}: dvc repro in {project} (profile {args.profile})", flush=True)
            total, _ = timed_repro(project, [], project / "seeds_repro.log")
            runs[seed] = {"project": str(project), "repro_s": round(total, 1)}
            per_seed[seed] = figures(project)
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = tabulate(per_seed)
    print_table(per_seed, summary)
    out = {"benchmark": "recipe_seeds", "profile": args.profile, "seeds": list(per_seed), "runs": runs,
           "per_seed": {str(k): v for k, v in per_seed.items()}, "summary": summary,
           "seconds": round(time.perf_counter() - t0, 1)}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
