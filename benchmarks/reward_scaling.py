"""How far more preference data takes the reward models: held-out accuracy against training pairs.

The paper's Figure 6 for this project's RMs. For each share of a project's training pairs (each RM's
own data mix, as the reward stage draws it) and each seed, the RM is trained from the project's SFT
model exactly as the reward stage trains it (``reward.*`` of its params: margin, one pass, learning
rate) on a seeded sample of that many pairs (the samples of one seed are nested: a larger share adds
pairs) and judged on the project's held-out pairs of its category: accuracy overall and per rating
level and, for helpfulness, on the pairs that differ in more than correctness (the issue's
"beyond correctness" figures), on style-only, mixed and correctness-only pairs.

Each figure is then fitted as ``a + b * log2(pairs)`` over every (share, seed): ``b`` is the gain per
doubling of the data and the fit says how many pairs would reach a target (``--targets``). A curve
that bends towards a ceiling grows slower than a straight line in log2(pairs), so the fit's pair
count is a lower bound on what the target needs. Next to it the project's ``metrics/reward.json``:
the RM as the stage trained it, the SFT likelihood baseline and the oracle ceiling per level.

    python benchmarks/reward_scaling.py --out benchmarks/results/cpu_reward_scaling.json \\
        --plot benchmarks/results/cpu_reward_scaling.png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llama2_pipeline.core.files import atomic_path, read_jsonl, write_json
from llama2_pipeline.training.reward_eval import (
    PAIR_SUBSETS,
    accuracy_by_rating,
    evaluate_scores,
    pair_kind,
)
from llama2_pipeline.model.reward import RewardModel
from llama2_pipeline.recipe import load
from llama2_pipeline.training.preferences import CATEGORIES, RATINGS, mix_preferences
from llama2_pipeline.training.reward import train_reward_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_seeds import mean_sd

ROOT = Path(__file__).resolve().parents[1]
TRAIN, HELDOUT = "data/05_model_input/reward_preferences_train.jsonl", "data/05_model_input/reward_preferences_heldout.jsonl"
#: the helpfulness subsets the reward stage reports (by :func:`llama2_pipeline.training.reward_eval.pair_kind`)
#: and the mixed pairs
SUBSETS = {**PAIR_SUBSETS, "mixed": lambda k: k == "mixed"}
#: what a point records besides its accuracies
POINT_KEYS = ("fraction", "seed", "pairs", "train_loss")
#: the issue's targets: figure -> accuracy
TARGETS = {"helpfulness": {"beyond_correctness_better": 0.90, "beyond_correctness_significantly_better": 0.95},
           "safety": {"avg": 0.90}}


def figures(category: str, records: list[dict], kinds: list[str], chosen: list[float],
            rejected: list[float]) -> dict[str, float]:
    """Flat accuracies of one RM on its held-out pairs: ``avg`` and each rating level, and for
    helpfulness ``<subset>`` and ``<subset>_<rating>`` for each of :data:`SUBSETS`."""
    ratings = [r["rating"] for r in records]
    table = accuracy_by_rating(chosen, rejected, ratings)
    out = {k: table[k] for k in ("avg", *RATINGS) if table[k] is not None}
    if category == "helpfulness":
        for subset, keep in SUBSETS.items():
            sel = [keep(k) for k in kinds]
            pick = lambda xs: [x for x, s in zip(xs, sel) if s]
            sub = accuracy_by_rating(pick(chosen), pick(rejected), pick(ratings))
            out.update({f"{subset}{'' if level == 'avg' else '_' + level}": sub[level]
                        for level in ("avg", *RATINGS) if sub[level] is not None})
    return {k: round(float(v), 6) for k, v in out.items()}


def fit_log2(points: list[tuple[int, float]], target: float | None = None) -> dict[str, float | None]:
    """Least squares ``acc = a + b * log2(n)`` over (n, acc) points; with a ``target``, the n at which
    the line reaches it (None when it never does: a flat or falling line)."""
    x = np.log2([n for n, _ in points])
    y = np.asarray([a for _, a in points], dtype=np.float64)
    if len(set(x.tolist())) < 2:
        raise ValueError("a fit in log2(pairs) needs at least two different numbers of pairs")
    b, a = np.polyfit(x, y, 1)
    out: dict[str, float | None] = {"intercept": round(float(a), 6), "per_doubling": round(float(b), 6)}
    if target is not None:
        out["target"] = target
        out["pairs_for_target"] = round(float(2 ** ((target - a) / b))) if b > 1e-9 else None
    return out


def plot_reward_scaling(result: dict):
    """The RMs' held-out accuracy against their number of training pairs (a matplotlib Figure): one
    panel per RM, a line per rating level and the average (mean ± sd over the seeds), and for each
    figure with a target the target (dotted) and its fit in log2(pairs) drawn on to 32× the
    project's pairs (dashed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    categories = result["categories"]
    fig = Figure(figsize=(6.0 * max(1, len(categories)), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    levels = ("avg", *RATINGS)
    for k, (name, res) in enumerate(categories.items()):
        ax = fig.add_subplot(1, max(1, len(categories)), k + 1)
        rows = list(res["mean"].values())
        pairs = [row["pairs"] for row in rows]
        for level in levels:
            if level in rows[0]:
                ax.errorbar(pairs, [r[level]["mean"] for r in rows], yerr=[r[level]["sd"] for r in rows], marker="o",
                            capsize=3, lw=2.2 if level == "avg" else 1.2, color="black" if level == "avg" else None,
                            label=level.replace("_", " "))
        for j, (figure, fit) in enumerate((f, v) for f, v in res["fit"].items() if "target" in v):
            colour = f"C{5 + j}"
            if figure not in levels:
                ax.errorbar(pairs, [r[figure]["mean"] for r in rows], yerr=[r[figure]["sd"] for r in rows],
                            marker="s", capsize=3, color=colour, label=figure.replace("_", " "))
            xs = np.geomspace(pairs[0], 32 * res["train_pairs"], 50)
            ax.plot(xs, fit["intercept"] + fit["per_doubling"] * np.log2(xs), ls="--", lw=1, color=colour)
            ax.axhline(fit["target"], ls=":", lw=1, color=colour)
        ax.axvline(res["train_pairs"], color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training pairs (grey: the project's; dashed: fit in log2 pairs)")
        ax.set_ylabel("held-out accuracy")
        ax.set_ylim(0.4, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{name} RM: accuracy against training data")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", type=Path, default=ROOT, help="a project whose reward stage has run")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0],
                   help="shares of each RM's training pairs (in (0, 1])")
    p.add_argument("--seeds", type=int, nargs="+", default=[1234, 1, 2],
                   help="one sample of pairs and one RM training seed per seed")
    p.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--plot", default=None, help="write the accuracy-against-pairs figure (PNG) here")
    args = p.parse_args(argv)
    if any(not 0.0 < f <= 1.0 for f in args.fractions) or len(set(args.fractions)) != len(args.fractions):
        p.error(f"--fractions must be distinct shares in (0, 1], got {args.fractions}")
    if len(set(args.fractions)) < 2:
        p.error("--fractions needs at least two shares to fit a curve")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds repeats a seed: {args.seeds}")

    t0 = time.perf_counter()
    root = args.project
    recipe = load(root / "params.yaml")
    cfg, world = recipe.reward, recipe.world.world(recipe.seed)
    sft = root / "data/06_models/sft"
    if not (sft / "config.json").exists():
        raise FileNotFoundError(f"{sft}: no SFT model (run `dvc repro reward` in the project first)")
    train, heldout = (read_jsonl(root / rel)[0] for rel in (TRAIN, HELDOUT))
    stage_metrics = json.loads((root / "metrics/reward.json").read_text()) if (root / "metrics/reward.json").exists() else {}
    out: dict = {"benchmark": "reward_scaling", "argv": list(argv if argv is not None else sys.argv[1:]),
                 "profile": recipe.profile, "fractions": sorted(args.fractions), "seeds": args.seeds,
                 "margin": cfg.margin, "epochs": cfg.epochs, "categories": {}}
    for category in args.categories:
        records = mix_preferences(train, cfg.mix(category), cfg.train.seed)
        held = [r for r in heldout if r["category"] == category]
        if not records or not held:
            raise ValueError(f"{root}: the {category} RM has {len(records)} training and {len(held)} held-out pairs")
        kinds = [pair_kind(world, r) for r in held] if category == "helpfulness" else []
        points = []
        for seed in args.seeds:
            order = np.random.default_rng(seed).permutation(len(records))
            for frac in sorted(args.fractions):
                n = max(1, round(frac * len(records)))
                sample = [records[i] for i in sorted(order[:n])]
                with tempfile.TemporaryDirectory() as tmp:
                    trained = train_reward_model(
                        sample, sft, cfg.train.replace(seed=seed, num_threads=cfg.num_threads), Path(tmp) / "run",
                        margin=cfg.margin, epochs=cfg.epochs_of(category), warmup_fraction=cfg.warmup_fraction,
                        progress=False, name=f"rm_{category}")
                    chosen, rejected = evaluate_scores(RewardModel.load(Path(tmp) / "run/hf"), held,
                                                       cfg.eval.batch_size)
                point = {"fraction": frac, "seed": seed, "pairs": n,
                         "train_loss": trained[f"rm_{category}_train_loss"],
                         **figures(category, held, kinds, chosen, rejected)}
                points.append(point)
                print(f"{category:<12} seed {seed:<5} {n:>5} pairs  avg {point['avg']:.3f}  "
                      + "  ".join(f"{lvl.split('_')[0][:4]} {point[lvl]:.3f}" for lvl in RATINGS if lvl in point),
                      flush=True)
        names = [k for k in points[0] if k not in POINT_KEYS]
        mean = {}
        for frac in sorted(args.fractions):
            rows = [pt for pt in points if pt["fraction"] == frac]
            mean[str(frac)] = {"pairs": rows[0]["pairs"], **{
                k: dict(zip(("mean", "sd"), (round(x, 6) for x in mean_sd([r[k] for r in rows]))))
                for k in names if all(k in r for r in rows)}}
        fits = {k: fit_log2([(pt["pairs"], pt[k]) for pt in points if k in pt], TARGETS[category].get(k))
                for k in names}
        for k, fit in fits.items():
            if fit.get("pairs_for_target") is not None:
                fit["times_the_project"] = round(fit["pairs_for_target"] / len(records), 1)
        stage = {k.removeprefix(f"rm_{category}_acc").lstrip("_") or "avg": v for k, v in stage_metrics.items()
                 if k.startswith(f"rm_{category}_acc") and not k.startswith(f"rm_{category}_acc_on_")
                 and not k.endswith(("_ci_low", "_ci_high"))}  # the accuracies, not their intervals
        out["categories"][category] = {
            "train_pairs": len(records), "heldout_pairs": len(held), "points": points, "mean": mean, "fit": fits,
            "stage": {k: v for k, v in stage.items() if not k.startswith(("ceiling", "noise_free"))},
            "ceiling": {k.removeprefix("ceiling").lstrip("_") or "avg": v for k, v in stage.items()
                        if k.startswith("ceiling")},
            "likelihood": {k.removeprefix(f"reward_likelihood_{category}_acc").lstrip("_") or "avg": v
                           for k, v in stage_metrics.items() if k.startswith(f"reward_likelihood_{category}_acc")}}
    out["seconds"] = round(time.perf_counter() - t0, 1)

    print("\nper doubling of the training pairs (fit a + b·log2(pairs) over every share and seed)")
    print(f"{'RM':<12}{'figure':<44}{'largest share':>16}{'/ doubling':>12}{'target':>8}{'pairs needed':>14}")
    for category, res in out["categories"].items():
        full = res["mean"][str(max(args.fractions))]
        for k, fit in res["fit"].items():
            if k not in ("avg", *RATINGS, *SUBSETS) and "target" not in fit:
                continue
            at = full.get(k)
            need = fit.get("pairs_for_target")
            need_s = "–" if "target" not in fit else "never" if need is None else \
                f"{need} ({fit['times_the_project']}×)"
            print(f"{category:<12}{k:<44}{at['mean']:>9.3f} ± {at['sd']:.3f}{fit['per_doubling']:>+12.3f}"
                  f"{fit.get('target', float('nan')):>8.2f}{need_s:>14}".replace("nan", "   –"))
    if args.out:
        write_json(args.out, out)
    if args.plot:
        fig = plot_reward_scaling(out)
        with atomic_path(args.plot) as tmp:
            fig.savefig(tmp, format="png")
    return out


if __name__ == "__main__":
    main()
