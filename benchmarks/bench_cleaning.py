"""Benchmark of the cleaning stage against datatrove's equivalents on the same documents, and
of its two engines against each other.

Runs ``clean_corpus`` with 1 worker and with all workers (each in a child process, so peak
RSS is measured per run), then datatrove's ``GopherQualityFilter`` + ``GopherRepetitionFilter``,
``MinhashDedupSignature`` (stage 1 of its MinHash dedup) and ``PIIFormatter`` on the same texts
(single process), and prints MiB/s per core and the ratio.

``--engine ray`` compares the engines instead: the local process pool and Ray (a local cluster
in the child process) on 1 and on all workers, for each ``--mb`` size: MiB/s, peak RSS of the
driver and of the largest worker, whether the output bytes are the same, and a projection of
the cluster needed for 1 TB in an hour. Each Ray configuration runs twice in one cluster:
``cold`` (the first run: workers and Ray Data start) and ``warm`` (the steady state a
long-lived cluster sees); the cluster's own start is reported apart.

Usage::

    python benchmarks/bench_cleaning.py --mb 20                 # synthesise a 20 MiB corpus
    python benchmarks/bench_cleaning.py --docs 5000
    python benchmarks/bench_cleaning.py --input data/01_raw/corpus
    python benchmarks/bench_cleaning.py --mb 20 --skip-datatrove --json out.json
    python benchmarks/bench_cleaning.py --engine ray --world --mb 100 200 --repeat 3 --json benchmarks/results/cpu_cleaning_ray.json

``--world`` synthesises the project's own simulated crawl (``params.yaml``'s ``world``, the
corpus the ``data_processing`` stage cleans) at ``--mb`` MiB instead of the web-like corpus.

datatrove is optional (``pip install datatrove spacy 'xxhash<4'``); without it only our numbers
are printed. The synthetic corpus is web-like: Markov-chain prose trained on the CPython docs
(``pydoc_data``), real doc excerpts, exact and near duplicates, boilerplate/spam lists,
gibberish, HTML-wrapped pages, planted PII and a few PII-dense "directory" pages.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import multiprocessing as mp
import os
import queue
import random
import re
import resource
import shutil
import statistics
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


def world_docs(mb: float):
    """``(id, text, source)`` of the project's simulated crawl (``params.yaml``'s ``world`` and
    ``seed``) at about ``mb`` MiB: what the pipeline's ``data_processing`` stage cleans."""
    import yaml

    from llama2_pipeline.world import World

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    world = World.from_params({**params["world"], "seed": params["seed"],
                               "corpus": {**params["world"]["corpus"], "size_mb": mb}})
    for shard in world.corpus_shards():
        for d in shard:
            yield d["id"], d["text"], d["source"]


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
    forkserver are not our direct children, so getrusage(RUSAGE_CHILDREN) misses them); workers
    are the descendants whose name starts with ``worker_prefix`` (all of them if None). Also the
    private part (RSS less shared pages: Ray's workers map the object store's shared memory)."""

    def __init__(self, period: float = 0.05, worker_prefix: str | None = None):
        super().__init__(daemon=True)
        self.period, self.peak_total, self.peak_worker, self.peak_self = period, 0, 0, 0
        self.private_worker = self.private_self = 0
        self.prefix = worker_prefix
        self.stop_event = threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        parent: dict[int, int] = {}
        name: dict[int, str] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        stat = f.read()
                    parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
                    name[int(d)] = stat[stat.index("(") + 1:stat.rindex(")")]
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
                    fields = f.read().split()
                rss, shared = int(fields[1]) * self.page, int(fields[2]) * self.page
            except (OSError, IndexError, ValueError):
                continue
            total += rss
            if pid == me:
                self.peak_self = max(self.peak_self, rss)
                self.private_self = max(self.private_self, rss - shared)
            elif self.prefix is None or name.get(pid, "").startswith(self.prefix):
                self.peak_worker = max(self.peak_worker, rss)
                self.private_worker = max(self.private_worker, rss - shared)
        self.peak_total = max(self.peak_total, total)

    def run(self) -> None:
        while not self.stop_event.wait(self.period):
            self._sample()


def _child_clean(input_dir: str, workers: int, q, engine: str = "local", runs: int = 1) -> None:
    """``runs`` timed runs (with engine ray in one local cluster, started first and timed apart);
    the last run's figures at the top level, every run's under ``runs``."""
    extra: dict = {}
    with contextlib.ExitStack() as stack:
        if engine == "ray":  # the cluster the stage starts, started once for all the runs
            from llama2_pipeline.data.config import CleaningConfig
            from llama2_pipeline.data.ray_engine import cluster

            t0 = time.perf_counter()
            stack.enter_context(cluster(workers, CleaningConfig(engine="ray")))
            extra["ray_init_s"] = time.perf_counter() - t0
        each = [_timed_clean(input_dir, workers, engine) for _ in range(runs)]
    metrics = [r.pop("metrics") for r in each][-1]
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    q.put({**each[-1], "metrics": metrics, "peak_rss_mib": rss_self / 1024,
           "workers": each[-1]["timing"]["workers"], "runs": each, **extra})


def _timed_clean(input_dir: str, workers: int, engine: str) -> dict:
    """One run: time, peak memory (driver, largest worker, all processes), output digest."""
    from llama2_pipeline.core.files import sha256_path
    from llama2_pipeline.data import clean_corpus

    out = Path(tempfile.mkdtemp(prefix="bench-clean-")) / "out"
    sampler = _TreeRss(worker_prefix="ray::" if engine == "ray" else None)
    sampler.start()
    t0 = time.perf_counter()
    report = clean_corpus(input_dir, out, {"engine": engine}, workers=workers, progress=False)
    dt = time.perf_counter() - t0
    sampler.stop_event.set()
    sampler.join()
    digest = sha256_path(out)
    shutil.rmtree(out.parent, ignore_errors=True)
    return {"seconds": dt, "peak_driver_rss_mib": sampler.peak_self / 2**20,
            "peak_worker_rss_mib": sampler.peak_worker / 2**20,
            "peak_driver_private_mib": sampler.private_self / 2**20,
            "peak_worker_private_mib": sampler.private_worker / 2**20,
            "peak_tree_rss_mib": sampler.peak_total / 2**20, "timing": report["timing"],
            "output_sha256": digest, "metrics": report["metrics"]}


def run_ours(input_dir: Path, workers: int, engine: str = "local", runs: int = 1) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child_clean, args=(str(input_dir), workers, q, engine, runs))
    p.start()
    while True:  # the child's result, or its death
        try:
            res = q.get(timeout=1.0)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"the {engine} benchmark run ({workers} workers) died: "
                                   f"exit code {p.exitcode}") from None
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


def compare_engines(input_dir: Path, worker_counts: list[int], repeat: int = 1) -> dict:
    """The local pool and Ray on each worker count, ``repeat`` interleaved pairs of runs (the
    machine may be shared): MiB/s (median and best), peak RSS, whether the bytes are the same."""
    out: dict = {"load_before": os.getloadavg()}
    for w in worker_counts:
        local, on_ray = [], []
        for _ in range(repeat):
            local.append(run_ours(input_dir, w))
            try:
                on_ray.append(run_ours(input_dir, w, engine="ray", runs=2))
            except RuntimeError as exc:  # e.g. Ray's 30 s node start-up limit on a loaded machine
                print(f"{exc}; once more")
                out["ray_restarts"] = out.get("ray_restarts", 0) + 1
                on_ray.append(run_ours(input_dir, w, engine="ray", runs=2))
        mib = local[0]["metrics"]["bytes_in"] / 2**20
        digests = {r["output_sha256"] for r in local} | {x["output_sha256"] for r in on_ray for x in r["runs"]}
        row = {"metrics": local[0]["metrics"], "local": _figures(local, mib),
               "ray_cold": _figures([r["runs"][0] for r in on_ray], mib),
               "ray_warm": _figures([r["runs"][1] for r in on_ray], mib),
               "ray_init_s": round(statistics.median(r["ray_init_s"] for r in on_ray), 2),
               "same_bytes": len(digests) == 1,
               "same_metrics": all(r["metrics"] == local[0]["metrics"] for r in local + on_ray)}
        for k in ("warm", "cold"):
            for stat in ("median", "best"):
                row[f"ray_vs_local_{k}_{stat}"] = round(
                    row[f"ray_{k}"][f"mib_per_s_{stat}"] / row["local"][f"mib_per_s_{stat}"], 3)
        row["ray_vs_local_with_init_median"] = round(
            mib / (row["ray_cold"]["seconds"] + row["ray_init_s"]) / row["local"]["mib_per_s"], 3)
        out[f"workers_{w}"] = row
        print(f"[{mib:.0f} MiB, {w} worker(s), median of {repeat}] local {row['local']['mib_per_s']:.2f} "
              f"MiB/s | ray warm {row['ray_warm']['mib_per_s']:.2f} ({row['ray_vs_local_warm_median']:.2f}x; "
              f"best {row['ray_vs_local_warm_best']:.2f}x), cold {row['ray_cold']['mib_per_s']:.2f} "
              f"({row['ray_vs_local_cold_median']:.2f}x), + cluster start {row['ray_init_s']:.1f}s "
              f"({row['ray_vs_local_with_init_median']:.2f}x) | peak RSS driver: local "
              f"{row['local']['peak_driver_rss_mib']:.0f} MiB, ray {row['ray_warm']['peak_driver_rss_mib']:.0f} "
              f"MiB; largest worker: local {row['local']['peak_worker_rss_mib']:.0f}, ray "
              f"{row['ray_warm']['peak_worker_rss_mib']:.0f} MiB (private "
              f"{row['ray_warm']['peak_worker_private_mib']:.0f}) | same bytes: {row['same_bytes']}")
    out["load_after"] = os.getloadavg()
    out["mib"] = round(mib, 2)
    out["docs"] = local[0]["metrics"]["docs_in"]
    return out


def _figures(runs: list[dict], mib: float) -> dict:
    """The median run's figures (by time), the best rate and every run's rate."""
    runs = sorted(runs, key=lambda r: r["seconds"])
    mid = runs[(len(runs) - 1) // 2]
    keep = ("seconds", "peak_driver_rss_mib", "peak_worker_rss_mib", "peak_driver_private_mib",
            "peak_worker_private_mib", "peak_tree_rss_mib")
    return {**{k: round(mid[k], 2) for k in keep}, "mib_per_s": round(mib / mid["seconds"], 3),
            "mib_per_s_median": round(mib / mid["seconds"], 3),
            "mib_per_s_best": round(mib / runs[0]["seconds"], 3),
            "mib_per_s_all": [round(mib / r["seconds"], 3) for r in runs], "timing": mid["timing"]}


def projection(sizes: list[dict], workers: int, target_mib: float = 2**20, hours: float = 1.0) -> dict:
    """Cores for ``target_mib`` (1 TB) in ``hours``, from the largest corpus's warm Ray run on
    ``workers`` CPUs. A projection: it assumes that the per-core rate (end to end: cleaning,
    dedup shuffle, writing), the shuffle volume, the edges and the removed documents per MiB
    stay as measured, and that adding nodes scales the parallel steps."""
    big = max(sizes, key=lambda r: r["mib"])
    row = big[f"workers_{workers}"]
    t, m = row["ray_warm"]["timing"], row["metrics"]
    per_core = row["ray_warm"]["mib_per_s"] / workers
    scale = target_mib / big["mib"]
    edges, removed = t["edges"] * scale, (m["dup_exact"] + m["dup_near"]) * scale
    return {"basis": f"{big['mib']} MiB corpus, Ray warm run on {workers} CPU(s)",
            "per_core_mib_per_s": round(per_core, 3),
            "cores": int(-(-target_mib // (per_core * 3600 * hours))),
            "shuffle_tib": round(t["shuffle_mib"] * scale / 2**20, 2),
            "shuffle_mib_per_s": round(t["shuffle_mib"] * scale / (3600 * hours), 1),
            "staged_text_tib": round(m["bytes_out"] / 2**20 * scale / 2**20, 2),
            "edges": int(edges), "driver_walk_s": round(edges / max(t["edges"], 1) * t["walk_s"], 1),
            "driver_removed_list_gib": round(removed * 24 / 2**30, 2),
            "note": "a projection from one 2-core machine, not a measurement: scale-out "
                    "efficiency, network and object-store spilling are not measured"}


EDGE_BYTES = 25  # one verified edge as the driver maps it: j, i, ref (int64), kind (int8)


def driver_memory(sizes: list[dict], workers: int) -> dict:
    """The Ray driver's peak memory per corpus size on ``workers`` CPUs, first run on a fresh
    cluster and warm run, and its growth from the smallest to the largest corpus beside the edge
    list's (the one thing the driver maps in proportion to the corpus). RSS counts the object
    store's pages the driver maps (the edge list; in a warm run also pages of the run before);
    private is the driver's own memory."""
    names = [f"{r['mib']:.0f}_mib" for r in sizes]
    edges = [r[f"workers_{workers}"]["ray_cold"]["timing"]["edges"] for r in sizes]
    out: dict = {"workers": workers, "edges": dict(zip(names, edges, strict=True)),
                 "edge_list_growth_mib": round((edges[-1] - edges[0]) * EDGE_BYTES / 2**20, 1)}
    for run in ("ray_cold", "ray_warm"):
        rows = [r[f"workers_{workers}"][run] for r in sizes]
        out[run] = {}
        for kind, key in (("rss", "peak_driver_rss_mib"), ("private", "peak_driver_private_mib")):
            out[run][f"peak_{kind}_mib"] = {n: round(w[key], 1) for n, w in zip(names, rows, strict=True)}
            out[run][f"{kind}_growth_mib"] = round(rows[-1][key] - rows[0][key], 1)
    return {"driver_memory": out}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--docs", type=int, help="synthesise this many documents")
    g.add_argument("--mb", type=float, nargs="+",
                   help="synthesise about this many MiB of text (default 20; several with --engine ray)")
    g.add_argument("--input", type=Path, nargs="+",
                   help="folder of raw *.parquet shards to read instead (several with --engine ray)")
    ap.add_argument("--workers", type=int, default=0, help="'all workers' run (0 = all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--world", action="store_true",
                    help="with --mb: the project's simulated crawl (params.yaml's world) instead of the web-like corpus")
    ap.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="local: ours against datatrove; ray: the local pool against Ray")
    ap.add_argument("--repeat", type=int, default=1,
                    help="with --engine ray: interleaved local/Ray pairs per worker count (median)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.engine == "ray":
        return main_engines(args)
    if (args.mb and len(args.mb) > 1) or (args.input and len(args.input) > 1):
        ap.error("several --mb sizes or --input folders only with --engine ray")

    tmp = Path(tempfile.mkdtemp(prefix="bench-corpus-"))
    try:
        if args.input:
            input_dir = args.input[0]
        else:
            input_dir = tmp / "raw"
            t0 = time.perf_counter()
            mb = None if args.docs else (args.mb[0] if args.mb else 20.0)
            docs = world_docs(mb) if args.world and mb else synth_docs(args.docs, mb, args.seed)
            n, nb = write_corpus(input_dir, docs)
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


def main_engines(args) -> dict:
    from llama2_pipeline.core.files import write_json
    from llama2_pipeline.data.pipeline import resolve_workers

    n_all = resolve_workers(args.workers)
    counts = sorted({1, n_all})
    results: dict = {"cores": n_all, "cpu": _cpu_model(), "repeat": args.repeat,
                     "corpus": "input" if args.input else "world" if args.world else "web-like", "sizes": []}
    for mb, folder in ([(None, f) for f in args.input] if args.input else
                       [(None, None)] if args.docs else [(m, None) for m in args.mb or [20.0]]):
        tmp = Path(tempfile.mkdtemp(prefix="bench-corpus-"))
        try:
            input_dir = folder or tmp / "raw"
            if not folder:
                t0 = time.perf_counter()
                docs = world_docs(mb) if args.world else synth_docs(args.docs, mb, args.seed)
                n, nb = write_corpus(input_dir, docs)
                print(f"synthesised {n} {'world ' if args.world else ''}docs, {nb / 2**20:.1f} MiB "
                      f"in {time.perf_counter() - t0:.1f}s")
            results["sizes"].append({"input": str(folder) if folder else None,
                                     **compare_engines(input_dir, counts, args.repeat)})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if len(results["sizes"]) > 1:
        results.update(driver_memory(results["sizes"], n_all))
    results["projection_1tb_in_1h"] = projection(results["sizes"], n_all)
    print("projection (1 TB in an hour):", results["projection_1tb_in_1h"])
    if args.json:
        write_json(args.json, results)
    return results


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
