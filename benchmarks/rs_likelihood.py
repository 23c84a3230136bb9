"""Would the starting policy's own likelihood help rejection sampling pick its answers?

The rounds' RMs cannot check a fact (``benchmarks/reward_breakdown.py``): they score a wrong answer
said well above a right one said plainly, and the policies lose some correctness round by round. The
policy that sampled the answers often knows better. For each round of each project this ranks the
round's recorded candidates (``data/07_model_output/rlhf_<round>/candidates.jsonl``: every answer
with its R_c) as rejection sampling does with ``rlhf.candidates.likelihood_weight`` w
(:func:`llama2_pipeline.training.rlhf.rs_rank`: R_c / sd + w * likelihood / sd on prompts not tagged
safety, the likelihood the round's starting policy's mean log-probability per answer token) and has
the world judge the kept answers: helpfulness and the share that is correct, against the kept
answers of w = 0 (the paper's ranking), the mean sample and the best sample by the world. This says
what the ranking does to a round's fine-tuning data; whether the fine-tuned policies end higher is
the recipe's own measurement (docs/results.md, "Correctness for style").

    python benchmarks/rs_likelihood.py --project . ../seed_7 ../seed_42 \\
        --out benchmarks/results/cpu_rs_likelihood_second_machine.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from llama2_pipeline.core.files import read_jsonl, write_json
from llama2_pipeline.recipe import load
from llama2_pipeline.training.preferences import torch_threads
from llama2_pipeline.training.rejection import keep_best, policy_likelihood, rs_rank

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_seeds import mean_sd

ROOT = Path(__file__).resolve().parents[1]


def start_policy(root: Path, after: str) -> Path:
    """The folder of the policy a round starts from (``after``: sft or an earlier round)."""
    return root / ("data/06_models/sft" if after == "sft" else f"data/06_models/{after}/policy")


def picks(candidates: list[dict], rank: np.ndarray) -> np.ndarray:
    """Each prompt's kept answer (flat index) under ``rank``, as rejection sampling keeps it
    (:func:`~llama2_pipeline.training.rejection.keep_best`); -1 where every answer is blank."""
    starts = np.cumsum([0] + [len(c["answers"]) for c in candidates])[:-1]
    return np.asarray([-1 if b is None else int(at + b) for at, b in zip(starts, keep_best(candidates, rank))])


def round_table(root: Path, round_name: str, after: str, world, weights: list[float], threads: int) -> dict:
    path = root / f"data/07_model_output/{round_name}/candidates.jsonl"
    policy = start_policy(root, after)
    for need in (path, policy / "config.json"):
        if not need.exists():
            raise FileNotFoundError(f"{need}: missing (run `dvc repro rlhf@{round_name.removeprefix('rlhf_')}` first)")
    candidates = [c for c in read_jsonl(path)[0] if not c.get("safety")]
    if not candidates:
        raise ValueError(f"{path}: no candidates for prompts not tagged safety")
    for row, c in enumerate(candidates):
        if len(c.get("reward", [])) != len(c.get("answers", [])):
            raise ValueError(f"{path}, candidate {row}: {len(c.get('answers', []))} answers but "
                             f"{len(c.get('reward', []))} rewards")
    prompts = [c["prompt"] for c in candidates for _ in c["answers"]]
    answers = [a for c in candidates for a in c["answers"]]
    reward = np.asarray([r for c in candidates for r in c["reward"]], dtype=np.float64)
    helpful = np.asarray([bool(a.strip()) for a in answers])
    with torch_threads(threads):
        lik = np.asarray([round(v, 6) for v in
                          policy_likelihood(policy, root / "data/06_models/tokenizer/tokenizer.model")(prompts, answers)])
    judged = np.asarray([world.helpfulness(p, a) for p, a in zip(prompts, answers)])
    correct = np.asarray([float(world.dimensions(p, a)["correct"]) for p, a in zip(prompts, answers)])
    keep = lambda sel: sel[sel >= 0]  # noqa: E731
    base = picks(candidates, rs_rank(reward, helpful))
    out = {"round": round_name, "start": str(policy.relative_to(root)), "prompts": len(candidates),
           "answers": len(answers), "sample_mean": round(float(judged[helpful].mean()), 6),
           "world_best": round(float(judged[keep(picks(candidates, judged))].mean()), 6), "weights": {}}
    for w in weights:
        kept = picks(candidates, rs_rank(reward, helpful, lik, w))
        out["weights"][str(w)] = {"helpfulness": round(float(judged[keep(kept)].mean()), 6),
                                  "correct": round(float(correct[keep(kept)].mean()), 6),
                                  "changed": round(float(np.mean(kept != base)), 6)}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", type=Path, nargs="+", default=[ROOT], help="projects whose rounds have run")
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0],
                   help="likelihood weights to rank by (0, the paper's ranking, is always added)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if any(w < 0 for w in args.weights):
        p.error(f"--weights must be >= 0, got {args.weights}")
    weights = sorted({0.0, *args.weights})

    t0 = time.perf_counter()
    rows = []
    for root in args.project:
        recipe = load(root / "params.yaml")
        world = recipe.world.world(recipe.seed)
        for name, spec in recipe.rlhf.rounds.items():
            row = {"seed": recipe.seed, **round_table(root, f"rlhf_{name}", spec.after, world, weights,
                                                      recipe.rlhf.num_threads)}
            rows.append(row)
            print(f"seed {row['seed']:<5} {row['round']:<8} {row['prompts']:>4} prompts  sample mean "
                  f"{row['sample_mean']:.3f}  best by the world {row['world_best']:.3f}  kept: "
                  + "  ".join(f"w {w} {v['helpfulness']:.3f} (correct {v['correct']:.3f})"
                              for w, v in row["weights"].items()), flush=True)
    summary = {}
    for w in weights[1:]:
        gains = [r["weights"][str(w)]["helpfulness"] - r["weights"]["0.0"]["helpfulness"] for r in rows]
        corr = [r["weights"][str(w)]["correct"] - r["weights"]["0.0"]["correct"] for r in rows]
        summary[str(w)] = {k: dict(zip(("mean", "sd"), (round(x, 6) for x in mean_sd(v))))
                           for k, v in (("helpfulness_gain", gains), ("correct_gain", corr))}
        summary[str(w)]["rounds_higher"] = sum(g > 0 for g in gains)
    out = {"benchmark": "rs_likelihood", "argv": list(argv if argv is not None else sys.argv[1:]),
           "weights": weights, "rounds": rows, "summary": summary, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"\nkept answers against the paper's ranking (w = 0), over {len(rows)} rounds")
    for w, s in summary.items():
        print(f"w {w:<5} helpfulness {s['helpfulness_gain']['mean']:+.4f} ± {s['helpfulness_gain']['sd']:.4f} "
              f"(higher in {s['rounds_higher']} of {len(rows)})  correct {s['correct_gain']['mean']:+.3f} ± "
              f"{s['correct_gain']['sd']:.3f}")
    if args.out:
        write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
