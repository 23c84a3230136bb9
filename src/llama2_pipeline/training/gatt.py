"""Ghost Attention (Llama 2, section 3.3): data construction and the adherence-by-turn evaluator.

Construction, as the paper: take multi-turn dialogues ``[u1, a1, ..., un, an]``; pick a system
instruction (one of the world's constraints, or two compatible ones); add it to every user
message; sample the assistant answers turn by turn with the latest policy, so they follow it
(the world's checker keeps only dialogues whose every answer adheres, if asked); then drop the
instruction from every user turn but the first, and train with the loss on the last answer only
(``only_last_answer``), which avoids the mismatch between the augmented sampling context and the
training context. Fine-tuning itself is the SFT machinery's.

Nothing here imports Kedro or MLflow.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from ..world import constraints

#: where the instruction goes in a user message
SEPARATOR = " "


def with_instruction(user: str, names: Sequence[str]) -> str:
    """The user message with the instruction in front of it."""
    return f"{constraints.instruction(tuple(names))}{SEPARATOR}{user}"


def draw_dialogues(prompts: Sequence[dict], n: int, turns: int, seed: int, *, max_constraints: int = 2,
                   salt: str = "gatt") -> list[dict]:
    """``n`` dialogues of ``turns`` user messages drawn from ``prompts`` (safe ones only), each with an
    instruction: ``{"users": [...], "constraints": [names]}``. Seeded; the same inputs give the same
    dialogues."""
    pool = [p["prompt"] for p in prompts if p.get("prompt") and not p.get("safety")]
    if len(pool) < turns:
        raise ValueError(f"GAtt needs at least {turns} safe prompts to draw {turns}-turn dialogues, got {len(pool)}")
    if turns < 1 or n < 1:
        raise ValueError(f"GAtt needs turns >= 1 and n >= 1, got turns={turns}, n={n}")
    combos = constraints.combinations(max_constraints)
    rng = random.Random(f"{salt}-{seed}")
    return [{"users": rng.sample(pool, turns), "constraints": list(rng.choice(combos))} for _ in range(n)]


def gatt_record(users: Sequence[str], answers: Sequence[str], names: Sequence[str]) -> dict[str, Any]:
    """The training record: the instruction in the first user message only, the sampled answers,
    and the loss on the last answer only."""
    if len(users) != len(answers) or not users:
        raise ValueError(f"a GAtt dialogue needs one answer per user message, got {len(users)} and {len(answers)}")
    messages = []
    for i, (u, a) in enumerate(zip(users, answers)):
        messages.append({"role": "user", "content": with_instruction(u, names) if i == 0 else u})
        messages.append({"role": "assistant", "content": a})
    return {"messages": messages, "only_last_answer": True, "constraints": list(names)}


def construct(dialogues: Sequence[dict], answers: Sequence[Sequence[str]], *, keep_adherent: bool = True
              ) -> tuple[list[dict], dict[str, float]]:
    """GAtt training records from sampled answers (``answers[i]``: one per turn of ``dialogues[i]``,
    sampled with the instruction on every user message). With ``keep_adherent`` a dialogue is kept
    only if every answer satisfies the instruction (and none is blank). Returns (records, stats)."""
    records, adherent = [], 0
    for d, a in zip(dialogues, answers):
        ok = all(x.strip() and constraints.check(tuple(d["constraints"]), x) for x in a)
        adherent += ok
        if ok or not keep_adherent:
            records.append(gatt_record(d["users"], a, d["constraints"]))
    stats = {"gatt_dialogues": len(dialogues), "gatt_adherent_share": adherent / max(1, len(dialogues)),
             "gatt_records": len(records)}
    return records, stats


def sample_turns(model, tokenizer, dialogues: Sequence[dict], sampling, *, instruction_every_turn: bool,
                 progress: bool = False) -> list[list[str]]:
    """Answer every dialogue turn by turn, the model's own answers becoming the history: the
    instruction on every user message (GAtt's sampling) or on the first only (inference)."""
    from ..evaluation import generate_answers

    turns = len(dialogues[0]["users"]) if dialogues else 0
    histories: list[list[dict]] = [[] for _ in dialogues]
    answers: list[list[str]] = [[] for _ in dialogues]
    for t in range(turns):
        for d, h in zip(dialogues, histories):
            u = d["users"][t]
            h.append({"role": "user", "content": with_instruction(u, d["constraints"])
                      if instruction_every_turn or t == 0 else u})
        out = generate_answers(model, tokenizer, [list(h) for h in histories], sampling, desc=f"turn {t + 1}",
                               progress=progress)
        for h, a, o in zip(histories, answers, out):
            a.append(o["answer"])
            h.append({"role": "assistant", "content": o["answer"] or "."})
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
