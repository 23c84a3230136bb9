"""Tiny token shards with learnable structure, small configs for fast training runs, and a small
world with a random smoke-preset chat model for the reward, round and PPO tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")

VOCAB = 256


def markov_tokens(n: int, vocab: int, seed: int) -> np.ndarray:
    """A token stream from a sparse bigram chain (each token has 4 likely successors), cut into
    documents <s> ... </s>: far below the unigram perplexity for a model that learns bigrams."""
    table_rng = np.random.default_rng(1234)  # the same language for every split
    succ = table_rng.integers(3, vocab, size=(vocab, 4))
    probs = np.array([0.55, 0.25, 0.15, 0.05])
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.int64)
    tok, doc_left = 1, 0
    choices = rng.choice(4, size=n, p=probs)
    lengths = rng.integers(40, 200, size=n // 40 + 2)
    li = 0
    for i in range(n):
        if doc_left == 0:
            out[i], tok = 1, int(rng.integers(3, vocab))  # <s>
            doc_left, li = int(lengths[li]), li + 1
            continue
        doc_left -= 1
        if doc_left == 0:
            out[i] = 2  # </s>
            continue
        out[i] = tok
        tok = int(succ[tok, choices[i]])
    return out


def write_shards(folder: Path, splits: dict[str, np.ndarray], vocab: int = VOCAB,
                 dtype: str = "uint16", tokens_per_shard: int = 1 << 30) -> Path:
    """A token-shard folder in the format of ``llama2_pipeline.tokenizer.shards``."""
    folder.mkdir(parents=True, exist_ok=True)
    index = {"format": "llama2-pipeline/token-shards", "version": 1, "dtype": dtype, "byteorder": "little",
             "vocab_size": vocab, "bos_id": 1, "eos_id": 2, "pad_id": 0, "tokenizer_sha256": "test",
             "val_fraction": 0.1, "seed": 0, "corpus_files": [], "docs_skipped_empty": 0, "text_bytes": 0,
             "splits": {}}
    np_dtype = {"uint16": "<u2", "uint32": "<u4"}[dtype]
    for split, tokens in splits.items():
        shards = []
        for k, start in enumerate(range(0, len(tokens), tokens_per_shard)):
            part = tokens[start:start + tokens_per_shard].astype(np_dtype)
            name = f"{split}_{k:05d}.bin"
            (folder / name).write_bytes(part.tobytes())
            shards.append({"name": name, "tokens": len(part)})
        index["splits"][split] = {"shards": shards, "tokens": len(tokens), "docs": int((tokens == 1).sum())}
    (folder / "index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards") / "tokens"
    return write_shards(folder, {"train": markov_tokens(60_000, VOCAB, seed=1),
                                 "val": markov_tokens(6_000, VOCAB, seed=2)}, tokens_per_shard=25_000)


MODEL = {"preset": "smoke"}


def train_cfg(**overrides) -> dict:
    """A few seconds of smoke-preset training on CPU."""
    cfg = dict(micro_batch=4, grad_accum=1, seq_len=32, max_steps=30, lr=3e-3, warmup_steps=5,
               eval_every=10, eval_batches=2, checkpoint_every=10, keep_checkpoints=2, log_every=5,
               seed=7, num_threads=1)
    cfg.update(overrides)
    return cfg


def pytest_configure(config):
    config.addinivalue_line("markers", "multirank: multi-process (torchrun, gloo) training runs on CPU; "
                                       "select with -m multirank")


@pytest.fixture(scope="module")
def world():
    """tests.conftest's SMALL_WORLD."""
    from llama2_pipeline.world import World
    from tests.conftest import SMALL_WORLD

    return World.from_params(SMALL_WORLD)


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory, world) -> Path:
    """A random smoke-preset Llama in HF format, with a 512-piece tokenizer trained on world texts."""
    import pandas as pd
    import torch

    from llama2_pipeline.model import Llama, ModelConfig, export_hf
    from llama2_pipeline.tokenizer import save_hf_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("rm_init")
    texts = [p["prompt"] + " " + p["reference"] for p in world.prompts("train") + world.prompts("eval")]
    texts += [m["content"] for d in world.sft_dialogues() for m in d["messages"]] + ["no no no maybe. " * 3]
    corpus = root / "corpus"
    corpus.mkdir()
    pd.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts, "source": "world"}).to_parquet(
        corpus / "part-00000.parquet")
    train_tokenizer(corpus, root / "tok", vocab_size=512, num_threads=1, progress=False)
    torch.manual_seed(0)
    model = Llama(ModelConfig.from_preset("smoke"))
    out = export_hf(model, root / "init", tokenizer_model_path=root / "tok/tokenizer.model")
    save_hf_tokenizer(root / "tok", out)
    return out


@pytest.fixture(scope="module")
def tok(init_dir):
    """The smoke model's tokenizer."""
    from llama2_pipeline.tokenizer import Tokenizer

    return Tokenizer(init_dir / "tokenizer.model")
