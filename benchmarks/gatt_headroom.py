"""How much of GAtt's helpfulness cost can its training data recover? Arms with a perfect judge.

The gatt stage keeps, per user message, one of ``gatt.tries`` sampled answers that follows the
instruction. Following an instruction costs content (an answer in capitals restates and explains
less: the corpus the policy learned from has almost no text in capitals), so the stage reports the
helpfulness of the same held-out answers before and after. This script asks whether better
answers to learn from would shrink that cost. From the project's GAtt starting policy
(``gatt.after``), the GAtt dialogues are built three ways and each set is fine-tuned and evaluated
exactly as the stage does (``gatt.finetune`` with the round's rejection-sampling dialogues replayed,
``gatt.eval``):

* ``first``   the first adherent of up to ``gatt.tries`` samples (``gatt.select: first``);
* ``reward``  the best adherent of all ``gatt.tries`` samples by the round's helpfulness RM
              (``gatt.select: reward``, the default);
* ``world``   the best adherent of all ``gatt.tries`` samples by the world's judgement (the
              helpfulness of the answer under its instruction): selection with a perfect RM.

The arm of the project's ``gatt.select`` at draw 0 is the stage itself (``stage_arm`` in the JSON).
Every arm samples as the project's ``gatt.repair`` says (a sample that breaks a case, prefix or suffix
instruction rewritten to obey it); ``--repair on|off`` overrides it for all arms, so the same arms can
be compared with and without it (``repair`` in the JSON); ``--case`` likewise for ``gatt.case`` (how
answers under a case instruction are sampled).

``--draws 0 1 2`` repeats every arm with the GAtt draws (dialogues, samples, cuts) of seed + d, the
held-out evaluation fixed, so an arm's difference from ``first`` is paired per draw and told apart
from the draws' own spread. Printed and written as JSON per arm and draw: the helpfulness change
of the same answers (all, per instruction), turn-1 adherence, turns 4-6 over turn 1, the GAtt model
as a chat model (held-out helpfulness, the SFT evaluation's sampling), the world's score of the
answers trained on; then each arm's mean ± sd over draws and its paired difference from ``first``.

    dvc repro gatt                                     # the round GAtt starts from (and its RMs)
    python benchmarks/gatt_headroom.py --draws 0 1 2 --out benchmarks/results/cpu_gatt_headroom.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from llama2_pipeline.core.files import read_jsonl, write_json
from llama2_pipeline.core.schema import ConfigError
from llama2_pipeline.model import default_device, load_hf
from llama2_pipeline.recipe import load
from llama2_pipeline.tokenizer import Tokenizer
from llama2_pipeline.training import gatt as G
from llama2_pipeline.training.gatt_eval import evaluate_adherence
from llama2_pipeline.training.rlhf import chat_metrics
from llama2_pipeline.training.sft import finetune

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("first", "reward", "world")
#: the figures tabulated per arm (``gatt_`` metrics of the evaluation, then this script's own)
FIGURES = ("helpfulness_change", "helpfulness_change_uppercase", "helpfulness_change_lowercase",
           "helpfulness_change_five_words", "helpfulness_change_ahoy", "helpfulness_change_cheers",
           "after_adherence_turn1", "turn4plus_over_turn1", "model_helpfulness", "train_answer_helpfulness")


def records(path: Path) -> list[dict]:
    """A JSON-lines file of the project (a bad line names the file and line)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (run `dvc repro gatt` in the project first)")
    return read_jsonl(path)[0]


def train_answer_helpfulness(world, dialogues: list[dict]) -> float:
    """The world's mean helpfulness of the answers in GAtt training records, each judged under its
    instruction."""
    values = [world.helpfulness(m["content"], a["content"], constraints=tuple(r["constraints"]))
              for r in dialogues for m, a in zip(r["messages"][1::2], r["messages"][2::2])]
    return sum(values) / len(values)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", type=Path, default=ROOT, help="a project whose gatt stage has run")
    p.add_argument("--repair", choices=("project", "on", "off"), default="project",
                   help="gatt.repair for every arm: the project's, or on/off (rewrite a sampled answer that breaks a "
                        "case, prefix or suffix instruction to obey it)")
    p.add_argument("--case", choices=("project", *G.CASES), default="project",
                   help="gatt.case for every arm: the project's, or how answers under a case instruction are sampled "
                        "(with it, or without it and rewritten to it)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"arms to run (of {', '.join(ARMS)})")
    p.add_argument("--draws", type=int, nargs="+", default=[0], metavar="D",
                   help="GAtt draws: dialogues, samples and cuts of seed + D (the evaluation stays the seed's)")
    p.add_argument("--tries", type=int, default=None, help="samples per user message (default: gatt.tries)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    wanted = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(wanted) - set(ARMS))
    if unknown or not wanted:
        p.error(f"unknown arm(s) {unknown or wanted}; expected some of {list(ARMS)}")
    if any(d < 0 for d in args.draws) or len(set(args.draws)) != len(args.draws):
        p.error(f"--draws takes distinct offsets >= 0, got {args.draws}")
    if args.tries is not None and args.tries < 1:
        p.error(f"--tries takes a sample count >= 1, got {args.tries}")

    t0 = time.perf_counter()
    root = args.project
    recipe = load(root / "params.yaml")
    seed, cfg = recipe.seed, recipe.gatt
    try:  # the gatt group's own checks (gatt.case plain needs gatt.repair) as a usage error
        cfg = cfg.replace(tries=args.tries or cfg.tries,
                          repair=cfg.repair if args.repair == "project" else args.repair == "on",
                          case=cfg.case if args.case == "project" else args.case)
    except ConfigError as e:
        p.error(f"--repair/--case: {e}")
    if cfg.after == "sft":
        p.error("gatt.after is sft: this script compares selections on an RLHF round's policy and RMs")
    world = recipe.world.world(seed)
    round_dir = root / "data/06_models" / cfg.after
    policy = round_dir / "policy"
    for folder in (policy, round_dir / "reward_helpfulness"):
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder}: no model (run `dvc repro gatt` in the project first)")
    prompts_train = records(root / "data/01_raw/prompts_train.jsonl")
    prompts_eval = records(root / "data/01_raw/prompts_eval.jsonl")
    sft_samples = records(root / "data/08_reporting/sft_samples.jsonl")
    replay = [dict(r, only_last_answer=False) for r in records(round_dir / "rs_dialogues.jsonl")] if cfg.replay else []
    tok = Tokenizer(policy / "tokenizer.model")
    model = load_hf(policy, device=default_device()).eval()
    risky = {p["prompt"] for p in prompts_train if p.get("safety")}  # gatt.safety_share's messages: judged for safety
    scorers = {"first": None,
               "reward": G.reward_scorer(round_dir / "reward_helpfulness", safety_dir=round_dir / "reward_safety",
                                         safety_prompts=sorted(risky)),
               "world": lambda users, answers, names: [world.safety(u, a) if u in risky else
                                                       world.helpfulness(u, a, constraints=c)
                                                       for u, a, c in zip(users, answers, names)]}

    runs: dict[str, dict[str, dict]] = {a: {} for a in wanted}
    with tempfile.TemporaryDirectory() as tmp:
        for d in args.draws:
            draw = cfg.replace(sampling=cfg.sampling.replace(seed=cfg.sampling.seed + 1000 * d))
            for arm in wanted:
                t = time.perf_counter()  # the stage's construction (build_gatt_dialogues) at this draw
                built, cut, stats = G.gatt_records(model, tok, prompts_train, draw, seed + d, score=scorers[arm])
                hf_dir = Path(tmp) / f"{arm}-{d}" / "model"
                finetune(policy, tok, cut + replay, cfg.finetune, Path(tmp) / f"{arm}-{d}" / "run", hf_dir=hf_dir,
                         prefix="gatt", progress=False)
                metrics, _, _ = evaluate_adherence(policy, hf_dir, prompts_eval, world, cfg, seed)
                chat = chat_metrics(hf_dir, "gatt_model", prompts_eval, world, recipe.sft.eval, sft_samples)
                row = {k[len("gatt_"):]: round(float(v), 6) for k, v in {**metrics, **chat}.items()}
                row.update(train_answer_helpfulness=round(train_answer_helpfulness(world, built), 6),
                           records=len(built), examples=len(cut), adherent_share=round(stats["gatt_answer_adherent_share"], 6),
                           seconds=round(time.perf_counter() - t, 1))
                runs[arm][str(d)] = row
                print(f"draw {d} {arm:<7}" + " ".join(f"{f}={row[f]:+.3f}" for f in FIGURES[:1] + FIGURES[6:])
                      + f" ({row['seconds']:.0f} s)", flush=True)

    def mean_sd(values: list[float]) -> dict:
        return {"mean": round(statistics.fmean(values), 6),
                "sd": round(statistics.stdev(values), 6) if len(values) > 1 else 0.0}

    summary = {arm: {f: mean_sd([runs[arm][str(d)][f] for d in args.draws]) for f in FIGURES} for arm in wanted}
    if "first" in wanted:
        for arm in wanted:
            if arm != "first":
                summary[arm]["vs_first"] = {f: mean_sd([runs[arm][str(d)][f] - runs["first"][str(d)][f]
                                                        for d in args.draws]) for f in FIGURES}
    out = {"benchmark": "gatt_headroom", "argv": list(argv if argv is not None else sys.argv[1:]),
           "profile": recipe.profile, "seed": seed, "world_version": recipe.world.version, "after": cfg.after,
           "tries": cfg.tries, "repair": cfg.repair, "case": cfg.case, "stage_arm": cfg.select, "draws": args.draws, "seconds": round(time.perf_counter() - t0, 1),
           "runs": runs, "summary": summary}
    print(f"\nGAtt from {cfg.after} (seed {seed}), {len(args.draws)} draw(s): mean ± sd over draws")
    print(f"{'figure':<32}" + "".join(f"{a:>18}" for a in wanted))
    for f in FIGURES:
        print(f"{f:<32}" + "".join(f"{summary[a][f]['mean']:>+11.3f} ± {summary[a][f]['sd']:.3f}" for a in wanted))
    for arm in wanted:
        if "vs_first" in summary[arm]:
            v = summary[arm]["vs_first"]["helpfulness_change"]
            print(f"{arm} - first, helpfulness change (paired by draw): {v['mean']:+.3f} ± {v['sd']:.3f}")
    print(f"{out['seconds']:.0f} s")
    if args.out:
        write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
