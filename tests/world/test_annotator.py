"""The annotator: disagreement concentrated on close pairs, deterministic, four rating levels."""

import math
import random
from collections import Counter

import pytest

from llama2_pipeline.world import RATINGS
from llama2_pipeline.world.scorers import flip_probability
from llama2_pipeline.world.writers import draw_skill, write
from tests.world.conftest import make_world


def test_flip_probability_is_the_designed_curve():
    assert flip_probability(0.0, 0.02) == 0.5
    assert flip_probability(0.03, 0.02) == pytest.approx(0.32, abs=0.005)
    assert flip_probability(-0.03, 0.02) == flip_probability(0.03, 0.02)
    assert flip_probability(0.10, 0.02) == pytest.approx(0.076, abs=0.005)
    assert flip_probability(0.175, 0.02) == 0.02 and flip_probability(0.8, 0.1) == 0.1  # the floor


@pytest.fixture(scope="module")
def helpfulness_tasks(default_world):
    return [t for t in default_world.tasks_for("train") if not t.safety]


# a pair of answers per score gap, from a task's openings (both orders are compared)
PAIRS = {
    0.03: lambda t: (t.openings["plain"], t.openings["plain"][:-1]),  # a dropped full stop
    0.10: lambda t: (t.openings["plain"], t.openings["plain"] + " I hope this helps!"),  # filler
    0.175: lambda t: (t.openings["restate"], t.openings["plain"]),  # restating
    0.35: lambda t: (t.reference, t.openings["plain"]),  # restating and explaining
}


@pytest.mark.parametrize("gap", list(PAIRS))
def test_disagreement_per_gap_follows_the_formula(default_world, helpfulness_tasks, gap):
    w = default_world
    rate = w.config.disagreement_rate
    n = flips = 0
    for t in helpfulness_tasks:
        better, worse = PAIRS[gap](t)
        for a, b in ((better, worse), (worse, better)):
            c = w.compare(t.prompt, a, b)
            assert c.gap == pytest.approx(gap if not c.flipped else -gap) and c.category == "helpfulness"
            assert c.flipped == (c.chosen == worse)
            n += 1
            flips += c.flipped
    p = flip_probability(gap, rate)
    assert n > 1000
    assert abs(flips / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (gap, flips / n, p)


def test_annotations_are_deterministic(default_world, helpfulness_tasks):
    other = make_world(seed=99, profile="default")
    same = differs = 0
    for t in helpfulness_tasks[:300]:
        a, b = t.openings["plain"], t.openings["plain"][:-1]
        c = default_world.compare(t.prompt, a, b)
        assert c == default_world.compare(t.prompt, a, b)
        same += c.flipped == other.annotator.compare(t, t.prompt, a, b).flipped
        differs += 1
    assert same < differs  # another seed, other disagreements


def test_pairs_of_demonstrations_get_all_four_rating_levels(default_world):
    """Two writers' answers to one prompt: every rating level occurs with the v2 score scale."""
    w = default_world
    rng = random.Random(5)
    levels = Counter()
    for t in w.tasks_for("train"):
        a, b = write(draw_skill(rng), t, rng).text, write(draw_skill(rng), t, rng).text
        if a != b:
            levels[w.compare(t.prompt, a, b).rating] += 1
    assert set(levels) == set(RATINGS) and min(levels.values()) >= 20, levels
