"""Small deterministic raw corpora for the tests: prose that passes the quality rules, plus
duplicates, near duplicates, spam and PII."""

from __future__ import annotations

import random
from pathlib import Path

_SYL = "ka lo mi ra ten vor sel dan bri hul qua nor pe fin gal tho mer wis ult ost".split()
_rng0 = random.Random(1234)
VOCAB = sorted({"".join(_rng0.choice(_SYL) for _ in range(_rng0.randrange(2, 4))) for _ in range(3000)})
STOP = "the be to of and that have with".split()
ADJ = VOCAB[:40]


def sentence(rng: random.Random) -> str:
    words = [rng.choice(STOP) if rng.random() < 0.3 else rng.choice(VOCAB)
             for _ in range(rng.randrange(8, 16))]
    return " ".join(words).capitalize() + "."


def document(rng: random.Random, n_sentences: int = 12) -> str:
    sents = [sentence(rng) for _ in range(n_sentences)]
    return "\n\n".join(" ".join(sents[i:i + 4]) for i in range(0, len(sents), 4))


def mutate(rng: random.Random, text: str, n_changes: int) -> str:
    words = text.split(" ")
    for _ in range(n_changes):
        i = rng.randrange(len(words))
        words[i] = rng.choice(ADJ)
    return " ".join(words)


def raw_corpus(seed: int = 0, n_docs: int = 60) -> list[dict]:
    """Rows ``{id, text, source}``: unique prose, exact dups, near dups, spam, PII, gibberish."""
    rng = random.Random(seed)
    rows: list[dict] = []
    originals: list[str] = []
    for i in range(n_docs):
        r = rng.random()
        if originals and r < 0.12:
            text, src = rng.choice(originals), "mirror"
        elif originals and r < 0.24:
            text, src = mutate(rng, rng.choice(originals), 2), "mirror"
        elif r < 0.30:
            text, src = "\n".join(["Click here to win a prize!"] * 30), "spam"
        elif r < 0.34:
            text, src = " ".join(str(rng.randrange(10**6)) for _ in range(80)), "numbers"
        else:
            text, src = document(rng, rng.randrange(8, 20)), "web"
            if rng.random() < 0.3:
                text += f"\n\nContact me at person{i}@example.com or +1 (555) {rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}."
            originals.append(text)
        rows.append({"id": f"doc-{i:04d}", "text": text, "source": src})
    return rows


def write_shards(folder: Path, rows: list[dict], per_shard: int = 25, **extra_columns) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(0, max(len(rows), 1), per_shard):
        part = rows[k:k + per_shard]
        table = pa.table({c: [r.get(c) for r in part] for c in ("id", "text", "source")}
                         | {c: v[k:k + per_shard] for c, v in extra_columns.items()})
        pq.write_table(table, folder / f"shard-{k // per_shard:03d}.parquet")
    return folder
