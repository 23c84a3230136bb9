"""Llama 2 chat format: the one place where dialogues become token ids.

Encoded exactly as Meta's reference ``Llama.chat_completion`` does: a system prompt is merged
into the first user message as ``<<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user}``; each (user, answer)
pair is the text ``[INST] {user.strip()} [/INST] {answer.strip()} `` encoded on its own with BOS
and EOS (ids, never the text ``<s>``/``</s>``); a generation prompt ends with the final user turn
``[INST] {user.strip()} [/INST]`` encoded with BOS only::

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s><s>[INST] {user} [/INST] ...

The loss mask marks the tokens a model must produce: everything after ``[/INST]`` in an answer
turn (the answer and the space before EOS) and the EOS itself. The prompt-only encoding of the
same conversation is exactly the ids before the first masked token of the last answer.

Messages use the project's format: ``[{"role": "system"|"user"|"assistant", "content": str}]``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
ROLES = ("system", "user", "assistant")


class ChatFormatError(ValueError):
    """A dialogue that does not follow ``[system] user assistant user assistant ...``; the message
    names the dialogue (``record``: its id or position) and the message counting from 1 (``index``
    is 0-based)."""

    def __init__(self, message: str, record: Any = None, index: int | None = None):
        where = "dialogue" if record is None else f"dialogue {record!r}"
        if index is not None:
            where += f", message {index + 1}"
        super().__init__(f"{where}: {message}")
        self.record = record
        self.index = index


class ChatEncoding(NamedTuple):
    ids: list[int]
    mask: list[int]  # 1 where the token is an answer token to train on (answer + its EOS)


def validate_messages(
    messages: Sequence[dict], *, for_generation: bool = False, record: Any = None
) -> None:
    """Check roles and contents; raise :class:`ChatFormatError` naming ``record`` otherwise.

    Rules: a non-empty list of ``{"role", "content"}`` dicts; an optional ``system`` message
    first only; then ``user``, ``assistant``, ``user``, ... strictly alternating; every content
    a non-blank string; the last message is ``assistant`` for training, ``user`` for generation.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatFormatError("expected a non-empty list of messages", record)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ChatFormatError(
                f"expected a dict with 'role' and 'content', got {m!r:.80}", record, i
            )
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ChatFormatError(f"unknown role {role!r}, expected one of {ROLES}", record, i)
        if not isinstance(content, str) or not content.strip():
            raise ChatFormatError(f"{role} message has empty content", record, i)
        if role == "system" and i != 0:
            raise ChatFormatError("a system message may only come first", record, i)
    start = 1 if messages[0]["role"] == "system" else 0
    if start == len(messages):
        raise ChatFormatError("a system message alone, with no user turn", record)
    for i in range(start, len(messages)):
        want = "user" if (i - start) % 2 == 0 else "assistant"
        got = messages[i]["role"]
        if got != want:
            prev = messages[i - 1]["role"] if i > 0 else None
            after = f" after {prev!r}" if prev else " first"
            raise ChatFormatError(
                f"expected role {want!r}{after}, got {got!r} (roles must alternate "
                "user/assistant after an optional system message)",
                record,
                i,
            )
    last = messages[-1]["role"]
    if for_generation and last != "user":
        raise ChatFormatError(
            f"a generation prompt must end with a user message, got {last!r}", record,
            len(messages) - 1,
        )
    if not for_generation and last != "assistant":
        raise ChatFormatError(
            f"a training dialogue must end with an assistant message, got {last!r}", record,
            len(messages) - 1,
        )


def _user_turns(messages: Sequence[dict]) -> list[dict]:
    """Merge the system prompt into the first user message, as Meta does."""
    if messages[0]["role"] == "system":
        first = messages[1]
        merged = {"role": first["role"],
                  "content": B_SYS + messages[0]["content"] + E_SYS + first["content"]}
        return [merged, *messages[2:]]
    return list(messages)


def _prompt_text(user: str) -> str:
    return f"{B_INST} {user.strip()} {E_INST}"


def encode_chat(
    tokenizer, messages: Sequence[dict], *, only_last_answer: bool = False, first_answer: int = 0,
    record: Any = None
) -> ChatEncoding:
    """Token ids of a training dialogue and its answer mask.

    ``tokenizer`` is a :class:`~llama2_pipeline.tokenizer.Tokenizer` (anything with
    ``encode_batch(texts, bos, eos)``). With ``only_last_answer=True`` only the last answer and
    its EOS are masked in (GAtt: the loss is zeroed on all earlier turns). ``first_answer``: the
    answers before this one (counting from 0) are masked out, context only (GAtt's whole dialogues:
    each later answer learned with the turns before it, as a dialogue cut after it would be).
    """
    validate_messages(messages, for_generation=False, record=record)
    turns = _user_turns(messages)
    pairs = list(zip(turns[::2], turns[1::2]))
    texts = []
    for user, answer in pairs:
        prompt = _prompt_text(user["content"])
        texts += [prompt, f"{prompt} {answer['content'].strip()} "]
    encoded = tokenizer.encode_batch(texts, bos=True, eos=False, num_threads=1)
    ids: list[int] = []
    mask: list[int] = []
    eos = tokenizer.eos_id
    for k in range(len(pairs)):
        prompt_ids, turn_ids = encoded[2 * k], encoded[2 * k + 1] + [eos]
        # The prompt's tokens are a prefix of the turn's (no piece crosses the space after
        # "[/INST]"); the common prefix keeps the mask honest even if that ever failed.
        n = 0
        limit = min(len(prompt_ids), len(turn_ids) - 1)
        while n < limit and prompt_ids[n] == turn_ids[n]:
            n += 1
        train = k >= first_answer and (not only_last_answer or k == len(pairs) - 1)
        ids += turn_ids
        mask += [0] * n + [int(train)] * (len(turn_ids) - n)
    return ChatEncoding(ids, mask)


def encode_chat_prompt(tokenizer, messages: Sequence[dict], *, record: Any = None) -> list[int]:
    """Token ids of a conversation ending with a user turn, up to and including ``[/INST]``:
    what a model continues from to produce the next answer."""
    validate_messages(messages, for_generation=True, record=record)
    turns = _user_turns(messages)
    texts = [f"{_prompt_text(u['content'])} {a['content'].strip()} "
             for u, a in zip(turns[:-1:2], turns[1::2])]
    texts.append(_prompt_text(turns[-1]["content"]))
    encoded = tokenizer.encode_batch(texts, bos=True, eos=False, num_threads=1)
    ids: list[int] = []
    for turn in encoded[:-1]:
        ids += turn + [tokenizer.eos_id]
    return ids + encoded[-1]


def chat_of(record_or_prompt: dict | str | list) -> list[dict]:
    """The conversation (ending with the user's turn) of a preference record (``messages`` or
    ``prompt``), a prompt text or a message list."""
    if isinstance(record_or_prompt, dict):
        record_or_prompt = record_or_prompt.get("messages") or record_or_prompt["prompt"]
    if isinstance(record_or_prompt, str):
        return [{"role": "user", "content": record_or_prompt}]
    return list(record_or_prompt)
