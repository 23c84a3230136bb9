"""The simulated annotators who write the demonstrations: writers of mixed skill.

The paper's RLHF works because people write worse than they judge (Llama 2, section 5.1): the
demonstrations of SFT carry less than the preferences. Every demonstration of the world (the
SFT dialogues and the crawl's question/answer pages) is therefore written by a writer drawn
per dialogue or page from :data:`SKILLS` (low 30 %, mid 50 %, high 20 %). A writer

* opens with one of the task's openings (``Task.openings``): terse "17.", plain "The answer
  is 17.", hedge "Maybe it is 17, but I am not sure." or restate "9 plus 8 is 17.";
* may add the task's explanation sentence ("Check: 9 + 8 = 17."), a filler sentence ("I hope
  this helps!") and a form flaw (the final full stop dropped, or one alphabetic word written
  twice: never a number, which the PII rule could read as a phone number);
* refuses an unsafe prompt with a bare refusal, plus a reason ("because it could cause harm")
  and the harm's redirect, each with the skill's probability (filler and flaw as above).

The draws are independent, so P(explain | restate) is the skill's P(explain): 0.41 overall,
below 0.5, and greedy SFT lands on the modal plain answer. ``Task.reference`` stays the ideal
answer (restate + explanation), which no writer is sure to write. The weights are the design
(DESIGN.md, "World v2"), not knobs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .tasks import BARE_REFUSAL, HARMS, OPENINGS, REFUSAL, Task


@dataclass(frozen=True)
class Skill:
    """How one kind of writer writes: the probability of each choice."""

    name: str
    weight: float  # share of the writers
    openings: tuple[float, float, float, float]  # P(terse, plain, hedge, restate)
    explain: float  # P(the explanation sentence) on a safe or borderline prompt
    filler: float  # P(a filler sentence at the end)
    flaw: float  # P(a form flaw: the final stop dropped or a doubled word, even odds)
    reason: float  # P(a reason in a refusal of an unsafe prompt)
    redirect: float  # P(the harm's redirect after a refusal)


SKILLS: tuple[Skill, ...] = (
    Skill("low", 0.30, (0.30, 0.40, 0.30, 0.00), explain=0.05, filler=0.25, flaw=0.30, reason=0.10, redirect=0.00),
    Skill("mid", 0.50, (0.06, 0.70, 0.06, 0.18), explain=0.25, filler=0.08, flaw=0.06, reason=0.40, redirect=0.25),
    Skill("high", 0.20, (0.00, 0.25, 0.00, 0.75), explain=0.50, filler=0.00, flaw=0.00, reason=0.90, redirect=0.85),
)
SKILL_NAMES = tuple(s.name for s in SKILLS)

#: what writers add when they pad an answer; the scorers' filler rule recognises every one
FILLERS = ("I hope this helps!", "Let me know if you have any other questions.", "Happy to help!",
           "Feel free to ask if you need anything else.")


@dataclass(frozen=True)
class Draft:
    """One written answer and the choices behind it."""

    text: str
    writer: str  # the skill's name
    opening: str  # one of OPENINGS, or "refusal" for an unsafe prompt
    explain: bool
    filler: bool
    flaw: str  # "" | "stop" (final stop dropped) | "double" (a word written twice)
    reason: bool = False
    redirect: bool = False


def draw_skill(rng: random.Random) -> Skill:
    return rng.choices(SKILLS, [s.weight for s in SKILLS])[0]


def _with_flaw(text: str, rng: random.Random) -> tuple[str, str]:
    """The text with one form flaw: a doubled alphabetic word or (even odds, and when no word
    is alphabetic) the final stop dropped."""
    words = text.split(" ")
    alphabetic = [i for i, w in enumerate(words) if w.isalpha()]
    if alphabetic and rng.random() < 0.5:
        i = rng.choice(alphabetic)
        return " ".join(words[:i + 1] + words[i:]), "double"
    return text[:-1], "stop"


def write(skill: Skill, task: Task, rng: random.Random) -> Draft:
    """The answer a writer of ``skill`` gives to ``task``."""
    reason = redirect = explain = False
    if task.category == "unsafe":
        opening = "refusal"
        reason, redirect = rng.random() < skill.reason, rng.random() < skill.redirect
        parts = [REFUSAL if reason else BARE_REFUSAL] + ([HARMS[task.harm]["redirect"]] if redirect else [])
    else:
        opening = rng.choices(OPENINGS, skill.openings)[0]
        explain = rng.random() < skill.explain
        parts = [task.openings[opening]] + ([task.explanation] if explain else [])
    filler = rng.random() < skill.filler
    if filler:
        parts.append(rng.choice(FILLERS))
    text, flaw = " ".join(parts), ""
    if rng.random() < skill.flaw:
        text, flaw = _with_flaw(text, rng)
    return Draft(text, skill.name, opening, explain, filler, flaw, reason, redirect)
