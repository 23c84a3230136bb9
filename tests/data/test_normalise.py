"""Normalisation: UTF-8 repair, NFC, control characters, white space, markup."""

import unicodedata

from llama2_pipeline.data.normalise import decode_utf8, normalise_text


def test_valid_utf8_passes_through():
    assert decode_utf8("héllo".encode(), 0.01) == ("héllo", 0)


def test_few_invalid_bytes_are_repaired():
    raw = ("word " * 100).encode() + b"\xff\xfe" + b" end"
    text, n_bad = decode_utf8(raw, 0.01)
    assert n_bad == 2 and text is not None and "\ufffd" not in text and text.endswith(" end")


def test_mostly_invalid_bytes_drop_the_document():
    text, n_bad = decode_utf8(b"ok \xff\xfe\xfd\xfc\xfb", 0.01)
    assert text is None and n_bad == 5


def test_nfc():
    decomposed = "Cafe\u0301 de\u0301ja\u0300"
    out = normalise_text(decomposed)
    assert out == unicodedata.normalize("NFC", decomposed) == "Café déjà"


def test_control_and_invisible_characters():
    text = "a\x00b\x07c\u200bd\ufeffe\u00adf\r\ng\rh\x0ci"
    assert normalise_text(text) == "abcdef\ng\nh\ni"


def test_whitespace_runs_lines_and_paragraphs():
    text = "  one   two\t\tthree\u00a0four  \n   five \n\n\n\n six  "
    assert normalise_text(text) == "one two three four\nfive\n\nsix"


def test_markup_remnants():
    html = ("<!DOCTYPE html><html><head><title>T</title><style>p {color: red}</style></head>"
            "<body><script>var x = 1 < 2;</script><div class='a'><p>Hello&nbsp;<b>world</b> &amp; "
            "friends</p><!-- comment --><br/>bye &lt;3</div></body></html>")
    out = normalise_text(html)
    assert "<" not in out.replace("<3", "") and "script" not in out and "color" not in out
    assert "Hello world & friends" in out and out.endswith("bye <3")


def test_unknown_angle_brackets_survive():
    # only tags of known HTML elements are stripped (so "<b and c>" would go: <b> is bold)
    assert normalise_text("if x<y and y>z then <EMAIL> stays") == "if x<y and y>z then <EMAIL> stays"


def test_plain_text_is_unchanged():
    text = "A plain paragraph.\n\nAnother one, with punctuation!"
    assert normalise_text(text) is text or normalise_text(text) == text
