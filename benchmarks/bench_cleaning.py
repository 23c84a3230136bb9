"""Benchmark of the cleaning stage against datatrove's equivalents on the same documents.

Runs ``clean_corpus`` with 1 worker and with all workers (each in a child process, so peak
RSS is measured per run), then datatrove's ``GopherQualityFilter`` + ``GopherRepetitionFilter``,
``MinhashDedupSignature`` (stage 1 of its MinHash dedup) and ``PIIFormatter`` on the same texts
(single process), and prints MiB/s per core and the ratio.

Usage::

    python benchmarks/bench_cleaning.py --mb 20                 # synthesise a 20 MiB corpus
    python benchmarks/bench_cleaning.py --docs 5000
    python benchmarks/bench_cleaning.py --input data/01_raw/corpus
    python benchmarks/bench_cleaning.py --mb 20 --skip-datatrove --json out.json

datatrove is optional (``pip install datatrove spacy 'xxhash<4'``); without it only our numbers
are printed. The synthetic corpus is web-like: Markov-chain prose trained on the CPython docs
(``pydoc_data``), real doc excerpts, exact and near duplicates, boilerplate/spam lists,
gibberish, HTML-wrapped pages, planted PII and a few PII-dense "directory" pages.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

# ----------------------------------------------------------------------------- corpus


def _markov_model(seed: int):
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics))
    words = re.findall(r"[A-Za-z][A-Za-z'-]*[.,;:]?|\d+", text)
    model: dict[tuple[str, str], list[str]] = {}
    for a, b, c in zip(words, words[1:], words[2:]):
        model.setdefault((a, b), []).append(c)
    paragraphs = [p.strip() for k in sorted(topics) for p in topics[k].split("\n\n")
                  if len(p.split()) > 25]
    return model, sorted(model), paragraphs


def _prose(rng: random.Random, model, keys, n_words: int) -> str:
    out: list[str] = []
    a, b = keys[rng.randrange(len(keys))]
    for i in range(n_words):
        nxt = model.get((a, b))
        if not nxt:
            a, b = keys[rng.randrange(len(keys))]
            continue
        c = nxt[rng.randrange(len(nxt))]
        out.append(c)
        a, b = b, c
        if c.endswith(".") and rng.random() < 0.15:
            out.append("\n\n")
    return " ".join(out).replace(" \n\n ", "\n\n")


def _pii_value(rng: random.Random) -> str:
    kind = rng.randrange(7)
    d = lambda n: "".join(str(rng.randrange(10)) for _ in range(n))  # noqa: E731
    if kind == 0:
        return f"{rng.choice(['anna', 'li.wei', 'j.smith', 'omar_k'])}{d(2)}@{rng.choice(['example.com', 'mail.org', 'corp.co.uk'])}"
    if kind == 1:
        return rng.choice([f"+1 ({rng.randrange(200, 999)}) {d(3)}-{d(4)}", f"+44 20 {d(4)} {d(4)}",
                           f"0{rng.randrange(1, 9)} {d(2)} {d(2)} {d(2)} {d(2)}"])
    if kind == 2:
        return ".".join(str(rng.randrange(1, 255)) for _ in range(4))
    if kind == 3:
        body = "4" + d(14)
        for check in range(10):
            cand = body + str(check)
            tot = sum((int(c) * 2 - 9 if int(c) * 2 > 9 else int(c) * 2) if i % 2 else int(c)
                      for i, c in enumerate(reversed(cand)))
            if tot % 10 == 0:
                return " ".join(cand[i:i + 4] for i in range(0, 16, 4))
    if kind == 4:
        return f"{rng.randrange(100, 665)}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}"
    if kind == 5:
        return "AKIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
    return "DE89 3704 0044 0532 0130 00"


def synth_docs(n_docs: int | None, target_mb: float | None, seed: int = 0):
    """Yield ``(id, text, source)`` of a web-like corpus (stops at n_docs or target_mb)."""
    rng = random.Random(seed)
    model, keys, paragraphs = _markov_model(seed)
    history: list[str] = []
    total = 0
    i = 0
    while (n_docs is None or i < n_docs) and (target_mb is None or total < target_mb * 2**20):
        r = rng.random()
        if r < 0.08 and history:
            text, src = history[rng.randrange(len(history))], "mirror"
        elif r < 0.16 and history:
            words = history[rng.randrange(len(history))].split(" ")
            for _ in range(max(1, len(words) // 40)):
                words[rng.randrange(len(words))] = rng.choice(["alpha", "beta", "gamma", "delta"])
            text, src = " ".join(words), "mirror"
        elif r < 0.21:
            line = rng.choice(["Click here to subscribe!", "Buy now - limited offer", "Home | About | Contact"])
            text, src = "\n".join([line] * rng.randrange(10, 40)), "spam"
        elif r < 0.24:
            text = " ".join("".join(rng.choice("qxzjkvbwy0123456789#") for _ in range(rng.randrange(2, 12)))
                            for _ in range(rng.randrange(60, 400)))
            src = "gibberish"
        elif r < 0.25:
            lines = [f"{rng.choice(['Ann', 'Bo', 'Cy', 'Di'])} {rng.choice(['Lee', 'Moe', 'Ng'])}: "
                     f"{_pii_value(rng)}, {_pii_value(rng)}" for _ in range(rng.randrange(20, 60))]
            text, src = "Staff directory\n" + "\n".join(lines), "directory"
        elif r < 0.37:
            k = rng.randrange(len(paragraphs))
            text, src = "\n\n".join(paragraphs[k:k + rng.randrange(2, 8)]), "docs"
        else:
            text, src = _prose(rng, model, keys, rng.randrange(150, 2500)), "web"
            if rng.random() < 0.25:
                parts = text.split(" ")
                for _ in range(rng.randrange(1, 4)):
                    parts.insert(rng.randrange(len(parts)), f"contact {_pii_value(rng)}")
                text = " ".join(parts)
            if rng.random() < 0.1:
                text = f"<html><body><div class='post'><p>{text.replace(chr(10) * 2, '</p><p>')}</p></div></body></html>"
            if len(history) < 2000:
                history.append(text)
            elif rng.random() < 0.05:
                history[rng.randrange(len(history))] = text
        yield f"doc-{i:07d}", text, src
        total += len(text.encode("utf-8"))
        i += 1


def write_corpus(out_dir: Path, docs, shard_docs: int = 2000) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    buf: list[tuple] = []
    n_shards = n = 0
    nbytes = 0

    def flush():
        nonlocal buf, n_shards
        if buf:
            ids, texts, srcs = zip(*buf)
            pq.write_table(pa.table({"id": list(ids), "text": list(texts), "source": list(srcs)}),
                           out_dir / f"raw-{n_shards:05d}.parquet")
            n_shards += 1
            buf = []

    for row in docs:
        buf.append(row)
        n += 1
        nbytes += len(row[1].encode("utf-8"))
        if len(buf) >= shard_docs:
            flush()
    flush()
    return n, nbytes


def read_texts(input_dir: Path) -> list[str]:
    import pyarrow.parquet as pq

    texts: list[str] = []
    for p in sorted(input_dir.glob("*.parquet")):
        texts += [t for t in pq.read_table(p, columns=["text"]).column("text").to_pylist()
                  if isinstance(t, str)]
    return texts


# ----------------------------------------------------------------------------- runs


class _TreeRss(threading.Thread):
    """Samples the summed RSS of this process and all its descendants (workers started by a
    forkserver are not our direct children, so getrusage(RUSAGE_CHILDREN) misses them)."""

    def __init__(self, period: float = 0.05):
        super().__init__(daemon=True)
        self.period, self.peak_total, self.peak_worker = period, 0, 0
        self.stop_event = threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        parent: dict[int, int] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        me = os.getpid()
        tree, frontier = {me}, [me]
        while frontier:
            p = frontier.pop()
            kids = [c for c, pp in parent.items() if pp == p and c not in tree]
            tree.update(kids)
            frontier += kids
        total = 0
        for pid in tree:
            try:
                with open(f"/proc/{pid}/statm") as f:
                    rss = int(f.read().split()[1]) * self.page
            except (OSError, IndexError, ValueError):
                continue
            total += rss
            if pid != me:
                self.peak_worker = max(self.peak_worker, rss)
        self.peak_total = max(self.peak_total, total)

    def run(self) -> None:
        while not self.stop_event.wait(self.period):
            self._sample()


def _child_clean(input_dir: str, workers: int, q) -> None:
    from llama2_pipeline.data import clean_corpus

    out = Path(tempfile.mkdtemp(prefix="bench-clean-")) / "out"
    sampler = _TreeRss()
    sampler.start()
    t0 = time.perf_counter()
    report = clean_corpus(input_dir, out, {}, workers=workers, progress=False)
    dt = time.perf_counter() - t0
    sampler.stop_event.set()
    sampler.join()
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    shutil.rmtree(out.parent, ignore_errors=True)
    q.put({"seconds": dt, "metrics": report["metrics"], "peak_rss_mib": rss_self / 1024,
           "peak_worker_rss_mib": sampler.peak_worker / 2**20,
           "peak_tree_rss_mib": sampler.peak_total / 2**20, "workers": report["timing"]["workers"]})


def run_ours(input_dir: Path, workers: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child_clean, args=(str(input_dir), workers, q))
    p.start()
    res = q.get()
    p.join()
    return res


def _child_datatrove(input_dir: str, q) -> None:
    import logging

    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import PIIFormatter
    from loguru import logger

    logger.remove()
    logging.disable(logging.WARNING)
    texts = read_texts(Path(input_dir))
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    docs = lambda: (Document(text=t, id=str(i)) for i, t in enumerate(texts))  # noqa: E731
    out: dict = {"bytes": nbytes, "docs": len(texts)}

    def timed(name, fn):
        t0 = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t0

    timed("gopher_quality", lambda: sum(1 for _ in GopherQualityFilter().run(docs())))
    timed("gopher_repetition", lambda: sum(1 for _ in GopherRepetitionFilter().run(docs())))
    timed("pii_formatter", lambda: sum(1 for _ in PIIFormatter().run(docs())))
    tmp = tempfile.mkdtemp(prefix="bench-dt-")
    try:
        sig = MinhashDedupSignature(output_folder=tmp, config=MinhashConfig())
        timed("minhash_signature", lambda: sig.run(docs(), rank=0, world_size=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put(out)


def run_datatrove(input_dir: Path) -> dict | None:
    if importlib.util.find_spec("datatrove") is None:
        return None
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child_datatrove, args=(str(input_dir), q))
    p.start()
    res = q.get()
    p.join()
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--docs", type=int, help="synthesise this many documents")
    g.add_argument("--mb", type=float, help="synthesise about this many MiB of text (default 20)")
    g.add_argument("--input", type=Path, help="folder of raw *.parquet shards to read instead")
    ap.add_argument("--workers", type=int, default=0, help="'all workers' run (0 = all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-corpus-"))
    try:
        if args.input:
            input_dir = args.input
        else:
            input_dir = tmp / "raw"
            t0 = time.perf_counter()
            n, nb = write_corpus(input_dir, synth_docs(args.docs, None if args.docs else (args.mb or 20.0), args.seed))
            print(f"synthesised {n} docs, {nb / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f}s -> {input_dir}")
        from llama2_pipeline.data.pipeline import resolve_workers

        n_all = resolve_workers(args.workers)
        results: dict = {"cores": n_all}
        one = run_ours(input_dir, 1)
        mib = one["metrics"]["bytes_in"] / 2**20
        results["ours_1"] = one
        print(f"\n[ours] corpus: {one['metrics']['docs_in']} docs, {mib:.2f} MiB -> "
              f"{one['metrics']['docs_out']} docs kept ({one['metrics']['bytes_kept_frac']:.1%} of bytes)")
        print(f"[ours] workers=1 : {one['seconds']:.2f}s  {mib / one['seconds']:.2f} MiB/s per core  "
              f"peak RSS {one['peak_rss_mib']:.0f} MiB")
        if n_all > 1:
            many = run_ours(input_dir, n_all)
            results[f"ours_{n_all}"] = many
            print(f"[ours] workers={n_all} : {many['seconds']:.2f}s  {mib / many['seconds']:.2f} MiB/s total, "
                  f"{mib / many['seconds'] / n_all:.2f} MiB/s per core  peak RSS: parent {many['peak_rss_mib']:.0f} MiB, "
                  f"largest worker {many['peak_worker_rss_mib']:.0f} MiB, all processes {many['peak_tree_rss_mib']:.0f} MiB")
            same = many["metrics"] == one["metrics"]
            print(f"[ours] metrics identical for 1 and {n_all} workers: {same}")
        m = one["metrics"]
        print("[ours] removed:", {k: v for k, v in m.items()
                                  if (k.startswith(("removed_", "dup_", "dropped_"))) and v})
        print("[ours] pii:", {k: v for k, v in m.items() if k.startswith("pii_") and v})
        if not args.skip_datatrove:
            dt = run_datatrove(input_dir)
            if dt is None:
                print("\n[datatrove] not installed: pip install datatrove spacy 'xxhash<4'")
            else:
                results["datatrove"] = dt
                dmib = dt["bytes"] / 2**20
                stages = ["gopher_quality", "gopher_repetition", "minhash_signature", "pii_formatter"]
                print(f"\n[datatrove] same {dt['docs']} docs, {dmib:.2f} MiB, 1 process:")
                for s in stages:
                    print(f"  {s:<20} {dt[s]:7.2f}s  {dmib / dt[s]:6.2f} MiB/s")
                ours_rate = mib / one["seconds"]
                results["ours_mib_s_per_core"] = ours_rate
                print(f"  peak RSS {dt['peak_rss_mib']:.0f} MiB")
                for name, used in (("quality+minhash+pii", [stages[0], stages[2], stages[3]]),
                                   ("+ repetition filter", stages)):
                    combined = sum(dt[s] for s in used)
                    dt_rate = dmib / combined
                    results[f"datatrove_{len(used)}_stages_mib_s"] = dt_rate
                    results[f"ratio_{len(used)}_stages"] = ours_rate / dt_rate
                    print(f"  {name:<20} {combined:7.2f}s  {dt_rate:6.3f} MiB/s  -> ours (whole stage, "
                          f"1 core) is {ours_rate / dt_rate:.1f}x faster")
        if args.json:
            from llama2_pipeline.core.files import write_json

            write_json(args.json, results)
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
