import os
import stat

import pytest

from llama2_pipeline.core.files import atomic_path, sha256_path, write_json


def test_atomic_file_is_replaced_only_on_success(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left behind


def test_atomic_dir_replaces_whole_folder_and_has_normal_permissions(tmp_path):
    target = tmp_path / "folder"
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~mask
    write_json(tmp_path / "x.json", {})
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o666 & ~mask


def test_folder_digest_depends_on_names_and_contents(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_text("1")
    first = sha256_path(tmp_path / "d")
    (tmp_path / "d" / "a").write_text("2")
    assert sha256_path(tmp_path / "d") != first
    with pytest.raises(FileNotFoundError, match="no such file"):
        sha256_path(tmp_path / "missing")


def test_git_dirty_counts_code_not_dvc_outputs(tmp_path):
    import subprocess

    from llama2_pipeline.project.hooks import git_state

    for rel in ("src/code.py", "params.yaml", "dvc.lock", "metrics/sft.json", "data/08_reporting/report.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("v1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run("git init -q && git add -A", cwd=tmp_path, shell=True, check=True)
    subprocess.run(git + ["commit", "-qm", "c"], cwd=tmp_path, check=True)
    sha, dirty = git_state(tmp_path)
    assert len(sha) == 40 and not dirty
    for rel in ("dvc.lock", "metrics/sft.json", "data/08_reporting/report.md"):  # what dvc repro writes
        (tmp_path / rel).write_text("v2\n")
    assert git_state(tmp_path) == (sha, False)
    (tmp_path / "params.yaml").write_text("v2\n")
    assert git_state(tmp_path) == (sha, True)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_every_file_of_an_exported_model_follows_the_umask(tmp_path, umask):
    """safetensors writes owner-only files; an exported model folder still follows the user's umask."""
    from llama2_pipeline.model import Llama, ModelConfig, export_hf

    saved = os.umask(umask)
    try:
        out = export_hf(Llama(ModelConfig.from_preset("smoke")), tmp_path / "model")
    finally:
        os.umask(saved)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [out, *out.iterdir()]}
    assert modes == {"model": 0o777 & ~umask, "model.safetensors": 0o666 & ~umask, "config.json": 0o666 & ~umask}


def test_a_truncated_json_line_is_named_by_file_and_line(tmp_path):
    from llama2_pipeline.core.files import read_jsonl

    f = tmp_path / "dialogues.jsonl"
    f.write_text('{"messages": []}\n{"messages": [{"role": "user", "content": "Hel\n')
    with pytest.raises(ValueError) as e:
        read_jsonl(f)
    assert str(e.value).startswith(f"{f}, line 2: not valid JSON: the line ends before its JSON value does "
                                   "(a truncated line? Unterminated string")
    f.write_text('{"a": 1}\n{"a": 1,, "b": 2}\n')
    with pytest.raises(ValueError, match=r"dialogues.jsonl, line 2: not valid JSON: Expecting property name .* "
                                         r"at column 9$"):
        read_jsonl(f)
