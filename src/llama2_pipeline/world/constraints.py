"""GAtt system instructions, each with a programmatic checker and a way to rewrite an answer to obey it."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Callable, Iterable

_WORD_RE = re.compile(r"[A-Za-z0-9']+")


@dataclass(frozen=True)
class Constraint:
    name: str
    instruction: str  # the system instruction given to the model
    kind: str  # "case" | "prefix" | "suffix" | "length": two of one kind never combine
    check: Callable[[str], bool]
    apply: Callable[[str, str], str]  # (answer, short answer) -> an answer that obeys


def _letters(s: str) -> str:
    return "".join(ch for ch in s if ch.isalpha())


def _first_words(short: str) -> str:
    words = short.split()
    return " ".join(words[:5])


CONSTRAINTS: dict[str, Constraint] = {c.name: c for c in [
    Constraint("uppercase", "Always answer in uppercase letters.", "case",
               lambda r: bool(_letters(r)) and _letters(r).isupper(),
               lambda a, s: a.upper()),
    Constraint("lowercase", "Always answer in lowercase letters.", "case",
               lambda r: bool(_letters(r)) and _letters(r).islower(),
               lambda a, s: a.lower()),
    Constraint("ahoy", "Start every answer with 'Ahoy!'.", "prefix",
               lambda r: r.strip().startswith("Ahoy!"),
               lambda a, s: "Ahoy! " + a),
    Constraint("cheers", "End every answer with 'Cheers!'.", "suffix",
               lambda r: r.strip().endswith("Cheers!"),
               lambda a, s: a + " Cheers!"),
    Constraint("five_words", "Answer in at most five words.", "length",
               lambda r: 0 < len(_WORD_RE.findall(r)) <= 5,
               lambda a, s: _first_words(s)),
]}

# the order in which rewrites are applied when two constraints combine: content, case, frame
_APPLY_ORDER = ("length", "case", "prefix", "suffix")
# case rules clash with the fixed-case words of the prefix/suffix rules
_CLASHES = {frozenset({"uppercase", "ahoy"}), frozenset({"uppercase", "cheers"}),
            frozenset({"lowercase", "ahoy"}), frozenset({"lowercase", "cheers"}),
            frozenset({"five_words", "cheers"}), frozenset({"five_words", "ahoy"})}


def compatible(names: tuple[str, ...]) -> bool:
    cs = [CONSTRAINTS[n] for n in names]
    if len({c.kind for c in cs}) < len(cs):
        return False
    return not any(frozenset(pair) in _CLASHES for pair in itertools.combinations(names, 2))


def combinations(max_size: int = 2) -> list[tuple[str, ...]]:
    """Every compatible set of one or two constraints, in a fixed order."""
    out = []
    for k in range(1, max_size + 1):
        out += [c for c in itertools.combinations(CONSTRAINTS, k) if compatible(c)]
    return out


def has_length(names: Iterable[str]) -> bool:
    """Whether the instruction ``names`` has a length rule ("at most five words"): the one rule
    :func:`repair` cannot enforce (it needs the task's short answer), and the one that waives
    restate, explain and concise in the scorers."""
    return any(CONSTRAINTS[n].kind == "length" for n in names)


def instruction(names: tuple[str, ...]) -> str:
    return " ".join(CONSTRAINTS[n].instruction for n in names)


def check(names: tuple[str, ...], response: str) -> bool:
    return all(CONSTRAINTS[n].check(response) for n in names)


def _in_apply_order(names: tuple[str, ...]) -> list[Constraint]:
    return sorted((CONSTRAINTS[n] for n in names), key=lambda c: _APPLY_ORDER.index(c.kind))


def repair(names: tuple[str, ...], response: str) -> str:
    """``response`` rewritten to obey each instruction of ``names`` it breaks that a rewrite can enforce
    without knowing the task (case, prefix, suffix: what :func:`apply` does to a demonstration). A
    length instruction needs the task's short answer, a case one letters ("12." has no case), and a
    blank response has nothing to rewrite: those are left as they are."""
    for c in _in_apply_order(names):
        if (c.kind != "length" and response.strip() and not c.check(response)
                and (c.kind != "case" or _letters(response))):
            response = c.apply(response.strip(), "")
    return response


def apply(names: tuple[str, ...], answer: str, short: str) -> str:
    for c in _in_apply_order(names):
        answer = c.apply(answer, short)
    return answer
