"""The simulated world: the web, the prompts, the annotators and the judges of the default run.

``World.from_params(params["world"])`` is deterministic for its seed. It plays every role the
paper gives to the web and to people. This is world version 2 (``world.version``), whose
demonstrations are of mixed quality, as people's are (the paper's premise for RLHF: annotators
write worse than they judge); metrics of world v1 are not comparable and v1 is gone.

* ``corpus_shards()``: a raw web-like crawl, with dirt and planted PII (``canaries``); its
  question/answer pages are written by simulated writers (:mod:`.writers`);
* ``prompts(split)``: prompts with checkable answers, unsafe and borderline requests, each with
  its ideal ``reference`` answer (restates the question, explains the answer, no filler);
* ``sft_dialogues()``: demonstrations in the messages format, each written by a writer of low
  (30 %), mid (50 %) or high (20 %) skill (``"writer"``): terse, plain, hedged or restating
  openings, sometimes an explanation, filler or a form flaw; their mean helpfulness is well
  below the references' 1.0;
* ``helpfulness``/``safety``: scorers in [0, 1] built from the components of ``dimensions``
  (correct, form, concise, restate, explain, filler, hedge, refusal, ...; see
  :mod:`.scorers`); ``compare``: an annotator with ratings who disagrees most on close pairs;
* ``constraints``: GAtt system instructions with checkers; under a length constraint the
  scorers waive restate, explain and concise (``helpfulness(..., constraints=names)``).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

from . import constraints
from .constraints import CONSTRAINTS
from .corpus import SOURCES, CorpusGenerator
from .knowledge import Entity, build_knowledge_base
from .pii import PII_KINDS
from .scorers import RATINGS, Annotator, Comparison, dimensions, form_score, helpfulness_of, safety_of
from .tasks import CATEGORIES, Task, all_tasks, is_refusal, parse_prompt
from .writers import SKILL_NAMES, draw_skill, write

__all__ = ["World", "WorldConfig", "Task", "Comparison", "RATINGS", "CATEGORIES", "PII_KINDS", "SOURCES",
           "CONSTRAINTS", "SKILL_NAMES", "VERSION", "constraints", "is_refusal", "form_score"]

#: the world's version: 2, demonstrations of mixed quality (v1, ideal demonstrations, is gone)
VERSION = 2

GENERIC_SYSTEM = "You are a helpful and harmless assistant."


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    n_entities: int = 40
    n_arithmetic: int = 400
    n_list: int = 200
    n_string: int = 150
    eval_fraction: float = 0.2
    corpus_mb: float = 4.0
    shard_docs: int = 2000
    mix: tuple = ()
    n_sft_dialogues: int = 2000
    multi_turn_fraction: float = 0.25
    max_turns: int = 4
    system_fraction: float = 0.2
    constraint_fraction: float = 0.1
    disagreement_rate: float = 0.05
    version: int = VERSION

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or self.version != VERSION:
            raise ValueError(f"world.version must be {VERSION} (mixed-quality demonstrations), got {self.version!r}: "
                             "world v1 is gone, and metrics of v1 and v2 are never compared")

    @classmethod
    def from_params(cls, p: dict) -> "WorldConfig":
        """From the ``world`` params group (with ``seed``); ``version`` is optional (default 2)."""
        corpus, sft, ann = p["corpus"], p["sft"], p["annotator"]
        return cls(version=p.get("version", VERSION), seed=int(p["seed"]), n_entities=p["n_entities"],
                   n_arithmetic=p["prompts"]["n_arithmetic"], n_list=p["prompts"]["n_list"],
                   n_string=p["prompts"]["n_string"], eval_fraction=p["prompts"]["eval_fraction"],
                   corpus_mb=corpus["size_mb"], shard_docs=corpus["shard_docs"],
                   mix=tuple(sorted(corpus["mix"].items())), n_sft_dialogues=sft["n_dialogues"],
                   multi_turn_fraction=sft["multi_turn_fraction"],
                   max_turns=sft["max_turns"], system_fraction=sft["system_fraction"],
                   constraint_fraction=sft["constraint_fraction"], disagreement_rate=ann["disagreement_rate"])


class World:
    def __init__(self, config: WorldConfig):
        self.config = config
        self.annotator = Annotator(config.seed, config.disagreement_rate)

    @classmethod
    def from_params(cls, params: dict) -> "World":
        return cls(WorldConfig.from_params(params))

    # --- knowledge and tasks ------------------------------------------------------------------
    @cached_property
    def entities(self) -> list[Entity]:
        return build_knowledge_base(self.config.seed, self.config.n_entities)

    @cached_property
    def _by_name(self) -> dict[str, Entity]:
        return {e.name: e for e in self.entities}

    @cached_property
    def tasks(self) -> list[Task]:
        c = self.config
        return all_tasks(self.entities, random.Random(f"tasks-{c.seed}"), c.n_arithmetic, c.n_list, c.n_string)

    def split_of(self, prompt: str) -> str:
        """'eval' or 'train', by a hash of the prompt text: stable and disjoint."""
        h = int.from_bytes(hashlib.sha256(f"{self.config.seed}|{prompt}".encode()).digest()[:8], "big")
        return "eval" if h / 2**64 < self.config.eval_fraction else "train"

    def tasks_for(self, split: str) -> list[Task]:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        return [t for t in self.tasks if self.split_of(t.prompt) == split]

    def prompts(self, split: str) -> list[dict]:
        return [{"id": f"{split}-{i:05d}", "prompt": t.prompt, "category": t.category, "safety": t.safety,
                 "reference": t.reference} for i, t in enumerate(self.tasks_for(split))]

    def task(self, prompt: str) -> Task | None:
        return parse_prompt(prompt, self._by_name)

    # --- judges ---------------------------------------------------------------------------------
    def dimensions(self, prompt: str, response: str, *, constraints: tuple[str, ...] = ()) -> dict:
        """The components helpfulness and safety are built from (see :func:`.scorers.dimensions`)."""
        return dimensions(self.task(prompt), response, constraints=constraints)

    def helpfulness(self, prompt: str, response: str, *, constraints: tuple[str, ...] = ()) -> float:
        """In [0, 1]; ``constraints``: the GAtt constraints the answer is under (a length
        constraint waives restate, explain and concise, so a correct five-word answer scores 1)."""
        task = self.task(prompt)
        return helpfulness_of(task, dimensions(task, response, constraints=constraints))

    def safety(self, prompt: str, response: str) -> float:
        task = self.task(prompt)
        return safety_of(task, dimensions(task, response))

    def compare(self, prompt: str, a: str, b: str, category: str | None = None) -> Comparison:
        return self.annotator.compare(self.task(prompt), prompt, a, b, category)

    # --- data -------------------------------------------------------------------------------------
    def corpus(self) -> CorpusGenerator:
        demo = [t for t in self.tasks_for("train") if not t.safety]
        return CorpusGenerator(self.config.seed, self.entities, demo, dict(self.config.mix))

    def corpus_shards(self, gen: CorpusGenerator | None = None) -> Iterator[list[dict]]:
        gen = gen or self.corpus()
        return gen.shards(int(self.config.corpus_mb * 2**20), self.config.shard_docs)

    def demonstration_quality(self, dialogues: list[dict]) -> dict[str, float]:
        """Mean helpfulness of the demonstrations' answers (each user turn and the answer to it; a
        constrained answer judged under its constraints): overall and per writer skill, with the
        dialogues per skill (``dialogues_<skill>``) and the same for the ideal answers (``reference``)."""
        scores: dict[str, list[float]] = {}
        ideal = []
        for d in dialogues:
            msgs, names = d["messages"], tuple(d.get("constraints", ()))
            pairs = [(u["content"], a["content"]) for u, a in zip(msgs, msgs[1:])
                     if u["role"] == "user" and a["role"] == "assistant"]
            for user, answer in pairs:
                scores.setdefault(d.get("writer", "unknown"), []).append(
                    self.helpfulness(user, answer, constraints=names))
                task = self.task(user)
                if task is not None and not names:
                    ideal.append(self.helpfulness(user, task.reference))
        out = {"all": sum(sum(v) for v in scores.values()) / max(1, sum(len(v) for v in scores.values()))}
        for skill, values in sorted(scores.items()):
            out[skill] = sum(values) / len(values)
            out[f"dialogues_{skill}"] = sum(d.get("writer", "unknown") == skill for d in dialogues)
        out["reference"] = sum(ideal) / max(1, len(ideal))
        return out

    def sft_dialogues(self) -> list[dict]:
        """Demonstrations on train prompts, each dialogue written by one writer (``"writer"``:
        low, mid or high skill): single and multi-turn, some with a system prompt, some with a
        GAtt constraint (``"constraints"``, its names) that the (single) answer follows."""
        c = self.config
        rng = random.Random(f"sft-{c.seed}")
        train = self.tasks_for("train")
        answerable = [t for t in train if t.category != "unsafe"]
        combos = constraints.combinations(2)
        out = []
        for _ in range(c.n_sft_dialogues):
            skill = draw_skill(rng)
            messages = []
            record: dict = {"messages": messages, "writer": skill.name}
            if rng.random() < c.constraint_fraction:
                names = rng.choice(combos)
                for _ in range(100):  # a case rule needs letters: "2." cannot be written in lowercase
                    t = rng.choice(answerable)
                    answer = constraints.apply(names, write(skill, t, rng).text, t.short)
                    if constraints.check(names, answer):
                        break
                messages += [{"role": "system", "content": constraints.instruction(names)},
                             {"role": "user", "content": t.prompt}, {"role": "assistant", "content": answer}]
                record["constraints"] = list(names)
            else:
                if rng.random() < c.system_fraction:
                    messages.append({"role": "system", "content": GENERIC_SYSTEM})
                turns = rng.randint(2, c.max_turns) if rng.random() < c.multi_turn_fraction else 1
                for t in rng.sample(train, turns):
                    messages += [{"role": "user", "content": t.prompt},
                                 {"role": "assistant", "content": write(skill, t, rng).text}]
            out.append(record)
        return out
