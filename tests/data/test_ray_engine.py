"""engine: ray writes the local engine's bytes: on a world corpus, on chains of near duplicates
with an oversized bucket, with a worker killed mid-run; bad shards name the file; the default
engine never imports Ray. One local Ray cluster (2 CPUs) serves the whole module."""

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from llama2_pipeline.data import CorpusError, PIILeakError, clean_corpus
from llama2_pipeline.data.dedup import MinHasher
from llama2_pipeline.world import World

from .corpus import document, mutate, raw_corpus, write_shards

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
WORLD = {"seed": 5, "n_entities": 8,
         "prompts": {"n_arithmetic": 60, "n_list": 30, "n_string": 30, "eval_fraction": 0.2},
         "corpus": {"size_mb": 3.0, "shard_docs": 700,
                    "mix": {"article": 0.30, "demo": 0.25, "prose": 0.08, "pii": 0.06, "pii_dump": 0.02,
                            "exact_dup": 0.06, "near_dup": 0.06, "boilerplate": 0.04, "spam": 0.03,
                            "gibberish": 0.03, "markup": 0.04, "short": 0.03}},
         "sft": {"n_dialogues": 10, "multi_turn_fraction": 0.2, "max_turns": 3, "system_fraction": 0.2,
                 "constraint_fraction": 0.1},
         "annotator": {"disagreement_rate": 0.0}}
WORLD_CLEANING = {"shard_docs": 2500, "chunk_docs": 100}  # 2 shards, the first of 2 row groups


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local cluster whose workers can be told to kill themselves once (tests/data/ray_faults)."""
    marker = tmp_path_factory.mktemp("fault") / "kill"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             _system_config={"worker_niceness": 0},  # as the engine's own cluster (see cluster())
             runtime_env={"worker_process_setup_hook": "tests.data.ray_faults.kill_once",
                          "env_vars": {"PYTHONPATH": path, "LLAMA2_TEST_KILL_MARKER": str(marker)}})
    yield marker
    ray.shutdown()


def on_ray(cfg: dict) -> dict:
    return {**cfg, "engine": "ray"}


def assert_same_output(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def assert_same_report(a: dict, b: dict) -> None:
    assert {k: v for k, v in a.items() if k != "timing"} == {k: v for k, v in b.items() if k != "timing"}
    assert (a["timing"]["engine"], b["timing"]["engine"]) == ("local", "ray")


@pytest.fixture(scope="module")
def world_corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world_raw")
    for i, shard in enumerate(World.from_params(WORLD).corpus_shards()):
        pq.write_table(pa.table({c: [d[c] for d in shard] for c in ("id", "text", "source")}),
                       folder / f"raw-{i:05d}.parquet")
    out = tmp_path_factory.mktemp("world_local") / "clean"
    return folder, out, clean_corpus(folder, out, WORLD_CLEANING, workers=1, progress=False)


def test_world_corpus_same_bytes_and_report(cluster, world_corpus, tmp_path):
    raw, local_out, local = world_corpus
    report = clean_corpus(raw, tmp_path / "clean", on_ray(WORLD_CLEANING), progress=False)
    assert_same_output(local_out, tmp_path / "clean")
    assert_same_report(local, report)
    m = report["metrics"]
    assert m["output_shards"] == 2
    assert pq.ParquetFile(tmp_path / "clean" / "part-00000.parquet").num_row_groups == 2
    assert m["dup_exact"] and m["dup_near"] and m["dropped_pii_density"] and m["removed_min_words"]


def test_worker_killed_mid_run_gives_the_same_bytes(cluster, world_corpus, tmp_path):
    raw, local_out, local = world_corpus
    Path(f"{cluster}.armed").touch()
    try:  # ray.unit_rows 200: row groups cut in pieces, more and smaller tasks
        report = clean_corpus(raw, tmp_path / "clean", on_ray({**WORLD_CLEANING, "ray": {"unit_rows": 200}}),
                              progress=False)
    finally:
        Path(f"{cluster}.armed").unlink()
    assert Path(f"{cluster}.fired").exists()  # a worker did die, and its task was retried
    assert report["timing"]["units"] > len(list(Path(raw).glob("*.parquet")))  # files cut into units
    assert_same_output(local_out, tmp_path / "clean")
    assert_same_report(local, report)


def chain_rows() -> tuple[list[dict], dict]:
    """Dirt of every kind, a chain A~B~C with A and C not similar, and 16 copies (3 exact, the
    others one word apart) of one document D: D's LSH buckets hold 16 documents."""
    rng = random.Random(7)
    a = document(rng, 20)
    b = mutate(rng, a, 6)
    c = mutate(rng, b, 6)
    mh = MinHasher()
    agree = lambda x, y: float(np.mean(mh.signature(x) == mh.signature(y)))
    assert agree(a, b) >= 0.7 and agree(b, c) >= 0.7 and agree(a, c) < 0.7
    assert (mh.band_keys(mh.signature(a)) == mh.band_keys(mh.signature(c))).any()  # compared
    d = document(random.Random(8), 16)
    copies = [d] * 3 + [mutate(random.Random(i), d, 1) for i in range(13)]
    rows = raw_corpus(seed=0, n_docs=60)
    rows[10:10] = [{"id": k, "text": t, "source": "chain"} for k, t in (("A", a), ("B", b), ("C", c))]
    rows[30:30] = [{"id": f"D{i}", "text": t, "source": "cluster"} for i, t in enumerate(copies)]
    return rows, {"shard_docs": 20, "chunk_docs": 16, "dedup": {"max_bucket": 4}}


@pytest.mark.parametrize("dedup", [{}, {"exact": False}, {"near": False}, {"max_bucket": None}])
def test_chains_and_an_oversized_bucket_same_bytes(cluster, tmp_path, dedup):
    rows, cfg = chain_rows()
    cfg = {**cfg, "dedup": {**cfg["dedup"], **dedup}}
    raw = write_shards(tmp_path / "raw", rows, per_shard=25)
    local = clean_corpus(raw, tmp_path / "local", cfg, workers=1, progress=False)
    report = clean_corpus(raw, tmp_path / "ray", on_ray(cfg), progress=False)
    assert_same_output(tmp_path / "local", tmp_path / "ray")
    assert_same_report(local, report)
    ids = set(pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "ray").iterdir()))
              .column("id").to_pylist())
    if dedup.get("near", True):
        assert {"A", "C"} <= ids and "B" not in ids  # the greedy rule: B goes, C stays
        assert sum(i.startswith("D") for i in ids) == 1


def test_everything_removed_same_empty_shard(cluster, tmp_path):
    raw = write_shards(tmp_path / "raw", [{"id": f"s{i}", "text": "too short", "source": "x"}
                                          for i in range(30)], per_shard=10)
    local = clean_corpus(raw, tmp_path / "local", {}, workers=1, progress=False)
    report = clean_corpus(raw, tmp_path / "ray", on_ray({}), progress=False)
    assert report["metrics"]["docs_out"] == 0
    assert_same_output(tmp_path / "local", tmp_path / "ray")
    assert_same_report(local, report)


def _corrupt_page(folder: Path) -> Path:
    """A shard whose footer is fine but whose text column's data is not (found by a worker)."""
    path = folder / "shard-001.parquet"
    pq.write_table(pq.read_table(path), path, compression="zstd", use_dictionary=False)
    col = pq.ParquetFile(path).metadata.row_group(0).column(1)
    data = bytearray(path.read_bytes())
    at = col.data_page_offset + col.total_compressed_size // 2
    data[at:at + 64] = bytes(64)
    path.write_bytes(bytes(data))
    return path


def _garbage(folder: Path) -> Path:
    (folder / "zz-broken.parquet").write_bytes(b"PAR1 this is not parquet at all")
    return folder / "zz-broken.parquet"


def _no_text(folder: Path) -> Path:
    pq.write_table(pa.table({"id": ["a"], "body": ["hello"]}), folder / "notext.parquet")
    return folder / "notext.parquet"


def _null_text(folder: Path) -> Path:
    """A row that is no document (bad_rows: stop, the default): the error names file and row."""
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["a fine document about apples.", None],
                             "source": ["web", "web"]}), folder / "nulls.parquet")
    return folder / "nulls.parquet"


@pytest.mark.parametrize("spoil", [_corrupt_page, _garbage, _no_text, _null_text])
def test_bad_shard_names_the_file(cluster, tmp_path, spoil):
    raw = write_shards(tmp_path / "raw", raw_corpus(seed=3, n_docs=75), per_shard=25)
    bad = spoil(raw)
    with pytest.raises(CorpusError, match=bad.name) as local:
        clean_corpus(raw, tmp_path / "out", {}, workers=1, progress=False)
    with pytest.raises(CorpusError, match=bad.name) as err:
        clean_corpus(raw, tmp_path / "out", on_ray({}), progress=False)
    assert (str(err.value), err.value.file, err.value.row, err.value.column) == (
        str(local.value), local.value.file, local.value.row, local.value.column)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [raw]


def test_an_output_given_as_a_uri_gets_the_same_bytes_and_a_failed_run_leaves_nothing(cluster, tmp_path):
    """A URI output (file://, as for an object store) goes through pyarrow's filesystem and a
    temporary folder beside the target instead of a local rename."""
    raw = write_shards(tmp_path / "raw", raw_corpus(seed=3, n_docs=75), per_shard=25)
    clean_corpus(raw, tmp_path / "local", {}, workers=1, progress=False)
    clean_corpus(raw, (tmp_path / "uri").as_uri(), on_ray({}), progress=False)
    assert_same_output(tmp_path / "local", tmp_path / "uri")
    bad = _null_text(raw)
    with pytest.raises(CorpusError, match=bad.name):
        clean_corpus(raw, (tmp_path / "failed").as_uri(), on_ray({}), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local", "raw", "uri"]


def test_a_run_cleaned_up_while_a_worker_still_writes_leaves_nothing(tmp_path):
    """After a worker's error the other workers' running tasks still write their unit files for a
    while; the driver's cleanup keeps deleting until the folder is gone (seen in CI: one delete
    failed, 'Directory not empty'), and a task cannot write into a removed folder."""
    from llama2_pipeline.data.ray_engine import _empty

    fs, work = pafs.LocalFileSystem(), tmp_path / "out.tmp" / "_work"
    work.mkdir(parents=True)
    started, written = threading.Event(), []

    def straggler():  # a task finishing its unit: files for 0.3 s, or until its folder is gone
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            try:
                with fs.open_output_stream(str(work / f"unit-{len(written):07d}.parquet")) as f:
                    f.write(b"x" * 4096)
            except FileNotFoundError:
                return
            written.append(1)
            started.set()

    task = threading.Thread(target=straggler)
    task.start()
    started.wait(5)
    _empty(fs, str(work), remove=True)
    task.join()
    assert written and not work.exists() and list(work.parent.iterdir()) == []
    with pytest.raises(FileNotFoundError):  # a task's file after the removal is refused, not left
        fs.open_output_stream(str(work / "unit-late.parquet"))
    (work.parent / "shard-00000.parquet").write_bytes(b"x")  # the error path: the folder emptied, kept
    _empty(fs, str(work.parent))
    assert work.parent.is_dir() and list(work.parent.iterdir()) == []


def test_default_engine_does_not_import_ray(tmp_path):
    raw = write_shards(tmp_path / "raw", raw_corpus(seed=1, n_docs=20))
    code = ("import sys; from llama2_pipeline.data import clean_corpus; "
            f"clean_corpus({str(raw)!r}, {str(tmp_path / 'out')!r}, {{}}, workers=1, progress=False); "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)})


def test_a_surviving_canary_stops_both_engines(cluster, tmp_path):
    """The canary check runs on the Ray engine's output too, before anything is published."""
    raw = write_shards(tmp_path / "raw", raw_corpus(seed=2, n_docs=40), per_shard=20)
    cfg = {"pii": {"enabled": False}}
    clean_corpus(raw, tmp_path / "probe", cfg, workers=1, progress=False)
    kept = pq.read_table(tmp_path / "probe" / "part-00000.parquet").slice(0, 1).to_pylist()[0]
    canaries = [{"doc_id": kept["id"], "kind": "email", "value": kept["text"][:40]}]
    for name, c in (("local", cfg), ("ray", on_ray(cfg))):
        with pytest.raises(PIILeakError, match="survived cleaning"):
            clean_corpus(raw, tmp_path / name, c, workers=1, progress=False, canaries=canaries)
        assert not (tmp_path / name).exists()


def test_signature_files_read_whole_or_by_row(tmp_path):
    """The partitions read the signatures they need from the units' signature files: a unit
    with many needed rows is read whole, one with few row by row; both give the same rows."""
    import pyarrow.fs as pafs

    from llama2_pipeline.data import ray_tasks

    fs, rng = pafs.LocalFileSystem(), np.random.default_rng(0)
    sigs = [rng.integers(0, 2**32, size=(n, 8), dtype=np.uint32) for n in (40, 64, 3)]
    paths = [ray_tasks.sig_path(str(tmp_path / f"unit-{u:07d}.parquet")) for u in range(3)]
    for path, s in zip(paths, sigs):
        ray_tasks.write_signatures(fs, path, s)
    assert paths[0].endswith("unit-0000000.sig") and os.path.getsize(paths[1]) == 64 * 8 * 4
    unit = np.array([0] * 30 + [1, 1] + [2], dtype=np.int64)  # unit 0 whole, 1 by row, 2 whole
    row = np.concatenate([np.arange(5, 35), [63, 2], [1]])
    got = ray_tasks.read_signatures(fs, paths, unit, row, 8)
    want = np.stack([sigs[u][r] for u, r in zip(unit.tolist(), row.tolist())])
    assert got.dtype == np.uint32 and np.array_equal(got, want)
    assert ray_tasks.read_signatures(fs, paths, unit[:0], row[:0], 8).shape == (0, 8)
