"""A small, deterministic clean corpus and a tokenizer trained on it (session scoped: ~1 s)."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
from pydoc_data.topics import topics

from llama2_pipeline.tokenizer import Tokenizer, train_tokenizer

VOCAB = 800

UNICODE_SAMPLES = [
    "Emoji: 🤖🚀 👩‍💻 and flags 🇫🇷🇯🇵 with skin tones 👍🏽.",
    "CJK: 日本語のテキスト、中文文本，한국어 텍스트.",
    "Combining marks: e\u0301 a\u0308 n\u0303 Z\u0335\u0321a\u0337l\u0336g\u0334o\u0338 (not NFC).",
    "Mixed scripts: Ελληνικά, русский, עברית, العربية, हिन्दी, ไทย.",
    "Symbols: ∑∫√∞ ≠ ≤ ≥ € £ ¥ © ® ™ — “quotes” ‘single’ … \u00a0nbsp \u200bzwsp",
    "Control-ish: tab\tseparated\tvalues, a form feed \x0c and a bell \x07 byte.",
]


def _sentences(n: int, seed: int) -> list[str]:
    """Varied English sentences with numbers, deterministic for a seed."""
    rng = random.Random(seed)
    names = ["Alma", "Bertrand", "Ciro", "Dagny", "Eun-ji", "Farid", "Greta", "Hiroshi"]
    places = ["Varnholm", "Quillsby", "the Ossery Fens", "Port Lune", "Mount Tavra"]
    verbs = ["counted", "sold", "carried", "painted", "measured", "planted", "repaired"]
    things = ["lanterns", "barrels", "maps", "sheep", "bridges", "violins", "kites"]
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 99999), rng.randint(2, 9)
        year = rng.randint(1500, 2100)
        pick = rng.choice
        form = rng.randrange(4)
        if form == 0:
            s = f"In {year}, {pick(names)} {pick(verbs)} {a} {pick(things)} in {pick(places)}."
        elif form == 1:
            s = f"{pick(names)} has {b} {pick(things)}; {b} x {a} = {a * b}, not {a * b + 1}."
        elif form == 2:
            s = (f"The distance from {pick(places)} to {pick(places)} is {a / 100:.2f} km "
                 f"({a * 10} m), said {pick(names)}.")
        else:
            s = f"Order #{a:05d}: {b} {pick(things)} at ${a / 7:,.2f} each, total ${b * a / 7:,.2f}."
        out.append(s)
    return out


def make_documents(seed: int = 0) -> pd.DataFrame:
    """~570 KB of documents: the pydoc topics, generated news-like paragraphs, Unicode
    samples, documents with leading/trailing whitespace, and one empty document."""
    rng = random.Random(seed)
    docs = []
    for key in sorted(topics):
        docs.append((f"pydoc-{key}", topics[key], "pydoc"))
    sents = _sentences(2400, seed)
    for i in range(0, len(sents), 12):
        chunk = sents[i:i + 12]
        paragraphs = [" ".join(chunk[j:j + 4]) for j in range(0, len(chunk), 4)]
        docs.append((f"gen-{i // 12:04d}", "\n\n".join(paragraphs), "world"))
    for i, text in enumerate(UNICODE_SAMPLES):
        docs.append((f"uni-{i}", text + "\n" + rng.choice(sents), "unicode"))
    docs.append(("ws-0", "   indented start\n\tand a tab line  ", "edge"))
    docs.append(("ws-1", "\n\nleading newlines, trailing spaces   \n", "edge"))
    docs.append(("empty-0", "", "edge"))
    rng.shuffle(docs)
    return pd.DataFrame(docs, columns=["id", "text", "source"])


def write_corpus(folder: Path, df: pd.DataFrame, n_shards: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(df) // n_shards)
    for k in range(n_shards):
        part = df.iloc[k * size:(k + 1) * size]
        part.to_parquet(folder / f"part-{k:05d}.parquet", index=False, row_group_size=50)
    return folder


@pytest.fixture(scope="session")
def documents() -> pd.DataFrame:
    return make_documents()


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory, documents) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "clean", documents)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, corpus_dir) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    stats = train_tokenizer(corpus_dir, out, vocab_size=VOCAB, num_threads=1, progress=False)
    return out, stats


@pytest.fixture(scope="session")
def tok(trained) -> Tokenizer:
    return Tokenizer(trained[0] / "tokenizer.model")
