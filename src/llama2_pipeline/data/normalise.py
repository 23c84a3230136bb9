"""Text normalisation: bytes -> clean Unicode text.

Steps, in order (each a switch in :class:`~llama2_pipeline.data.config.NormaliseConfig`):

1. :func:`decode_utf8`: bytes are decoded as UTF-8; invalid sequences become U+FFFD and the
   document is dropped when more than ``max_invalid_utf8_frac`` of its characters were invalid.
2. markup: ``<script>``/``<style>`` blocks, comments, ``<!DOCTYPE>``/CDATA and tags of known
   HTML elements are removed (block-level tags become a line break), entities are unescaped.
   Only *known* tag names are stripped, so ``a<b and c>d`` or ``<EMAIL>`` survive.
3. control characters: C0/C1 controls other than newline/tab, zero-width and bidi marks, BOM,
   soft hyphen are removed; CR/CRLF, form feed, vertical tab and U+2028/9 become newlines.
4. Unicode NFC.
5. whitespace: runs of horizontal white space -> one space, lines stripped, at most one blank
   line between paragraphs, document stripped.

Every step is a single C-level regex/str pass with a cheap "is there anything to do" guard,
so ASCII prose goes through at several hundred MiB/s.
"""

from __future__ import annotations

import html
import re
import unicodedata

from .config import NormaliseConfig

REPLACEMENT_CHAR = "\ufffd"

_BLOCK_TAGS = (
    "address article aside blockquote body br caption center dd details dialog div dl dt "
    "fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 head header hr html li main "
    "menu nav noscript ol p pre section summary table tbody td tfoot th thead title tr ul"
).split()
_INLINE_TAGS = (
    "a abbr acronym audio b bdi bdo big button canvas cite code col colgroup data datalist "
    "del dfn em embed font i iframe img input ins kbd label legend link map mark meta meter "
    "object optgroup option output param picture progress q rp rt ruby s samp select small "
    "source span strike strong sub sup svg template textarea time track tt u var video wbr"
).split()
_TAG_ATTRS = r"(?:\s+[^<>]{0,2000}?)?\s*/?>"
_BLOCK_RE = re.compile(r"</?(?:" + "|".join(_BLOCK_TAGS) + r")\b" + _TAG_ATTRS, re.IGNORECASE)
_INLINE_RE = re.compile(r"</?(?:" + "|".join(_INLINE_TAGS) + r")\b" + _TAG_ATTRS, re.IGNORECASE)
_SCRIPT_OPEN_RE = re.compile(r"<(script|style)\b", re.IGNORECASE)
_SCRIPT_CLOSE_RE = {t: re.compile(rf"</{t}\s*>", re.IGNORECASE) for t in ("script", "style")}
_COMMENT_RE = re.compile(r"<!--.*?(?:-->|\Z)|<!\[CDATA\[.*?\]\]>|<!DOCTYPE[^>]{0,500}>",
                         re.IGNORECASE | re.DOTALL)
_ENTITY_RE = re.compile(r"&(?:#\d{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")

# C0 controls except \t \n, DEL, C1 controls, soft hyphen, zero-width/bidi marks, BOM, etc.
_CONTROL_RE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
    "\u2066-\u206f\ufeff\ufff9-\ufffb]+"
)
_NEWLINE_LIKE_RE = re.compile("\r\n?|[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_HSPACE_RE = re.compile(
    "[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]{2,}|[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]"
)
_MULTI_SPACE_RE = re.compile(" {2,}")
_BLANK_LINES_RE = re.compile(r"\n{3,}")


def decode_utf8(raw: bytes, max_invalid_frac: float) -> tuple[str | None, int]:
    """Decode ``raw`` as UTF-8 -> (text or None if too broken, number of replaced sequences).

    Invalid byte sequences are replaced by U+FFFD. ``None`` means the fraction of replacement
    characters exceeds ``max_invalid_frac`` and the document should be dropped.
    """
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    text = raw.decode("utf-8", errors="replace")
    n_bad = text.count(REPLACEMENT_CHAR) - raw.count(b"\xef\xbf\xbd")
    if n_bad > max_invalid_frac * max(len(text), 1):
        return None, n_bad
    return text.replace(REPLACEMENT_CHAR, ""), n_bad


def _strip_script_blocks(text: str) -> str:
    """Drop ``<script>``/``<style>`` blocks (an unclosed one runs to the end), in linear time."""
    out, pos = [], 0
    while (m := _SCRIPT_OPEN_RE.search(text, pos)) is not None:
        out.append(text[pos:m.start()])
        close = _SCRIPT_CLOSE_RE[m.group(1).lower()].search(text, m.end())
        pos = len(text) if close is None else close.end()
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def strip_markup(text: str) -> str:
    """Remove HTML remnants: script/style blocks, comments, known tags; unescape entities."""
    if "<" in text:
        if "<!" in text:
            text = _COMMENT_RE.sub("", text)
        text = _strip_script_blocks(text)
        text = _BLOCK_RE.sub("\n", text)
        text = _INLINE_RE.sub("", text)
    if "&" in text and _ENTITY_RE.search(text):
        text = html.unescape(text)
    return text


def strip_control(text: str) -> str:
    """Normalise line breaks and drop control / invisible formatting characters."""
    text = _NEWLINE_LIKE_RE.sub("\n", text)
    return _CONTROL_RE.sub("", text)


def collapse_whitespace(text: str, plain: bool = False) -> str:
    """One space between words, stripped lines, at most one blank line, stripped document.

    ``plain=True`` promises that the only white space in ``text`` is space and newline.
    """
    text = _MULTI_SPACE_RE.sub(" ", text) if plain else _HSPACE_RE.sub(" ", text)
    if " \n" in text or "\n " in text:
        text = "\n".join(line.strip(" ") for line in text.split("\n"))
    if "\n\n\n" in text:
        text = _BLANK_LINES_RE.sub("\n\n", text)
    return text.strip()


def _is_plain(text: str) -> bool:
    """True when ``text`` has no control, format or exotic white-space character (C speed)."""
    return text.replace("\n", " ").isprintable()


def normalise_text(text: str, cfg: NormaliseConfig | None = None) -> str:
    """Apply markup stripping, control-character removal, NFC and whitespace collapsing."""
    cfg = cfg or NormaliseConfig()
    if cfg.strip_markup and ("<" in text or "&" in text):
        text = strip_markup(text)
    plain = _is_plain(text)  # the common case: skip the control/space regexes
    if cfg.strip_control and not plain:
        text = strip_control(text)
    if cfg.nfc and not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if cfg.collapse_whitespace:
        if "  " in text or not plain or " \n" in text or "\n " in text or "\n\n\n" in text \
                or text[:1].isspace() or text[-1:].isspace():
            text = collapse_whitespace(text, plain)
    return text
