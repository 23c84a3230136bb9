"""Llama 2 tokenizer stage: train the sentencepiece BPE tokenizer on the clean corpus, encode
chats in the Llama-2-chat format, pack the corpus into token shards, and export HF files.

- :mod:`.spm`: :func:`train_tokenizer`, :class:`Tokenizer`
- :mod:`.chat`: :func:`encode_chat`, :func:`encode_chat_prompt` (one chat format for every stage)
- :mod:`.shards`: :func:`encode_corpus`, :class:`TokenShards`
- :mod:`.hf`: :func:`save_hf_tokenizer` (``tokenizer.json`` equal to sentencepiece, chat template)

Knows nothing of Kedro or MLflow.
"""

from .chat import (
    ChatEncoding,
    ChatFormatError,
    encode_chat,
    encode_chat_prompt,
    validate_messages,
)
from .corpus import CorpusError
from .hf import LLAMA2_CHAT_TEMPLATE, hf_tokenizer_json, save_hf_tokenizer
from .shards import TokenShards, TokenShardsError, encode_corpus, is_val_doc, token_dtype
from .spm import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    TokenizerTrainingError,
    train_tokenizer,
)

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "UNK_ID",
    "LLAMA2_CHAT_TEMPLATE",
    "ChatEncoding",
    "ChatFormatError",
    "CorpusError",
    "TokenShards",
    "TokenShardsError",
    "Tokenizer",
    "TokenizerTrainingError",
    "encode_chat",
    "encode_chat_prompt",
    "encode_corpus",
    "hf_tokenizer_json",
    "is_val_doc",
    "save_hf_tokenizer",
    "token_dtype",
    "train_tokenizer",
    "validate_messages",
]
