"""Llama 2 tokenizer stage: train the sentencepiece BPE tokenizer on the clean corpus, encode
chats in the Llama-2-chat format, pack the corpus into token shards, and export HF files.

- :mod:`.spm`: :func:`train_tokenizer`, :class:`Tokenizer`
- :mod:`.chat`: :func:`encode_chat`, :func:`encode_chat_prompt` (one chat format for every stage)
- :mod:`.shards`: :func:`encode_corpus`, :class:`TokenShards`
- :mod:`.hf`: :func:`save_hf_tokenizer` (``tokenizer.json`` equal to sentencepiece, chat template)

Knows nothing of Kedro or MLflow.
"""

from llama2_pipeline.core.lazy import lazy_exports

# imported on first use: the chat template alone does not load sentencepiece's trainer or numpy shards
_LAZY = {
    **dict.fromkeys(("ChatEncoding", "ChatFormatError", "chat_of", "encode_chat", "encode_chat_prompt",
                     "validate_messages"), "chat"),
    "CorpusError": "corpus",
    **dict.fromkeys(("LLAMA2_CHAT_TEMPLATE", "hf_tokenizer_json", "save_hf_tokenizer"), "hf"),
    **dict.fromkeys(("TokenShards", "TokenShardsError", "encode_corpus", "is_val_doc", "token_dtype"), "shards"),
    **dict.fromkeys(("BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID", "Tokenizer", "TokenizerTrainingError",
                     "train_tokenizer"), "spm"),
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = sorted(_LAZY)
