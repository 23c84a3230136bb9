"""Ghost Attention (Llama 2, section 3.3): data construction and the adherence-by-turn evaluator.

Construction, as the paper: take multi-turn dialogues ``[u1, a1, ..., un, an]``; pick a system
instruction (one of the world's constraints, or two compatible ones); give it with every user
message when sampling the assistant answers with the latest policy, so they follow it (the
world's checker keeps only adherent samples); then keep the instruction in the first turn only
and train with the loss on the last answer only (``only_last_answer``), which avoids the mismatch
between the augmented sampling context and the training context. Fine-tuning itself is the SFT
machinery's.

The instruction travels in Llama 2's system slot (``<<SYS>>``, which the chat template places
inside the first user message): :func:`sample_adherent` answers each user message as the first
turn of a conversation with that system prompt — the policy's best-followed form — drawing up
to ``tries`` samples until one adheres; :func:`construct` keeps each dialogue up to its first
answer that still breaks the instruction and :func:`gatt_record` (``system=True``) builds the
training dialogue with the system prompt at its start only; :func:`truncations` cuts it after
every turn (or one seeded turn), so the one learned answer falls at every turn position, or keeps
it whole with the loss on every answer from turn ``min_turns`` on (the same answers with the same
context as every cut, in one pass).

With ``safety_share`` some messages are unsafe or borderline prompts, answered under the
instruction like the others, or with ``safety_form`` ``plain`` without its case, prefix and suffix
rules and rewritten to them (ranked by the round's safety RM): an instruction must not unlock what
the policy refuses. Under a length rule ("at most five words", where no rewrite fits a refusal)
``safety_under_length`` keeps them out (``none``), holds their answers to it (``held``), or
samples them first untold and exempts a refusal from it (``exempt``: safety overrides the
instruction, every other answer follows it; :func:`adheres`).
:func:`llama2_pipeline.training.gatt_eval.instructed_safety` measures whether an instruction
unlocks a refusal. The evaluation (adherence by turn, before and after) is :mod:`llama2_pipeline.training.gatt_eval`.

Nothing here imports Kedro or MLflow.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Collection, Sequence, get_args, get_type_hints

from ..world import constraints
from ..world.tasks import is_refusal
from .config import GattConfig

#: where the instruction goes in a user message
SEPARATOR = " "


def with_instruction(user: str, names: Sequence[str]) -> str:
    """The user message with the instruction in front of it."""
    return f"{constraints.instruction(tuple(names))}{SEPARATOR}{user}"


def draw_dialogues(prompts: Sequence[dict], n: int, turns: int, seed: int, *, max_constraints: int = 2,
                   salt: str = "gatt", spare: int = 0, safety_share: float = 0.0,
                   safety_under_length: bool = True) -> list[dict]:
    """``n`` dialogues of ``turns`` user messages drawn from the safe ones of ``prompts``, each with an
    instruction: ``{"users": [...], "constraints": [names]}``, and with ``spare`` > 0 that many further
    distinct user messages under ``"spare"`` (for :func:`sample_adherent` to swap in for a message no
    adherent answer was found to). With ``safety_share`` > 0 each of the ``turns`` messages is, with
    that probability, replaced by a safety-tagged prompt (unsafe or borderline; the spares stay safe),
    so that the instruction is learned beside the refusals it must not unlock; without
    ``safety_under_length`` not in a dialogue whose instruction has a length rule ("at most five
    words": no rewrite fits the policy's refusal into it, and its short samples to an unsafe request
    are noise such as "Ahoy! The answer is 1."). Seeded; the same inputs give the same dialogues
    (``safety_share`` 0: those drawn before it existed; the others' messages do not depend on
    ``safety_under_length``)."""
    if not 0.0 <= safety_share < 1.0:
        raise ValueError(f"GAtt's safety_share must be in [0, 1), got {safety_share}")
    pool = [p["prompt"] for p in prompts if p.get("prompt") and not p.get("safety")]
    risky = [p["prompt"] for p in prompts if p.get("prompt") and p.get("safety")]
    if safety_share and len(risky) < turns:
        raise ValueError(f"GAtt's safety_share {safety_share} needs at least {turns} safety-tagged prompts, "
                         f"got {len(risky)}")
    if len(pool) < turns + spare:
        raise ValueError(f"GAtt needs at least {turns + spare} safe prompts to draw {turns}-turn dialogues"
                         f"{f' with {spare} spare messages' if spare else ''}, got {len(pool)}")
    if turns < 1 or n < 1:
        raise ValueError(f"GAtt needs turns >= 1 and n >= 1, got turns={turns}, n={n}")
    combos = constraints.combinations(max_constraints)
    rng = random.Random(f"{salt}-{seed}")
    out = []
    for _ in range(n):
        users = rng.sample(pool, turns + spare)
        d = {"users": users[:turns], "constraints": list(rng.choice(combos))}
        if safety_share and (safety_under_length or not constraints.has_length(d["constraints"])):  # its own stream
            mix = random.Random(f"{salt}-safety-{seed}-{len(out)}")
            picks = iter(mix.sample(risky, turns))
            d["users"] = [next(picks) if mix.random() < safety_share else u for u in d["users"]]
        if spare:
            d["spare"] = users[turns:]
        out.append(d)
    return out


def gatt_record(users: Sequence[str], answers: Sequence[str], names: Sequence[str], *,
                system: bool = False) -> dict[str, Any]:
    """The training record: the instruction in the first turn only (in the first user message, or
    as the system prompt with ``system=True``), the sampled answers, and the loss on the last
    answer only."""
    if len(users) != len(answers) or not users:
        raise ValueError(f"a GAtt dialogue needs one answer per user message, got {len(users)} and {len(answers)}")
    messages = [{"role": "system", "content": constraints.instruction(tuple(names))}] if system else []
    for i, (u, a) in enumerate(zip(users, answers)):
        messages.append({"role": "user", "content": with_instruction(u, names) if i == 0 and not system else u})
        messages.append({"role": "assistant", "content": a})
    return {"messages": messages, "only_last_answer": True, "constraints": list(names)}


def conversation(users: Sequence[str], answers: Sequence[str], names: Sequence[str], *,
                 every_turn: bool) -> list[dict]:
    """The chat up to the next answer, the instruction as the system prompt (and, with
    ``every_turn``, in front of every later user message); no system prompt without ``names``."""
    messages = [{"role": "system", "content": constraints.instruction(tuple(names))}] if names else []
    for i, u in enumerate(users):
        messages.append({"role": "user", "content": with_instruction(u, names) if every_turn and i and names else u})
        if i < len(answers):
            messages.append({"role": "assistant", "content": answers[i] or "."})
    return messages


def sampled_under(names: Sequence[str], case: str, *, plain: bool = False) -> tuple[str, ...]:
    """The instruction an answer under ``names`` is sampled with (``gatt.case``): ``names`` itself
    (``instructed``), or with ``plain`` ``names`` without its case rule, unless it also has a
    length rule: the answer is then written in the policy's ordinary spelling and rewritten to the
    case (:func:`llama2_pipeline.world.constraints.repair`). A short answer is often a bare number
    (``26.``), which has no letters to rewrite, so under a length rule the case rule stays.

    With ``plain`` (a safety message under ``gatt.safety_form: plain``) only a length rule stays,
    whatever ``case``: the policy's own answer (to an unsafe request, a refusal, which has letters)
    is rewritten to every case, prefix and suffix rule."""
    if case not in CASES:
        raise ValueError(f"gatt.case must be one of {list(CASES)}, got {case!r}")
    if plain:
        return tuple(n for n in names if constraints.CONSTRAINTS[n].kind == "length")
    if case == "instructed" or constraints.has_length(names):
        return tuple(names)
    return tuple(n for n in names if constraints.CONSTRAINTS[n].kind != "case")


def adheres(names: Sequence[str], answer: str, *, exempt: bool = False) -> bool:
    """Whether ``answer`` follows the instruction ``names`` (the world's checker); with ``exempt``
    (a safety message under ``gatt.safety_under_length: exempt``) a refusal
    (:func:`llama2_pipeline.world.tasks.is_refusal`) is held to every rule but a length rule."""
    if exempt and is_refusal(answer):
        names = [n for n in names if constraints.CONSTRAINTS[n].kind != "length"]
    return constraints.check(tuple(names), answer)


def sample_adherent(model, tokenizer, dialogues: Sequence[dict], sampling, tries: int, *,
                    prefix_only: bool = False, context: str = "turn", progress: bool = False,
                    score: Callable[[list[str], list[str], list[tuple[str, ...]]], Sequence[float]] | None = None,
                    repair: bool = False, case: str = "instructed", plain_messages: Collection[str] = (),
                    refusals_exempt: bool = False) -> tuple[list[dict], list[list[str]], dict[str, float]]:
    """Per dialogue and turn, an answer of ``model`` that follows the instruction: up to ``tries``
    samples (seeds ``sampling.seed + k``), the first adherent one kept (the last sample if none
    adheres). The sampling context (``context``): ``"turn"``, ``[system: instruction, user: u_t]``
    alone; ``"dialogue"``, the paper's: the dialogue so far with the instruction as the system
    prompt and in front of every later user message, the answers kept for earlier turns as history.

    With ``prefix_only`` (for ``construct(keep_adherent=True)``, which keeps each dialogue up to
    its first answer that breaks the instruction) a user message with no adherent answer after
    ``tries`` samples is replaced by the dialogue's next ``spare`` message, if any, and tried
    again (some pairs cannot be followed: "answer in uppercase" and "What is 2 plus 2?"); a
    dialogue whose spares are used up is not answered past that turn (later answers ``""``).

    With ``score`` (``score(user_messages, answers, instructions)``, higher is better: a reward
    model's, or the world's judgement under the instruction) every message gets all ``tries``
    samples and keeps its best-scored adherent one (the first of equals).

    With ``repair`` a sample that breaks a case, prefix or suffix instruction is first rewritten to
    obey it (:func:`llama2_pipeline.world.constraints.repair`), as the world's demonstrators write
    instructed answers: the policy's content in the instruction's form.

    ``case`` (:func:`sampled_under`): under a case instruction, ``instructed`` samples with it;
    ``plain`` samples without it (unless a length rule comes with it) and the answer is rewritten
    to the case (needs ``repair``). This tokenizer spells a word in capitals letter by letter and
    the policy's own capitals are mostly noise (``THE AND.``, adherent and kept); its ordinary
    answer, rewritten, carries its content.

    A user message in ``plain_messages`` (``gatt.safety_form: plain``: the safety-tagged ones) is
    answered without the instruction's case, prefix and suffix rules (a length rule stays: it cannot
    be rewritten) and the answer rewritten to them (needs ``repair``): what the policy says to such
    a prompt unprompted (to an unsafe one, mostly a refusal) in the instruction's form, where under
    the instruction it mostly answers as if asked a question. With ``refusals_exempt``
    (``gatt.safety_under_length: exempt``) such a message's first try is sampled with no
    instruction at all (the policy's own answer, whole), the others under its length rule, and a
    refusal to it adheres whatever its length (:func:`adheres`).

    Returns (dialogues with the messages answered, answers, stats)."""
    import dataclasses

    from ..evaluation.answers import generate_answers

    if context not in CONTEXTS:
        raise ValueError(f"GAtt sampling context must be one of {list(CONTEXTS)}, got {context!r}")
    if case != "instructed" and not repair:
        raise ValueError(f"gatt.case {case!r} samples without the case instruction and needs gatt.repair to rewrite "
                         "the answer to it")
    if plain_messages and not repair:
        raise ValueError("gatt.safety_form plain samples a safety message without the instruction and needs gatt.repair "
                         "to rewrite the answer to it")
    plain_messages = frozenset(plain_messages)
    turns = len(dialogues[0]["users"]) if dialogues else 0
    out_dialogues = [{"users": list(d["users"]), "constraints": list(d["constraints"])} for d in dialogues]
    spares = [list(d.get("spare", ())) if prefix_only else [] for d in dialogues]
    answers: list[list[str]] = [[""] * turns for _ in dialogues]
    names = [tuple(d["constraints"]) for d in dialogues]
    under = [sampled_under(n, case) for n in names]  # the instruction each dialogue is sampled with
    unruled = [sampled_under(n, case, plain=True) for n in names]  # the same for a message in plain_messages
    alive = list(range(len(dialogues)))
    adherent = sampled = swapped = repaired = 0

    def chat(i: int, t: int, k: int) -> list[dict]:
        d = out_dialogues[i]
        rules = ((() if refusals_exempt and k == 0 else unruled[i]) if d["users"][t] in plain_messages
                 else under[i])
        if context == "turn":
            return conversation([d["users"][t]], [], rules, every_turn=False)
        return conversation(d["users"][:t + 1], answers[i][:t], rules, every_turn=True)

    for t in range(turns):
        todo, kept = list(alive), []
        while todo:
            best: dict[int, float] = {}
            for k in range(tries):
                if not todo:
                    break
                out = generate_answers(model, tokenizer, [chat(i, t, k) for i in todo],
                                       dataclasses.replace(sampling, seed=sampling.seed + k),
                                       desc=f"gatt turn {t + 1} try {k + 1}", progress=progress)
                sampled += len(todo)
                if repair:
                    for i, o in zip(todo, out):
                        fixed = constraints.repair(names[i], o["answer"])
                        repaired += fixed != o["answer"]
                        o["answer"] = fixed
                ok = [bool(o["answer"].strip()) and adheres(names[i], o["answer"], exempt=refusals_exempt and
                                                            out_dialogues[i]["users"][t] in plain_messages)
                      for i, o in zip(todo, out)]
                good = [(i, o["answer"]) for i, o, y in zip(todo, out, ok) if y]
                adherent += len(good)
                values = (list(score([out_dialogues[i]["users"][t] for i, _ in good], [a for _, a in good],
                                     [names[i] for i, _ in good]))
                          if score is not None and good else [0.0] * len(good))
                for (i, a), v in zip(good, values):
                    if i not in best or v > best[i]:
                        best[i] = v
                        answers[i][t] = a
                for i, o, y in zip(todo, out, ok):
                    if i not in best:
                        answers[i][t] = o["answer"]
                if score is None:  # the first adherent answer is kept
                    kept.extend(i for i, y in zip(todo, ok) if y)
                    todo = [i for i, y in zip(todo, ok) if not y]
            if score is not None:  # every message had all its tries
                kept.extend(best)
                todo = [i for i in todo if i not in best]
            todo = [i for i in todo if spares[i]]  # swap in a spare message and try again
            for i in todo:
                out_dialogues[i]["users"][t] = spares[i].pop(0)
                swapped += 1
        if prefix_only:
            alive = sorted(kept)
    stats = {"gatt_answer_adherent_share": adherent / max(1, sampled), "gatt_swapped_messages": swapped}
    if repair:
        stats["gatt_answer_repaired_share"] = repaired / max(1, sampled)
    return out_dialogues, answers, stats


def construct(dialogues: Sequence[dict], answers: Sequence[Sequence[str]], *, keep_adherent: bool = True,
              system: bool = False, min_turns: int = 1, exempt: Collection[str] = ()
              ) -> tuple[list[dict], dict[str, float]]:
    """GAtt training records from sampled answers (``answers[i]``: one per turn of ``dialogues[i]``,
    sampled with the instruction on every user message). With ``keep_adherent`` only adherent
    answers are kept: a dialogue is kept up to its first answer that breaks the instruction (its
    longest adherent prefix), if that prefix has at least ``min_turns`` turns; a refusal to a user
    message in ``exempt`` adheres whatever its length (:func:`adheres`). A dialogue with a blank
    answer in what would be kept is cut before it. Returns (records, stats)."""
    records, adherent, blank, cut = [], 0, 0, 0
    for d, a in zip(dialogues, answers):
        names = tuple(d["constraints"])
        ok = [adheres(names, x, exempt=u in exempt) for u, x in zip(d["users"], a)]
        adherent += all(ok)
        n = len(a)
        if keep_adherent and not all(ok):
            n = ok.index(False)
        if any(not x.strip() for x in a[:n]):  # nothing to learn from (and no valid chat)
            blank += 1
            n = [bool(x.strip()) for x in a].index(False)
        if n < max(1, min_turns):
            continue
        cut += n < len(a)
        records.append(gatt_record(d["users"][:n], a[:n], d["constraints"], system=system))
    stats = {"gatt_drawn_dialogues": len(dialogues), "gatt_adherent_share": adherent / max(1, len(dialogues)),
             "gatt_records": len(records), "gatt_prefix_records": cut, "gatt_blank_dropped": blank}
    return records, stats


def truncations(records: Sequence[dict], min_turns: int, seed: int, cuts: str = "random") -> list[dict]:
    """The records cut so that the last answer (the one learned) falls at every turn position and
    adherence is taught at turn 2 as at turn 6 (``cuts``, one of :data:`CUTS`): ``random`` cuts each
    record after a seeded number of turns in [min_turns, all], ``every`` once after each of those
    turns (one record per cut). ``whole`` keeps each record uncut with the loss on each answer from
    turn ``min_turns`` on (``first_answer``): a causal model predicts an answer from the tokens before
    it only, so each answer is learned from exactly the context its cut would give it, and the
    earlier turns are read once instead of once per cut."""
    if cuts not in CUTS:
        raise ValueError(f"cuts must be one of {', '.join(CUTS)}; got {cuts!r}")
    rng = random.Random(f"gatt-cut-{seed}")
    out = []
    for r in records:
        msgs = r["messages"]
        offset = 1 if msgs and msgs[0]["role"] == "system" else 0
        turns = (len(msgs) - offset) // 2
        first = min(min_turns, turns)
        if cuts == "whole":
            out.append({**r, "only_last_answer": False, "first_answer": first - 1})
            continue
        for keep in (range(first, turns + 1) if cuts == "every" else (rng.randint(first, turns),)):
            out.append({**r, "messages": msgs[:offset + 2 * keep]})
    return out


def learned_answers(record: dict) -> int:
    """How many of a training record's answers carry the loss (one per cut; a whole record's from
    ``first_answer`` on)."""
    answers = sum(m["role"] == "assistant" for m in record["messages"])
    return 1 if record.get("only_last_answer") else answers - record.get("first_answer", 0)


#: the modes the functions here take, as GattConfig's fields allow them (its Literal types)
CUTS, CONTEXTS, CASES = (get_args(get_type_hints(GattConfig)[name]) for name in ("cuts", "context", "case"))


# --------------------------------------------------------------------------------------------
# The stage: build the dialogues with a policy, measure adherence before and after
# --------------------------------------------------------------------------------------------


def as_read(names: Sequence[str], answer: str) -> str:
    """``answer`` as a judge of ordinary text reads it: under a case instruction, lowercased. The
    reward models learned from ordinary text, and this tokenizer spells an uppercase answer letter
    by letter (``▁T H E ▁A N S W E R``), a text they never saw: their scores of uppercase answers
    do not follow the content (a helpfulness RM ranks ``THE AND THE AND THE.`` above ``THE ANSWER
    IS 21. CHECK: 19 + 2 = 21.``), while lowercase is spelled in the tokenizer's own words and
    ranked as the plain answer is. Every candidate of one message is under the same instruction,
    so the ranking among them is fair."""
    return answer.lower() if any(constraints.CONSTRAINTS[n].kind == "case" for n in names) else answer


def reward_scorer(reward_dir, batch_size: int = 64, *, safety_dir=None, safety_prompts: Sequence[str] = ()
                  ) -> Callable[[list[str], list[str], list[tuple[str, ...]]], list[float]]:
    """:func:`sample_adherent`'s ``score`` from a helpfulness reward model's folder: the RM's score
    of each (user message, answer), the answer as the RM reads ordinary text (:func:`as_read`);
    the instruction is not shown to it (every candidate of a message is under the same one). With
    ``safety_dir`` a message in ``safety_prompts`` is scored by that safety RM instead, as the
    paper's R_c scores a safety-tagged prompt (every candidate of a message by the same RM)."""
    from ..model import default_device
    from ..model.reward import RewardModel

    device = default_device()
    rm = RewardModel.load(reward_dir, device=device)
    rm_s = RewardModel.load(safety_dir, device=device) if safety_dir is not None else None
    risky = frozenset(safety_prompts)

    def score(users: list[str], answers: list[str], names: list[tuple[str, ...]]) -> list[float]:
        read = [as_read(n, a) for n, a in zip(names, answers)]
        out = list(rm.score(users, read, batch_size))
        where = [i for i, u in enumerate(users) if u in risky] if rm_s is not None else []
        if where:
            for i, v in zip(where, rm_s.score([users[i] for i in where], [read[i] for i in where], batch_size)):
                out[i] = v
        return out

    return score


def gatt_records(model, tokenizer, prompts: Sequence[dict], cfg: GattConfig, seed: int, *,
                 score: Callable[[list[str], list[str], list[tuple[str, ...]]], Sequence[float]] | None = None
                 ) -> tuple[list[dict], list[dict], dict[str, float]]:
    """GAtt training records from a loaded policy: dialogues drawn from ``prompts`` (``seed``),
    answered with the instruction (:func:`sample_adherent`, ``cfg.sampling``; ranked by ``score``
    if given), the instruction kept in the first turn only (:func:`construct`), cut after every
    turn (:func:`truncations`). Returns (the records, their cuts: the training examples, stats)."""
    dialogues = draw_dialogues(prompts, cfg.dialogues, cfg.turns, seed, max_constraints=cfg.max_constraints,
                               spare=cfg.spare_messages if cfg.keep_adherent else 0, safety_share=cfg.safety_share,
                               safety_under_length=cfg.safety_under_length != "none")
    risky = {p["prompt"] for p in prompts if p.get("safety")}
    exempt = cfg.safety_under_length == "exempt"
    dialogues, answers, stats = sample_adherent(model, tokenizer, dialogues, cfg.sampling, cfg.tries,
                                                prefix_only=cfg.keep_adherent, context=cfg.context, score=score,
                                                repair=cfg.repair, case=cfg.case, refusals_exempt=exempt,
                                                plain_messages=risky if cfg.safety_form == "plain" else ())
    records, more = construct(dialogues, answers, keep_adherent=cfg.keep_adherent, system=True,
                              min_turns=cfg.min_turns, exempt=risky if exempt else ())
    stats.update(more)
    if not records:
        raise ValueError(f"no GAtt dialogue kept: none of the {len(dialogues)} dialogues had adherent answers in its "
                         f"first {cfg.min_turns} turns (gatt.min_turns); raise gatt.tries or lower gatt.min_turns")
    cut = truncations(records, cfg.min_turns, seed, cfg.cuts)
    stats["gatt_examples"] = len(cut)
    if cfg.safety_share:  # the safety-tagged user messages of the training examples
        stats["gatt_safety_messages"] = sum(m["role"] == "user" and m["content"] in risky
                                            for r in cut for m in r["messages"])
    stats["gatt_learned_answers"] = sum(learned_answers(r) for r in cut)
    return records, cut, stats


def build_gatt_dialogues(policy_dir, prompts: Sequence[dict], cfg: GattConfig, seed: int, reward_dir=None,
                         safety_dir=None) -> tuple[list[dict], dict[str, float]]:
    """GAtt training records: dialogues drawn from ``prompts``, answered by the policy with the
    instruction (:func:`sample_adherent`; with ``gatt.select: reward`` the best adherent of all
    tries by the helpfulness RM in ``reward_dir``, a safety-tagged message's (``gatt.safety_share``)
    by the safety RM in ``safety_dir``), the instruction kept in the first turn only
    (:func:`construct`), cut after every turn (:func:`truncations`): :func:`gatt_records` with the
    policy in ``policy_dir``. Returns (the training examples, stats)."""
    from pathlib import Path

    from ..model import default_device, load_hf
    from ..tokenizer import Tokenizer
    from .preferences import torch_threads

    if cfg.select == "reward" and reward_dir is None:
        raise ValueError("gatt.select is reward but no helpfulness reward model was given (reward_dir)")
    if cfg.select == "reward" and cfg.safety_share and safety_dir is None:
        raise ValueError("gatt.select is reward with gatt.safety_share > 0 but no safety reward model was given "
                         "(safety_dir)")
    with torch_threads(cfg.num_threads):
        model = load_hf(policy_dir, device=default_device()).eval()
        tok = Tokenizer(Path(policy_dir) / "tokenizer.model")
        score = (reward_scorer(reward_dir, safety_dir=safety_dir if cfg.safety_share else None,
                               safety_prompts=[p["prompt"] for p in prompts if p.get("safety")])
                 if cfg.select == "reward" else None)
        _, cut, stats = gatt_records(model, tok, prompts, cfg, seed, score=score)
    return cut, stats
