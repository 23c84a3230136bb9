"""Provenance without a pipeline run: environment tags and the bitwise verdict, bounded checkpoint
workspaces, dialogue files checked by file and line, dead-process detection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from llama2_pipeline.project.datasets import DialoguesDataset, run_folder
from llama2_pipeline.project.environment import bitwise_expected, environment
from llama2_pipeline.project.provenance import process_alive, process_tag


def test_environment_names_versions_cpu_and_switches(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    env = environment()
    for key in ("python", "torch", "deepspeed", "transformers", "kedro", "mlflow", "numpy", "cpu", "cpu_vendor",
                "cpu_isa", "cpu_isa_level", "cpu_cores", "gpu", "switches"):
        assert env.get(f"env.{key}"), key
    assert env["env.torch"].startswith("2.") and "MKL_CBWR=COMPATIBLE" in env["env.switches"]
    if sys.platform == "linux":
        assert env["env.cpu_isa_level"] in ("avx512", "avx2", "default")
    assert all(isinstance(v, str) and len(v) < 5000 for v in env.values())  # valid MLflow tag values


def test_bitwise_verdict_names_what_differs():
    here = {"env.python": "3.11.9", "env.torch": "2.13.0", "env.cpu_vendor": "AuthenticAMD",
            "env.cpu_isa_level": "avx512", "env.cpu_cores": "2", "env.gpu": "none", "env.switches": "none",
            "env.torch_cpu_capability": "avx512", "env.torch_threads": "2"}
    assert bitwise_expected(here, dict(here)) == (True, [])
    other = {**here, "env.torch": "2.12.0", "env.cpu_vendor": "GenuineIntel", "env.torch_cpu_capability": "avx2",
             "env.cpu": "another model"}
    ok, diffs = bitwise_expected(other, here)
    assert not ok and diffs == ["torch: 2.12.0 recorded, 2.13.0 here", "torch CPU kernels: avx2 recorded, avx512 here",
                                "MKL code path: GenuineIntel avx512 recorded, AuthenticAMD avx512 here"]
    # MKL_CBWR pins MKL's code path on both machines: the vendor no longer decides
    pinned = {**here, "env.switches": "MKL_CBWR=COMPATIBLE"}
    assert bitwise_expected({**pinned, "env.cpu_vendor": "GenuineIntel"}, pinned) == (True, [])
    assert bitwise_expected({**here, "env.torch_threads": "4"}, here)[1] == ["threads: 4 recorded, 2 here"]
    assert bitwise_expected({"git_commit": "x"}, here)[0] is False  # a run without env.* tags


def test_run_folders_of_recent_configurations_are_kept_up_to_the_bound(tmp_path):
    ws = tmp_path / "pretrain_run"
    ws.mkdir()
    folders = {}
    for lr in (1, 2, 3, 4):
        folders[lr] = run_folder(ws, {"train": {"lr": lr, "keep_runs": 3}}, keep=3)
        (folders[lr] / "checkpoints").mkdir()
        time.sleep(0.02)
    assert sorted(p.name for p in ws.iterdir()) == sorted(folders[k].name for k in (2, 3, 4))
    # switching back to a kept configuration finds its checkpoints; the bound itself is no configuration
    again = run_folder(ws, {"train": {"lr": 2, "keep_runs": 5}}, keep=3)
    assert again == folders[2] and (again / "checkpoints").is_dir()
    time.sleep(0.02)
    five = run_folder(ws, {"train": {"lr": 5}}, keep=3)  # evicts the least recently used: lr 3
    assert {p.name for p in ws.iterdir()} == {folders[2].name, folders[4].name, five.name}
    run_folder(ws, {"train": {"lr": 6}}, keep=1)
    assert len(list(ws.iterdir())) == 1


@pytest.mark.parametrize("line, message", [
    ('{"id": "byo-sft-0009", "messages": [{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "?"}]}',
     "sft.jsonl, line 3: dialogue 'byo-sft-0009', message 1: expected role 'user' first, got 'assistant'"),
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]}',
     "sft.jsonl, line 3: dialogue, message 2: assistant message has empty content"),
    ('{"id": "x", "messages": [{"role": "user", "content": "Hi"}]}',
     "sft.jsonl, line 3: dialogue 'x', message 1: a training dialogue must end with an assistant message"),
    ('{"text": "no messages"}', "sft.jsonl, line 3: expected an object with a 'messages' list"),
    ('{"id": "cut", "messages": [{"role": "user", "content": "Hel',
     "sft.jsonl, line 3: not valid JSON: the line ends before its JSON value does"),
])
def test_a_bad_dialogue_is_named_by_file_line_and_message(tmp_path, line, message):
    good = json.dumps({"id": "ok", "messages": [{"role": "user", "content": "Hi"},
                                                {"role": "assistant", "content": "Hello."}]})
    f = tmp_path / "sft.jsonl"
    f.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(Exception) as e:
        DialoguesDataset(str(f)).load()
    assert message in str(e.value), str(e.value)
    f.write_text(f"{good}\n")
    assert DialoguesDataset(str(f)).load()[0]["id"] == "ok"


def test_a_dead_process_is_told_from_a_live_one():
    assert process_alive(process_tag())
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    tag = process_tag(p.pid)
    p.wait()
    assert not process_alive(tag)
    pid = os.getpid()
    assert not process_alive(f"{pid}@1")  # the same pid, another start time: a reused pid
