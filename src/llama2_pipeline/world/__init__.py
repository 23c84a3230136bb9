"""The simulated world: the web, the prompts, the annotators and the judges of the default run.

``World.from_params(params["world"])`` is deterministic for its seed. It plays every role the
paper gives to the web and to people:

* ``corpus_shards()``: a raw web-like crawl, with dirt and planted PII (``canaries``);
* ``prompts(split)``: prompts with checkable answers, unsafe and borderline requests;
* ``sft_dialogues()``: reference demonstrations in the messages format;
* ``helpfulness``/``safety``: scorers in [0, 1]; ``compare``: a noisy annotator with ratings;
* ``constraints``: GAtt system instructions with checkers.
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
from .scorers import RATINGS, Annotator, Comparison, form_score
from .scorers import helpfulness as _helpfulness
from .scorers import safety as _safety
from .tasks import CATEGORIES, Task, all_tasks, is_refusal, parse_prompt

__all__ = ["World", "WorldConfig", "Task", "Comparison", "RATINGS", "CATEGORIES", "PII_KINDS", "SOURCES",
           "CONSTRAINTS", "constraints", "is_refusal", "form_score"]

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

    @classmethod
    def from_params(cls, p: dict) -> "WorldConfig":
        corpus, sft, ann = p["corpus"], p["sft"], p["annotator"]
        return cls(seed=int(p["seed"]), n_entities=p["n_entities"], n_arithmetic=p["prompts"]["n_arithmetic"],
                   n_list=p["prompts"]["n_list"], n_string=p["prompts"]["n_string"],
                   eval_fraction=p["prompts"]["eval_fraction"], corpus_mb=corpus["size_mb"],
                   shard_docs=corpus["shard_docs"], mix=tuple(sorted(corpus["mix"].items())),
                   n_sft_dialogues=sft["n_dialogues"], multi_turn_fraction=sft["multi_turn_fraction"],
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
    def helpfulness(self, prompt: str, response: str) -> float:
        return _helpfulness(self.task(prompt), response)

    def safety(self, prompt: str, response: str) -> float:
        return _safety(self.task(prompt), response)

    def compare(self, prompt: str, a: str, b: str, category: str | None = None) -> Comparison:
        return self.annotator.compare(self.task(prompt), prompt, a, b, category)

    # --- data -------------------------------------------------------------------------------------
    def corpus(self) -> CorpusGenerator:
        demo = [t for t in self.tasks_for("train") if not t.safety]
        return CorpusGenerator(self.config.seed, self.entities, demo, dict(self.config.mix))

    def corpus_shards(self, gen: CorpusGenerator | None = None) -> Iterator[list[dict]]:
        gen = gen or self.corpus()
        return gen.shards(int(self.config.corpus_mb * 2**20), self.config.shard_docs)

    def sft_dialogues(self) -> list[dict]:
        """Reference dialogues on train prompts: single and multi-turn, some with a system prompt,
        some with a GAtt constraint followed in the (single) answer."""
        c = self.config
        rng = random.Random(f"sft-{c.seed}")
        train = self.tasks_for("train")
        combos = constraints.combinations(2)
        out = []
        for _ in range(c.n_sft_dialogues):
            messages = []
            r = rng.random()
            if r < c.constraint_fraction:
                names = rng.choice(combos)
                t = rng.choice([t for t in train if t.category != "unsafe"])
                messages = [{"role": "system", "content": constraints.instruction(names)},
                            {"role": "user", "content": t.prompt},
                            {"role": "assistant", "content": constraints.apply(names, t.reference, t.short)}]
            else:
                if rng.random() < c.system_fraction:
                    messages.append({"role": "system", "content": GENERIC_SYSTEM})
                turns = rng.randint(2, c.max_turns) if rng.random() < c.multi_turn_fraction else 1
                for t in rng.sample(train, turns):
                    messages += [{"role": "user", "content": t.prompt},
                                 {"role": "assistant", "content": t.reference}]
            out.append({"messages": messages})
        return out
