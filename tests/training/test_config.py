"""TrainConfig: defaults, validation of keys/types/ranges, derived sizes, precision resolution."""

from __future__ import annotations

import pytest
import torch

from llama2_pipeline.training import TrainConfig
from llama2_pipeline.training.engine import resolve_precision


def test_defaults_are_the_paper_optimiser():
    cfg = TrainConfig()
    assert (cfg.betas, cfg.eps, cfg.weight_decay, cfg.grad_clip, cfg.min_lr_ratio) == ((0.9, 0.95), 1e-5, 0.1, 1.0, 0.1)
    assert cfg.launcher == "torchrun" and cfg.zero_stage == 0 and cfg.compile == "auto"
    assert cfg.optimizer == "auto" and cfg.loss_chunk == 0  # the GPU fast path resolves per device


def test_round_trip_and_derived_batch():
    cfg = TrainConfig.from_dict({"micro_batch": 4, "grad_accum": 3, "world_size": 2, "num_nodes": 2,
                                 "seq_len": 64, "betas": [0.8, 0.9], "lr": 1})
    assert cfg.betas == (0.8, 0.9) and cfg.lr == 1.0 and isinstance(cfg.lr, float)  # an int is a number
    assert cfg.global_batch == 4 * 3 * 2 * 2
    assert cfg.global_batch_tokens == 4 * 3 * 2 * 2 * 64
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("d, key", [
    ({"micro_batchh": 4}, "micro_batchh"),
    ({"micro_batch": "4"}, "micro_batch"),
    ({"micro_batch": 4.0}, "micro_batch"),
    ({"max_steps": True}, "max_steps"),
    ({"compile": 1}, "compile"),
    ({"lr": "3e-4"}, "lr"),
    ({"betas": [0.9]}, "betas"),
    ({"betas": [0.9, "x"]}, "betas"),
    ({"hostfile": 3}, "hostfile"),
    ({"deepspeed": []}, "deepspeed"),
    ({"zero_stage": 4}, "zero_stage"),
    ({"precision": "int8"}, "precision"),
    ({"launcher": "mpirun"}, "launcher"),
    ({"micro_batch": 0}, "micro_batch"),
    ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
    ({"keep_checkpoints": 0}, "keep_checkpoints"),
    ({"betas": [0.9, 1.0]}, "betas"),
])
def test_bad_keys_and_values_name_the_key(d, key):
    with pytest.raises(ValueError, match=key):
        TrainConfig.from_dict(d)


def test_multinode_deepspeed_needs_a_hostfile():
    with pytest.raises(ValueError, match="hostfile"):
        TrainConfig(num_nodes=2, launcher="deepspeed")
    assert TrainConfig(num_nodes=2, launcher="deepspeed", hostfile="hosts").total_ranks == 2


def test_precision_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision(TrainConfig(), cpu) == "fp32"
    assert resolve_precision(TrainConfig(precision="fp32"), cpu) == "fp32"
    for p in ("bf16", "fp16"):
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            resolve_precision(TrainConfig(precision=p), cpu)
    assert resolve_precision(TrainConfig(), torch.device("cuda", 0)) == "bf16"
