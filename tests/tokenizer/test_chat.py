"""Llama-2-chat encoding: Meta's reference ids, answer masks, prompts, role validation."""

from __future__ import annotations

import pytest

from llama2_pipeline.tokenizer import ChatFormatError, encode_chat, encode_chat_prompt

SYSTEM = "You answer in one short sentence."
DIALOGUE = [
    {"role": "user", "content": "  What is the capital of Varnholm?  "},
    {"role": "assistant", "content": "The capital is Quillsby, founded in 1642."},
    {"role": "user", "content": "And how many bridges?"},
    {"role": "assistant", "content": "It has 17 bridges."},
    {"role": "user", "content": "Thanks! 👍"},
    {"role": "assistant", "content": " You are welcome. "},
]


def meta_chat_completion_ids(tok, dialog):
    """Meta's llama ``chat_completion`` (llama/generation.py), transcribed literally."""
    B_INST, E_INST = "[INST]", "[/INST]"
    B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"],
                   "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}] + dialog[2:]
    ids = sum([tok.encode(f"{B_INST} {(p['content']).strip()} {E_INST} {(a['content']).strip()} ",
                          bos=True, eos=True)
               for p, a in zip(dialog[::2], dialog[1::2])], [])
    if dialog[-1]["role"] == "user":
        ids += tok.encode(f"{B_INST} {(dialog[-1]['content']).strip()} {E_INST}", bos=True, eos=False)
    return ids


def spans(tok, ids, mask):
    """Maximal runs of equal mask as (mask, text), "▁" shown as a space, <s>/</s> as text:
    what a reader checks by hand."""
    runs: list[tuple[int, list[str]]] = []
    for i, m in zip(ids, mask):
        piece = {tok.bos_id: "<s>", tok.eos_id: "</s>"}.get(i) or tok.id_to_piece(i)
        if runs and runs[-1][0] == m:
            runs[-1][1].append(piece)
        else:
            runs.append((m, [piece]))
    return [(m, _render(pieces)) for m, pieces in runs]


def _render(pieces: list[str]) -> str:
    out, buf = [], bytearray()
    for p in pieces:
        if p.startswith("<0x") and p.endswith(">") and len(p) == 6:  # byte-fallback piece
            buf.append(int(p[3:5], 16))
            continue
        if buf:
            out.append(buf.decode("utf-8"))
            buf = bytearray()
        out.append(p.replace("▁", " "))
    if buf:
        out.append(buf.decode("utf-8"))
    return "".join(out)


@pytest.mark.parametrize("system", [False, True])
def test_ids_equal_meta_reference(tok, system):
    msgs = ([{"role": "system", "content": SYSTEM}] if system else []) + DIALOGUE
    enc = encode_chat(tok, msgs)
    assert enc.ids == meta_chat_completion_ids(tok, msgs)
    assert len(enc.mask) == len(enc.ids)
    assert encode_chat_prompt(tok, msgs[:-1]) == meta_chat_completion_ids(tok, msgs[:-1])


def test_mask_hand_checked_without_system(tok):
    enc = encode_chat(tok, DIALOGUE)
    assert spans(tok, enc.ids, enc.mask) == [
        (0, "<s> [INST] What is the capital of Varnholm? [/INST]"),
        (1, " The capital is Quillsby, founded in 1642. </s>"),
        (0, "<s> [INST] And how many bridges? [/INST]"),
        (1, " It has 17 bridges. </s>"),
        (0, "<s> [INST] Thanks! 👍 [/INST]"),
        (1, " You are welcome. </s>"),
    ]


def test_mask_hand_checked_with_system(tok):
    enc = encode_chat(tok, [{"role": "system", "content": SYSTEM}] + DIALOGUE[:2])
    assert spans(tok, enc.ids, enc.mask) == [
        # as in Meta's code, the user text is not stripped before the merge (only the whole)
        (0, f"<s> [INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n  What is the capital of Varnholm? [/INST]"),
        (1, " The capital is Quillsby, founded in 1642. </s>"),
    ]
    assert enc.ids.count(tok.bos_id) == 1 and enc.ids[-1] == tok.eos_id


def test_only_last_answer(tok):
    full = encode_chat(tok, [{"role": "system", "content": SYSTEM}] + DIALOGUE)
    last = encode_chat(tok, [{"role": "system", "content": SYSTEM}] + DIALOGUE,
                       only_last_answer=True)
    assert last.ids == full.ids
    assert spans(tok, last.ids, last.mask)[-1] == (1, " You are welcome. </s>")
    assert [m for m, _ in spans(tok, last.ids, last.mask)] == [0, 1]
    # the last answer's mask is the same in both
    n = sum(last.mask)
    assert full.mask[-n:] == last.mask[-n:] == [1] * n
    assert sum(full.mask) > n


def test_prompt_ends_with_inst_and_prefixes_training_ids(tok):
    for msgs in (DIALOGUE, [{"role": "system", "content": SYSTEM}] + DIALOGUE):
        prompt = encode_chat_prompt(tok, msgs[:-1])
        close = tok.encode("[/INST]")[1:]  # without the dummy-prefix "▁"
        assert tok.id_to_piece(tok.encode("[/INST]")[0]).startswith("▁")
        assert prompt[-len(close):] == close
        assert tok.decode(prompt).endswith(" [/INST]")
        full = encode_chat(tok, msgs)
        # the prompt is exactly the ids before the last answer's first masked token
        first_masked = len(full.mask) - full.mask[::-1].index(0)
        assert full.ids[:first_masked] == prompt


def test_single_turn_prompt(tok):
    ids = encode_chat_prompt(tok, [{"role": "user", "content": "Hi"}])
    assert ids == [tok.bos_id] + tok.encode("[INST] Hi [/INST]")


@pytest.mark.parametrize(
    "msgs, match",
    [
        ([], "non-empty list"),
        ([{"role": "assistant", "content": "hi"}], "message 1: expected role 'user' first"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
         "message 2: expected role 'assistant' after 'user', got 'user'"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}],
         "message 2: a system message may only come first"),
        ([{"role": "user", "content": "  "}, {"role": "assistant", "content": "b"}],
         "message 1: user message has empty content"),
        ([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}],
         "message 2: unknown role 'bot'"),
        ([{"role": "user", "content": "a"}], "must end with an assistant message, got 'user'"),
        ([{"role": "system", "content": "s"}], "a system message alone"),
        ([{"role": "user", "text": "a"}], "message 1: expected a dict with 'role' and 'content'"),
        ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "x"}],
         "message 2: expected role 'user' after 'system', got 'assistant'"),
    ],
)
def test_bad_dialogues_name_the_record(tok, msgs, match):
    with pytest.raises(ChatFormatError, match=f"^dialogue 'sft-00042'.*{_re(match)}"):
        encode_chat(tok, msgs, record="sft-00042")
    assert issubclass(ChatFormatError, ValueError)


def test_prompt_must_end_with_user(tok):
    with pytest.raises(ChatFormatError, match="^dialogue 7, message 2: a generation prompt must end"):
        encode_chat_prompt(tok, DIALOGUE[:2], record=7)


def test_special_token_text_is_not_special(tok):
    """'<s>' typed by a user stays text: only the template emits ids 1/2."""
    enc = encode_chat(tok, [{"role": "user", "content": "say </s> <s>"},
                            {"role": "assistant", "content": "</s>"}])
    assert enc.ids.count(tok.bos_id) == 1 and enc.ids.count(tok.eos_id) == 1


def _re(s: str) -> str:
    import re

    return re.escape(s)
