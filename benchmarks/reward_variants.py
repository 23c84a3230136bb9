"""Would the reward models reach the issue's targets if the reward stage trained them differently?

Each RM is trained from a project's SFT model exactly as the reward stage trains it (its data mix, its
``reward.*`` settings, its seed), once per variant with one or more settings changed: more passes over
the pairs (``epochs``), the learning rate (``lr``), the margin table (``margin``), the micro-batch
(``micro_batch``), the warm-up (``warmup_fraction``), the share of each category's train pairs in the
RM's data mix (``mix_helpfulness``, ``mix_safety``: ``reward.helpfulness_mix`` / ``reward.safety_mix``),
the training seed (``seed``: the head's initialisation, the batch order and the mix's sample; a
variant with only another seed measures how far training noise alone moves a figure). Each is judged
on the project's held-out pairs of its category: accuracy overall and per rating level and, for
helpfulness, on the pairs that differ in more than correctness (the issue's "beyond correctness"
figures), on style-only, mixed and correctness-only pairs
(:func:`llama2_pipeline.training.reward_eval.pair_kind`). Over several projects
(one per seed, e.g. the copies of ``benchmarks/recipe_seeds.py``) every figure is given as mean ± sd
and each variant's change from the stage's settings (the ``stage`` variant) paired per project.

    python benchmarks/reward_variants.py --project . ../seed_7 ../seed_42 \\
        --out benchmarks/results/cpu_reward_variants.json

A variant is ``NAME=key:value[,key:value...]``; ``--variant`` replaces the default list.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from llama2_pipeline.core.files import read_jsonl, write_json
from llama2_pipeline.training.reward_eval import evaluate_scores, pair_kind
from llama2_pipeline.model.reward import RewardModel
from llama2_pipeline.recipe import load
from llama2_pipeline.training.preferences import CATEGORIES, mix_preferences
from llama2_pipeline.training.reward import MARGINS, train_reward_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_seeds import mean_sd
from reward_scaling import HELDOUT, TARGETS, TRAIN, figures

ROOT = Path(__file__).resolve().parents[1]
#: the settings a variant may change, with their types (margin: a name of the margin tables)
KEYS = {"epochs": float, "lr": float, "margin": str, "micro_batch": int, "warmup_fraction": float,
        "mix_helpfulness": float, "mix_safety": float, "seed": int}
DEFAULT_VARIANTS = ("stage=", "epochs_2=epochs:2", "epochs_3=epochs:3", "lr_3e-4=lr:0.0003", "lr_3e-3=lr:0.003",
                    "margin_large=margin:large", "margin_none=margin:none")
#: the figures printed (all of them are in the JSON)
SHOWN = {"helpfulness": ("avg", "significantly_better", "better", "beyond_correctness_better", "mixed_better", "style",
                         "correctness"),
         "safety": ("avg", "significantly_better", "better", "slightly_better")}


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME=key:value,...`` -> (NAME, {key: typed value}); ValueError naming what is wrong."""
    name, sep, spec = text.partition("=")
    if not sep or not name:
        raise ValueError(f"variant {text!r}: expected NAME=key:value[,key:value...] (NAME= for the stage's settings)")
    changes: dict = {}
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition(":")
        if not sep or key not in KEYS:
            raise ValueError(f"variant {name!r}: {item!r} is not key:value with a key of {sorted(KEYS)}")
        try:
            changes[key] = KEYS[key](value)
        except ValueError as err:
            raise ValueError(f"variant {name!r}: {key} {value!r} is not a {KEYS[key].__name__}") from err
        if key.startswith("mix_") and changes[key] < 0:
            raise ValueError(f"variant {name!r}: {key} {value!r} is below 0 (a share of the category's pairs)")
        if key == "margin" and value not in MARGINS:
            raise ValueError(f"variant {name!r}: margin {value!r} is not one of {sorted(MARGINS)}")
    return name, changes


def variant_mix(mix: dict[str, float], changes: dict) -> dict[str, float]:
    """The RM's data mix (``reward.<category>_mix``) with a variant's ``mix_<category>`` shares."""
    return {**mix, **{k.removeprefix("mix_"): v for k, v in changes.items() if k.startswith("mix_")}}


def train_variant(root: Path, recipe, train: list[dict], held: list[dict], kinds: list[str], category: str,
                  changes: dict) -> dict:
    """One RM trained as the stage trains it with ``changes``; its held-out figures and training loss."""
    cfg = recipe.reward
    seed = changes.get("seed", cfg.train.seed)
    mix = variant_mix(cfg.mix(category), changes)
    records = mix_preferences(train, mix, seed)
    if not records:
        raise ValueError(f"{root}: the {category} RM's data mix {mix} selects none of its {len(train)} training pairs")
    train_cfg = cfg.train.replace(num_threads=cfg.num_threads,
                                  **{k: v for k, v in changes.items() if k in ("lr", "micro_batch", "seed")})
    with tempfile.TemporaryDirectory() as tmp:
        trained = train_reward_model(
            records, root / "data/06_models/sft", train_cfg, Path(tmp) / "run", margin=changes.get("margin", cfg.margin),
            epochs=changes.get("epochs", cfg.epochs_of(category)),
            warmup_fraction=changes.get("warmup_fraction", cfg.warmup_fraction), progress=False, name=f"rm_{category}")
        chosen, rejected = evaluate_scores(RewardModel.load(Path(tmp) / "run/hf"), held, cfg.eval.batch_size)
    return {"train_loss": trained[f"rm_{category}_train_loss"], "steps": trained[f"rm_{category}_steps"],
            "train_pairs": len(records),
            **figures(category, held, kinds, chosen, rejected)}


def summarise(runs: dict[str, list[dict]]) -> dict:
    """{variant: {figure: {"mean", "sd"[, "change_mean", "change_sd"]}}} over projects; the change is
    paired with the ``stage`` variant of the same project."""
    base = runs.get("stage")
    out: dict = {}
    for name, rows in runs.items():
        out[name] = {}
        for key in rows[0]:
            if not all(key in r for r in rows):
                continue
            m, s = mean_sd([r[key] for r in rows])
            cell = {"mean": round(m, 4), "sd": round(s, 4)}
            if base is not None and name != "stage" and all(key in b for b in base):
                cm, cs = mean_sd([r[key] - b[key] for r, b in zip(rows, base)])
                cell.update(change_mean=round(cm, 4), change_sd=round(cs, 4))
            out[name][key] = cell
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", type=Path, nargs="+", default=[ROOT],
                   help="projects whose reward stage has run (one per seed)")
    p.add_argument("--variant", action="append", default=None,
                   help=f"NAME=key:value,... with keys {sorted(KEYS)} (repeat; default: {' '.join(DEFAULT_VARIANTS)})")
    p.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    try:
        variants = dict(parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS))
    except ValueError as err:
        p.error(str(err))
    if len(variants) != len(args.variant or DEFAULT_VARIANTS):
        p.error("two variants share a name")

    t0 = time.perf_counter()
    out: dict = {"benchmark": "reward_variants", "argv": list(argv if argv is not None else sys.argv[1:]),
                 "variants": variants, "projects": [], "categories": {}}
    runs: dict[str, dict[str, list[dict]]] = {c: {v: [] for v in variants} for c in args.categories}
    for root in args.project:
        recipe = load(root / "params.yaml")
        out.setdefault("profile", recipe.profile)
        if not (root / "data/06_models/sft/config.json").exists():
            raise FileNotFoundError(f"{root / 'data/06_models/sft'}: no SFT model (run `dvc repro reward` in the project first)")
        for rel in (TRAIN, HELDOUT):
            if not (root / rel).exists():
                raise FileNotFoundError(f"{root / rel}: missing (run `dvc repro reward` in the project first)")
        train, heldout = (read_jsonl(root / rel)[0] for rel in (TRAIN, HELDOUT))
        world = recipe.world.world(recipe.seed)
        out["projects"].append({"project": str(root), "seed": recipe.seed})
        for category in args.categories:
            records = mix_preferences(train, recipe.reward.mix(category), recipe.reward.train.seed)
            held = [r for r in heldout if r["category"] == category]
            if not records or not held:
                raise ValueError(f"{root}: the {category} RM has {len(records)} training and {len(held)} held-out pairs")
            kinds = [pair_kind(world, r) for r in held] if category == "helpfulness" else []
            for name, changes in variants.items():
                row = train_variant(root, recipe, train, held, kinds, category, changes)
                runs[category][name].append({"seed": recipe.seed, **row})
                print(f"seed {recipe.seed:<5} {category:<12} {name:<14} "
                      + "  ".join(f"{k} {row[k]:.3f}" for k in SHOWN[category] if k in row), flush=True)
    for category, by_variant in runs.items():
        out["categories"][category] = {
            "targets": TARGETS[category], "runs": by_variant,
            "summary": summarise({n: [{k: v for k, v in r.items() if k != "seed"} for r in rows]
                                  for n, rows in by_variant.items()})}
    out["seconds"] = round(time.perf_counter() - t0, 1)

    several = len(args.project) > 1
    print(f"\nheld-out accuracy{f', mean ± sd over {len(args.project)} projects' if several else ''}"
          " (in brackets: the change from the stage's settings, paired per project)")
    for category, res in out["categories"].items():
        shown = [k for k in SHOWN[category] if k in res["summary"][next(iter(variants))]]
        print(f"{category:<14}" + "".join(f"{k:>26}" for k in shown))
        for name, cells in res["summary"].items():
            text = []
            for k in shown:
                c = cells[k]
                s = f"{c['mean']:.3f}" + (f"±{c['sd']:.3f}" if several else "")
                if "change_mean" in c:
                    s += f" ({c['change_mean']:+.3f})"
                text.append(s)
            print(f"{name:<14}" + "".join(f"{t:>26}" for t in text))
    if args.out:
        write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
