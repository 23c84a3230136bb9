"""Interop with Hugging Face transformers (a test dependency; the library never imports it).

Two ways to get a HF tokenizer from our ``tokenizer.model``:
1. transformers' own conversion (``LlamaTokenizer.from_pretrained`` on a folder holding only
   ``tokenizer.model``). In transformers 5, ``LlamaTokenizer`` is the ``tokenizers``-backed class
   (``LlamaTokenizerFast`` is an alias); it converts the sentencepiece model to a BPE with a
   ``Metaspace`` pre-tokenizer. ``legacy=True`` (prepend "▁" to every segment, also after special
   tokens) is required for chat ids to match; even then texts that *start with whitespace* differ,
   because Metaspace skips the dummy prefix when the text already starts with "▁".
2. :func:`save_hf_tokenizer` (our ``tokenizer.json`` with Meta's Llama 2 normaliser): equal on
   everything, including leading whitespace, and carries the Llama-2-chat template.
"""

from __future__ import annotations

import shutil

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from llama2_pipeline.tokenizer import (  # noqa: E402
    LLAMA2_CHAT_TEMPLATE,
    encode_chat,
    encode_chat_prompt,
    save_hf_tokenizer,
)

from .conftest import UNICODE_SAMPLES  # noqa: E402
from .test_chat import DIALOGUE, SYSTEM  # noqa: E402

# The Llama-2-chat template Meta/HF published (tokenizer_config.json of
# meta-llama/Llama-2-7b-chat-hf, without the default-system-prompt branch), written out here
# independently of the library's copy.
PUBLISHED_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)


@pytest.fixture(scope="module")
def validation_texts(documents):
    """Documents and their lines (many of the pydoc lines start with indentation)."""
    texts = [t for t in documents.text if t] + UNICODE_SAMPLES
    lines = [ln for t in texts for ln in t.split("\n") if ln]
    return texts + lines + ["Order 20240917 cost 3.14159", "a  b   c", "x ", "日本 🤖"]


@pytest.fixture(scope="module")
def hf_converted(tmp_path_factory, tok):
    """transformers' own conversion of the bare tokenizer.model."""
    d = tmp_path_factory.mktemp("hf_bare")
    shutil.copy(tok.path, d / "tokenizer.model")
    transformers.logging.set_verbosity_error()
    return transformers.LlamaTokenizer.from_pretrained(str(d), legacy=True)


@pytest.fixture(scope="module")
def hf_exported(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("hf_export")
    save_hf_tokenizer(tok.path, d, model_max_length=4096)
    return transformers.AutoTokenizer.from_pretrained(str(d))


def _conversation(system: bool, final_user: bool = False):
    msgs = ([{"role": "system", "content": SYSTEM}] if system else []) + DIALOGUE
    return msgs[:-1] if final_user else msgs


def test_converted_llama_tokenizer_equal_except_leading_whitespace(hf_converted, tok,
                                                                   validation_texts):
    assert type(hf_converted).__name__ == "LlamaTokenizer"
    assert len(hf_converted) == tok.vocab_size
    mismatched = [t for t in validation_texts
                  if hf_converted.encode(t, add_special_tokens=False) != tok.encode(t)]
    assert all(t[:1].isspace() for t in mismatched), mismatched[:3]
    assert len(mismatched) < len(validation_texts) // 2
    starts_plain = [t for t in validation_texts if not t[:1].isspace()]
    assert len(starts_plain) > 1000
    for t in starts_plain[:50]:
        assert hf_converted.decode(hf_converted.encode(t, add_special_tokens=False)) == t


@pytest.mark.parametrize("system", [False, True])
def test_converted_llama_tokenizer_chat_template(hf_converted, tok, system):
    msgs = _conversation(system)
    ids = hf_converted.apply_chat_template(msgs, chat_template=PUBLISHED_TEMPLATE, tokenize=True,
                                           return_dict=False)
    assert list(ids) == encode_chat(tok, msgs).ids


def test_exported_tokenizer_equal_on_everything(hf_exported, tok, validation_texts):
    assert hf_exported.bos_token_id == tok.bos_id and hf_exported.eos_token_id == tok.eos_id
    assert hf_exported.pad_token == "<pad>" and hf_exported.pad_token_id == tok.pad_id
    assert hf_exported.unk_token_id == tok.unk_id
    assert hf_exported.model_max_length == 4096
    hf_ids = hf_exported(validation_texts, add_special_tokens=False)["input_ids"]
    ours = tok.encode_batch(validation_texts)
    bad = [t for t, a, b in zip(validation_texts, hf_ids, ours) if a != b]
    assert not bad, bad[:3]
    # like Llama's HF tokenizer, encode() adds BOS
    assert hf_exported.encode("Hello there") == tok.encode("Hello there", bos=True)
    for t in validation_texts[:300]:
        assert hf_exported.decode(tok.encode(t)) == t


@pytest.mark.parametrize("system", [False, True])
@pytest.mark.parametrize("template", ["published", "exported"])
def test_exported_tokenizer_chat_template(hf_exported, tok, system, template):
    kw = {"chat_template": PUBLISHED_TEMPLATE} if template == "published" else {}
    msgs = _conversation(system)
    ids = hf_exported.apply_chat_template(msgs, tokenize=True, return_dict=False, **kw)
    assert list(ids) == encode_chat(tok, msgs).ids
    prompt = _conversation(system, final_user=True)
    ids = hf_exported.apply_chat_template(prompt, tokenize=True, return_dict=False, **kw)
    assert list(ids) == encode_chat_prompt(tok, prompt)
    one = [{"role": "user", "content": "What is 12 + 30?"}]
    assert list(hf_exported.apply_chat_template(one, tokenize=True, return_dict=False, **kw)) == (
        encode_chat_prompt(tok, one))


def test_exported_template_is_the_published_one():
    assert LLAMA2_CHAT_TEMPLATE == PUBLISHED_TEMPLATE
