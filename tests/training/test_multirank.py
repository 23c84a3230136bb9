"""Data parallelism: 2 CPU ranks (torchrun, gloo) under ZeRO-2 follow the loss curve of 1 rank
that accumulates the same global batch. Runs in the normal suite; select it with -m multirank."""

from __future__ import annotations

import json

import pytest

from llama2_pipeline.training import read_metrics
from llama2_pipeline.training.pretrain import pretrain

from .conftest import MODEL, train_cfg

COMMON = dict(micro_batch=4, seq_len=32, max_steps=8, log_every=1, eval_every=4, checkpoint_every=4,
              zero_stage=2, num_threads=1)


@pytest.mark.multirank
@pytest.mark.slow
def test_two_ranks_zero2_match_one_rank_with_accumulation(shards_dir, tmp_path, capfd):
    forwarded = []
    two = pretrain(shards_dir, MODEL, train_cfg(world_size=2, grad_accum=1, **COMMON), tmp_path / "two",
                   progress=False, log_fn=lambda m, step: forwarded.append((step, m)))
    one = pretrain(shards_dir, MODEL, train_cfg(world_size=1, grad_accum=2, **COMMON), tmp_path / "one",
                   progress=False)
    curve = lambda d, key: [(r["step"], r[key]) for r in read_metrics(d / "metrics.jsonl") if key in r]
    loss2, loss1 = curve(tmp_path / "two", "train_loss"), curve(tmp_path / "one", "train_loss")
    assert [s for s, _ in loss2] == [s for s, _ in loss1] == list(range(1, 9))
    assert max(abs(a - b) for (_, a), (_, b) in zip(loss2, loss1)) < 1e-4
    val2, val1 = curve(tmp_path / "two", "val_loss"), curve(tmp_path / "one", "val_loss")
    assert [s for s, _ in val2] == [0, 4, 8]
    assert max(abs(a - b) for (_, a), (_, b) in zip(val2, val1)) < 1e-4
    assert two["pretrain_global_batch_tokens"] == one["pretrain_global_batch_tokens"] == 8 * 32
    assert two["pretrain_val_loss"] == pytest.approx(one["pretrain_val_loss"], abs=1e-4)
    # rank 0 wrote the outputs; the parent streamed every metrics record to log_fn
    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["train_config"]["world_size"] == 2 and (tmp_path / "two" / "hf" / "model.safetensors").exists()
    assert sorted({s for s, m in forwarded if "train_loss" in m}) == list(range(1, 9))
    assert (tmp_path / "two" / "checkpoints" / "step_00000008" / "trainer_state_rank00001.json").exists()
