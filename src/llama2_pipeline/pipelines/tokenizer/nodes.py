"""Nodes of ``tokenizer``: thin wrappers over :mod:`llama2_pipeline.tokenizer`."""

from __future__ import annotations

from pathlib import Path

from llama2_pipeline.project.datasets import ParquetShards, staging_dir
from llama2_pipeline.recipe import TokenizerParams
from llama2_pipeline.tokenizer import encode_corpus, save_hf_tokenizer, train_tokenizer


def train(clean_corpus: ParquetShards, tokenizer: TokenizerParams, seed: int) -> tuple[Path, dict]:
    """Llama 2's sentencepiece settings; ``tokenizer.model`` plus its HF files (tokenizer.json,
    tokenizer_config.json with the Llama-2-chat template)."""
    out = staging_dir("tokenizer") / "tokenizer"
    stats = train_tokenizer(clean_corpus.path, out, vocab_size=tokenizer.vocab_size,
                            max_sentences=tokenizer.max_sentences, seed=seed, num_threads=tokenizer.num_threads,
                            character_coverage=tokenizer.character_coverage,
                            max_sentence_length=tokenizer.max_sentence_length)
    save_hf_tokenizer(out, out)
    metrics = {f"tokenizer_{k}": v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out, metrics


def encode(clean_corpus: ParquetShards, tokenizer_dir: Path, tokenizer: TokenizerParams, seed: int) -> tuple[Path, dict]:
    """The clean corpus as packed train/val token shards (BOS/EOS around each document)."""
    out = staging_dir("token_shards") / "token_shards"
    stats = encode_corpus(clean_corpus.path, tokenizer_dir, out, val_fraction=tokenizer.val_fraction, seed=seed,
                          workers=tokenizer.workers, tokens_per_shard=tokenizer.tokens_per_shard)
    metrics = {f"tokens_{k}" if not k.startswith("tokens") else k: v for k, v in stats.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out, metrics
