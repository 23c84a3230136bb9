"""Nodes of the ``world`` pipeline: thin wrappers over :mod:`llama2_pipeline.world`."""

from __future__ import annotations

from typing import Iterator

from tqdm.auto import tqdm

from llama2_pipeline.recipe import WorldParams


def generate_corpus(world: WorldParams, seed: int) -> tuple[Iterator[list[dict]], Iterator[dict]]:
    """The raw crawl as a stream of shards, and the canaries: every planted PII value.

    Both are lazy: the catalog consumes the shard stream as it saves the shards (memory stays at
    one shard), then saves the canaries, which are complete only once the stream is exhausted.
    """
    w = world.world(seed)
    gen = w.corpus()
    total = int(w.config.corpus_mb * 2**20)

    def shards() -> Iterator[list[dict]]:
        with tqdm(total=total, unit="B", unit_scale=True, desc="world corpus") as bar:
            for shard in w.corpus_shards(gen):
                bar.update(sum(len(d["text"].encode()) for d in shard))
                yield shard

    def canaries() -> Iterator[dict]:
        if not gen.finished:
            raise RuntimeError("the canary list is complete only after the whole corpus is saved; "
                               "run the world pipeline with the sequential runner")
        yield from gen.canaries

    return shards(), canaries()


def write_prompts(world: WorldParams, seed: int) -> tuple[list[dict], list[dict]]:
    w = world.world(seed)
    return w.prompts("train"), w.prompts("eval")


def write_sft_dialogues(world: WorldParams, seed: int) -> list[dict]:
    return world.world(seed).sft_dialogues()


def world_summary(world: WorldParams, seed: int, corpus, canaries: list[dict], train: list[dict], evals: list[dict],
                  dialogues: list[dict]) -> tuple[dict, dict]:
    """Headline numbers of the world (metrics/world.json) and its knowledge base (for people)."""
    from collections import Counter

    w = world.world(seed)
    sources = Counter()
    n_docs = n_bytes = 0
    for table in corpus.iter_tables(["text", "source"]):
        n_docs += table.num_rows
        sources.update(table.column("source").to_pylist())
        n_bytes += sum(len(t.encode()) for t in table.column("text").to_pylist())
    metrics = {"world_docs": n_docs, "world_bytes": n_bytes, "world_canaries": len(canaries),
               "world_prompts_train": len(train), "world_prompts_eval": len(evals),
               "world_sft_dialogues": len(dialogues), "world_entities": len(w.entities), "world_version": w.config.version}
    metrics.update({f"world_demo_helpfulness_{k}" if not k.startswith("dialogues") else f"world_demo_{k}": v
                    for k, v in w.demonstration_quality(dialogues).items()})
    metrics.update({f"world_docs_{k}": v for k, v in sources.items()})
    kb = {"entities": [e.to_dict() for e in w.entities]}
    return metrics, kb
