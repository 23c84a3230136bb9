"""Vectorised word segmentation of a batch of texts: a few numpy passes per batch, no Python
object per word and no per-document numpy call (which would dominate on short documents).

A *word* is a whitespace-separated token with leading and trailing punctuation stripped (a
token made only of punctuation is no word), the definition the Gopher rules use. For each word
:class:`Words` holds its length in characters, whether it contains a letter, the document it
belongs to, and a deterministic 64-bit hash of its ASCII-lower-cased bytes (the same in every
process and run, so MinHash signatures built from it are reproducible).

The texts are UTF-8 encoded and joined with ``\\n`` (a separator, so no word spans two
documents). Byte classes come from a 256-entry table: ASCII white space, ASCII punctuation,
ASCII letters, and other. Non-ASCII characters count as letters, except the common
punctuation/symbol blocks (Latin-1 punctuation, General Punctuation - quotes, dashes, bullets,
ellipsis -, box drawing, geometric shapes, dingbats, CJK punctuation), recognised from their
UTF-8 lead bytes.

Hashes: ``H[i] = sum_{j<i} b_j * P**j (mod 2**64)`` once per batch; the hash of bytes
``[s, e)`` is ``(H[e] - H[s]) * P**-s``, finalised with the murmur3 mixer. Powers of ``P`` and
of its inverse are cached per process and grown on demand.
"""

from __future__ import annotations

import string

import numpy as np

SPACE, PUNCT, LETTER, OTHER = 0, 1, 2, 3

_CLASS = np.full(256, LETTER, dtype=np.uint8)  # bytes >= 0x80: part of a non-ASCII character
_CLASS[:128] = OTHER
for _c in b" \t\n\r\x0b\x0c":
    _CLASS[_c] = SPACE
for _c in string.punctuation.encode():
    _CLASS[_c] = PUNCT
for _c in string.ascii_letters.encode():
    _CLASS[_c] = LETTER
_LOWER = np.arange(256, dtype=np.uint64)
_LOWER[65:91] += 32
# second byte after 0xE2 that starts a punctuation/symbol block (U+2000-207F, U+2500-27BF)
_E2_PUNCT = np.zeros(256, dtype=bool)
_E2_PUNCT[[0x80, 0x81, 0x94, 0x95, 0x96, 0x97, 0x98, 0x9B, 0x9C, 0x9D, 0x9E]] = True
_E3_PUNCT = np.zeros(256, dtype=bool)
_E3_PUNCT[0x80] = True  # CJK symbols and punctuation U+3000-303F

_P = 0x200000000367  # odd, so invertible mod 2**64
_P_INV = pow(_P, -1, 2**64)
_FMIX1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_pow = np.ones(1, dtype=np.uint64)
_inv = np.ones(1, dtype=np.uint64)
PRECOMPUTED_POWERS = 1 << 19  # built at import, so forked workers share it (2 x 4 MiB)


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``P**i`` and ``P**-i`` (mod 2**64) for ``i < n`` (cached, grown by doubling)."""
    global _pow, _inv
    if len(_pow) < n:
        size = 1 << max(16, (n - 1).bit_length())
        pw, inv = (np.cumprod(np.full(size, base, dtype=np.uint64)) for base in (_P, _P_INV))
        pw[1:], inv[1:] = pw[:-1].copy(), inv[:-1].copy()
        pw[0] = inv[0] = 1
        _pow, _inv = pw, inv
    return _pow[:n], _inv[:n]


_powers(PRECOMPUTED_POWERS)


def fmix64(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser, in place on a uint64 array (returned)."""
    with np.errstate(over="ignore"):
        x ^= x >> _S33
        x *= _FMIX1
        x ^= x >> _S33
        x *= _FMIX2
        x ^= x >> _S33
    return x


def byte_classes(data: np.ndarray) -> np.ndarray:
    """Class of every byte (SPACE/PUNCT/LETTER/OTHER), multi-byte punctuation included."""
    cls = _CLASS[data]
    n = len(data)
    if n < 2 or data.max() < 0xC2:
        return cls
    idx = np.flatnonzero(data[: n - 1] == 0xC2)  # ¡ ... ¿ (U+00A1-00BF)
    sec = data[idx + 1]
    idx = idx[(sec >= 0xA1) & (sec <= 0xBF)]
    cls[idx] = cls[idx + 1] = PUNCT
    for lead, seconds in ((0xE2, _E2_PUNCT), (0xE3, _E3_PUNCT)):
        idx = np.flatnonzero(data[: n - 2] == lead)
        idx = idx[seconds[data[idx + 1]]]
        cls[idx] = cls[idx + 1] = cls[idx + 2] = PUNCT
    return cls


def encode_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray, bool]:
    """UTF-8 bytes of ``"\\n".join(texts)`` as uint8, each text's start byte, and all-ASCII."""
    parts = [t.encode("utf-8") for t in texts]
    data = np.frombuffer(b"\n".join(parts), dtype=np.uint8)
    lens = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    starts = np.zeros(len(parts), dtype=np.int64)
    if len(parts) > 1:
        np.cumsum(lens[:-1] + 1, out=starts[1:])
    return data, starts, all(t.isascii() for t in texts)


class Words:
    """The words of a batch of texts (see module doc).

    Per word (aligned arrays, documents in order): ``char_lens``, ``has_alpha``, ``hashes``,
    ``doc``. Per document: ``lo``/``hi`` (its words are ``lo[d]:hi[d]``), ``n_words``,
    ``total_chars``. ``Words("one text")`` is a batch of one.
    """

    __slots__ = ("n_docs", "lo", "hi", "n_words", "total_chars", "char_lens", "has_alpha",
                 "hashes", "doc")

    def __init__(self, texts: list[str] | str):
        if isinstance(texts, str):
            texts = [texts]
        self.n_docs = len(texts)
        if not texts:
            e = np.empty(0, dtype=np.int64)
            self.lo = self.hi = self.n_words = self.total_chars = self.char_lens = self.doc = e
            self.has_alpha = np.empty(0, dtype=bool)
            self.hashes = np.empty(0, dtype=np.uint64)
            return
        data, doc_start, ascii_only = encode_batch(texts)
        n = len(data)
        cls = byte_classes(data)
        nonspace = (cls != SPACE).view(np.int8)
        edges = np.diff(nonspace, prepend=np.int8(0), append=np.int8(0))
        tok_s = np.flatnonzero(edges == 1)
        tok_e = np.flatnonzero(edges == -1)
        core = np.flatnonzero(cls >= LETTER)
        if len(core) and len(tok_s):
            i = np.searchsorted(core, tok_s)
            ok = i < len(core)
            first = core[np.minimum(i, len(core) - 1)]
            ok &= first < tok_e
            s = first[ok]
            e = core[np.searchsorted(core, tok_e[ok]) - 1] + 1
        else:
            s = e = np.empty(0, dtype=np.int64)
        if ascii_only:
            self.char_lens = e - s
        else:
            c = np.concatenate(([0], np.cumsum((data & 0xC0) != 0x80)))
            self.char_lens = c[e] - c[s]
        letters = np.concatenate(([0], np.cumsum(cls == LETTER)))
        self.has_alpha = (letters[e] - letters[s]) > 0
        pw, inv = _powers(n + 1)
        with np.errstate(over="ignore"):
            prod = _LOWER[data]
            prod *= pw[:n]
            h = np.empty(n + 1, dtype=np.uint64)
            h[0] = 0
            np.cumsum(prod, out=h[1:])
            wh = h[e] - h[s]
            wh *= inv[s]
        self.hashes = fmix64(wh)
        self.lo = np.searchsorted(s, doc_start)
        self.hi = np.append(self.lo[1:], len(s))
        self.n_words = self.hi - self.lo
        self.doc = np.repeat(np.arange(self.n_docs), self.n_words)
        cum = np.concatenate(([0], np.cumsum(self.char_lens)))
        self.total_chars = cum[self.hi] - cum[self.lo]

    def per_doc_sum(self, values: np.ndarray) -> np.ndarray:
        """Sum of a per-word array within each document."""
        cum = np.concatenate(([0], np.cumsum(values)))
        return cum[self.hi] - cum[self.lo]


def word_hashes(words: list[str]) -> np.ndarray:
    """The hashes :class:`Words` gives each of ``words`` (each must be exactly one word)."""
    w = Words(list(words))
    if (w.n_words != 1).any():
        bad = [x for x, k in zip(words, w.n_words) if k != 1]
        raise ValueError(f"not exactly one word each: {bad!r}")
    return w.hashes
