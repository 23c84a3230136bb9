"""``llama2-pipeline examples``: small bring-your-own-data files, one for every swap point.

    llama2-pipeline examples [--out DIR] [--seed N] [--force]

writes into DIR (default ``data/01_raw/byo``), each file atomically:

* ``corpus/part-0000{0,1}.parquet``: a raw corpus (columns ``id``, ``text``, ``source``) for
  ``raw_corpus``; ``corpus.jsonl``: the same documents as JSON lines; ``pii_canaries.jsonl``:
  empty (nothing planted to check for);
* ``sft_dialogues.jsonl``: ``{"id", "messages": [...]}`` dialogues for ``sft_dialogues_raw``;
* ``preferences.jsonl``: preference pairs for ``user_preferences``;
* ``README.md``: each file's schema and how ``kedro run --env byo`` (``conf/byo/``) uses them.

The text is made here (no download, no dataset copied): a small made-up region of market towns,
kitchens, gardens and shops, described by templates and drawn with a fixed seed, so the files are
the same on every machine. The vocabulary and the templates are this package's data files
(``region.yaml``, ``corpus.yaml``, ``chat.yaml``, ``README.template.md``), filled in by
``templates.py``. It is enough for the smoke profile's data_processing, tokenizer, pretrain, sft
and reward stages; a few documents are deliberately dirty (a duplicate, a near-duplicate,
fragments, keyword spam, a contact address) to show what cleaning removes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llama2_pipeline.commands.examples.templates import (
    DATA_FILES,
    SEED,
    corpus_documents,
    data,
    preferences,
    sft_dialogues,
)
from llama2_pipeline.core.files import atomic_path, write_jsonl

__all__ = ["DATA_FILES", "DEFAULT_OUT", "FILES", "SEED", "corpus_documents", "main", "preferences",
           "sft_dialogues", "write_examples"]

DEFAULT_OUT = "data/01_raw/byo"
FILES = ("corpus", "corpus.jsonl", "pii_canaries.jsonl", "sft_dialogues.jsonl", "preferences.jsonl", "README.md")


def write_examples(out: str | Path = DEFAULT_OUT, seed: int = SEED, force: bool = False) -> dict[str, int]:
    """Write every example file into ``out`` (each atomically); returns the record counts.

    Raises FileExistsError if one of the files exists already and ``force`` is false.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    existing = [name for name in FILES if (out / name).exists()]
    if existing and not force:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass --force to overwrite them")
    docs, dialogues, prefs = corpus_documents(seed), sft_dialogues(seed), preferences(seed)
    half = len(docs) // 2
    with atomic_path(out / "corpus", is_dir=True) as tmp:
        for i, part in enumerate((docs[:half], docs[half:])):
            pq.write_table(pa.Table.from_pylist(part), tmp / f"part-{i:05d}.parquet", compression="zstd")
    write_jsonl(out / "corpus.jsonl", docs)
    write_jsonl(out / "pii_canaries.jsonl", [])
    write_jsonl(out / "sft_dialogues.jsonl", dialogues)
    write_jsonl(out / "preferences.jsonl", prefs)
    elsewhere = "" if out.as_posix() == DEFAULT_OUT else (
        f"\n\nThese files are in `{out.as_posix()}`, not in `{DEFAULT_OUT}` where conf/byo/catalog.yml "
        "looks: change the paths there (or copy the files).")
    readme = data("README.template.md").format(
        seed=seed, out=out.as_posix(), n_docs=len(docs), n_sft=len(dialogues), n_prefs=len(prefs),
        n_dirty=sum(d["source"] in ("web_scrape", "club_newsletter") for d in docs),
        n_uf=sum(isinstance(p["chosen"], list) for p in prefs), elsewhere=elsewhere)
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(readme, encoding="utf-8")
    return {"documents": len(docs), "dialogues": len(dialogues), "preferences": len(prefs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llama2-pipeline examples",
        description="Write small bring-your-own-data example files (raw corpus as Parquet and JSONL, SFT "
                    "dialogues, preference pairs) that `kedro run --env byo` reads (see conf/byo/).")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder to write into (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of the generated text (default {SEED})")
    parser.add_argument("--force", action="store_true", help="overwrite example files that exist already")
    args = parser.parse_args(argv)
    try:
        counts = write_examples(args.out, args.seed, args.force)
    except FileExistsError as e:
        print(f"llama2-pipeline examples: {e}", file=sys.stderr)
        return 1
    print(f"wrote {counts['documents']} documents (corpus/*.parquet and corpus.jsonl), {counts['dialogues']} SFT "
          f"dialogues and {counts['preferences']} preference pairs to {args.out}; see {args.out}/README.md")
    return 0

