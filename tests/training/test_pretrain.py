"""Pretraining end to end on the smoke preset: learning, outputs, determinism, kill -9 resume,
NaN handling, checkpoint/model mismatch and bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from llama2_pipeline.model import Llama, ModelConfig, load_hf
from llama2_pipeline.training import (CheckpointMismatchError, Checkpointer, NonFiniteLossError, RandomWindows,
                                      RunContext, TrainConfig, build_engine, lm_loss, read_metrics,
                                      setup_run, train)
from llama2_pipeline.training import runner
from llama2_pipeline.training.pretrain import PretrainStage, evaluate_blocks, pretrain, resolve_model_config, val_blocks
from llama2_pipeline.tokenizer.shards import TokenShards

from .conftest import MODEL, VOCAB, markov_tokens, train_cfg, write_shards

# the reference run: big enough batches that 30 steps take ~1 s (room to kill -9 mid-run)
RUN = train_cfg(micro_batch=8, seq_len=64, max_steps=40, checkpoint_every=10)


@pytest.fixture(scope="module")
def reference(shards_dir, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    logged = []
    metrics = pretrain(shards_dir, MODEL, RUN, run_dir, progress=False,
                       log_fn=lambda m, step: logged.append((step, m)))
    return run_dir, {"metrics": metrics, "logged": logged}


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def test_pretrain_learns_and_writes_outputs(reference, shards_dir):
    run_dir, out = reference
    m = out["metrics"]
    assert m["pretrain_steps"] == 40
    assert m["pretrain_tokens"] == 40 * 8 * 64 == 40 * m["pretrain_global_batch_tokens"]
    assert m["pretrain_val_loss"] < m["pretrain_val_loss_initial"] - 1.0
    assert m["pretrain_val_ppl"] == pytest.approx(np.exp(m["pretrain_val_loss"]))
    assert m["pretrain_ppl_ratio"] == pytest.approx(m["pretrain_val_ppl"] / m["pretrain_unigram_ppl"])
    assert m["pretrain_ppl_ratio"] < 0.8  # the bigram data is learnable below the unigram baseline
    assert m["pretrain_params"] == ModelConfig.from_preset("smoke", vocab_size=VOCAB).num_params()
    assert m["pretrain_tokens_per_s"] > 0 and "pretrain_mfu" not in m  # no MFU on CPU by default
    assert all(isinstance(v, (int, float)) for v in m.values())
    # metrics streamed to log_fn and to metrics.jsonl: train every 5 steps, eval at 0, 10, 20, 30, 40
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if "train_loss" in r] == list(range(5, 41, 5))
    assert [r["step"] for r in records if "val_loss" in r] == [0, 10, 20, 30, 40]
    assert {"train_loss", "lr", "grad_norm", "tokens_per_s", "step_time_s"} <= set(records[1])
    assert [s for s, _ in out["logged"]] == [r["step"] for r in records]
    # outputs
    assert (run_dir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step_00000030",
                                                                          "step_00000040"]
    model = load_hf(run_dir / "hf")
    assert model.config.vocab_size == VOCAB and model.config.dim == 64
    # the exported weights are the trained ones: they reproduce the final validation loss
    blocks = val_blocks(TokenShards(shards_dir, "val"), RUN["seq_len"], RUN["eval_batches"] * RUN["micro_batch"])
    ctx = RunContext(device=torch.device("cpu"), precision="fp32", rank=0, local_rank=0, world_size=1)
    with torch.no_grad():
        again = evaluate_blocks(model, blocks, RUN["micro_batch"], ctx)
    assert again["val_loss"] == pytest.approx(m["pretrain_val_loss"], abs=1e-5)


def test_same_config_gives_identical_weights(reference, shards_dir, tmp_path):
    run_dir, _ = reference
    pretrain(shards_dir, MODEL, RUN, tmp_path / "again", progress=False)
    assert _result(tmp_path / "again")["weights_sha256"] == _result(run_dir)["weights_sha256"]
    assert (tmp_path / "again" / "hf" / "model.safetensors").read_bytes() == \
        (run_dir / "hf" / "model.safetensors").read_bytes()
    # a different seed gives different weights
    pretrain(shards_dir, MODEL, {**RUN, "seed": 8, "max_steps": 2}, tmp_path / "other", progress=False)
    assert _result(tmp_path / "other")["weights_sha256"] != _result(run_dir)["weights_sha256"]


def test_a_finished_run_called_again_reports_the_recorded_run(reference, shards_dir, tmp_path):
    ref_dir, out = reference
    first = out["metrics"]
    shutil.copytree(ref_dir, tmp_path / "run")
    again = pretrain(shards_dir, MODEL, RUN, tmp_path / "run", progress=False)  # resumes at the end: no step
    assert again["pretrain_steps"] == first["pretrain_steps"]
    assert again["pretrain_seconds"] == pytest.approx(first["pretrain_seconds"], rel=1e-6)
    # pretrain_seconds is rounded to the millisecond: the throughput from it is off by up to 0.5 ms / seconds
    assert again["pretrain_tokens_per_s"] == pytest.approx(first["pretrain_tokens"] / first["pretrain_seconds"],
                                                          rel=0.0006 / first["pretrain_seconds"])
    assert again["pretrain_val_loss"] == first["pretrain_val_loss"]


def test_run_training_time_counts_each_step_once():
    from llama2_pipeline.training.loop import run_training_time

    history = [{"step": 0, "val_loss": 5.0}, {"step": 10, "step_time_s": 0.5}, {"step": 20, "step_time_s": 1.0},
               {"step": 20, "step_time_s": 2.0}, {"step": 25, "step_time_s": 0.2}]  # step 20 logged again after a resume
    assert run_training_time(history) == (pytest.approx(10 * 0.5 + 10 * 2.0 + 5 * 0.2), 25)
    assert run_training_time([{"step": 0, "val_loss": 1.0}]) == (None, 0)


def _cli(run_config: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "llama2_pipeline.training.runner", "--config", str(run_config)],
                            env=env, **kw)


def test_kill9_and_resume_is_bitwise_identical(reference, shards_dir, tmp_path):
    ref_dir, _ = reference
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rc = run_dir / "run_config.json"
    stage = PretrainStage(shards_dir, resolve_model_config(MODEL, TokenShards(shards_dir, "train")))
    rc.write_text(json.dumps({"stage": "llama2_pipeline.training.pretrain:PretrainStage",
                              "inputs": stage.to_json(run_dir), "train": TrainConfig.from_dict(RUN).to_dict(),
                              "run_dir": str(run_dir), "out_dir": str(run_dir / "hf"), "progress": False}))
    latest = run_dir / "checkpoints" / "latest"
    proc = _cli(rc, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (latest.exists() and latest.read_text() >= "step_00000010"):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "result.json").exists(), "the run finished before it could be killed"
    killed_at = latest.read_text()

    # run it again to the end (here in-process: the CLI's entry point)
    assert runner.main(["--config", str(rc)]) == 0
    result = _result(run_dir)
    assert result["resumed_from"] == int(killed_at.removeprefix("step_"))
    assert result["weights_sha256"] == _result(ref_dir)["weights_sha256"]
    assert (run_dir / "hf" / "model.safetensors").read_bytes() == (ref_dir / "hf" / "model.safetensors").read_bytes()
    # the metrics log reads like the uninterrupted one (entries of the killed attempt replaced)
    strip = lambda rs: [{k: v for k, v in r.items() if k in ("step", "train_loss", "val_loss", "lr")} for r in rs]
    assert strip(read_metrics(run_dir / "metrics.jsonl")) == strip(read_metrics(ref_dir / "metrics.jsonl"))


class _NaNAt:
    """The LM loss, NaN from the k-th call on (grad_accum 1: optimiser step k)."""

    def __init__(self, k: int):
        self.k, self.calls = k, 0

    def __call__(self, model, batch):
        self.calls += 1
        loss, n = lm_loss(model, batch)
        return (loss * float("nan") if self.calls >= self.k else loss), n


def test_nan_loss_stops_and_keeps_last_good_checkpoint(shards_dir, tmp_path):
    cfg = TrainConfig.from_dict(train_cfg(max_steps=20, checkpoint_every=5, log_every=10, eval_every=0))
    ctx = setup_run(cfg)
    engine = build_engine(Llama(ModelConfig.from_preset("smoke", vocab_size=VOCAB)), cfg, ctx)
    data = RandomWindows(TokenShards(shards_dir, "train"), cfg.micro_batch, cfg.seq_len, seed=cfg.seed)
    with pytest.raises(NonFiniteLossError, match="at step 8") as err:
        train(engine, cfg, data, _NaNAt(8), tmp_path, progress=False)
    assert err.value.step == 8
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert err.value.checkpoint == ckpt.latest() and ckpt.latest().name == "step_00000005"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000005"]
    # the kept checkpoint is good: finite weights, and a rerun resumes from it
    step, _ = ckpt.load(engine, ckpt.latest(), engine.module.config.to_dict())
    assert step == 5 and all(torch.isfinite(p).all() for p in engine.module.parameters())
    res = train(engine, TrainConfig.from_dict({**cfg.to_dict(), "max_steps": 7}), data, lm_loss, tmp_path,
                progress=False)
    assert res.resumed_from == 5 and res.steps == 7 and np.isfinite(res.train_loss)


def test_checkpoint_of_another_shape_is_refused(reference, shards_dir, tmp_path):
    ref_dir, _ = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir / "checkpoints", run_dir / "checkpoints")
    with pytest.raises(CheckpointMismatchError) as err:
        pretrain(shards_dir, {"preset": "smoke", "dim": 128}, RUN, run_dir, progress=False)
    msg = str(err.value)
    assert "step_00000040" in msg and "dim: 64 in the checkpoint, 128 in this run" in msg
    assert "ffn_dim" in msg and "n_layers" not in msg
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000040"  # untouched


def test_shard_vocab_larger_than_model_is_an_error(shards_dir, tmp_path):
    with pytest.raises(ValueError, match=r"index\.json.*vocabulary of 256 ids.*vocab_size is 128"):
        pretrain(shards_dir, {"preset": "smoke", "vocab_size": 128}, RUN, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="seq_len 512 exceeds"):
        pretrain(shards_dir, MODEL, {**RUN, "seq_len": 512}, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="key 'lr' is 'fast'"):
        pretrain(shards_dir, MODEL, {**RUN, "lr": "fast"}, tmp_path / "run", progress=False)


def test_bad_shards_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"nowhere/index\.json does not exist"):
        pretrain(tmp_path / "nowhere", MODEL, RUN, tmp_path / "run", progress=False)
    folder = write_shards(tmp_path / "shards", {"train": markov_tokens(5000, VOCAB, 1),
                                                "val": markov_tokens(1000, VOCAB, 2)})
    index = json.loads((folder / "index.json").read_text())
    index["dtype"] = "uint32"  # the .bin files hold uint16
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"train_00000\.bin.*wrong dtype"):
        pretrain(folder, MODEL, RUN, tmp_path / "run", progress=False)


def test_bf16_on_cpu_is_refused(shards_dir, tmp_path):
    with pytest.raises(ValueError, match="bf16.*needs a CUDA GPU"):
        pretrain(shards_dir, MODEL, {**RUN, "precision": "bf16", "device": "cpu"}, tmp_path / "run",
                 progress=False)


def test_random_windows_resume_exactly(shards_dir):
    shards = TokenShards(shards_dir, "train")
    a = RandomWindows(shards, 2, 16, grad_accum=3, seed=5)
    for _ in range(4):
        next(a)
    state = a.state_dict()
    want = [next(a)["input_ids"] for _ in range(5)]
    b = RandomWindows(shards, 2, 16, grad_accum=3, seed=5)
    b.load_state_dict(json.loads(json.dumps(state)))  # the state is plain data
    assert all(torch.equal(x, next(b)["input_ids"]) for x in want)
    # 1 rank x grad_accum 2 sees the windows of 2 ranks x grad_accum 1, in rank order
    one = RandomWindows(shards, 2, 16, grad_accum=2, seed=5)
    two = [RandomWindows(shards, 2, 16, rank=r, num_ranks=2, seed=5) for r in range(2)]
    for _ in range(3):
        assert torch.equal(next(one)["input_ids"], next(two[0])["input_ids"])
        assert torch.equal(next(one)["input_ids"], next(two[1])["input_ids"])
    batch = next(one)
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
