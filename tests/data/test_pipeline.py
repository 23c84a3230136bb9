"""clean_corpus end to end: determinism across workers, report, bad input, atomic output."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llama2_pipeline.core.files import sha256_path
from llama2_pipeline.data import (
    CleaningConfig,
    CorpusError,
    clean_corpus,
    plot_cleaning_report,
    save_report_plot,
)
from llama2_pipeline.data.report import PII_KEYS, REMOVAL_KEYS

from .corpus import document, raw_corpus, write_shards

SMALL = {"shard_docs": 15, "chunk_docs": 8}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    rows = raw_corpus(seed=0, n_docs=60)
    rows.append({"id": "dense", "source": "directory",
                 "text": "Staff list\n" + "\n".join(f"Person {i}: p{i}@example.com, +1 (555) 201-{1000 + i}"
                                                    for i in range(30))})
    return write_shards(tmp_path_factory.mktemp("raw"), rows, per_shard=25), rows


@pytest.fixture(scope="module")
def cleaned(raw, tmp_path_factory):
    folder, rows = raw
    out = tmp_path_factory.mktemp("clean") / "out1"
    report = clean_corpus(folder, out, SMALL, workers=1, progress=False)
    return out, report, rows


def test_output_identical_for_one_and_two_workers(raw, cleaned, tmp_path):
    out1, rep1, _ = cleaned
    out2 = tmp_path / "out2"
    rep2 = clean_corpus(raw[0], out2, SMALL, workers=2, progress=False)
    assert sha256_path(out1) == sha256_path(out2)
    assert rep1["metrics"] == rep2["metrics"] and rep1["examples"] == rep2["examples"]


def test_output_layout_and_columns(cleaned):
    out, report, _ = cleaned
    parts = sorted(p.name for p in out.iterdir())
    assert parts == [f"part-{i:05d}.parquet" for i in range(len(parts))] and len(parts) >= 2
    table = pa.concat_tables(pq.read_table(out / p) for p in parts)
    assert table.column_names[:3] == ["id", "text", "source"]
    assert {"n_chars", "n_words", "n_bytes", "n_lines", "mean_word_length", "pii_redacted"} <= set(table.column_names)
    assert table.num_rows == report["metrics"]["docs_out"]
    assert len(set(table.column("id").to_pylist())) == table.num_rows
    for p in parts[:-1]:
        assert pq.read_metadata(out / p).num_rows == SMALL["shard_docs"]


def test_report_contents(cleaned):
    _, report, rows = cleaned
    m = report["metrics"]
    json.dumps(report)  # JSON-able
    assert all(isinstance(v, (int, float)) and re.fullmatch(r"[a-z0-9_]+", k) for k, v in m.items())
    assert set(REMOVAL_KEYS) <= set(m) and set(PII_KEYS) <= set(m)
    assert m["docs_in"] == len(rows)
    assert m["bytes_in"] == sum(len(r["text"].encode()) for r in rows)
    removed = sum(m[k] for k in REMOVAL_KEYS)
    assert m["docs_out"] + removed == m["docs_in"] and m["docs_removed"] == removed
    assert m["dup_exact"] >= 1 and m["dup_near"] >= 1
    assert m["removed_stop_words"] >= 1 and m["removed_alpha_words"] >= 1
    assert m["dropped_pii_density"] == 1 and m["pii_email"] >= 30 and m["pii_phone"] >= 30
    assert m["bytes_out"] < m["bytes_in"] and 0 < m["docs_kept_frac"] < 1
    ex = report["examples"]
    assert ex and all({"rule", "id", "file", "row", "snippet"} <= set(e) for e in ex)
    assert any(e["rule"] == "dup_near" and e["duplicate_of"] for e in ex)
    assert not any("@example.com" in e["snippet"] for e in ex)


def test_output_has_no_pii_and_dups(cleaned):
    out, _, rows = cleaned
    texts = pa.concat_tables(pq.read_table(p) for p in sorted(out.iterdir())).column("text").to_pylist()
    assert not any("@example.com" in t or "(555)" in t for t in texts)
    assert any("<EMAIL>" in t for t in texts)
    assert len(set(texts)) == len(texts)


def test_plot(cleaned, tmp_path):
    fig = plot_cleaning_report(cleaned[1])
    assert len(fig.axes) == 2
    save_report_plot(cleaned[1], tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------- bad input


def good_rows(n=5, seed=1):
    import random
    rng = random.Random(seed)
    return [{"id": f"g{i}", "text": document(rng, 12), "source": "web"} for i in range(n)]


def test_corrupt_parquet_names_the_file(tmp_path):
    folder = write_shards(tmp_path / "raw", good_rows())
    (folder / "zz-broken.parquet").write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(CorpusError, match="zz-broken.parquet"):
        clean_corpus(folder, tmp_path / "out", {}, workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_truncated_parquet_names_the_file(tmp_path):
    folder = write_shards(tmp_path / "raw", good_rows())
    path = next(folder.iterdir())
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(CorpusError, match=path.name):
        clean_corpus(folder, tmp_path / "out", {}, workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_text_column_names_file_and_column(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a"], "body": ["hello"]}), folder / "notext.parquet")
    with pytest.raises(CorpusError, match=r"notext\.parquet.*'text'") as err:
        clean_corpus(folder, tmp_path / "out", {}, workers=1, progress=False)
    assert err.value.column == "text" and err.value.file.endswith("notext.parquet")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make", ["no_files", "zero_rows", "missing_dir"])
def test_empty_corpus_is_an_error(tmp_path, make):
    folder = tmp_path / "raw"
    if make != "missing_dir":
        folder.mkdir()
    if make == "zero_rows":
        pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
                       folder / "empty.parquet")
    with pytest.raises(CorpusError, match="empty corpus|does not exist"):
        clean_corpus(folder, tmp_path / "out", {}, workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_per_document_faults_are_counted_drops(tmp_path):
    rows = good_rows(4)
    big = document(__import__("random").Random(9), 400)
    texts = [rows[0]["text"], None, rows[1]["text"], big, rows[2]["text"]]
    raw = [t.encode() if t is not None else None for t in texts]
    raw.append(b"caf\xc3\xa9 " * 30 + b"\xff\xfe\xfd" * 200)  # mostly broken UTF-8
    table = pa.table({"id": [f"r{i}" for i in range(len(raw))],
                      "text": pa.array(raw, pa.binary()).view(pa.string()),
                      "source": ["x"] * len(raw), "extra": list(range(len(raw)))})
    folder = tmp_path / "raw"
    folder.mkdir()
    pq.write_table(table, folder / "faults.parquet")
    cfg = {"max_doc_chars": len(big) - 1, "bad_rows": "drop"}
    report = clean_corpus(folder, tmp_path / "out", cfg, workers=1, progress=False)
    m = report["metrics"]
    assert (m["removed_null_text"], m["removed_oversize"], m["removed_invalid_utf8"]) == (1, 1, 1)
    assert m["docs_out"] == 3
    where = {e["rule"]: (e["file"], e["row"]) for e in report["examples"]}
    assert where["null_text"] == ("faults.parquet", 1)
    assert where["oversize"] == ("faults.parquet", 3)
    assert where["invalid_utf8"] == ("faults.parquet", 5)


def test_non_string_column_is_counted(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": [1, 2]}), folder / "ints.parquet")
    write_shards(folder, good_rows(2))
    report = clean_corpus(folder, tmp_path / "out", {"bad_rows": "drop"}, workers=1, progress=False)
    assert report["metrics"]["removed_non_string"] == 2 and report["metrics"]["docs_out"] == 2


def test_a_row_that_is_no_document_stops_the_run_by_default(tmp_path):
    """bad_rows: stop (the default): a null text names the file and the row, and nothing is written."""
    folder = tmp_path / "raw"
    folder.mkdir()
    rows = good_rows(3)
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": [rows[0]["text"], None, rows[2]["text"]]}),
                   folder / "nulls.parquet")
    with pytest.raises(CorpusError) as e:
        clean_corpus(folder, tmp_path / "out", {}, workers=1, progress=False)
    assert f"{folder / 'nulls.parquet'}, row 2 (counting from 1; id 'b'): column 'text' is null" in str(e.value)
    assert "data_processing.bad_rows: drop" in str(e.value) and e.value.row == 1
    assert not (tmp_path / "out").exists()


def test_missing_ids_are_synthesised_and_all_removed_gives_empty_shard(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    pq.write_table(pa.table({"text": ["too short", "also short"]}), folder / "noid.parquet")
    report = clean_corpus(folder, tmp_path / "out", {}, workers=1, progress=False)
    assert report["metrics"]["docs_out"] == 0
    assert [e["id"] for e in report["examples"]] == ["noid:0", "noid:1"]
    assert pq.read_table(tmp_path / "out" / "part-00000.parquet").num_rows == 0


def test_failure_keeps_previous_output(tmp_path):
    folder = write_shards(tmp_path / "raw", good_rows())
    out = tmp_path / "out"
    clean_corpus(folder, out, {}, workers=1, progress=False)
    before = sha256_path(out)
    (folder / "zz.parquet").write_bytes(b"garbage")
    with pytest.raises(CorpusError):
        clean_corpus(folder, out, {}, workers=1, progress=False)
    assert sha256_path(out) == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_bad_config_is_rejected(tmp_path):
    folder = write_shards(tmp_path / "raw", good_rows())
    with pytest.raises(ValueError, match="quality.min_wrds"):
        clean_corpus(folder, tmp_path / "out", {"quality": {"min_wrds": 3}}, progress=False)
    with pytest.raises(ValueError, match="workers"):
        clean_corpus(folder, tmp_path / "out", {}, workers=-1, progress=False)
    assert isinstance(CleaningConfig.from_dict({}), CleaningConfig)


def test_row_ranges_of_a_file_give_its_rows(tmp_path):
    from llama2_pipeline.data.corpus_io import file_chunks, scan_inputs

    rows = raw_corpus(seed=4, n_docs=50)
    (tmp_path / "raw").mkdir()
    pq.write_table(pa.table({c: [r[c] for r in rows] for c in ("id", "text", "source")}),
                   tmp_path / "raw" / "groups.parquet", row_group_size=12)
    f = scan_inputs(tmp_path / "raw")[0]
    assert f.row_groups == [12, 12, 12, 12, 2]

    def rows_of(chunks):
        return [(c.row0 + i, t) for c in chunks for i, t in enumerate(c.batch.column("text").to_pylist())]

    whole = rows_of(file_chunks(f, 5))
    assert [r for r, _ in whole] == list(range(50))
    for lo, hi in ((0, 50), (3, 17), (12, 24), (30, 31), (47, 50), (20, 20)):
        assert rows_of(file_chunks(f, 5, range(lo, hi))) == whole[lo:hi]

