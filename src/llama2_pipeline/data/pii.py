"""Fast regex + checksum PII detection and redaction (no NLP model).

``find_pii(text)`` returns non-overlapping :class:`PIISpan` (``start``, ``end``, ``kind``,
``value``) sorted by position; ``redact_pii(text)`` replaces each with a typed placeholder.

Kinds and what is matched
-------------------------
``email``        ``local@domain.tld`` (asset names such as ``icon@2x.png`` are not), and the
                 bracketed obfuscation ``name [at] domain [dot] com`` / ``(at)``.
``phone``        international ``+CC ...`` / ``00CC ...`` (8-15 digits), North-American
                 ``(555) 123-4567``, ``555-123-4567``, ``1-800-555-0199``; national formats
                 with a trunk ``0``: French ``01 23 45 67 89``, UK ``020 7946 0958``, German
                 ``030 12345678``/``089/123456-0``; any 7-15 digit number right after a phone
                 word (``tel``, ``phone``, ``call``, ``mobile``, ``fax``, ...).
``ip_address``   IPv4 (dotted quad, private ranges too) and IPv6 (full, compressed, mapped,
                 zone ids), validated with :mod:`ipaddress`.
``credit_card``  14-19 digits, contiguous or grouped 4-4-4-4(-3) / 4-6-5 / 4-6-4 with spaces or
                 dashes, with a card-network prefix and a valid Luhn checksum.
``ssn``          US ``AAA-GG-SSSS`` / ``AAA GG SSSS`` (not 000/666/9xx, 00, 0000), or 9 digits
                 after ``SSN``/``social security``.
``iban``         country code + check digits + BBAN, grouped by 4 or not; country length
                 table and ISO 7064 mod-97 checksum.
``secret``       AWS key ids (``AKIA``...), GitHub (``ghp_``... / ``github_pat_``), Slack
                 (``xox?-``, webhooks), OpenAI-style ``sk-``..., Stripe ``sk_live_``...,
                 Google ``AIza``..., JWTs, PEM private-key blocks (also truncated ones),
                 ``Bearer <token>`` and ``api_key = ...``/``token: ...``/``password=...``
                 assignments whose value looks random (length, character classes, entropy).

Hard negatives (not PII): version numbers ``v1.2.3``, ``1.2.3.4-beta``, ``version 1.2.3.4``
(a *bare* ``1.2.3.4`` is a valid IPv4 address and **is** redacted: redacting a rare bare
four-part version costs little, leaking an address costs more), dates, times, ISBNs, UUIDs,
commit hashes, prices, coordinates, scores, MAC addresses, Unix timestamps.

Speed: numeric kinds (phone, card, SSN, IPv4, IBAN) are only looked for inside *digit
clusters* found with numpy over the UTF-8 bytes of a whole batch (:func:`digit_clusters`);
e-mails start from ``@``, IPv6 from ``:x:`` and the key patterns from literal prefixes, which
the regex engine scans at memory speed; credential assignments only around keywords found
with ``str.find``. Prose is therefore scanned at tens of MiB/s.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .credentials import find_secrets
from .words import encode_batch

PLACEHOLDERS = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "ip_address": "<IP_ADDRESS>",
    "credit_card": "<CREDIT_CARD>",
    "ssn": "<SSN>",
    "iban": "<IBAN>",
    "secret": "<SECRET>",
}
PII_KINDS = tuple(PLACEHOLDERS)
_NUMERIC_KINDS = frozenset({"phone", "credit_card", "ssn", "ip_address", "iban"})
# Overlaps are resolved in this order (then longer first): checksummed and keyed kinds win.
_PRIORITY = {"secret": 0, "email": 1, "iban": 2, "credit_card": 3, "ssn": 4, "ip_address": 5,
             "phone": 6}


@dataclass(frozen=True, slots=True)
class PIISpan:
    """One PII match: ``text[start:end] == value``."""

    start: int
    end: int
    kind: str
    value: str


# ---------------------------------------------------------------- email
_EMAIL_DOMAIN = re.compile(
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,24}))(?![A-Za-z0-9-]|\.[A-Za-z0-9])")
_EMAIL_LOCAL_REV = re.compile(r"[\w!#$%&'*+/=?^`{|}~.-]{1,64}")
_ASSET_EXT = frozenset("png jpg jpeg gif svg webp bmp ico tif tiff css js avif heic".split())
_OBF_AT = re.compile(r"[\[({]\s*(?i:at)\s*[\])}]")
_OBF_LOCAL_REV = re.compile(r"\s*([\w.+-]{1,64})")
_OBF_DOMAIN = re.compile(r"\s*([\w-]+(?:\s*(?:[\[({]\s*(?i:dot)\s*[\])}]|\.)\s*[\w-]+)+)")


def _find_emails(text: str, low: str, out: list) -> None:
    for m in _EMAIL_DOMAIN.finditer(text):
        if m.group(2).lower() in _ASSET_EXT:
            continue
        at = m.start()
        lo = max(0, at - 64)
        lm = _EMAIL_LOCAL_REV.match(text[lo:at][::-1])
        if not lm:
            continue
        start = at - lm.end()
        while start < at and text[start] == ".":
            start += 1
        if start >= at or text[at - 1] == ".":
            continue
        out.append(PIISpan(start, m.end(), "email", text[start:m.end()]))
    if "at]" in low or "at)" in low or "at}" in low:
        for m in _OBF_AT.finditer(text):
            lo = max(0, m.start() - 64)
            lm = _OBF_LOCAL_REV.match(text[lo:m.start()][::-1])
            dm = _OBF_DOMAIN.match(text, m.end())
            if not lm or not dm or not re.search(r"\w", lm.group(1)):
                continue
            # the reversed match is "<spaces><local reversed>", so local starts lm.end() back
            start = m.start() - lm.end()
            end = dm.end()
            out.append(PIISpan(start, end, "email", text[start:end]))


# ---------------------------------------------------------------- numbers
MIN_CLUSTER_DIGITS, MIN_CLUSTER_CHARS, MAX_DIGIT_GAP = 4, 7, 3
_B = r"(?<![\w+.,/\-])"          # left boundary: not inside a word / longer number
_E = r"(?![\w/\-]|[.,]\d)"       # right boundary
_PHONE_PATTERNS = [
    # international: +CC, optional (area) or (0), groups separated by space . -
    re.compile(_B + r"\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){1,6}" + _E),
    re.compile(_B + r"00[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]\d{1,5}){2,6}" + _E),
    # North America: (555) 123-4567, 555-123-4567, 555.123.4567, 1-800-555-0199
    re.compile(_B + r"(?:\+?1[ .-]?)?(?:\([2-9]\d{2}\)[ .-]?|[2-9]\d{2}[ .-])\d{3}[ .-]\d{4}" + _E),
    # France: 01 23 45 67 89 (same separator throughout)
    re.compile(_B + r"0[1-9](?P<s>[ .-]?)\d{2}(?:(?P=s)\d{2}){3}" + _E),
    # UK: 020 7946 0958, 07700 900123, 0161-496-0000 (at least one separator)
    re.compile(_B + r"0\d{2,4}(?:[ -]\d{3,4}[ -]?\d{3,4}|\d{3,4}[ -]\d{3,4})" + _E),
    # Germany / Austria / Switzerland: 030 12345678, 089/123456-0, 0171-1234567
    re.compile(_B + r"0\d{2,5}[ /-]\d{3,9}(?:-\d{1,5})?" + _E),
]
_PHONE_WORDS = ("tel", "phone", "call", "mobile", "cell", "fax", "whatsapp", "contact",
                "telefon", "téléphone", "☎", "ph.", "ph:", "mob", "sms", "text me", "dial")
_FR_PHONE = re.compile(r"0[1-9](?P<s>[ .-]?)\d{2}(?:(?P=s)\d{2}){3}")
_DATE_PREFIX = re.compile(r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}(?!\d)")
_SSN = re.compile(_B + r"(?!000|666|9\d\d)\d{3}(?P<s>[- ])(?!00)\d{2}(?P=s)(?!0000)\d{4}" + _E)
_SSN_WORDS = ("ssn", "social security", "soc. sec", "ss#", "ss #")
_CARD = re.compile(
    r"(?<![\w.,\-])(?:\d{4}(?P<a>[ -]?)\d{4}(?P=a)\d{4}(?P=a)\d{2,4}(?:(?P=a)\d{3})?"
    r"|\d{4}(?P<b>[ -]?)\d{6}(?P=b)\d{4,5})" + _E)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(r"(?<![\w.\-])" + _OCTET + r"(?:\." + _OCTET + r"){3}(?!\.?\d|\w|-[A-Za-z])")
_VERSION_CTX = re.compile(
    r"(?:\b(?:version|ver|release|rel|build|firmware|kernel|patch|python|v)\.?)\s*[:#]?\s*$",
    re.IGNORECASE)
_DIGITS = re.compile(r"\d")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_prefix_ok(d: str) -> bool:
    """Card networks: Visa 4, Mastercard 51-55/2221-2720, Amex 34/37, Diners 30/36/38/39,
    JCB 35, Discover/UnionPay/Maestro 50/56-69."""
    if d[0] in "3456":
        return d[0] != "3" or d[1] in "0456789"
    return d[0] == "2" and 2221 <= int(d[:4]) <= 2720


def _context(text: str, start: int, width: int = 24) -> str:
    return text[max(0, start - width):start].lower()


def digit_clusters(texts: list[str]) -> list[list[tuple[int, int]]]:
    """Per text, the character spans ``[s, e)`` that can hold numeric PII: from a digit to a
    digit, consecutive digits at most ``MAX_DIGIT_GAP`` characters apart, at least
    ``MIN_CLUSTER_DIGITS`` digits and ``MIN_CLUSTER_CHARS`` long.

    Found with numpy on the UTF-8 bytes of the whole batch, so prose is skipped at memory speed
    and short documents pay no per-document numpy overhead.
    """
    out: list[list[tuple[int, int]]] = [[] for _ in texts]
    if not texts:
        return out
    data, starts, ascii_only = encode_batch(texts)
    pos = np.flatnonzero((data - np.uint8(48)) < 10)
    if len(pos) < MIN_CLUSTER_DIGITS:
        return out
    doc = np.searchsorted(starts, pos, side="right") - 1
    if not ascii_only:  # byte offsets -> character offsets within each text
        cont = np.concatenate(([0], np.cumsum((data & 0xC0) == 0x80)))
        pos = pos - cont[pos]
        starts = starts - cont[starts]
    pos = pos - starts[doc]
    brk = np.flatnonzero((np.diff(pos) > MAX_DIGIT_GAP) | (np.diff(doc) != 0))
    first = np.concatenate(([0], brk + 1))
    last = np.concatenate((brk, [len(pos) - 1]))
    ok = (last - first + 1 >= MIN_CLUSTER_DIGITS) & (pos[last] - pos[first] + 1 >= MIN_CLUSTER_CHARS)
    for d, s, e in zip(doc[first[ok]].tolist(), pos[first[ok]].tolist(), (pos[last[ok]] + 1).tolist()):
        out[d].append((s, e))
    return out


def _find_numbers(text: str, clusters: list[tuple[int, int]], kinds: frozenset, out: list) -> None:
    n = len(text)
    for s, e in clusters:
        lo, hi = max(0, s - 3), min(n, e + 3)
        if "credit_card" in kinds:
            for m in _CARD.finditer(text, lo, hi):
                d = re.sub(r"\D", "", m.group())
                if 14 <= len(d) <= 19 and _card_prefix_ok(d) and _luhn_ok(d):
                    out.append(PIISpan(m.start(), m.end(), "credit_card", m.group()))
        if "ssn" in kinds:
            for m in _SSN.finditer(text, lo, hi):
                out.append(PIISpan(m.start(), m.end(), "ssn", m.group()))
            if e - s == 9 and text[s:e].isdigit():
                if any(w in _context(text, s, 32) for w in _SSN_WORDS):
                    out.append(PIISpan(s, e, "ssn", text[s:e]))
        if "ip_address" in kinds and "." in text[s:e]:
            for m in _IPV4.finditer(text, lo, hi):
                if _VERSION_CTX.search(_context(text, m.start(), 16)):
                    continue  # "version 1.2.3.4": a version number, not an address
                out.append(PIISpan(m.start(), m.end(), "ip_address", m.group()))
        if "iban" in kinds:
            _find_ibans(text, max(0, s - 34), min(n, e + 40), out)
        if "phone" in kinds:
            _find_phones(text, s, e, lo, hi, out)


def _find_phones(text: str, s: int, e: int, lo: int, hi: int, out: list) -> None:
    found = False
    for pat in _PHONE_PATTERNS:
        for m in pat.finditer(text, lo, hi):
            g = m.group()
            nd = len(_DIGITS.findall(g))
            if not 8 <= nd <= 15:
                continue
            if g.startswith("+") and re.fullmatch(r"\+\d+\.\d+", g):
                continue  # a signed decimal (coordinate), not a number
            if (_DATE_PREFIX.match(g) and not g.startswith(("+", "("))
                    and not _FR_PHONE.fullmatch(g)):
                continue  # 01.02.2023 14 ... : a date, not a number
            out.append(PIISpan(m.start(), m.end(), "phone", g))
            found = True
    if not found:
        if s and text[s - 1] in "+(":
            s -= 1
        g = text[s:e]
        nd = len(_DIGITS.findall(g))
        if 7 <= nd <= 15 and not _DATE_PREFIX.fullmatch(g) and "\n" not in g:
            ctx = _context(text, s, 24)
            if any(w in ctx for w in _PHONE_WORDS):
                out.append(PIISpan(s, e, "phone", g))


# ---------------------------------------------------------------- IPv6
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")
_IPV6_CAND = re.compile(r"(?<![\w:.\-])[0-9A-Fa-f:]*:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*(?:%[\w.]+)?")


def _find_ipv6(text: str, out: list) -> None:
    windows: list[list[int]] = []
    for m in _IPV6_HINT.finditer(text):
        lo, hi = max(0, m.start() - 45), min(len(text), m.end() + 60)
        if windows and lo <= windows[-1][1]:
            windows[-1][1] = hi
        else:
            windows.append([lo, hi])
    for lo, hi in windows:
        for m in _IPV6_CAND.finditer(text, lo, hi):
            if m.end() == hi and hi < len(text):
                continue  # cut by the window: seen again from the next hint's window
            cand = m.group()
            core = cand.split("%", 1)[0].rstrip(".")
            if core.endswith(":") and not core.endswith("::"):
                core = core[:-1]
            if core.count(":") < 2 or not any(c.isdigit() for c in core):
                continue
            try:
                ipaddress.IPv6Address(core)
            except ValueError:
                continue
            end = m.start() + (len(cand) if "%" in cand else len(core))
            out.append(PIISpan(m.start(), end, "ip_address", text[m.start():end]))


# ---------------------------------------------------------------- IBAN
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
_IBAN_CAND = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4}){3,9}")


def iban_checksum_ok(iban: str) -> bool:
    """ISO 13616 / ISO 7064 mod-97 check of a compact upper-case IBAN."""
    moved = iban[4:] + iban[:4]
    num = "".join(str(int(c, 36)) for c in moved)
    return int(num) % 97 == 1


def _find_ibans(text: str, lo: int, hi: int, out: list) -> None:
    for m in _IBAN_CAND.finditer(text, lo, hi):
        s = m.start()
        if s and text[s - 1].isalnum():
            continue
        cand = m.group()
        want = IBAN_LENGTHS.get(cand[:2])
        if want is None:
            continue
        got, cut = 0, len(cand)
        for i, ch in enumerate(cand):  # cut after `want` alphanumerics
            if ch != " ":
                got += 1
                if got == want:
                    cut = i + 1
                    break
        if got < want:
            continue
        e = s + cut
        if e < len(text) and text[e].isalnum():
            continue
        compact = cand[:cut].replace(" ", "")
        if iban_checksum_ok(compact):
            out.append(PIISpan(s, e, "iban", text[s:e]))


# ---------------------------------------------------------------- API
def find_pii(text: str, kinds: Iterable[str] | None = None,
             clusters: list[tuple[int, int]] | None = None) -> list[PIISpan]:
    """All PII spans in ``text`` (non-overlapping, sorted by start).

    ``kinds`` restricts detection (default: all of ``PII_KINDS``). ``clusters`` may pass the
    text's :func:`digit_clusters` when computed for a whole batch. When candidates overlap, the
    kind earlier in ``secret, email, iban, credit_card, ssn, ip_address, phone`` wins, then the
    longer span.
    """
    ks = frozenset(PII_KINDS if kinds is None else kinds)
    unknown = ks.difference(PII_KINDS)
    if unknown:
        raise ValueError(f"unknown PII kinds {sorted(unknown)}; expected some of {list(PII_KINDS)}")
    cands: list[PIISpan] = []
    low = text.lower() if ks & {"secret", "email"} else ""
    if "secret" in ks:
        cands += [PIISpan(s, e, "secret", v) for s, e, v in find_secrets(text, low)]
    if "email" in ks:
        _find_emails(text, low, cands)
    if ks & _NUMERIC_KINDS:
        if clusters is None:
            clusters = digit_clusters([text])[0]
        _find_numbers(text, clusters, ks, cands)
    if "ip_address" in ks and ":" in text:
        _find_ipv6(text, cands)
    return resolve_overlaps(cands)


def resolve_overlaps(spans: list[PIISpan]) -> list[PIISpan]:
    """Keep a non-overlapping subset: higher-priority kind first, then longer span."""
    if len(spans) <= 1:
        return spans
    spans = sorted(set(spans), key=lambda p: (_PRIORITY[p.kind], p.start - p.end, p.start))
    starts: list[int] = []
    kept: list[PIISpan] = []
    for p in spans:
        i = bisect.bisect_left(starts, p.start)
        if i > 0 and kept[i - 1].end > p.start:
            continue
        if i < len(kept) and kept[i].start < p.end:
            continue
        starts.insert(i, p.start)
        kept.insert(i, p)
    return kept


def redact_pii(text: str, spans: list[PIISpan] | None = None,
               kinds: Iterable[str] | None = None) -> str:
    """Replace each PII span (found with :func:`find_pii` unless given) by its placeholder."""
    if spans is None:
        spans = find_pii(text, kinds)
    if not spans:
        return text
    parts: list[str] = []
    pos = 0
    for p in spans:
        parts.append(text[pos:p.start])
        parts.append(PLACEHOLDERS[p.kind])
        pos = p.end
    parts.append(text[pos:])
    return "".join(parts)


def pii_density(n_matches: int, n_chars: int) -> float:
    """PII matches per 1000 characters."""
    return 1000.0 * n_matches / max(n_chars, 1)
