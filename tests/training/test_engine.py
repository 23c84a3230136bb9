"""Engine pieces: LR schedule, weight-decay groups, DeepSpeed config, atomic checkpoints, launch."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import sys

import numpy as np
import pytest
import torch

from llama2_pipeline.model import Llama, ModelConfig
from llama2_pipeline.training import (Checkpointer, CosineSchedule, TrainConfig, build_engine,
                                      decay_parameter_names, deepspeed_config, launch_command,
                                      param_groups)
from llama2_pipeline.training import state as state_module
from llama2_pipeline.training.engine import SINGLE_PROCESS_ENV
from llama2_pipeline.training.state import rank_state_from_json, rank_state_to_json, rng_state, safe_load, set_rng_state

from .conftest import train_cfg


def test_schedule_warmup_peak_cosine_floor():
    s = CosineSchedule(warmup_steps=10, max_steps=110, min_ratio=0.1)
    assert s(0) == pytest.approx(0.1)  # step 1 of 10 of the warm-up
    assert s(4) == pytest.approx(0.5)
    assert s(9) == pytest.approx(1.0)  # peak at the end of warm-up
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.55)  # half-way down the cosine: (1 + 0.1) / 2
    assert s(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert s(110) == pytest.approx(0.1)  # 10 % of peak at max_steps, flat afterwards
    assert s(500) == pytest.approx(0.1)
    values = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_schedule_drives_a_lambda_lr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, CosineSchedule(2, 6, 0.1))
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([1e-3, 2e-3, 2e-3])
    assert lrs[6:] == pytest.approx([2e-4, 2e-4])
    assert "lr_lambdas" in sched.state_dict()  # the schedule object is part of the saved state


def test_weight_decay_groups_exclude_norms():
    model = Llama(ModelConfig.from_preset("smoke"))
    decay, no_decay = decay_parameter_names(model)
    assert set(no_decay) == {n for n, p in model.named_parameters() if p.dim() == 1}
    assert "norm.weight" in no_decay and "layers.0.attention_norm.weight" in no_decay
    assert "layers.1.ffn_norm.weight" in no_decay
    assert "tok_embeddings.weight" in decay and "output.weight" in decay  # embeddings are matrices
    assert "layers.0.attention.wqkv.weight" in decay and "layers.0.feed_forward.w2.weight" in decay
    groups = param_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_deepspeed_config():
    cfg = TrainConfig(micro_batch=3, grad_accum=2, world_size=2, zero_stage=2,
                      deepspeed={"zero_optimization": {"overlap_comm": True}})
    ds = deepspeed_config(cfg, "fp32", n_params=1000)
    assert ds["train_batch_size"] == 12 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_micro_batch_size_per_gpu"] == 3
    params = ds["optimizer"]["params"]
    assert ds["optimizer"]["type"] == "AdamW" and params["torch_adam"] is True
    assert (params["betas"], params["eps"], params["weight_decay"]) == ([0.9, 0.95], 1e-5, 0.1)
    assert ds["gradient_clipping"] == 1.0  # ZeRO-2 clips inside DeepSpeed
    assert ds["zero_optimization"]["stage"] == 2 and ds["zero_optimization"]["overlap_comm"] is True
    assert ds["zero_optimization"]["reduce_bucket_size"] == 2**20  # capped for small models
    assert not ds["bf16"]["enabled"] and deepspeed_config(TrainConfig(), "bf16")["bf16"]["enabled"]
    # ZeRO-0 fp32: the loop clips itself (to measure the norm), DeepSpeed must not clip again
    assert deepspeed_config(TrainConfig(), "fp32")["gradient_clipping"] == 0.0


def test_engine_optimizer_groups_and_schedule():
    cfg = TrainConfig.from_dict(train_cfg(lr=1e-3, warmup_steps=2, max_steps=6))
    model = Llama(ModelConfig.from_preset("smoke"))
    engine = build_engine(model, cfg)
    opt = engine.optimizer
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert all(p.dim() == 1 for p in opt.param_groups[1]["params"])
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.param_groups[0]["eps"] == 1e-5
    assert isinstance(engine.lr_scheduler, torch.optim.lr_scheduler.LambdaLR)
    x = torch.randint(0, 512, (4, 9))
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        loss = torch.nn.functional.cross_entropy(engine(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        engine.backward(loss)
        engine.step()
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),
                                 1e-3 * 0.55, 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(3 * math.pi / 4)))])


def test_crash_mid_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = TrainConfig.from_dict(train_cfg())
    engine = build_engine(Llama(ModelConfig.from_preset("smoke")), cfg)
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=2)
    meta = {"model_config": engine.module.config.to_dict()}
    ckpt.save(engine, 1, {"data": {}, "rng": {}}, meta)
    assert ckpt.latest().name == "step_00000001"

    real = engine.save_checkpoint

    def crash(save_dir, tag, **kw):  # write part of the files, then die
        real(save_dir, tag=tag, **kw)
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(engine, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(engine, 2, {"data": {}, "rng": {}}, meta)
    monkeypatch.undo()
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_00000001"
    assert not (tmp_path / "checkpoints" / "step_00000002").exists()
    assert ckpt.latest().name == "step_00000001"
    step, state = ckpt.load(engine, ckpt.latest(), meta["model_config"])
    assert step == 1 and state == {"data": {}, "rng": {}}
    # the next save clears the staging area and rotates: keep the newest 2
    for s in (3, 4, 5):
        ckpt.save(engine, s, {"data": {}, "rng": {}}, meta)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_00000004", "step_00000005"]


def test_launch_commands(monkeypatch):
    cfg = TrainConfig(world_size=2, master_port=29511)
    cmd = launch_command("llama2_pipeline.training.pretrain", "rc.json", cfg)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and cmd[cmd.index("--nproc_per_node") + 1] == "2"
    assert cmd[-4:] == ["-m", "llama2_pipeline.training.pretrain", "--config", "rc.json"]

    multi = TrainConfig(world_size=8, num_nodes=2, master_port=29511)
    monkeypatch.delenv("NODE_RANK", raising=False)
    with pytest.raises(ValueError, match="NODE_RANK"):
        launch_command("m", "rc.json", multi)
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    cmd = launch_command("m", "rc.json", multi)
    assert cmd[cmd.index("--nnodes") + 1] == "2" and cmd[cmd.index("--node_rank") + 1] == "1"

    ds = TrainConfig(world_size=8, num_nodes=2, launcher="deepspeed", hostfile="/etc/hosts.ds")
    cmd = launch_command("m", "rc.json", ds)
    assert cmd[1:3] == ["-m", "deepspeed.launcher.runner"]
    assert cmd[cmd.index("--hostfile") + 1] == "/etc/hosts.ds" and cmd[cmd.index("--num_gpus") + 1] == "8"
    assert cmd[-4:] == ["--module", "m", "--config", "rc.json"]


def test_rank_state_is_json_and_restores_every_generator(tmp_path):
    """The data position and RNG states of a checkpoint are plain JSON (no pickle) and give the
    same random draws after a resume."""
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = {"data": {"epoch": 1, "current": [3, 1, 2], "rng": np.random.default_rng(5).bit_generator.state},
             "rng": rng_state()}
    text = json.dumps(rank_state_to_json(state))  # raises if anything is not plain data
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    restored = rank_state_from_json(json.loads(text))
    assert restored["data"] == state["data"]
    set_rng_state(restored["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


def test_checkpoint_files_load_without_running_code(tmp_path):
    """A pickled checkpoint someone hands you is read with weights_only=True: tensors, numbers and
    numpy arrays load, an object that would run code on unpickling is refused."""
    torch.save({"w": torch.ones(2), "rng": np.arange(3, dtype=np.uint32), "step": 4}, tmp_path / "ok.pt")
    loaded = safe_load(tmp_path / "ok.pt")
    assert loaded["step"] == 4 and torch.equal(loaded["w"], torch.ones(2)) and loaded["rng"].tolist() == [0, 1, 2]

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'pwned')!r}, 'w').write('pwned')",))

    torch.save({"w": torch.ones(2), "x": Payload()}, tmp_path / "bad.pt")
    with pytest.raises(pickle.UnpicklingError):
        safe_load(tmp_path / "bad.pt")
    assert not (tmp_path / "pwned").exists()


def test_an_enum_pickled_by_name_loads_and_nothing_else_does(tmp_path):
    """Python 3.11.2 pickles an Enum member as getattr(EnumClass, name) (DeepSpeed's ZeroStageEnum in a
    ZeRO-2 checkpoint); the safe loader gives the member, and refuses getattr on anything else."""
    from deepspeed.runtime.zero.config import ZeroStageEnum

    class ByName:
        def __init__(self, obj, name):
            self.obj, self.name = obj, name

        def __reduce__(self):
            return (getattr, (self.obj, self.name))

    torch.save({"stage": ByName(ZeroStageEnum, "gradients"), "w": torch.ones(2)}, tmp_path / "enum.pt")
    assert safe_load(tmp_path / "enum.pt")["stage"] is ZeroStageEnum.gradients
    for obj, name in ((ZeroStageEnum, "__class__"), (ZeroStageEnum, "no_such_stage"), (np.ndarray, "__init__")):
        torch.save({"x": ByName(obj, name)}, tmp_path / "bad.pt")
        with pytest.raises(pickle.UnpicklingError):
            safe_load(tmp_path / "bad.pt")


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_a_checkpoint_resumes_through_the_safe_loader(tmp_path, monkeypatch, zero_stage):
    """DeepSpeed's checkpoint files (ZeRO-2: optimiser-state partitions with DeepSpeed records) load
    with weights_only=True and the allow-list: weights and optimiser state come back exactly."""
    cfg = TrainConfig.from_dict(train_cfg(zero_stage=zero_stage, lr=1e-3, warmup_steps=1, max_steps=4))

    x = torch.randint(0, 512, (4, 9), generator=torch.Generator().manual_seed(1))

    def step(engine):
        engine.backward(torch.nn.functional.cross_entropy(engine(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()))
        engine.step()

    def trained_engine(steps: int):
        torch.manual_seed(0)
        engine = build_engine(Llama(ModelConfig.from_preset("smoke")), cfg)
        for _ in range(steps):
            step(engine)
        return engine

    engine = trained_engine(2)
    ckpt = Checkpointer(tmp_path / "checkpoints")
    meta = {"model_config": engine.module.config.to_dict()}
    ckpt.save(engine, 2, {"data": {"pos": 2}, "rng": rng_state()}, meta)
    assert (ckpt.latest() / "trainer_state_rank00000.json").is_file()
    assert not list(ckpt.latest().glob("trainer_state*.pt"))
    fresh = trained_engine(0)
    if zero_stage == 2:  # DeepSpeed's own files went through the safe loader: without the allow-list they fail
        with monkeypatch.context() as m:
            m.setattr(state_module, "checkpoint_allow_list", list)
            with pytest.raises(pickle.UnpicklingError):
                ckpt.load(trained_engine(0), ckpt.latest(), meta["model_config"])
    at, state = ckpt.load(fresh, ckpt.latest(), meta["model_config"])
    assert at == 2 and state["data"] == {"pos": 2}
    step(engine), step(fresh)  # the optimiser state came back too: the next step is the same
    for a, b in zip(engine.module.parameters(), fresh.module.parameters()):
        assert torch.equal(a, b)
    assert fresh.checkpoint_engine.load.__func__ is type(fresh.checkpoint_engine).load  # DeepSpeed's own again


def _train_weights(steps: int = 3, **overrides) -> dict[str, torch.Tensor]:
    """Weights after ``steps`` optimiser steps of the smoke model through the engine and lm_loss."""
    from llama2_pipeline.training import lm_loss

    cfg = TrainConfig.from_dict(train_cfg(lr=1e-3, warmup_steps=1, max_steps=steps, **overrides))
    torch.manual_seed(0)
    engine = build_engine(Llama(ModelConfig.from_preset("smoke")), cfg)
    x = torch.randint(3, 512, (4, 17), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        loss, _ = lm_loss(engine, {"input_ids": x[:, :-1], "labels": x[:, 1:]})
        engine.backward(loss)
        torch.nn.utils.clip_grad_norm_(engine.module.parameters(), cfg.grad_clip)  # as the loop (ZeRO-0 fp32)
        engine.step()
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


def test_cpu_defaults_keep_deepspeeds_optimizer_eager_model_and_full_logits():
    from llama2_pipeline.training.engine import build_optimizer, compile_enabled, optimizer_kind  # noqa: I001

    cfg, cpu, cuda = TrainConfig(), torch.device("cpu"), torch.device("cuda")
    assert (cfg.compile, cfg.optimizer, cfg.loss_chunk) == ("auto", "auto", 0)
    assert optimizer_kind(cfg, cpu) == "deepspeed" and optimizer_kind(cfg, cuda) == "fused"
    assert not compile_enabled(cfg, cpu) and compile_enabled(cfg, cuda)
    assert not compile_enabled(TrainConfig(compile=False), cuda) and compile_enabled(TrainConfig(compile=True), cpu)
    model = Llama(ModelConfig.from_preset("smoke"))
    assert build_optimizer(model, cfg, cpu) is None  # DeepSpeed builds it from its config, as before
    assert "optimizer" in deepspeed_config(cfg, "fp32") and "optimizer" not in deepspeed_config(
        cfg, "fp32", client_optimizer=True)
    with pytest.raises(ValueError, match="fused"):
        optimizer_kind(TrainConfig(optimizer="fused"), cpu)
    foreach = build_optimizer(model, TrainConfig(optimizer="foreach"), cpu)
    assert foreach.defaults["foreach"] and [g["weight_decay"] for g in foreach.param_groups] == [0.1, 0.0]
    with pytest.raises(ValueError, match="zero_stage 3"):
        TrainConfig(loss_chunk=64, zero_stage=3)


def test_chunked_loss_and_foreach_adamw_train_like_the_default():
    """The GPU fast path's CPU-runnable parts (chunked loss, client foreach AdamW handed to
    DeepSpeed) give the default path's weights within fp32 noise (1e-5) after 3 steps."""
    base = _train_weights()
    assert all(torch.equal(base[k], v) for k, v in _train_weights().items())  # the default is deterministic
    for overrides in ({"loss_chunk": 7}, {"optimizer": "foreach"}, {"loss_chunk": 7, "optimizer": "foreach"}):
        fast = _train_weights(**overrides)
        for k in base:
            torch.testing.assert_close(fast[k], base[k], rtol=0, atol=1e-5, msg=f"{overrides} {k}")


def test_a_rank_leaves_its_process_group_after_printing_its_metrics(tmp_path):
    import subprocess

    # in a fresh interpreter: a test process may hold a default group already (in-process engines)
    script = f"""
import json, torch.distributed as dist
from llama2_pipeline.training.launcher import rank_main
def run(config):  # a one-rank gloo group, as a launched rank's engine makes one
    dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
    return {{"loss": 1.5, "config": config}}
assert rank_main(["--config", "rc.json"], "prog", "a rank", "its config", run) == 0
print(json.dumps({{"initialized_after": dist.is_initialized()}}))
rank_main(["--config", "rc.json"], "prog", "a rank", "its config", lambda c: {{}})  # no group: nothing to leave
# a process's own world of one (no launcher) stays for the in-process runs after it
import torch
from llama2_pipeline.training.engine import init_distributed
rank_main(["--config", "rc.json"], "prog", "a rank", "its config", lambda c: {{"world": init_distributed(torch.device("cpu"))[2]}})
print(json.dumps({{"single_after": dist.is_initialized()}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**{k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", SINGLE_PROCESS_ENV)},
                              "RANK": "0"})
    assert out.returncode == 0, out.stderr
    decoder, text, printed = json.JSONDecoder(), out.stdout.strip(), []
    while text:  # the JSON values printed one after another
        value, end = decoder.raw_decode(text)
        printed.append(value)
        text = text[end:].lstrip()
    assert printed[0] == {"loss": 1.5, "config": "rc.json"}  # rank 0's metrics first
    assert printed[1] == {"initialized_after": False}  # the group destroyed before the interpreter's exit
    assert printed[3:] == [{"world": 1}, {"single_after": True}]
