"""Which preference pairs does the helpfulness RM get wrong? Accuracy by what the two answers differ in.

World v2 scores helpfulness from an answer's components (DESIGN.md "World v2"): being right, and how
it is said (restating the question, explaining, concision, form, filler, hedging). A pair whose
answers differ only in being right ("The capital of Miadrus is Milas." vs "... is Lelol.") can only
be ranked by knowing the fact; a pair that differs only in style is what preferences carry and
demonstrations do not. Pairs are sorted by :func:`llama2_pipeline.evaluation.reward.pair_kind`
(correctness, style, mixed, other). For the project's helpfulness RM
(`data/06_models/reward_helpfulness`) and, next to it, the SFT model's own answer likelihood (the
reward stage's untrained baseline) and the world's noise-free judgement (the ceiling the
annotators' label noise leaves), this prints the accuracy on the helpfulness pairs of the
training and the held-out split, per kind and for the "significantly better" level, and writes JSON.

    dvc repro reward
    python benchmarks/reward_breakdown.py --out benchmarks/results/cpu_reward_breakdown.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from llama2_pipeline.core.files import read_jsonl, write_json
from llama2_pipeline.evaluation.reward import evaluate_scores, likelihood_scores, pair_kind
from llama2_pipeline.model import load_hf
from llama2_pipeline.model.reward import RewardModel
from llama2_pipeline.recipe import load
from llama2_pipeline.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
SPLITS = {"train": "data/05_model_input/reward_preferences_train.jsonl",
          "heldout": "data/05_model_input/reward_preferences_heldout.jsonl"}
KINDS = ("correctness", "style", "mixed", "other")


def accuracy_table(kinds: list[str], ratings: list[str], judges: dict[str, tuple[list, list]]) -> dict:
    """{kind: {subset: {"n": pairs, judge: accuracy}}} for each kind of :data:`KINDS` and ``all``, and
    subset all pairs / significantly better ones."""
    kinds_a, sig = np.asarray(kinds), np.asarray(ratings) == "significantly_better"
    out: dict = {}
    for kind in (*KINDS, "all"):
        of_kind = np.ones(len(kinds), bool) if kind == "all" else kinds_a == kind
        out[kind] = {}
        for subset, sel in (("all", of_kind), ("significantly_better", of_kind & sig)):
            row: dict = {"n": int(sel.sum())}
            for judge, (chosen, rejected) in judges.items():
                ok = np.asarray(chosen) > np.asarray(rejected)
                row[judge] = round(float(ok[sel].mean()), 4) if sel.any() else None
            out[kind][subset] = row
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", type=Path, default=ROOT, help="a project whose reward stage has run")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    root = args.project
    recipe = load(root / "params.yaml")
    world = recipe.world.world(recipe.seed)
    rm_dir, sft_dir = root / "data/06_models/reward_helpfulness", root / "data/06_models/sft"
    for folder in (rm_dir, sft_dir):
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder}: no model (run `dvc repro reward` in the project first)")
    rm, lm = RewardModel.load(rm_dir), load_hf(sft_dir).eval()
    tok = Tokenizer(sft_dir / "tokenizer.model")
    batch = recipe.reward.eval.batch_size
    out = {"benchmark": "reward_breakdown", "argv": list(argv if argv is not None else sys.argv[1:]),
           "profile": recipe.profile, "splits": {}}
    for split, rel in SPLITS.items():
        path = root / rel
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (run `dvc repro reward` in the project first)")
        records = [r for r in read_jsonl(path)[0] if r.get("category") == "helpfulness"]
        if not records:
            raise ValueError(f"{path}: no helpfulness pairs")
        judges = {"rm": evaluate_scores(rm, records, batch), "likelihood": likelihood_scores(lm, tok, records, batch),
                  "world": tuple([world.helpfulness(r["prompt"], r[side]) for r in records]
                                 for side in ("chosen", "rejected"))}
        kinds = [pair_kind(world, r) for r in records]
        out["splits"][split] = accuracy_table(kinds, [r["rating"] for r in records], judges)
    out["seconds"] = round(time.perf_counter() - t0, 1)

    print("helpfulness pairs: accuracy of the helpfulness RM, of the SFT model's answer likelihood and of the\n"
          "world's noise-free judgement (the ceiling the annotators' label noise leaves any RM)")
    print(f"{'split':<9}{'pairs differ in':<14}{'level':<22}{'n':>6}{'RM':>8}{'likelihood':>12}{'world':>8}")
    for split, table in out["splits"].items():
        for kind, rows in table.items():
            for subset, row in rows.items():
                rm_acc, lik_acc, world_acc = (("–" if row[j] is None else f"{row[j]:.3f}")
                                              for j in ("rm", "likelihood", "world"))
                print(f"{split:<9}{kind:<14}{subset:<22}{row['n']:>6}{rm_acc:>8}{lik_acc:>12}{world_acc:>8}")
    if args.out:
        write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
