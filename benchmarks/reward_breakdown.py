"""Which preference pairs does the helpfulness RM get wrong? Accuracy by what the two answers differ in.

World v2 scores helpfulness from an answer's components (DESIGN.md "World v2"): being right, and how
it is said (restating the question, explaining, concision, form, filler, hedging). A pair whose
answers differ only in being right ("The capital of Miadrus is Milas." vs "... is Lelol.") can only
be ranked by knowing the fact; a pair that differs only in style is what preferences carry and
demonstrations do not; a "mixed" pair differs in both (often a right answer said plainly against a
wrong one said well). Pairs are sorted by :func:`llama2_pipeline.training.reward_eval.pair_kind`
(correctness, style, mixed, other) and by rating level. The judges, on the helpfulness pairs of the
training and the held-out split:

- ``rm``: the project's helpfulness RM (``data/06_models/reward_helpfulness``);
- ``likelihood``: the SFT model's own mean answer log-likelihood (the reward stage's untrained
  baseline: what the policy knows, facts included);
- ``rm_plus_likelihood``: both, each divided by its spread over the training pairs' answers, added
  as ``rm + alpha * likelihood`` with the ``alpha`` (0 to 3 in steps of 0.1) that ranks the most
  *training* pairs right: whether the RM leaves out something the policy's knowledge would add;
- ``rm_plus_likelihood_best``: the same with the weight that ranks the most *held-out* pairs right
  (``alpha_heldout``): chosen on the test pairs themselves, an optimistic bound on any such mix;
- ``world``: the world's noise-free judgement (the ceiling the annotators' label noise leaves).

Several projects (one per seed, e.g. the copies of ``benchmarks/recipe_seeds.py``) give each held-out
figure as mean ± sd over them.

    dvc repro reward
    python benchmarks/reward_breakdown.py --project . ../seed_7 ../seed_42 \\
        --out benchmarks/results/cpu_reward_breakdown_second_machine.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from llama2_pipeline.core.files import read_jsonl, write_json
from llama2_pipeline.training.reward_eval import (
    evaluate_scores,
    likelihood_scores,
    pair_kind,
)
from llama2_pipeline.model import load_hf
from llama2_pipeline.model.reward import RewardModel
from llama2_pipeline.recipe import load
from llama2_pipeline.tokenizer import Tokenizer
from llama2_pipeline.training.preferences import RATINGS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_seeds import mean_sd

ROOT = Path(__file__).resolve().parents[1]
SPLITS = {"train": "data/05_model_input/reward_preferences_train.jsonl",
          "heldout": "data/05_model_input/reward_preferences_heldout.jsonl"}
KINDS = ("correctness", "style", "mixed", "other")
JUDGES = ("rm", "likelihood", "rm_plus_likelihood", "rm_plus_likelihood_best", "world")
#: the weights of the likelihood tried for ``rm_plus_likelihood``
ALPHAS = tuple(round(0.1 * i, 1) for i in range(31))


def accuracy_table(kinds: list[str], ratings: list[str], judges: dict[str, tuple[list, list]]) -> dict:
    """{kind: {subset: {"n": pairs, judge: accuracy}}} for each kind of :data:`KINDS` and ``all``, and
    subset ``all`` pairs and each rating level (accuracy None where a cell has no pairs)."""
    kinds_a, ratings_a = np.asarray(kinds), np.asarray(ratings)
    out: dict = {}
    for kind in (*KINDS, "all"):
        of_kind = np.ones(len(kinds), bool) if kind == "all" else kinds_a == kind
        out[kind] = {}
        for subset in ("all", *RATINGS):
            sel = of_kind if subset == "all" else of_kind & (ratings_a == subset)
            row: dict = {"n": int(sel.sum())}
            for judge, (chosen, rejected) in judges.items():
                ok = np.asarray(chosen) > np.asarray(rejected)
                row[judge] = round(float(ok[sel].mean()), 4) if sel.any() else None
            out[kind][subset] = row
    return out


def combine(rm: tuple[list, list], lik: tuple[list, list], scale: tuple[float, float],
            alpha: float) -> tuple[list, list]:
    """(chosen, rejected) scores ``rm / scale[0] + alpha * lik / scale[1]``."""
    return tuple((np.asarray(rm[i]) / scale[0] + alpha * np.asarray(lik[i]) / scale[1]).tolist() for i in (0, 1))


def fit_alpha(rm: tuple[list, list], lik: tuple[list, list], scale: tuple[float, float]) -> float:
    """The :data:`ALPHAS` weight under which :func:`combine` ranks the most of these pairs right (the
    smallest on a tie)."""
    accs = [float(np.mean(np.subtract(*combine(rm, lik, scale, a)) > 0)) for a in ALPHAS]
    return ALPHAS[int(np.argmax(accs))]


def breakdown(root: Path) -> dict:
    """One project's table per split (see the module's docstring) and the fitted ``alpha``."""
    recipe = load(root / "params.yaml")
    world = recipe.world.world(recipe.seed)
    rm_dir, sft_dir = root / "data/06_models/reward_helpfulness", root / "data/06_models/sft"
    for folder in (rm_dir, sft_dir):
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder}: no model (run `dvc repro reward` in the project first)")
    rm, lm = RewardModel.load(rm_dir), load_hf(sft_dir).eval()
    tok = Tokenizer(sft_dir / "tokenizer.model")
    batch = recipe.reward.eval.batch_size
    scored = {}
    for split, rel in SPLITS.items():
        path = root / rel
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (run `dvc repro reward` in the project first)")
        records = [r for r in read_jsonl(path)[0] if r.get("category") == "helpfulness"]
        if not records:
            raise ValueError(f"{path}: no helpfulness pairs")
        scored[split] = (records, {
            "rm": evaluate_scores(rm, records, batch), "likelihood": likelihood_scores(lm, tok, records, batch),
            "world": tuple([world.helpfulness(r["prompt"], r[side]) for r in records] for side in ("chosen", "rejected"))})
    train = scored["train"][1]
    scale = tuple(float(np.std(np.concatenate(train[j])) or 1.0) for j in ("rm", "likelihood"))
    alpha = fit_alpha(train["rm"], train["likelihood"], scale)
    held = scored["heldout"][1]
    best = fit_alpha(held["rm"], held["likelihood"], scale)
    out = {"project": str(root), "seed": recipe.seed, "alpha": alpha, "alpha_heldout": best, "splits": {}}
    for split, (records, judges) in scored.items():
        judges = {**judges, "rm_plus_likelihood": combine(judges["rm"], judges["likelihood"], scale, alpha),
                  "rm_plus_likelihood_best": combine(judges["rm"], judges["likelihood"], scale, best)}
        out["splits"][split] = accuracy_table([pair_kind(world, r) for r in records], [r["rating"] for r in records],
                                              {j: judges[j] for j in JUDGES})
    return out


def summarise(tables: list[dict]) -> dict:
    """{kind: {subset: {"n": [per project], judge: {"mean", "sd"}}}} of the held-out tables."""
    out: dict = {}
    for kind, rows in tables[0].items():
        out[kind] = {}
        for subset in rows:
            cells = [t[kind][subset] for t in tables]
            row: dict = {"n": [c["n"] for c in cells]}
            for judge in JUDGES:
                vals = [c[judge] for c in cells if c[judge] is not None]
                if vals:
                    m, s = mean_sd(vals)
                    row[judge] = {"mean": round(m, 4), "sd": round(s, 4), "projects": len(vals)}
            out[kind][subset] = row
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", type=Path, nargs="+", default=[ROOT],
                   help="projects whose reward stage has run (one per seed: held-out figures as mean ± sd)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    projects = [breakdown(root) for root in args.project]
    out = {"benchmark": "reward_breakdown", "argv": list(argv if argv is not None else sys.argv[1:]),
           "profile": load(args.project[0] / "params.yaml").profile, "judges": list(JUDGES), "projects": projects,
           "heldout": summarise([p["splits"]["heldout"] for p in projects])}
    out["seconds"] = round(time.perf_counter() - t0, 1)

    print("helpfulness pairs: accuracy of the helpfulness RM, of the SFT model's answer likelihood, of the two\n"
          "added (the likelihood's weight fitted on the training pairs; _best: on the held-out pairs) and of the\n"
          "world's noise-free judgement (the ceiling the annotators' label noise leaves any RM)")
    print("likelihood weight per project (training / held-out pairs): "
          + ", ".join(f"seed {p['seed']} {p['alpha']} / {p['alpha_heldout']}" for p in projects))
    if len(projects) > 1:
        print(f"held-out pairs, mean ± sd over {len(projects)} projects")
    print(f"{'pairs differ in':<16}{'level':<22}{'n':>6}" + "".join(f"{j.replace('rm_plus_likelihood', 'rm+lik'):>16}" for j in JUDGES))
    for kind, rows in out["heldout"].items():
        for subset, row in rows.items():
            if not any(row["n"]):
                continue
            cells = ("–" if j not in row else f"{row[j]['mean']:.3f}" + (f" ± {row[j]['sd']:.3f}" if len(projects) > 1 else "")
                     for j in JUDGES)
            print(f"{kind:<16}{subset:<22}{round(np.mean(row['n'])):>6}" + "".join(f"{c:>16}" for c in cells))
    if args.out:
        write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
