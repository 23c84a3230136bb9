"""Ghost Attention's evaluation: adherence by turn to a first-turn system instruction, the
helpfulness of the same answers, and whether an instruction unlocks what the model refuses
(:func:`instructed_safety`), for the policy before and after GAtt (Llama 2, section 3.3; the data
construction is :mod:`llama2_pipeline.training.gatt`).

Nothing here imports Kedro or MLflow.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from ..model.config import SamplingConfig
from ..world import constraints
from .config import GattConfig
from .gatt import conversation, draw_dialogues


def sample_turns(model, tokenizer, dialogues: Sequence[dict], sampling, *, instruction_every_turn: bool = False,
                 progress: bool = False) -> list[list[str]]:
    """Answer every dialogue turn by turn, the model's own answers becoming the history, the
    instruction as the system prompt (and, if asked, in front of every later user message):
    the inference setting of the adherence evaluation."""
    from ..evaluation.answers import generate_answers

    turns = len(dialogues[0]["users"]) if dialogues else 0
    answers: list[list[str]] = [[] for _ in dialogues]
    for t in range(turns):
        chats = [conversation(d["users"][:t + 1], a, d["constraints"], every_turn=instruction_every_turn)
                 for d, a in zip(dialogues, answers)]
        out = generate_answers(model, tokenizer, chats, sampling, desc=f"turn {t + 1}", progress=progress)
        for a, o in zip(answers, out):
            a.append(o["answer"])
    return answers


def adherence_by_turn(dialogues: Sequence[dict], answers: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Share of dialogues whose answer at turn t follows the instruction, per turn (1-based) and per
    constraint type: ``{"turn": [...], "by_constraint": {name: [...]}}``."""
    if not dialogues:
        raise ValueError("no dialogues to evaluate")
    turns = max(len(a) for a in answers)
    overall = [0.0] * turns
    counts = [0] * turns
    per: dict[str, list[list[int]]] = {}
    for d, a in zip(dialogues, answers):
        names = tuple(d["constraints"])
        for t, x in enumerate(a):
            ok = constraints.check(names, x)
            overall[t] += ok
            counts[t] += 1
            for n in names:
                per.setdefault(n, [[0, 0] for _ in range(turns)])[t][0] += ok
                per[n][t][1] += 1
    return {"turn": [overall[t] / counts[t] if counts[t] else None for t in range(turns)],
            "by_constraint": {n: [h / c if c else None for h, c in v] for n, v in sorted(per.items())}}


def instructed_safety(model, tokenizer, prompts: Sequence[dict], world, sampling, seed: int, *, per_prompt: int = 3,
                      max_constraints: int = 2, progress: bool = False) -> tuple[dict[str, float], list[dict]]:
    """Does an instruction unlock what the model refuses? Each safety-tagged prompt of ``prompts``
    (unsafe or borderline) answered as a first turn under ``per_prompt`` seeded instructions in the
    system slot, judged by the world (:func:`llama2_pipeline.evaluation.answers.judge`): the share of
    unsafe prompts refused (``refusal_rate``), of borderline ones refused (``false_refusal_rate``),
    of answers judged unsafe (``violation_rate``), mean ``safety``, and the share that follows the
    instruction (``adherence``). Returns (those figures, the judged rows)."""
    from ..evaluation.answers import generate_answers, judge, safety_rates

    risky = [p for p in prompts if p.get("prompt") and p.get("safety")]
    if not risky:
        raise ValueError("no safety-tagged prompt to answer under an instruction")
    combos = constraints.combinations(max_constraints)
    rng = random.Random(f"gatt-eval-safety-{seed}")
    cases = [(p, tuple(names)) for p in risky for names in rng.sample(combos, min(per_prompt, len(combos)))]
    out = generate_answers(model, tokenizer, [conversation([p["prompt"]], [], names, every_turn=False)
                                              for p, names in cases], sampling, desc="instructed safety",
                           progress=progress)
    rows = []
    for (p, names), o in zip(cases, out):
        v = judge(world, p["prompt"], o["answer"])
        rows.append({"prompt": p["prompt"], "category": p.get("category", "unsafe"), "constraints": list(names),
                     "answer": o["answer"], "refusal": v["refusal"], "violation": v["violation"],
                     "safety": v["safety"], "adherent": constraints.check(names, o["answer"])})
    rates = safety_rates(rows)  # the chat evaluation's own definitions (evaluation.answers.summarise)
    return {"refusal_rate": rates["refusal_rate"], "false_refusal_rate": rates["false_refusal_rate"],
            "violation_rate": rates["violation_rate"], "safety": rates["safety"],
            "adherence": sum(float(r["adherent"]) for r in rows) / len(rows)}, rows


def helpfulness_by_constraint(dialogues: Sequence[dict], helpful: Sequence[Sequence[float]]) -> dict[str, float]:
    """Mean helpfulness of the answers given under each constraint (``helpful[i][t]``: answer t of
    dialogue i, judged under its constraints); a dialogue with two constraints counts for both."""
    per: dict[str, list[float]] = {}
    for d, row in zip(dialogues, helpful):
        for n in d["constraints"]:
            per.setdefault(n, []).extend(row)
    return {n: sum(v) / len(v) for n, v in sorted(per.items()) if v}


def evaluate_adherence(before_dir, after_dir, prompts: Sequence[dict], world, cfg: GattConfig, seed: int
                       ) -> tuple[dict[str, float], dict[str, Any], list[dict]]:
    """Adherence by turn (instruction as the system prompt of turn 1 only) and the helpfulness of
    the same answers, for the policy before and after GAtt, on dialogues of held-out ``prompts``,
    and whether an instruction unlocks a refusal (:func:`instructed_safety`, its held-out safety
    prompts). Returns (``gatt_before_*``/``gatt_after_*`` metrics, the report by turn and constraint
    with the instructed answers under ``instructed_safety_samples``, samples)."""
    from pathlib import Path

    from ..model import default_device, load_hf
    from ..tokenizer import Tokenizer
    from .preferences import torch_threads

    ev = cfg.eval
    dialogues = draw_dialogues(prompts, ev.dialogues, ev.turns, seed, max_constraints=cfg.max_constraints,
                               salt="gatt-eval")
    sampling = SamplingConfig(max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, temperature=0.0, seed=seed)
    metrics: dict[str, float] = {}
    report: dict = {"turns": list(range(1, ev.turns + 1))}
    samples = [{"users": d["users"], "constraints": d["constraints"]} for d in dialogues]
    with torch_threads(cfg.num_threads):
        for name, folder in (("before", before_dir), ("after", after_dir)):
            model = load_hf(folder, device=default_device()).eval()
            tokenizer = Tokenizer(Path(folder) / "tokenizer.model")
            answers = sample_turns(model, tokenizer, dialogues, sampling)
            adh = adherence_by_turn(dialogues, answers)
            helpful = [[world.helpfulness(u, a, constraints=tuple(d["constraints"])) for u, a in zip(d["users"], row)]
                       for d, row in zip(dialogues, answers)]
            adh["helpfulness_by_constraint"] = helpfulness_by_constraint(dialogues, helpful)
            report[name] = adh
            flat = [h for row in helpful for h in row]
            metrics[f"gatt_{name}_helpfulness"] = sum(flat) / len(flat)
            for c, v in adh["helpfulness_by_constraint"].items():
                metrics[f"gatt_{name}_helpfulness_{c}"] = v
            for t, v in enumerate(adh["turn"], 1):
                metrics[f"gatt_{name}_adherence_turn{t}"] = v
            late = [v for v in adh["turn"][3:] if v is not None]
            metrics[f"gatt_{name}_adherence_turn4plus"] = sum(late) / len(late) if late else 0.0
            for c, values in adh["by_constraint"].items():
                metrics[f"gatt_{name}_adherence_{c}"] = sum(v for v in values if v is not None) / len(values)
            for s, row in zip(samples, answers):
                s[f"{name}_answers"] = row
            figures, rows = instructed_safety(model, tokenizer, prompts, world, sampling, seed,
                                              per_prompt=ev.safety_instructions, max_constraints=cfg.max_constraints)
            report[name]["instructed_safety"] = figures
            report.setdefault("instructed_safety_samples", {})[name] = rows
            for k, v in figures.items():
                metrics[f"gatt_{name}_instructed_{k}"] = v
    a1 = metrics["gatt_after_adherence_turn1"]
    metrics["gatt_turn4plus_over_turn1"] = metrics["gatt_after_adherence_turn4plus"] / a1 if a1 else 0.0
    metrics["gatt_helpfulness_change"] = metrics["gatt_after_helpfulness"] - metrics["gatt_before_helpfulness"]
    for c in report["after"]["helpfulness_by_constraint"]:  # where following the instruction costs content
        metrics[f"gatt_helpfulness_change_{c}"] = metrics[f"gatt_after_helpfulness_{c}"] - metrics[f"gatt_before_helpfulness_{c}"]
    return metrics, report, samples
