"""``llama2-pipeline plan``: what each training stage of a profile needs on GPUs, without a GPU.

For the selected profile of ``params.yaml`` (or any profile, optionally with every stage's model
shape replaced by a preset) and a GPU layout (GPUs per node x nodes) it prints, per training job:

* the model shape and its parameter count (every stage after ``pretrain`` starts from the
  pretrained model, so they share its shape; the reward and value models drop the LM head and add
  a scalar head);
* the batch: micro-batch x gradient accumulation x ranks, tokens per optimiser step (and in total
  where the step count is a parameter rather than derived from the data);
* the exact DeepSpeed config the stage would build (:func:`training.engine.deepspeed_config`);
* memory per GPU for ZeRO stages 0-3: model states (DeepSpeed's own estimators for ZeRO-2 and
  ZeRO-3, ZeRO-0/1 derived with the same byte accounting) plus activations of one micro-batch,
  with and without activation checkpointing, and whether that fits ``--gpu-memory-gib``;
* the commands that launch the stage on one node or on several (DeepSpeed launcher + hostfile).

Output: a plain-text report on stdout, ``--json`` for machines, ``--out plan.md`` for a Markdown
copy. Nothing here imports Kedro or MLflow: DeepSpeed is imported for its estimators only, with
``DS_ACCELERATOR=cpu`` on a machine without CUDA and its autotuner's optional MLflow import blocked.

Memory model (all numbers are estimates; bytes per parameter P, N = GPUs in total):

=========  ==========================================  ===========================================
ZeRO       bf16 / fp16 (mixed precision)               fp32
=========  ==========================================  ===========================================
0          20 P  (2 params16 + 2 grads16 + 16 below)   16 P  (4 params + 4 grads + 8 Adam)
1          4 P + 16 P / N   (derived, see below)       8 P + 8 P / N
2          DeepSpeed: 2 P + 18 P / N                   4 P + 12 P / N
3          DeepSpeed: 4 L + 18 P / N (L: largest layer) 4 L + 16 P / N
=========  ==========================================  ===========================================

DeepSpeed's ``estimate_zero2_model_states_mem_needs`` counts 18 bytes per parameter that ZeRO-2
partitions (2 16-bit grads + 4 fp32 grads + 4 fp32 params + 8 Adam moments) and 2 that it
replicates (16-bit params). ZeRO-1 has no estimator: it partitions the optimiser side only (fp32
params, fp32 grads, Adam: 16 bytes) and keeps the full 16-bit params *and* 16-bit gradients on every
rank, hence 4 P + 16 P / N (equal to ZeRO-2 on one GPU, as it should be). ZeRO-0 replicates all 20.
The fp32 column follows the same accounting without 16-bit copies (DeepSpeed's estimators assume
mixed precision). Communication buckets, the CUDA context and fragmentation are not counted: a job
"fits" when its estimate is at most 90 % of the GPU's memory.

Activations (per GPU, one micro-batch of b sequences of s tokens, a bytes per activation: 2 in
bf16/fp16, 4 in fp32) follow Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", section 4.1: count the tensors each op saves for backward. Their GPT block
gives sbh(34 + 5as/h); this Llama block (RMSNorm, fused QKV + RoPE, SDPA, fused SwiGLU, no dropout)
saves per layer on CUDA

    s b a (7 h + 3 h_kv + 4 f)          h: dim, h_kv: n_kv_heads * head_dim, f: ffn_dim

(norm input and output, the fused QKV output, RoPE's q|k output, the attention output; norm input
and output, the gate|up output, the SiLU output, their product). The flash kernel keeps no s x s
scores, so the 5as/h term is absent, and its output is already laid out for ``wo`` (CPU kernels
keep ~2 h + h_kv more). The LM head's peak comes in the loss's backward: the fp32 log-softmax it
saved, the gradient flowing in and the one flowing out, 12 bytes per token per vocabulary entry,
plus s b (2 h a) for the final norm. With activation checkpointing each layer keeps only its input
(s b h a) and the larger of one recomputed layer and the head's peak comes on top. Checked on an
H100 (torch 2.11, bf16; 160m and 1b at b 8 x s 2048, 7b at 1 x 4096, with and without
checkpointing): within 0.5 % of the measured peak allocation above the weights of a forward +
backward wherever activations make that peak; where the gradients do (7b with checkpointing), the
planned total (model states + activations) is an upper bound.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

GIB = 2**30
FIT_FRACTION = 0.9  # a job fits when its estimate is at most this share of the GPU's memory
PPO_PROMPT_TOKENS = 64  # assumed prompt length of a PPO rollout (the world's prompts are short)
ZERO_STAGES = (0, 1, 2, 3)
DEFAULT_PARAMS = "params.yaml"


class PlanError(ValueError):
    """A bad option or parameter: reported on stderr with exit status 2."""


# --------------------------------------------------------------------------------------------
# DeepSpeed's estimators
# --------------------------------------------------------------------------------------------


def _deepspeed():
    """Import DeepSpeed as the engine does (DS_ACCELERATOR=cpu without CUDA), keeping stdout clean.

    DeepSpeed's autotuner runs ``try: import mlflow`` when DeepSpeed is imported; this module must
    not pull in MLflow (the library rule, and its import costs seconds), so the name is blocked for
    the duration of the import: the autotuner then sees no MLflow, which a plan never needs.
    """
    import torch

    from llama2_pipeline.training.engine import _import_deepspeed

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    block = "mlflow" not in sys.modules
    if block:
        sys.modules["mlflow"] = None  # type: ignore[assignment]  # makes `import mlflow` raise ImportError
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return _import_deepspeed(device)
    finally:
        if block and sys.modules.get("mlflow", 0) is None:
            del sys.modules["mlflow"]


def zero2_gpu_bytes(total_params: int, gpus_per_node: int, nodes: int) -> int:
    """DeepSpeed's ZeRO-2 model-state bytes per GPU, optimiser not offloaded."""
    _deepspeed()
    from deepspeed.runtime.zero.stage_1_and_2 import (
        estimate_zero2_model_states_mem_needs,
    )

    _, gpu = estimate_zero2_model_states_mem_needs(total_params, num_gpus_per_node=gpus_per_node,
                                                   num_nodes=nodes, cpu_offload=False)
    return int(gpu)


def zero3_gpu_bytes(total_params: int, largest_layer_params: int, gpus_per_node: int, nodes: int) -> int:
    """DeepSpeed's ZeRO-3 model-state bytes per GPU, nothing offloaded, zero.Init."""
    _deepspeed()
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    _, gpu, _ = estimate_zero3_model_states_mem_needs(total_params, largest_layer_params,
                                                      num_gpus_per_node=gpus_per_node, num_nodes=nodes,
                                                      cpu_offload=False, cpu_offload_params=False,
                                                      zero_init=True)
    return int(gpu)


def model_state_bytes(total_params: int, largest_layer_params: int, gpus_per_node: int, nodes: int,
                      precision: str) -> dict[int, dict[str, Any]]:
    """Bytes per GPU of parameters, gradients and optimiser states for ZeRO 0-3 (see the module
    docstring for the accounting) and where each number comes from."""
    P, L, N = total_params, largest_layer_params, gpus_per_node * nodes
    if precision in ("bf16", "fp16"):
        return {
            # nothing partitioned: the ZeRO-2 accounting on one GPU (2 + 18 bytes per parameter)
            0: {"bytes": 20 * P, "source": "derived: 20 bytes/param replicated (DeepSpeed's ZeRO-2 "
                                           "accounting on one GPU)"},
            # ZeRO-1 has no DeepSpeed estimator. It partitions the optimiser states only: fp32
            # master params (4), fp32 grads (4) and Adam's two moments (8) are split over the N
            # ranks, while the 16-bit params (2) and the full 16-bit gradients (2) stay replicated.
            1: {"bytes": 4 * P + int(16 * P / N),
                "source": "derived: 16-bit params + grads replicated (4 B/param), fp32 params, grads "
                          "and Adam states partitioned (16 B/param / N)"},
            2: {"bytes": zero2_gpu_bytes(P, gpus_per_node, nodes),
                "source": "deepspeed estimate_zero2_model_states_mem_needs(cpu_offload=False)"},
            3: {"bytes": zero3_gpu_bytes(P, L, gpus_per_node, nodes),
                "source": "deepspeed estimate_zero3_model_states_mem_needs(cpu_offload=False, "
                          "cpu_offload_params=False, zero_init=True)"},
        }
    # fp32: no 16-bit copies; params (4), grads (4), Adam (8). DeepSpeed's estimators assume mixed
    # precision, so every stage is derived with their accounting.
    return {
        0: {"bytes": 16 * P, "source": "derived (fp32): 16 bytes/param replicated"},
        1: {"bytes": 8 * P + int(8 * P / N), "source": "derived (fp32): params + grads replicated, Adam partitioned"},
        2: {"bytes": 4 * P + int(12 * P / N), "source": "derived (fp32): params replicated, grads + Adam partitioned"},
        3: {"bytes": 4 * L + int(16 * P / N), "source": "derived (fp32): all partitioned + the largest layer gathered"},
    }


# --------------------------------------------------------------------------------------------
# Model facts and activations
# --------------------------------------------------------------------------------------------


def layer_sizes(cfg, lm_head: bool = True) -> dict[str, int]:
    """Parameters of each module that holds parameters directly (as DeepSpeed's ``model_to_params``
    counts a "layer"), per kind: the largest one is what ZeRO-3 gathers at once."""
    h, kv = cfg.dim, cfg.n_kv_heads * cfg.head_dim
    sizes = {"tok_embeddings": cfg.vocab_size * h,
             "attention.wqkv": h * (h + 2 * kv),
             "attention.wo": h * h,
             "feed_forward.w13": 2 * cfg.ffn_dim * h,
             "feed_forward.w2": cfg.ffn_dim * h,
             "norm": h}
    if lm_head:
        sizes["output"] = cfg.vocab_size * h
    else:
        sizes["head"] = h
    return sizes


def count_params(cfg, kind: str) -> int:
    """``lm``: :class:`Llama`; ``rm``: reward / value model (no LM head, a dim -> 1 head)."""
    n = cfg.num_params()
    return n if kind == "lm" else n - cfg.vocab_size * cfg.dim + cfg.dim


def activation_bytes(cfg, rows: int, seq_len: int, precision: str, checkpointing: bool,
                     lm_head: bool = True) -> int:
    """Peak activation bytes of one micro-batch of ``rows`` sequences of ``seq_len`` tokens (module
    docstring: Korthikanti et al. 2022's counting applied to this model's block on CUDA)."""
    a = 4 if precision == "fp32" else 2
    tokens = rows * seq_len
    h, kv, f, V = cfg.dim, cfg.n_kv_heads * cfg.head_dim, cfg.ffn_dim, cfg.vocab_size
    per_layer = tokens * (7 * h + 3 * kv + 4 * f) * a
    head = tokens * 2 * h * a + (tokens * V * 12 if lm_head else 0)  # fp32 log-softmax + grads in and out
    if checkpointing:
        return cfg.n_layers * tokens * h * a + max(per_layer, head)
    return cfg.n_layers * per_layer + head


def describe_model(cfg, name: str) -> str:
    kv = f" / {cfg.n_kv_heads} KV heads" if cfg.n_kv_heads != cfg.n_heads else ""
    return (f"{name}: dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads{kv} (head_dim "
            f"{cfg.head_dim}), ffn {cfg.ffn_dim}, vocab {cfg.vocab_size}, max_seq_len {cfg.max_seq_len}")


# --------------------------------------------------------------------------------------------
# Jobs: the training runs of each stage
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Job:
    stage: str  # Kedro pipeline: pretrain, sft, reward, rlhf_v1, gatt
    dvc_stage: str  # DVC stage: pretrain, ..., rlhf@v1
    name: str  # what is trained
    group: str | None  # params path of its TrainConfig (None: PPO)
    kind: str = "lm"  # lm | rm | ppo
    rows_per_micro: int = 1  # sequences per micro-batch item (2: chosen + rejected pair)
    runs: int = 1  # runs one after the other (two reward models)
    note: str = ""


def stage_jobs(recipe) -> list[Job]:
    jobs = [Job("pretrain", "pretrain", "pretrain", "pretrain.train",
                note="causal-LM pretraining; max_steps is a parameter"),
            Job("sft", "sft", "sft", "sft.train",
                note=f"from the pretrained model; steps = ceil({recipe.sft.epochs} epochs x rows / "
                     "global batch)"),
            Job("reward", "reward", "reward models", "reward.train", kind="rm", rows_per_micro=2, runs=2,
                note="helpfulness and safety RMs, one after the other, from the SFT model; micro_batch "
                     "counts pairs (2 sequences each)")]
    for round_name, spec in recipe.rlhf.rounds.items():
        st, dvc = f"rlhf_{round_name}", f"rlhf@{round_name}"
        how = ("the previous RMs, rlhf.reward_epochs passes over the round's new pairs"
               if recipe.rlhf.reward_models == "continue" else "from SFT on the pairs so far, reward.epochs passes")
        jobs.append(Job(st, dvc, "reward models", "reward.train", kind="rm", rows_per_micro=2, runs=2,
                        note=f"both RMs, {recipe.rlhf.reward_models}: {how} (the reward group's train settings)"))
        jobs.append(Job(st, dvc, "rejection sampling", "rlhf.rejection_sampling.train",
                        note=f"fine-tune {spec.after}'s policy on its best-of-K answers"))
        if spec.ppo:
            jobs.append(Job(st, dvc, "ppo", None, kind="ppo",
                            note="PPO runs in one process in plain torch (training/rlhf.py ppo_finetune), "
                                 "not through DeepSpeed: its five models on one GPU (the CPU without one), "
                                 "no ranks, no ZeRO"))
    jobs.append(Job("gatt", "gatt", "ghost attention", "gatt.finetune.train",
                    note=f"fine-tune {recipe.gatt.after}'s policy on GAtt dialogues"))
    return jobs


def stage_names(jobs: list[Job]) -> list[str]:
    out: list[str] = []
    for j in jobs:
        if j.stage not in out:
            out.append(j.stage)
    return out


def select_jobs(jobs: list[Job], wanted: list[str] | None) -> list[Job]:
    if not wanted:
        return jobs
    names = stage_names(jobs)
    valid = names + [j.dvc_stage for j in jobs if j.dvc_stage not in names]
    if any(n.startswith("rlhf_") for n in names):
        valid.append("rlhf")
    keep = set()
    for w in wanted:
        if w not in valid:
            raise PlanError(f"unknown stage {w!r}; valid stages: {', '.join(dict.fromkeys(valid))}")
        keep |= {j.stage for j in jobs if w in (j.stage, j.dvc_stage) or (w == "rlhf" and j.stage.startswith("rlhf_"))}
    return [j for j in jobs if j.stage in keep]


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Layout:
    gpus_per_node: int | None
    nodes: int | None
    gpu_memory_gib: float
    hostfile: str


def _get(recipe, path: str) -> Any:
    for part in path.split("."):
        recipe = getattr(recipe, part)
    return recipe


def resolve_model(recipe, preset: str | None):
    """(ModelConfig, label, model overrides for the pretrain stage's params) as the pipeline
    builds it: ``pretrain.model`` with vocab_size from the tokenizer unless given; ``--preset``
    takes the preset's whole shape, its vocab_size included."""
    from llama2_pipeline.model import PRESETS, ModelConfig

    if preset is not None:
        if preset not in PRESETS:
            raise PlanError(f"unknown model preset {preset!r}; valid presets: {', '.join(PRESETS)}")
        cfg = ModelConfig.from_preset(preset)
        return cfg, preset, {"preset": preset, "vocab_size": cfg.vocab_size}
    spec = recipe.pretrain.model
    extra = sorted(set(spec.overrides()) - {"vocab_size"})
    label = spec.preset if not extra else f"{spec.preset} + {extra}"
    return spec.config(vocab_size=recipe.tokenizer.vocab_size), label, {}


def plan_job(job: Job, recipe, cfg, layout: Layout) -> dict[str, Any]:
    if job.kind == "ppo":
        return plan_ppo(job, recipe, cfg, layout)
    from llama2_pipeline.training.config import TrainConfig
    from llama2_pipeline.training.engine import deepspeed_config

    train = {k: v for k, v in _get(recipe, job.group).to_dict().items() if v is not None}
    world = layout.gpus_per_node or train.get("world_size", 1)
    nodes = layout.nodes or train.get("num_nodes", 1)
    planned = {**train, "world_size": world, "num_nodes": nodes}
    planned.setdefault("max_steps", 1)  # derived from the data by the stage; not part of the DS config
    if nodes > 1:
        planned["launcher"] = "deepspeed"
        if not (train.get("launcher") == "deepspeed" and train.get("hostfile")):
            planned["hostfile"] = layout.hostfile
    tc = TrainConfig.from_dict(planned)
    precision = "bf16" if tc.precision == "auto" else tc.precision  # auto = bf16 on a GPU
    lm_head = job.kind == "lm"
    n_params = count_params(cfg, job.kind)
    sizes = layer_sizes(cfg, lm_head)
    largest = max(sizes, key=sizes.get)
    ds = deepspeed_config(tc, precision, n_params)
    rows = tc.micro_batch * job.rows_per_micro
    act = {ckpt: activation_bytes(cfg, rows, tc.seq_len, precision, ckpt, lm_head) for ckpt in (False, True)}
    states = model_state_bytes(n_params, sizes[largest], world, nodes, precision)
    budget = FIT_FRACTION * layout.gpu_memory_gib * GIB
    memory = {}
    for z in ZERO_STAGES:
        total = states[z]["bytes"] + act[tc.activation_checkpointing]
        total_ckpt = states[z]["bytes"] + act[True]
        memory[f"zero_{z}"] = {"model_states_gib": _gib(states[z]["bytes"]), "source": states[z]["source"],
                               "total_gib": _gib(total), "fits": total <= budget,
                               "total_with_checkpointing_gib": _gib(total_ckpt),
                               "fits_with_checkpointing": total_ckpt <= budget}
    steps = train.get("max_steps")
    tokens_per_step = tc.global_batch * job.rows_per_micro * tc.seq_len
    problems = []
    if tc.seq_len > cfg.max_seq_len:
        problems.append(f"seq_len {tc.seq_len} > the model's max_seq_len {cfg.max_seq_len}: the stage refuses to start")
    return {
        "stage": job.stage, "dvc_stage": job.dvc_stage, "job": job.name, "params_group": job.group,
        "kind": job.kind, "runs": job.runs, "note": job.note,
        "model": {"params": n_params, "largest_layer": largest, "largest_layer_params": sizes[largest]},
        "batch": {"micro_batch": tc.micro_batch, "sequences_per_micro_batch": rows, "grad_accum": tc.grad_accum,
                  "gpus_per_node": world, "nodes": nodes, "ranks": tc.total_ranks, "seq_len": tc.seq_len,
                  "global_batch": tc.global_batch, "tokens_per_step": tokens_per_step,
                  "max_steps": steps, "total_tokens": tokens_per_step * steps if steps else None},
        "zero_stage": tc.zero_stage, "precision": precision, "activation_checkpointing": tc.activation_checkpointing,
        "deepspeed_config": ds,
        "activations_gib": {"without_checkpointing": _gib(act[False]), "with_checkpointing": _gib(act[True])},
        "memory_per_gpu": memory,
        "advice": advice(tc, memory, cfg, job, precision, states, budget, lm_head),
        "problems": problems,
        "overrides": _overrides(job.group, train, planned),
    }


def advice(tc, memory: dict, cfg, job: Job, precision: str, states: dict, budget: float, lm_head: bool) -> str:
    z, ckpt = tc.zero_stage, tc.activation_checkpointing
    here = memory[f"zero_{z}"]
    if here["fits"]:
        return f"fits at its ZeRO-{z}"
    for s in ZERO_STAGES:
        if s > z and memory[f"zero_{s}"]["fits"]:
            return f"ZeRO-{z} does not fit; ZeRO-{s} does (zero_stage: {s})"
    if not ckpt:
        for s in ZERO_STAGES:
            if s >= z and memory[f"zero_{s}"]["fits_with_checkpointing"]:
                return ("does not fit; fits with activation_checkpointing: true"
                        + (f" and zero_stage: {s}" if s != z else ""))
    for m in range(tc.micro_batch - 1, 0, -1):
        act = activation_bytes(cfg, m * job.rows_per_micro, tc.seq_len, precision, True, lm_head)
        if states[3]["bytes"] + act <= budget:
            return (f"fits only with zero_stage: 3, activation_checkpointing: true and micro_batch <= {m} "
                    f"(raise grad_accum to keep the global batch)")
    return "does not fit at any ZeRO stage: more GPUs or nodes, or ZeRO offload (TrainConfig.deepspeed)"


def plan_ppo(job: Job, recipe, cfg, layout: Layout) -> dict[str, Any]:
    ppo = recipe.rlhf.ppo.to_dict()
    rs_precision = recipe.rlhf.rejection_sampling.train.precision
    stored = "fp32" if rs_precision == "fp32" else "bf16"  # the rejection-sampled policy as exported
    d = 4 if stored == "fp32" else 2
    p_lm, p_rm = count_params(cfg, "lm"), count_params(cfg, "rm")
    # trained with torch AdamW in fp32 (ppo_finetune): param + grad + 2 moments; frozen: the stored params
    states = {"policy (trained)": 16 * p_lm, "value model (trained)": 16 * p_rm,
              "reference policy": d * p_lm, "helpfulness RM": d * p_rm, "safety RM": d * p_rm}
    seq = PPO_PROMPT_TOKENS + ppo["max_new_tokens"]
    rows = ppo.get("micro_batch") or ppo["minibatch"]  # one forward/backward pass
    act_precision = "bf16" if ppo.get("precision") == "bf16" else "fp32"  # the trained models are fp32
    ckpt = bool(ppo.get("gradient_checkpointing"))
    act = (activation_bytes(cfg, rows, seq, act_precision, ckpt, True)
           + activation_bytes(cfg, rows, seq, act_precision, ckpt, False))
    models = sum(states.values())
    total = models + act
    budget = FIT_FRACTION * layout.gpu_memory_gib * GIB
    fits = total <= budget
    if fits:
        advice = f"fits one {layout.gpu_memory_gib:g} GiB GPU (~{_gib(total):.1f} GiB)"
    elif models > budget:
        advice = (f"does not fit: the five models and two AdamW states alone need {_gib(models):.1f} "
                  f"GiB and PPO is not sharded (plain torch on one GPU); no rlhf.ppo setting helps at this shape")
    else:
        advice = (f"needs ~{_gib(total):.1f} GiB on one GPU, over {FIT_FRACTION:.0%} of "
                  f"{layout.gpu_memory_gib:g} GiB: lower rlhf.ppo.micro_batch, set gradient_checkpointing: "
                  f"true or precision: bf16 (the five models alone need {_gib(models):.1f} GiB)")
    return {
        "stage": job.stage, "dvc_stage": job.dvc_stage, "job": job.name, "params_group": "rlhf.ppo",
        "kind": "ppo", "runs": 1, "note": job.note,
        "model": {"params": p_lm, "value_model_params": p_rm},
        "batch": {"rollouts_per_step": ppo["rollouts"], "minibatch": ppo["minibatch"], "micro_batch": rows,
                  "max_new_tokens": ppo["max_new_tokens"], "steps": ppo["steps"],
                  "assumed_prompt_tokens": PPO_PROMPT_TOKENS,
                  "tokens_per_step": ppo["rollouts"] * seq},
        "zero_stage": None, "precision": stored, "autocast": ppo.get("precision", "fp32"),
        "activation_checkpointing": ckpt, "deepspeed_config": None,
        "memory_one_gpu": {"models_gib": {k: _gib(v) for k, v in states.items()}, "activations_gib": _gib(act),
                           "total_gib": _gib(total), "fits": fits},
        "advice": advice, "problems": [], "overrides": {},
    }


def _overrides(group: str, train: dict, planned: dict) -> dict[str, Any]:
    """``group.key: value`` for the launch settings that differ from the resolved params."""
    out = {}
    for key in ("world_size", "num_nodes", "launcher", "hostfile"):
        if key in planned and planned[key] != train.get(key, _TRAIN_DEFAULTS.get(key)):
            out[f"{group}.{key}"] = planned[key]
    return out


_TRAIN_DEFAULTS = {"world_size": 1, "num_nodes": 1, "launcher": "torchrun", "hostfile": None}


def _gib(n: float) -> float:
    return round(n / GIB, 2)


# --------------------------------------------------------------------------------------------
# Launch commands
# --------------------------------------------------------------------------------------------


def _has(raw: dict, dotted: str) -> bool:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _fmt(v: Any) -> str:
    return "true" if v is True else "false" if v is False else str(v)


def launch_commands(stage: str, dvc_stage: str, overrides: dict[str, Any], raw: dict, profile: str,
                    layout_nodes: int, hostfile: str, gpus_per_node: int) -> dict[str, Any]:
    """The DVC and Kedro commands of one stage with ``overrides`` (dotted params keys)."""
    kedro_params = ",".join([f"profile={profile}"] + [f"{k}={_fmt(v)}" for k, v in overrides.items()])
    kedro = f"kedro run --pipelines {stage} --params {shlex.quote(kedro_params)}"
    # DVC reads params.yaml as it is: set the profile and put the values in the profile's overlay
    # (top level for the default profile); keys that do not exist yet need Hydra's '+' in -S
    yaml_keys, sets = {"profile": profile}, [f"profile={profile}"]
    for k, v in overrides.items():
        key = k if profile == "default" else f"profiles.{profile}.{k}"
        yaml_keys[key] = v
        sets.append(("" if _has(raw, key) else "+") + f"{key}={_fmt(v)}")
    exp = "dvc exp run " + shlex.quote(dvc_stage) + "".join(f" -S {shlex.quote(s)}" for s in sets)
    out = {"params_yaml": yaml_keys, "dvc": f"dvc repro {shlex.quote(dvc_stage)}", "dvc_exp": exp, "kedro": kedro}
    if layout_nodes > 1:
        out["hostfile"] = hostfile
        out["hostfile_example"] = "\n".join(f"node{i + 1} slots={gpus_per_node}" for i in range(layout_nodes))
        out["run_on"] = ("the first host of the hostfile: DeepSpeed's launcher starts the ranks of every node "
                         "over ssh (pdsh); every node needs this checkout, .venv and data/ at the same path "
                         "(a shared filesystem)")
    return out


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]], markdown: bool, indent: str = "") -> list[str]:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return lines + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    fmt = lambda r: indent + "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(headers), indent + "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]


def _human(n: float) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:g}"


def _fits(ok: bool) -> str:
    return "fits" if ok else "does not fit"


def render(plan: dict, markdown: bool = False) -> str:
    L: list[str] = []
    h1 = "# " if markdown else ""
    h2 = "## " if markdown else "== "
    lay = plan["layout"]
    gpus = (f"{lay['gpus_per_node']} GPUs per node x {lay['nodes']} node(s) = "
            f"{lay['gpus_per_node'] * lay['nodes']} GPUs"
            if lay["gpus_per_node"] and lay["nodes"] else
            "GPUs per node and nodes as each stage's params say (world_size, num_nodes)")
    L.append(f"{h1}GPU plan: profile {plan['profile']} ({plan['params_file']})")
    L.append("")
    L.append(f"layout: {gpus}, {lay['gpu_memory_gib']:g} GiB each (fits = estimate <= {FIT_FRACTION:.0%} of it)")
    L.append(f"model:  {plan['model']['description']}")
    L.append(f"        {plan['model']['params']:,} parameters ({_human(plan['model']['params'])}); source: "
             f"{plan['model']['source']}")
    for n in plan["model"].get("notes", []):
        L.append(f"        note: {n}")
    L.append("")
    L.append(f"{h2}summary (memory per GPU at each job's own ZeRO stage and activation checkpointing)")
    L.append("")
    rows = []
    for j in plan["jobs"]:
        if j["kind"] == "ppo":
            m = j["memory_one_gpu"]
            rows.append([j["stage"], j["job"], _human(j['model']['params']), "-", j["precision"],
                         f"{j['batch']['micro_batch']}/{j['batch']['minibatch']}/{j['batch']['rollouts_per_step']} "
                         "rollouts", "-", f"{m['total_gib'] - m['activations_gib']:.1f}+{m['activations_gib']:.1f}",
                         f"{m['total_gib']:.1f} (1 GPU)", _fits(m["fits"])])
            continue
        b, z = j["batch"], j["zero_stage"]
        m = j["memory_per_gpu"][f"zero_{z}"]
        rows.append([j["stage"], j["job"] + (f" (x{j['runs']})" if j["runs"] > 1 else ""),
                     _human(j['model']['params']), str(z), j["precision"],
                     f"{b['micro_batch']}x{b['grad_accum']}x{b['ranks']}={b['global_batch']}",
                     f"{b['tokens_per_step']:,}",
                     f"{m['model_states_gib']:.1f}+{m['total_gib'] - m['model_states_gib']:.1f}",
                     f"{m['total_gib']:.1f}", _fits(m["fits"])])
    L += _table(["stage", "job", "params", "ZeRO", "prec", "micro x accum x ranks", "tokens/step",
                 "states+act GiB", "total GiB", "fits"], rows, markdown)
    for st in plan["stages"]:
        L.append("")
        L.append(f"{h2}{st['stage']} (dvc stage {st['dvc_stage']}, kedro pipeline {st['stage']})")
        for j in [j for j in plan["jobs"] if j["stage"] == st["stage"]]:
            L.append("")
            L += _render_job(j, markdown)
        L.append("")
        L += _render_launch(st["launch"], markdown)
    L.append("")
    L.append(f"{h2}notes")
    L.append("")
    L += [f"- {n}" for n in plan["notes"]]
    return "\n".join(L) + "\n"


def _render_job(j: dict, markdown: bool) -> list[str]:
    group = f" [params {j['params_group']}]" if j["params_group"] else ""
    L = [("### " if markdown else "-- ") + j["job"] + group]
    ind = "- " if markdown else "   "  # a Markdown list keeps the lines apart
    if j["note"]:
        L.append(f"{ind}{j['note']}")
    if j["kind"] == "ppo":
        b, mh = j["batch"], j["memory_one_gpu"]
        L.append(f"{ind}policy {j['model']['params']:,} params, value model {j['model']['value_model_params']:,}; "
                 f"{b['steps']} steps x {b['rollouts_per_step']} rollouts of <= {b['max_new_tokens']} new tokens "
                 f"(prompts assumed <= {b['assumed_prompt_tokens']} tokens), minibatch {b['minibatch']} in "
                 f"passes of {b['micro_batch']}, trained models in fp32, frozen ones in {j['precision']}, "
                 f"autocast {j['autocast']}, "
                 f"activation checkpointing {'on' if j['activation_checkpointing'] else 'off'}")
        L.append(f"{ind}memory on its GPU (GiB): " + ", ".join(f"{k} {v:.1f}" for k, v in mh["models_gib"].items())
                 + f", activations {mh['activations_gib']:.1f}; total {mh['total_gib']:.1f}: {j['advice']}")
        return L
    b = j["batch"]
    L.append(f"{ind}params     {j['model']['params']:,} (largest layer {j['model']['largest_layer']}: "
             f"{j['model']['largest_layer_params']:,})")
    seqs = (f"{b['micro_batch']} pairs = {b['sequences_per_micro_batch']} sequences"
            if b["sequences_per_micro_batch"] != b["micro_batch"] else f"{b['micro_batch']} sequences")
    total = (f"; {b['max_steps']:,} steps = {_human(b['total_tokens'])} tokens" if b["total_tokens"] else
             "; steps derived from the data")
    ranks = f"{b['ranks']} rank{'s' if b['ranks'] > 1 else ''}"
    L.append(f"{ind}batch      micro_batch {seqs} x seq_len {b['seq_len']} per GPU, grad_accum {b['grad_accum']}, "
             f"{ranks} ({b['gpus_per_node']} per node x {b['nodes']}): global batch {b['global_batch']}, "
             f"{b['tokens_per_step']:,} tokens/step{total}")
    ds = j["deepspeed_config"]
    L.append(f"{ind}deepspeed  ZeRO {ds['zero_optimization']['stage']}, {j['precision']}, "
             f"train_micro_batch_size_per_gpu {ds['train_micro_batch_size_per_gpu']}, "
             f"gradient_accumulation_steps {ds['gradient_accumulation_steps']}, "
             f"train_batch_size {ds['train_batch_size']}")
    compact = json.dumps(ds, separators=(",", ":"))
    L.append(f"{ind}config     `{compact}`" if markdown else f"{ind}           {compact}")
    a = j["activations_gib"]
    ck = "on" if j["activation_checkpointing"] else "off"
    L.append(f"{ind}activations {a['without_checkpointing']:.2f} GiB without checkpointing, "
             f"{a['with_checkpointing']:.2f} GiB with (activation_checkpointing is {ck})")
    star = "\\*" if markdown else "*"
    rows = []
    for z in ZERO_STAGES:
        m = j["memory_per_gpu"][f"zero_{z}"]
        mark = f" {star}" if z == j["zero_stage"] else ""
        rows.append([f"ZeRO-{z}{mark}", f"{m['model_states_gib']:.2f}", f"{m['total_gib']:.2f}", _fits(m["fits"]),
                     f"{m['total_with_checkpointing_gib']:.2f}", _fits(m["fits_with_checkpointing"])])
    tind = "" if markdown else ind
    L.append("")
    L += _table(["per GPU (GiB)", "model states", f"total (ckpt {ck})", "fits", "total (ckpt on)", "fits"],
                rows, markdown, indent=tind)
    L.append("")
    L.append(f"{tind}{star} = configured; {j['advice']}")
    for p in j["problems"]:
        L.append(f"{tind}PROBLEM: {p}")
    return L


def _render_launch(launch: dict, markdown: bool) -> list[str]:
    ind = "" if markdown else "   "
    where = "several nodes" if "hostfile" in launch else "one node"
    L = [f"{ind}launch on {where}:"]
    cmds = []
    if "hostfile" in launch:
        cmds.append(f"# hostfile {launch['hostfile']}: one line per node, slots = GPUs per node, e.g.")
        cmds += [f"#   {line}" for line in launch["hostfile_example"].splitlines()]
    yaml_keys = "; ".join(f"{k}: {_fmt(v)}" for k, v in launch["params_yaml"].items())
    cmds += [f"# DVC: set in params.yaml  {yaml_keys}", launch["dvc"],
             "# or in one go (dvc exp run -S rewrites params.yaml's layout)", launch["dvc_exp"],
             "# Kedro alone (nothing edited; --params apply after the profile)", launch["kedro"]]
    if "run_on" in launch:
        cmds.append(f"# run it on {launch['run_on']}")
    if markdown:
        return L + ["", "```"] + cmds + ["```"]
    return L + [f"{ind}  {c}" for c in cmds]


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


NOTES = [
    "model states: DeepSpeed's estimate_zero2_model_states_mem_needs / estimate_zero3_model_states_mem_needs "
    "(no offload) for ZeRO-2/3; ZeRO-1 has no DeepSpeed estimator and is derived with the same accounting: "
    "16-bit params and grads replicated (4 B/param), fp32 params, fp32 grads and Adam moments partitioned "
    "(16 B/param / N); ZeRO-0 replicates all 20 B/param. fp32 jobs: 4+4+8 B/param with the same splits.",
    "activations: one micro-batch per GPU, Korthikanti et al. 2022 (sec. 4.1) counting applied to this Llama "
    "block on CUDA: s*b*a*(7h + 3h_kv + 4f) bytes per layer (no s^2 term: SDPA flash kernel), plus the final "
    "norm and, for LM heads, the loss's backward peak of 12 bytes per token per vocabulary entry; with "
    "activation checkpointing each layer keeps its input (s*b*h*a) plus the larger of one recomputed layer "
    "and the head. Within 0.5 % of the peaks measured on an H100 (160m, 1b, 7b in bf16).",
    f"fits: model states + activations <= {FIT_FRACTION:.0%} of the GPU's memory (not counted: ZeRO "
    "reduce/all-gather buckets of up to 5e8 elements, the CUDA context, allocator fragmentation).",
    "micro_batch and grad_accum are per rank: the global batch (and tokens per step) grows with the "
    "number of GPUs; lower grad_accum to keep the paper's batch on more GPUs.",
    "sampling and evaluation steps (preference and candidate sampling, GAtt sampling, evaluations) run "
    "inference on one device and are not planned here.",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llama2-pipeline plan",
        description="Per training stage of a profile: model shape, parameters, tokens, the DeepSpeed config, "
                    "memory per GPU for ZeRO 0-3 and the launch commands. Needs no GPU.")
    p.add_argument("--profile", help="profile of params.yaml (default: its `profile:` key)")
    p.add_argument("--preset", help="replace every stage's model shape by this preset "
                                    "(smoke, tiny, 160m, 1b, 7b, 13b, 34b, 70b), its vocab_size included")
    p.add_argument("--gpus-per-node", type=int, help="ranks per node (default: each stage's world_size)")
    p.add_argument("--nodes", type=int, help="nodes (default: each stage's num_nodes); > 1 plans the DeepSpeed "
                                             "launcher with a hostfile")
    p.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory of one GPU in GiB (default 80)")
    p.add_argument("--hostfile", default="hostfile", help="hostfile path for multi-node runs (default: hostfile)")
    p.add_argument("--params", default=DEFAULT_PARAMS, help="the params file (default params.yaml)")
    p.add_argument("--stage", action="append", help="only this stage (repeatable): pretrain, sft, reward, "
                                                    "rlhf, rlhf_<round> or rlhf@<round>, gatt")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--out", help="also write the report as Markdown to this file")
    return p


def make_plan(args: argparse.Namespace) -> dict[str, Any]:
    from llama2_pipeline import recipe as R

    for name in ("gpus_per_node", "nodes"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise PlanError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if not args.gpu_memory_gib > 0:
        raise PlanError(f"--gpu-memory-gib must be > 0, got {args.gpu_memory_gib}")
    path = Path(args.params)
    if not path.is_file():
        raise PlanError(f"params file {path} does not exist (run from the project root or pass --params)")
    try:
        raw = R.read_params_file(path)
        recipe = R.resolve(raw, overrides={"profile": args.profile} if args.profile else None, source=str(path))
    except R.ParamsError as e:
        raise PlanError(str(e)) from None
    profile = recipe.profile
    cfg, label, model_over = resolve_model(recipe, args.preset)
    layout = Layout(args.gpus_per_node, args.nodes, args.gpu_memory_gib, args.hostfile)
    jobs = select_jobs(stage_jobs(recipe), args.stage)
    planned = [plan_job(j, recipe, cfg, layout) for j in jobs]
    notes = []
    if args.preset:
        source = f"--preset {args.preset} (replaces pretrain.model; later stages inherit it)"
        tok = recipe.tokenizer.vocab_size
        if tok != cfg.vocab_size:
            notes.append(f"tokenizer.vocab_size is {tok} in profile {profile}; the commands set "
                         f"pretrain.model.vocab_size={cfg.vocab_size} (the model may be wider than the tokenizer, "
                         f"not narrower)")
    else:
        source = f"pretrain.model of profile {profile} (vocab_size: tokenizer.vocab_size unless set)"
    stages = []
    for st in stage_names(jobs):
        sj = [j for j in planned if j["stage"] == st]
        over: dict[str, Any] = {}
        if st == "pretrain" and model_over:
            over.update({f"pretrain.model.{k}": v for k, v in model_over.items()})
        for j in sj:
            over.update(j["overrides"])
        ref = next((j for j in sj if j["kind"] != "ppo"), None)
        nodes = ref["batch"]["nodes"] if ref else 1
        gpn = ref["batch"]["gpus_per_node"] if ref else 1
        stages.append({"stage": st, "dvc_stage": sj[0]["dvc_stage"], "jobs": [j["job"] for j in sj],
                       "launch": launch_commands(st, sj[0]["dvc_stage"], over, raw, profile, nodes,
                                                 args.hostfile, gpn)})
    return {
        "profile": profile, "params_file": str(path),
        "layout": {"gpus_per_node": args.gpus_per_node, "nodes": args.nodes, "gpu_memory_gib": args.gpu_memory_gib,
                   "fit_fraction": FIT_FRACTION},
        "model": {"label": label, "source": source, "config": cfg.to_dict(), "params": cfg.num_params(),
                  "description": describe_model(cfg, label), "notes": notes},
        "jobs": planned, "stages": stages, "notes": NOTES,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = make_plan(args)
    except PlanError as e:
        print(f"llama2-pipeline plan: {e}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(render(plan, markdown=True))
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        print(render(plan), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
