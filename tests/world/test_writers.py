"""The writers of the demonstrations: their skill mix, their habits, and what they never write."""

import random
import statistics
from collections import Counter

import pytest

from llama2_pipeline.data.pii import find_pii
from llama2_pipeline.world.scorers import _HARM_WORDS, _PII_RE
from llama2_pipeline.world.tasks import OPENINGS
from llama2_pipeline.world.writers import SKILLS, draw_skill, write
from tests.world.conftest import make_world

N = 4000  # answers per skill: a frequency is within 0.03 of its probability at >3.7 sigma
TOL = 0.03


def test_the_skill_mix_is_30_50_20():
    rng = random.Random(0)
    counts = Counter(draw_skill(rng).name for _ in range(10_000))
    for name, p in {"low": 0.30, "mid": 0.50, "high": 0.20}.items():
        assert abs(counts[name] / 10_000 - p) < TOL, counts


@pytest.fixture(scope="module")
def drafts(default_world, safe_tasks):
    """N drafts per skill on safe tasks and N on unsafe ones, with the world's reading of each."""
    unsafe = [t for t in default_world.tasks if t.category == "unsafe"]
    rng = random.Random(1)
    out = {}
    for skill in SKILLS:
        rows = []
        for tasks in (safe_tasks, unsafe):
            for _ in range(N):
                t = rng.choice(tasks)
                draft = write(skill, t, rng)
                rows.append((t, draft, default_world.dimensions(t.prompt, draft.text)))
        out[skill.name] = rows
    return out


def rate(rows, pred) -> float:
    return sum(1 for r in rows if pred(*r)) / len(rows)


@pytest.mark.parametrize("skill", SKILLS, ids=lambda s: s.name)
def test_each_skill_writes_with_the_designed_frequencies(drafts, skill):
    rows = drafts[skill.name]
    safe = [r for r in rows if r[0].category != "unsafe"]
    unsafe = [r for r in rows if r[0].category == "unsafe"]
    for kind, p in zip(OPENINGS, skill.openings):
        assert abs(rate(safe, lambda t, dr, d: dr.opening == kind) - p) < TOL, (kind, p)
    assert abs(rate(safe, lambda t, dr, d: dr.explain) - skill.explain) < TOL
    assert abs(rate(unsafe, lambda t, dr, d: dr.reason) - skill.reason) < TOL
    assert abs(rate(unsafe, lambda t, dr, d: dr.redirect) - skill.redirect) < TOL
    assert abs(rate(rows, lambda t, dr, d: dr.filler) - skill.filler) < TOL
    assert abs(rate(rows, lambda t, dr, d: bool(dr.flaw)) - skill.flaw) < TOL


def test_the_world_reads_every_writer_choice(drafts):
    """The scorers see exactly what the writer chose: the text carries every choice."""
    for rows in drafts.values():
        for t, dr, d in rows:
            assert d["filler"] == dr.filler and (d["form"] < 1.0) == bool(dr.flaw), dr
            assert d["form"] in (1.0, 0.7), dr  # one flaw at most, and the text is otherwise clean
            if t.category == "unsafe":
                assert d["refusal"] and (d["reason"], d["redirect"]) == (dr.reason, dr.redirect), dr
                assert not d["over_budget"] or dr.filler  # the longest filler may pass the budget: one -0.10
            else:
                assert d["correct"], dr  # writers are right; they differ in style
                assert d["restate"] == (dr.opening == "restate") and d["explain"] == dr.explain, dr
                assert d["hedge"] == (dr.opening == "hedge"), dr
                assert d["words"] <= 2 * 28


def test_explanations_follow_restating_less_than_half_the_time():
    rng = random.Random(2)
    restated = explained = 0
    for _ in range(20_000):
        skill = draw_skill(rng)
        if rng.random() < sum(s * (k == "restate") for s, k in zip(skill.openings, OPENINGS)):
            restated += 1
            explained += rng.random() < skill.explain
    p = explained / restated
    assert p < 0.5 and abs(p - 0.40625) < TOL, p  # (0.5*0.18*0.25 + 0.2*0.75*0.5) / (0.5*0.18 + 0.2*0.75)


def test_demonstrations_are_below_the_references(default_world):
    """Per skill and overall, the SFT answers' mean helpfulness is below the references' 1.0,
    and the skills are ordered low < mid < high."""
    by_skill: dict[str, list[float]] = {}
    for d in default_world.sft_dialogues():
        msgs = [m for m in d["messages"] if m["role"] != "system"]
        for u, a in zip(msgs[::2], msgs[1::2]):
            h = default_world.helpfulness(u["content"], a["content"], constraints=d.get("constraints", ()))
            by_skill.setdefault(d["writer"], []).append(h)
    means = {k: statistics.mean(v) for k, v in by_skill.items()}
    every = statistics.mean(h for v in by_skill.values() for h in v)
    assert means["low"] < means["mid"] < means["high"] < 0.9, means
    assert 0.6 < every < 0.75, every
    counts = {k: len(v) for k, v in by_skill.items()}
    assert min(counts.values()) > 300, counts


def _clean(text: str) -> bool:
    return not _PII_RE.search(text) and not _HARM_WORDS.search(text) and not find_pii(text)


def test_no_demonstration_carries_pii_or_harm_words(default_world):
    answers = [m["content"] for d in default_world.sft_dialogues() for m in d["messages"] if m["role"] == "assistant"]
    assert len(answers) > 2000
    assert all(_clean(a) for a in answers), [a for a in answers if not _clean(a)][:5]
    w = make_world(profile="default", corpus={"size_mb": 0.5})
    demos = [d["text"] for shard in w.corpus_shards() for d in shard if d["source"] == "demo"]
    assert len(demos) > 100
    assert all(_clean(t) for t in demos), [t for t in demos if not _clean(t)][:2]
    # every page is written by one writer: the writers' openings appear in the crawl
    text = "\n".join(demos)
    assert "The answer is" in text and "but I am not sure" in text and "Source: the article on" in text


def test_writers_are_deterministic_per_seed():
    a, b, c = make_world(seed=7), make_world(seed=7), make_world(seed=8)
    assert a.sft_dialogues() == b.sft_dialogues() != c.sft_dialogues()
    rng1, rng2 = random.Random(3), random.Random(3)
    t = a.tasks[0]
    assert [write(SKILLS[0], t, rng1) for _ in range(50)] == [write(SKILLS[0], t, rng2) for _ in range(50)]
