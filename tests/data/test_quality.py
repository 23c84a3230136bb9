"""Each Gopher rule on hand-made cases: one passing, one failing (only that rule enabled)."""

import dataclasses
import random

import pytest

from llama2_pipeline.data.config import QualityConfig
from llama2_pipeline.data.quality import QUALITY_RULES, quality_batch, quality_check

from .corpus import document, sentence

BASE = document(random.Random(3), 16)  # ~180 words of varied prose with stop words
THRESHOLD_FIELDS = [f.name for f in dataclasses.fields(QualityConfig) if f.name != "stop_words"]


def only(**kept) -> QualityConfig:
    """A config with every rule disabled except the given thresholds."""
    return QualityConfig(**{name: None for name in THRESHOLD_FIELDS} | kept)


def lines(text_lines):
    return "\n".join(text_lines)


FLAT = BASE.replace("\n", " ")
REPEATED = "the harbour master counts every boat that enters the bay at dawn"
CASES = {  # rule: (config kwargs, failing text)
    "min_words": ({"min_words": 50}, "the cat and the dog sat on the mat"),
    "max_words": ({"max_words": 250}, BASE + " " + BASE),
    "mean_word_length": ({"min_mean_word_length": 3.0, "max_mean_word_length": 10.0},
                         " ".join(["a b c to of is it"] * 20)),
    "symbol_word_ratio": ({"max_symbol_word_ratio": 0.1}, BASE + " #tag" * 40),
    "bullet_lines": ({"max_bullet_lines_frac": 0.9}, lines(f"• item {s}" for s in FLAT.split(".")[:12])),
    "ellipsis_lines": ({"max_ellipsis_lines_frac": 0.3},
                       lines(f"{s.strip()} ..." for s in FLAT.split(".")[:10])),
    "alpha_words": ({"min_alpha_words_frac": 0.8}, " ".join(str(i * 7919) for i in range(80)) + " " + BASE[:200]),
    "stop_words": ({"min_stop_words": 2},
                   " ".join(w for w in BASE.split() if w.lower().strip(".") not in
                            {"the", "be", "to", "of", "and", "that", "have", "with"})),
    "dup_line_frac": ({"max_dup_line_frac": 0.3}, lines([BASE[:80]] * 5 + [BASE[80:200]])),
    "dup_para_frac": ({"max_dup_para_frac": 0.3}, "\n\n".join([BASE[:300]] * 3 + [BASE[300:600]])),
    "dup_line_char_frac": ({"max_dup_line_char_frac": 0.2}, lines([FLAT[:300], REPEATED * 4, REPEATED * 4])),
    "dup_para_char_frac": ({"max_dup_para_char_frac": 0.2}, BASE + "\n\n" + BASE[:400] + "\n\n" + BASE[:400]),
    "top_2gram": ({"max_top_2gram_char_frac": 0.2}, BASE + " " + "harbour master " * 60),
    "top_3gram": ({"max_top_3gram_char_frac": 0.18}, BASE + " " + "harbour master counts " * 40),
    "top_4gram": ({"max_top_4gram_char_frac": 0.16}, BASE + " " + "harbour master counts boats " * 30),
}
for _k in range(5, 11):
    # one long repeated passage: covered characters are far above every dup_k threshold
    CASES[f"dup_{_k}gram"] = ({f"max_dup_{_k}gram_char_frac": 0.15},
                              BASE + " " + " ".join([REPEATED + " " + sentence(random.Random(_k))] * 4))


def test_every_rule_has_a_case():
    assert set(CASES) == set(QUALITY_RULES)


@pytest.mark.parametrize("rule", QUALITY_RULES)
def test_rule_fails_and_passes(rule):
    kwargs, bad = CASES[rule]
    cfg = only(**kwargs)
    assert quality_check(bad, cfg)[0] == rule
    assert quality_check(BASE, cfg)[0] is None


def test_base_passes_all_default_rules_and_stats():
    rule, stats = quality_check(BASE)
    assert rule is None
    assert stats["n_words"] == len([w for w in BASE.split() if w.strip(".")])
    assert 3 <= stats["mean_word_length"] <= 10


def test_batch_equals_one_by_one():
    texts = [CASES[r][1] for r in QUALITY_RULES] + [BASE, "", "   "]
    assert quality_batch(texts) == [quality_check(t) for t in texts]


def test_words_strip_punctuation_and_count_unicode_chars():
    rule, stats = quality_check("“Héllo”, wörld! — ... 漢字 (ok)", only())
    assert stats["n_words"] == 4  # Héllo wörld 漢字 ok
    assert stats["mean_word_length"] == (5 + 5 + 2 + 2) / 4
