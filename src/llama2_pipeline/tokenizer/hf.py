"""Hugging Face files for a trained ``tokenizer.model``, so that a model folder loads with
``AutoTokenizer.from_pretrained`` and encodes exactly as :class:`Tokenizer` and
:func:`encode_chat` do. Pure JSON: nothing from transformers/tokenizers is imported.

Why not just ship ``tokenizer.model``? transformers 5 converts it to a ``tokenizers`` BPE with a
``Metaspace`` pre-tokenizer, which skips sentencepiece's dummy prefix when a text already starts
with a space (so ``"  x"`` differs) and, unless ``legacy=True``, also after special tokens (so
every chat turn after ``<s>`` differs). The ``tokenizer.json`` written here instead uses the
normaliser of Meta's published Llama 2 ``tokenizer.json`` (prepend ``▁``, spaces to ``▁``, per
segment between special tokens), which matches sentencepiece on every text we test, and a
``tokenizer_config.json`` naming the generic ``PreTrainedTokenizerFast`` class so that it is
loaded as is. The chat template is the one Meta/HF published for Llama-2-chat.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import sentencepiece as spm

from ..core.files import atomic_path, write_json
from .spm import MODEL_FILE

#: Meta/HF's Llama-2-chat Jinja template (as in ``meta-llama/Llama-2-7b-chat-hf``).
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)


def _merges(vocab: dict[str, int]) -> list[list[str]]:
    """BPE merges from a sentencepiece vocab: every split of a piece into two pieces, ordered by
    the merged piece's id (= sentencepiece score rank), as transformers' converter does."""
    merges = []
    for piece, pid in vocab.items():
        local = [(piece[:i], piece[i:]) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        merges += [(pid, len(l), len(r), l, r) for l, r in local]
    merges.sort(key=lambda m: m[:3])  # stable: keeps the (left id, right id) order within ties
    return [[l, r] for _, _, _, l, r in merges]


def hf_tokenizer_json(model_file: str | os.PathLike) -> dict:
    """The ``tokenizer.json`` content for a Llama-2-style sentencepiece BPE model."""
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    n = sp.vocab_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    special = [i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)]
    # Special pieces are added tokens; they take no part in merges.
    vocab = {p: i for i, p in enumerate(pieces)}
    mergeable = {p: i for i, p in enumerate(pieces) if i not in set(special) and not sp.is_byte(i)}
    bos = sp.id_to_piece(sp.bos_id())
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": pieces[i], "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
            for i in special
        ],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            ],
        },
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [sp.bos_id()], "tokens": [bos]}},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": sp.id_to_piece(sp.unk_id()),
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": _merges(mergeable),
        },
    }


def save_hf_tokenizer(
    model_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model_max_length: int | None = None,
    chat_template: str = LLAMA2_CHAT_TEMPLATE,
) -> list[Path]:
    """Write ``tokenizer.model``, ``tokenizer.json`` and ``tokenizer_config.json`` into
    ``out_dir`` (each atomically; other files there are left alone) and return their paths.

    ``model_file`` is a ``tokenizer.model`` or its folder. The result loads with
    ``AutoTokenizer.from_pretrained(out_dir)``: ``encode`` adds BOS like Llama's tokenizer,
    and ``apply_chat_template`` renders Llama-2-chat with ids equal to :func:`encode_chat`.
    """
    model_file = Path(model_file)
    if model_file.is_dir():
        model_file = model_file / MODEL_FILE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    piece = sp.id_to_piece
    paths = [out_dir / MODEL_FILE, out_dir / "tokenizer.json", out_dir / "tokenizer_config.json"]
    if model_file.resolve() != paths[0].resolve():
        with atomic_path(paths[0]) as tmp:
            shutil.copyfile(model_file, tmp)
    write_json(paths[1], hf_tokenizer_json(model_file))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": piece(sp.bos_id()),
        "eos_token": piece(sp.eos_id()),
        "unk_token": piece(sp.unk_id()),
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "chat_template": chat_template,
    }
    if sp.pad_id() >= 0:
        config["pad_token"] = piece(sp.pad_id())
    if model_max_length:
        config["model_max_length"] = int(model_max_length)
    write_json(paths[2], config)
    return paths
