"""Gopher quality rules (Rae et al., 2021, "Scaling Language Models", appendix A).

:func:`quality_batch` returns, for each text of a batch, the name of the first rule it fails in
the order below (``None`` if it passes) plus per-document stats; :func:`quality_check` does one
text. A threshold set to ``None`` disables its rule. Rule names (``removed_<rule>`` in the
report):

======================  ==============================================================
``min_words``           fewer than ``min_words`` words
``max_words``           more than ``max_words`` words
``mean_word_length``    mean word length outside [min, max] characters
``symbol_word_ratio``   ``#`` count or ellipsis count ('...', '…') per word above max
``bullet_lines``        fraction of non-empty lines starting with a bullet above max
``ellipsis_lines``      fraction of non-empty lines ending with an ellipsis above max
``alpha_words``         fraction of words with an alphabetic character below min
``stop_words``          fewer than ``min_stop_words`` distinct stop words
``dup_line_frac``       fraction of lines that repeat an earlier line
``dup_para_frac``       fraction of paragraphs that repeat an earlier paragraph
``dup_line_char_frac``  characters in repeated lines / characters of the text
``dup_para_char_frac``  characters in repeated paragraphs / characters of the text
``top_{2,3,4}gram``     characters of the most frequent n-gram x its count / word chars
``dup_{5..10}gram``     word characters covered by repeated n-gram occurrences / word chars
======================  ==============================================================

Words come from :class:`~llama2_pipeline.data.words.Words` (whitespace tokens with leading and
trailing punctuation stripped, vectorised over the UTF-8 bytes of the whole batch: no NLP
model, no Python object per word). The n-gram rules build 64-bit n-gram hashes from the word
hashes (salted with the document index) and find repeats with one ``np.sort`` per n for the
whole batch: each key holds the hash in its high bits and the word position in its low bits,
so equal n-grams of one document end up adjacent, first occurrence first. For the duplicate
n-gram rules, coverage can only shrink as n grows, so larger n are computed only while some
document could still fail them.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .config import QualityConfig
from .words import Words, word_hashes

BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "◦", "‣", "⁃", "➢", "►", "▶", "✓", "✔", "-", "*", "–", "·")
ELLIPSES = ("...", "…")
_MIX = np.uint64(0x9E3779B97F4A7C15)
_DOC_SALT = np.uint64(0xD6E8FEB86659FD93)
_LEN_BITS = 24

QUALITY_RULES = (
    "min_words", "max_words", "mean_word_length", "symbol_word_ratio", "bullet_lines",
    "ellipsis_lines", "alpha_words", "stop_words", "dup_line_frac", "dup_para_frac",
    "dup_line_char_frac", "dup_para_char_frac", "top_2gram", "top_3gram", "top_4gram",
    "dup_5gram", "dup_6gram", "dup_7gram", "dup_8gram", "dup_9gram", "dup_10gram",
)


def _dup_stats(items: list[str]) -> tuple[int, int]:
    """(number of items equal to an earlier item, their total characters)."""
    seen: set[str] = set()
    n_dup = chars = 0
    for x in items:
        if x in seen:
            n_dup += 1
            chars += len(x)
        else:
            seen.add(x)
    return n_dup, chars


class NGramStats:
    """Repeated n-gram statistics of every document of a :class:`Words` batch."""

    def __init__(self, words: Words):
        self.w = words
        self.n = len(words.hashes)
        self.cl = np.concatenate(([0], np.cumsum(words.char_lens)))
        self.pos_bits = max(1, int(self.n).bit_length())
        self.pos_mask = np.uint64((1 << self.pos_bits) - 1)
        self.total = np.maximum(words.total_chars, 1).astype(np.float64)

    def _sorted_keys(self, k: int, docs: np.ndarray | None = None) -> np.ndarray:
        """Sorted ``hash_hi | position`` keys of the k-grams that lie inside one document
        (of the documents selected by the boolean ``docs``, if given)."""
        h, doc = self.w.hashes, self.w.doc
        m = self.n - k + 1
        with np.errstate(over="ignore"):
            g = h[:m] ^ (doc[:m].astype(np.uint64) * _DOC_SALT)
            for j in range(1, k):
                g *= _MIX
                g ^= h[j:j + m]
        g &= ~self.pos_mask
        g |= np.arange(m, dtype=np.uint64)
        inside = doc[:m] == doc[k - 1:]
        if docs is not None:
            inside &= docs[doc[:m]]
        g = g[inside]
        g.sort()
        return g

    def top_char_frac(self, k: int) -> np.ndarray:
        """Per document: characters of its most frequent k-gram times its count, over its word
        characters (ties go to the longest k-gram; 0 when no k-gram repeats)."""
        out = np.zeros(self.w.n_docs)
        if self.n < k:
            return out
        keys = self._sorted_keys(k)
        hi = keys >> np.uint64(self.pos_bits)
        run_start = np.flatnonzero(np.concatenate(([True], hi[1:] != hi[:-1])))
        counts = np.diff(np.append(run_start, len(keys)))
        rep = counts >= 2
        if not rep.any():
            return out
        first = (keys[run_start[rep]] & self.pos_mask).astype(np.int64)
        chars = np.minimum(self.cl[first + k] - self.cl[first], (1 << _LEN_BITS) - 1)
        score = (counts[rep] << _LEN_BITS) | chars
        best = np.zeros(self.w.n_docs, dtype=np.int64)
        np.maximum.at(best, self.w.doc[first], score)
        return (best >> _LEN_BITS) * (best & ((1 << _LEN_BITS) - 1)) / self.total

    def dup_char_frac(self, k: int, docs: np.ndarray | None = None) -> np.ndarray:
        """Per document: word characters covered by k-gram occurrences that repeat an earlier
        occurrence in the same document, over its word characters (0 outside ``docs``)."""
        if self.n < k:
            return np.zeros(self.w.n_docs)
        keys = self._sorted_keys(k, docs)
        hi = keys >> np.uint64(self.pos_bits)
        repeat = hi[1:] == hi[:-1]
        if not repeat.any():
            return np.zeros(self.w.n_docs)
        m = self.n - k + 1
        dup = np.zeros(m, dtype=np.int64)
        dup[(keys[1:][repeat] & self.pos_mask).astype(np.int64)] = 1
        c = np.concatenate(([0], np.cumsum(dup)))
        j = np.arange(self.n)
        covered = (c[np.minimum(j + 1, m)] - c[np.maximum(j - k + 1, 0)]) > 0
        return self.w.per_doc_sum(np.where(covered, self.w.char_lens, 0)) / self.total


@lru_cache(maxsize=16)
def _stop_hashes(stop_words: tuple[str, ...]) -> np.ndarray:
    return np.unique(word_hashes([w for w in stop_words if Words(w).n_words[0] == 1]))


def _distinct_stop_words(words: Words, stop_words: tuple[str, ...]) -> np.ndarray:
    stop = _stop_hashes(stop_words)
    if not len(stop) or not len(words.hashes):
        return np.zeros(words.n_docs, dtype=np.int64)
    idx = np.minimum(np.searchsorted(stop, words.hashes), len(stop) - 1)
    hit = stop[idx] == words.hashes
    pairs = np.unique(words.doc[hit] * len(stop) + idx[hit])
    return np.bincount(pairs // len(stop), minlength=words.n_docs)


def _thresholds(cfg: QualityConfig):
    top = [(k, getattr(cfg, f"max_top_{k}gram_char_frac")) for k in (2, 3, 4)]
    dup = [(k, getattr(cfg, f"max_dup_{k}gram_char_frac")) for k in range(5, 11)]
    return [(k, t) for k, t in top if t is not None], [(k, t) for k, t in dup if t is not None]


def quality_batch(texts: list[str], cfg: QualityConfig | None = None,
                  words: Words | None = None) -> list[tuple[str | None, dict]]:
    """Run the Gopher rules on every text -> ``[(first failed rule or None, stats), ...]``.

    ``words`` may be passed when already computed for ``texts``. ``stats`` has ``n_words`` and
    ``mean_word_length`` (for the output columns).
    """
    cfg = cfg or QualityConfig()
    if words is None:
        words = Words(texts)
    n_words = words.n_words
    mean_len = words.total_chars / np.maximum(n_words, 1)
    alpha = words.per_doc_sum(words.has_alpha)
    stops = (_distinct_stop_words(words, tuple(cfg.stop_words))
             if cfg.min_stop_words is not None else None)
    top_rules, dup_rules = _thresholds(cfg)
    grams = NGramStats(words)
    top = {k: grams.top_char_frac(k) for k, _ in top_rules}
    dup: dict[int, np.ndarray] = {}
    need = np.ones(len(texts), dtype=bool)
    for idx, (k, _) in enumerate(dup_rules):
        if not need.any():
            break
        dup[k] = grams.dup_char_frac(k, None if idx == 0 else need)
        need &= dup[k] > min(t for _, t in dup_rules[idx:])  # else no larger k can fail
    out = []
    for d, text in enumerate(texts):
        stats = {"n_words": int(n_words[d]), "mean_word_length": round(float(mean_len[d]), 4)}
        rule = _first_failure(text, cfg, d, n_words, mean_len, alpha, stops, top_rules, top,
                              dup_rules, dup)
        out.append((rule, stats))
    return out


def _first_failure(text, cfg, d, n_words, mean_len, alpha, stops, top_rules, top, dup_rules,
                   dup) -> str | None:
    n = int(n_words[d])
    if cfg.min_words is not None and n < cfg.min_words or n == 0:
        return "min_words"
    if cfg.max_words is not None and n > cfg.max_words:
        return "max_words"
    m = mean_len[d]
    if (cfg.min_mean_word_length is not None and m < cfg.min_mean_word_length) or (
            cfg.max_mean_word_length is not None and m > cfg.max_mean_word_length):
        return "mean_word_length"
    if cfg.max_symbol_word_ratio is not None:
        if max(text.count("#"), text.count("...") + text.count("…")) / n > cfg.max_symbol_word_ratio:
            return "symbol_word_ratio"
    lines = [ln for ln in text.split("\n") if ln and not ln.isspace()]
    n_lines = max(len(lines), 1)
    if cfg.max_bullet_lines_frac is not None:
        if sum(1 for ln in lines if ln.lstrip().startswith(BULLETS)) / n_lines > cfg.max_bullet_lines_frac:
            return "bullet_lines"
    if cfg.max_ellipsis_lines_frac is not None:
        if sum(1 for ln in lines if ln.rstrip().endswith(ELLIPSES)) / n_lines > cfg.max_ellipsis_lines_frac:
            return "ellipsis_lines"
    if cfg.min_alpha_words_frac is not None and alpha[d] / n < cfg.min_alpha_words_frac:
        return "alpha_words"
    if stops is not None and stops[d] < cfg.min_stop_words:
        return "stop_words"
    n_chars = max(len(text), 1)
    if cfg.max_dup_line_frac is not None or cfg.max_dup_line_char_frac is not None:
        k, c = _dup_stats(lines)
        if cfg.max_dup_line_frac is not None and k / n_lines > cfg.max_dup_line_frac:
            return "dup_line_frac"
        if cfg.max_dup_line_char_frac is not None and c / n_chars > cfg.max_dup_line_char_frac:
            return "dup_line_char_frac"
    if cfg.max_dup_para_frac is not None or cfg.max_dup_para_char_frac is not None:
        paras = [p for p in text.split("\n\n") if p.strip()]
        k, c = _dup_stats(paras)
        if cfg.max_dup_para_frac is not None and k / max(len(paras), 1) > cfg.max_dup_para_frac:
            return "dup_para_frac"
        if cfg.max_dup_para_char_frac is not None and c / n_chars > cfg.max_dup_para_char_frac:
            return "dup_para_char_frac"
    for k, thr in top_rules:
        if top[k][d] > thr:
            return f"top_{k}gram"
    for k, thr in dup_rules:
        if k not in dup:
            break
        if dup[k][d] > thr:
            return f"dup_{k}gram"
    return None


def quality_check(text: str, cfg: QualityConfig | None = None) -> tuple[str | None, dict]:
    """The Gopher rules on one text -> (first failed rule or None, stats)."""
    return quality_batch([text], cfg)[0]
