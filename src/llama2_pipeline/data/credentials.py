"""Credentials in text, the PII kind ``secret`` of :mod:`.pii`: AWS key ids, GitHub, Slack, OpenAI-
and Stripe-style keys, Google API keys, JWTs, PEM private-key blocks (also truncated ones),
``Bearer <token>`` and ``api_key = ...``/``token: ...``/``password=...`` assignments whose value
looks random (length, character classes, entropy).

Every key pattern starts with a literal, which the regex engine scans for at memory speed;
assignments are only looked for around keywords found with ``str.find``.
"""

from __future__ import annotations

import math
import re
from collections import Counter

# Every pattern starts with a literal, which the regex engine scans for at memory speed.
_SECRET_PATTERNS = [
    re.compile(r"A(?:KIA|SIA|GPA|IDA|ROA|IPA|NPA|NVA|3T[A-Z0-9])[A-Z0-9]{16}(?![A-Za-z0-9])"),
    re.compile(r"gh[pousr]_[A-Za-z0-9]{36,255}(?![A-Za-z0-9])"),
    re.compile(r"github_pat_[A-Za-z0-9_]{22,255}"),
    re.compile(r"xox[abposre]-[A-Za-z0-9-]{10,250}"),
    re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,}"),
    re.compile(r"sk-[A-Za-z0-9_-]{20,250}(?![A-Za-z0-9_-])"),
    re.compile(r"k_(?:live|test)_[A-Za-z0-9]{16,250}"),  # Stripe sk_/rk_/pk_: prefix checked below
    re.compile(r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"),
    re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
    re.compile(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
               r"(?:.*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s:,-]*)",
               re.DOTALL),
]
# Generic credential assignments: keyword, optional quote, separator, optional quote, value.
_KEYWORDS = ("key", "token", "secret", "pass", "pwd", "credential")
_ASSIGN = re.compile(
    r"(?i:(?:api|access|secret|private|client|app|auth|master|signing|encryption)[_ .-]?key(?:[_-]?id)?"
    r"|api[_-]?secret|client[_-]?secret|secret|(?:access|auth|refresh|bearer|api|session|id)[_-]?token"
    r"|token|password|passwd|pwd|credentials?)"
    r"[\"']?\s*(?:=>|:=|[:=])\s*[\"'`]?([^\s\"'`,;<>(){}\[\]]{8,500})")
_ASSIGN_SEP = re.compile(r"[\w\"' -]{0,8}(?:=|:)")
_BEARER = re.compile(r"(?i:bearer)\s+([A-Za-z0-9._~+/-]{16,}=*)")


def _entropy(s: str) -> float:
    counts = Counter(s)
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def looks_random(value: str, password: bool = False) -> bool:
    """Heuristic for a generated credential: long enough, mixed classes, high entropy."""
    classes = (any(c.islower() for c in value) + any(c.isupper() for c in value)
               + any(c.isdigit() for c in value) + any(not c.isalnum() for c in value))
    if password:
        return len(value) >= 8 and classes >= 2 and _entropy(value) >= 2.5
    return (len(value) >= 12 and classes >= 2 and any(c.isdigit() for c in value)
            and any(c.isalpha() for c in value) and _entropy(value) >= 3.0)


def _keyword_windows(text: str, low: str) -> list[list[int]]:
    """Merged windows around credential keywords that are followed by ``:`` or ``=``."""
    hits = []
    for kw in _KEYWORDS:
        i = low.find(kw)
        while i != -1:
            j = i + len(kw)
            if _ASSIGN_SEP.match(low, j):
                hits.append((max(0, i - 40), min(len(text), j + 560)))
            i = low.find(kw, j)
    hits.sort()
    windows: list[list[int]] = []
    for lo, hi in hits:
        if windows and lo <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], hi)
        else:
            windows.append([lo, hi])
    return windows


def find_secrets(text: str, low: str) -> list[tuple[int, int, str]]:
    """(start, end, value) of every credential in ``text`` (``low``: its lower-case copy)."""
    out: list[tuple[int, int, str]] = []
    for pat in _SECRET_PATTERNS:
        for m in pat.finditer(text):
            s = m.start()
            if text.startswith("k_", s):  # Stripe: the key starts one character earlier
                if not s or text[s - 1] not in "srp":
                    continue
                s -= 1
            if s and (text[s - 1].isalnum() or text[s - 1] == "_"):
                continue
            e = m.start() + len(m.group().rstrip())
            val = text[s:e]
            if val.startswith("sk-") and not looks_random(val[3:]):
                continue
            out.append((s, e, val))
    for lo, hi in _keyword_windows(text, low):
        for m in _ASSIGN.finditer(text, lo, hi):
            s = m.start()
            if s and text[s - 1].isalnum():
                continue
            val = m.group(1).rstrip(".")
            key = m.group(0)[: m.start(1) - s].lower()
            if looks_random(val, password=any(p in key for p in ("pass", "pwd"))):
                out.append((m.start(1), m.start(1) + len(val), val))
    if "bearer" in low:
        for m in _BEARER.finditer(text):
            if looks_random(m.group(1)):
                out.append((m.start(1), m.end(1), m.group(1)))
    return out
