"""The raw "web crawl": useful documents plus the dirt that cleaning must remove.

Documents are generated one at a time from a seeded RNG and written shard by shard, so a
1 GB crawl needs no more memory than one shard. Kinds (``source`` column):

==============  =========================================================================
article         encyclopedia articles about the knowledge base's countries
demo            question/answer demonstrations of the world's tasks, each page written by one
                simulated writer of low, mid or high skill (:mod:`.writers`), as the SFT dialogues
prose           real prose: paragraphs of the Python documentation shipped with CPython
pii             a useful paragraph with one or two planted personal values (to redact)
pii_dump        a directory-like page dense with personal values (to drop)
exact_dup       a verbatim copy of an earlier document
near_dup        an earlier document with a few words changed
boilerplate     cookie banners, navigation menus, footers
spam            keyword spam
gibberish       random letter strings
markup          an article wrapped in HTML with scripts and styles (markup to strip)
short           a very short fragment
==============  =========================================================================
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Iterator

from . import pii
from .knowledge import Entity, article
from .tasks import Task
from .writers import draw_skill, write

SOURCES = ("article", "demo", "prose", "pii", "pii_dump", "exact_dup", "near_dup", "boilerplate", "spam",
           "gibberish", "markup", "short")

_BOILER = [
    "Accept all cookies. We use cookies to improve your experience. Privacy policy. Terms of use. "
    "Manage preferences. Accept. Reject. Home | About | Contact | Blog | Login | Sign up",
    "Home > Products > Sale > All items. Sign in. Register. Cart (0). Wishlist. Subscribe to our newsletter! "
    "Follow us on social media. Copyright 2023 All rights reserved. Sitemap. Careers.",
    "Skip to content. Menu. Search... Log in. Read more... Read more... Read more... Share this: Facebook Twitter "
    "Email Print. Like this: Like Loading...",
]
# demonstrations read like a page of a study guide, not a bare list of templates
_DEMO_INTROS = [
    "Here are a few questions from this week's study guide, with the answers that the teacher gave.",
    "The following questions were asked by readers of our newsletter, and each one has a short answer.",
    "A good way to learn is to ask a question and then check the answer. Here are some examples.",
    "These are the questions that came up in the evening class, together with the answers we agreed on.",
]
_DEMO_STYLES = [
    "Question: {p}\nAnswer: {a}",
    "Q: {p}\nA: {a}",
    "One student asked: {p} The answer is simple. {a}",
    "Someone wanted to know the following. {p} Here is the answer: {a}",
]
_DEMO_FILLERS = [
    "It is worth reading the question twice before you answer it.",
    "Short and clear answers are the easiest ones to check.",
    "If you are not sure, it helps to write the steps down on paper.",
    "Many readers got this one right on the first try.",
]
_DEMO_OUTROS = [
    "That is all for today, and we hope that the answers were useful to you.",
    "Send us your own questions and we will answer them in the next issue.",
    "Practice with questions like these every day and you will get better at them.",
]
_SPAM_WORDS = ["cheap", "buy", "best", "free", "casino", "pills", "deal", "win", "click", "now", "discount", "offer"]


def _prose_paragraphs() -> list[str]:
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        paras = [p.strip() for p in re.split(r"\n\s*\n", topics[name]) if len(p.split()) > 25]
        for i in range(0, len(paras), 3):
            out.append("\n\n".join(paras[i:i + 3]))
    return out


@dataclass
class CorpusGenerator:
    """Yields raw documents ``{"id", "text", "source"}``; every planted PII value is recorded."""

    seed: int
    entities: list[Entity]
    demo_tasks: list[Task]
    mix: dict[str, float]
    canaries: list[dict] = field(default_factory=list)
    finished: bool = False  # True once shards() has been consumed to the end

    def __post_init__(self) -> None:
        unknown = set(self.mix) - set(SOURCES)
        if unknown:
            raise ValueError(f"world.corpus.mix has unknown source(s) {sorted(unknown)}; known: {list(SOURCES)}")
        self.rng = random.Random(f"corpus-{self.seed}")
        self.prose = _prose_paragraphs()
        self._prose_i = 0
        self._recent: list[str] = []  # recent useful docs, sources of duplicates

    def _plant(self, kind: str, doc_id: str) -> str:
        value = pii.GENERATORS[kind](self.rng)
        self.canaries.append({"kind": kind, "value": value, "doc_id": doc_id})
        return self.rng.choice(pii.CONTEXTS[kind]).format(v=value)

    def _useful(self, kind: str) -> str:
        rng = self.rng
        if kind == "article":
            return article(rng.choice(self.entities), rng)
        if kind == "demo":
            tasks = rng.sample(self.demo_tasks, k=min(len(self.demo_tasks), rng.randint(2, 4)))
            skill = draw_skill(rng)
            parts = [rng.choice(_DEMO_INTROS)]
            for t in tasks:
                parts.append(rng.choice(_DEMO_STYLES).format(p=t.prompt, a=write(skill, t, rng).text))
                if rng.random() < 0.5:
                    parts.append(rng.choice(_DEMO_FILLERS))
            parts.append(rng.choice(_DEMO_OUTROS))
            return "\n\n".join(parts)
        if kind == "prose":
            text = self.prose[self._prose_i % len(self.prose)]
            self._prose_i += 1
            return text
        raise AssertionError(kind)

    def document(self, doc_id: str) -> dict:
        rng = self.rng
        kinds, weights = zip(*sorted(self.mix.items()))
        kind = rng.choices(kinds, weights)[0]
        if kind in ("exact_dup", "near_dup") and not self._recent:
            kind = "article"
        if kind in ("article", "demo", "prose"):
            text = self._useful(kind)
            self._recent = (self._recent + [text])[-50:]
        elif kind == "pii":
            base = self._useful(rng.choice(["article", "prose"]))
            sentences = [self._plant(rng.choice(pii.PII_KINDS), doc_id) for _ in range(rng.randint(1, 2))]
            text = base + "\n\n" + " ".join(sentences)
        elif kind == "pii_dump":
            lines = []
            for _ in range(rng.randint(8, 16)):
                name = f"{rng.choice(pii._FIRST).title()} {rng.choice(pii._LAST).title()}"
                k1, k2 = rng.sample(pii.PII_KINDS[:6], 2)
                lines.append(f"{name}: {self._value(k1, doc_id)} ; {self._value(k2, doc_id)}")
            text = "Staff directory\n" + "\n".join(lines)
        elif kind == "exact_dup":
            text = rng.choice(self._recent)
        elif kind == "near_dup":
            words = rng.choice(self._recent).split(" ")
            for _ in range(max(1, len(words) // 40)):
                words[rng.randrange(len(words))] = rng.choice(["really", "quite", "also", "very", "often"])
            text = " ".join(words)
        elif kind == "boilerplate":
            text = rng.choice(_BOILER)
        elif kind == "spam":
            text = " ".join(rng.choice(_SPAM_WORDS) for _ in range(rng.randint(60, 200)))
        elif kind == "gibberish":
            text = " ".join("".join(rng.choice("qwrtzpsdfghjklxcvbnm") for _ in range(rng.randint(3, 14)))
                            for _ in range(rng.randint(50, 150)))
        elif kind == "markup":
            body = "".join(f"<p>{p}</p>" for p in article(rng.choice(self.entities), rng).split("\n\n"))
            text = (f"<html><head><style>body {{ color: #333; }}</style><script>var t = {rng.randint(1, 999)};"
                    f"</script></head><body><div class=\"nav\"><a href=\"/\">Home</a></div>{body}</body></html>")
        elif kind == "short":
            text = rng.choice(["Click here.", "Page 2 of 9", "Loading...", "404 Not Found", "Thanks!"])
        else:
            raise AssertionError(kind)
        return {"id": doc_id, "text": text, "source": kind}

    def _value(self, kind: str, doc_id: str) -> str:
        value = pii.GENERATORS[kind](self.rng)
        self.canaries.append({"kind": kind, "value": value, "doc_id": doc_id})
        return value

    def shards(self, target_bytes: int, shard_docs: int) -> Iterator[list[dict]]:
        """Lists of documents, ``shard_docs`` at a time, until ``target_bytes`` of text is reached."""
        total, n, shard = 0, 0, []
        self.finished = False
        while total < target_bytes:
            doc = self.document(f"doc-{n:08d}")
            n += 1
            total += len(doc["text"].encode())
            shard.append(doc)
            if len(shard) == shard_docs:
                yield shard
                shard = []
        if shard:
            yield shard
        self.finished = True
