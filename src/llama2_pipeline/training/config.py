"""Every training stage's configuration, one dataclass per params group (no torch: the recipe's
parameter tree and ``llama2-pipeline plan`` read them without a model).

* :class:`TrainConfig`: the optimiser, batch, schedule, precision and ranks of a run. Pretraining,
  SFT and the reward models all run through the same engine and loop, so they share it
  (``train_defaults`` in params.yaml, overridden per stage). Defaults are the paper's optimiser
  (AdamW 0.9/0.95, eps 1e-5, wd 0.1, cosine to 10 %, clip 1.0) with a small CPU-friendly batch.
* :class:`SFTConfig` (SFT, rejection sampling, GAtt's fine-tuning), :class:`PreferenceConfig` and
  :class:`RewardConfig` (the reward models), :class:`PPOConfig`, :class:`RLHFConfig` (the rounds),
  :class:`GattConfig`.

Each is built by the project's config builder (:mod:`llama2_pipeline.core.schema`), which names a
bad key by its dotted path; ``check`` holds the rules between fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..core.schema import Config, optional, require
from ..model.config import SamplingConfig

CATEGORIES = ("helpfulness", "safety")  # the two reward models and the two kinds of preference pair
PAIR_KINDS = ("sample_sample", "sample_reference", "sample_refusal", "sample_full_refusal")

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Launcher = Literal["torchrun", "deepspeed"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    """Every knob of a training run; plain JSON data through ``to_dict``/``from_dict``."""

    # -- batch and length -------------------------------------------------------------------
    micro_batch: int = 8  # sequences per rank per forward/backward pass
    grad_accum: int = 1  # micro-batches accumulated per optimiser step (per rank)
    seq_len: int = 128  # tokens per training sequence (model inputs; targets are shifted by one)
    max_steps: int | None = optional(None)  # optimiser steps of the whole run; None: the stage derives
    #                                         it from its epochs (SFT, reward models)

    # -- optimiser and schedule (Llama 2: AdamW, cosine to 10 %, clip 1.0) -----------------
    lr: float = 3e-4  # peak learning rate, reached at the end of warm-up
    min_lr_ratio: float = 0.1  # the cosine decays to min_lr_ratio * lr at max_steps
    warmup_steps: int | None = optional(None)  # linear warm-up steps from lr/warmup_steps to lr
    #                                            (paper: 2000); None: the stage's rule (reward
    #                                            models: 3 % of the steps), else none
    weight_decay: float = 0.1  # AdamW decoupled weight decay on matrices (not norms / 1-D params)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW beta1, beta2
    eps: float = 1e-5  # AdamW epsilon
    grad_clip: float = 1.0  # clip the global gradient L2 norm to this (0 = no clipping)

    # -- evaluation, checkpoints, logging ---------------------------------------------------
    eval_every: int = 100  # run the eval function every N steps (0 = only at the end)
    eval_batches: int = 8  # micro-batches per evaluation (0 = the whole validation split)
    checkpoint_every: int = 100  # save a resumable checkpoint every N steps (0 = only at the
    #                              end, -1 = never: throw-away runs and benchmarks)
    keep_checkpoints: int = 2  # how many of the newest checkpoints to keep on disk (>= 1)
    keep_runs: int = 3  # the project's workspaces: run folders (one per configuration) kept per stage,
    #                     the current one included, so switching back to an earlier config resumes
    log_every: int = 10  # log loss, lr, grad norm, tokens/s, MFU every N steps
    seed: int = 1234  # seeds python, numpy, torch and the data sampler

    # -- precision and device ---------------------------------------------------------------
    precision: Precision = "auto"  # auto = bf16 on CUDA, fp32 on CPU (bf16/fp16 on CPU raise a
    #                                ValueError: DeepSpeed's mixed-precision optimisers are GPU-only here)
    device: Device = "auto"  # auto = cuda when available
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3 (1: optimiser states, 2: + grads, 3: + params)
    compile: bool | Literal["auto"] = "auto"  # torch.compile the model (engine.compile()); auto = on CUDA
    #                                           only (CPU runs stay eager and bit-identical)
    optimizer: Literal["auto", "deepspeed", "fused", "foreach"] = "auto"  # the AdamW implementation:
    #   deepspeed = DeepSpeed's torch_adam (torch.optim.AdamW, single-tensor on CPU); fused / foreach =
    #   torch.optim.AdamW(fused=True) / (foreach=True) built here and handed to DeepSpeed (same
    #   hyper-parameters and no-decay groups); auto = fused on CUDA, deepspeed on CPU
    loss_chunk: int = 0  # tokens per chunk of the output head + cross-entropy (0 = off: full logits);
    #                      > 0 never holds more than this many tokens' fp32 logits (not with ZeRO-3)
    activation_checkpointing: bool = False  # recompute each transformer block in backward
    deterministic: bool = True  # torch.use_deterministic_algorithms (always on for CPU runs)
    num_threads: int = 0  # torch intra-op threads per rank (0 = torch's default)
    peak_flops: float | None = None  # per-device peak FLOP/s for MFU; None = 989e12 on CUDA
    #                                  (H100 dense bf16), no MFU on CPU

    # -- processes --------------------------------------------------------------------------
    world_size: int = 1  # ranks (processes) on each node; > 1 launches a subprocess per rank
    num_nodes: int = 1  # nodes; > 1 needs launcher=deepspeed + hostfile, or torchrun run
    #                     per node with NODE_RANK and MASTER_ADDR set by the scheduler
    hostfile: str | None = None  # DeepSpeed hostfile ("host slots=N" lines) for multi-node
    launcher: Launcher = "torchrun"  # how world_size/num_nodes > 1 is launched
    master_port: int = 0  # rendezvous port for multi-process runs (0 = pick a free one)
    deepspeed: dict = field(default_factory=dict)  # extra DeepSpeed config, merged over ours
    #                                                (e.g. {"zero_optimization": {"offload_optimizer": ...}})

    def check(self) -> None:
        for name in ("micro_batch", "grad_accum", "seq_len", "keep_checkpoints", "keep_runs", "log_every",
                     "world_size", "num_nodes"):
            require(getattr(self, name) >= 1, name, "an integer >= 1", getattr(self, name))
        require(self.max_steps is None or self.max_steps >= 1, "max_steps", "an integer >= 1 (or null: derived)",
                self.max_steps)
        require(self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps", "an integer >= 0",
                self.warmup_steps)
        for name in ("eval_every", "eval_batches", "num_threads", "master_port", "seed"):
            require(getattr(self, name) >= 0, name, "an integer >= 0", getattr(self, name))
        require(self.checkpoint_every >= -1, "checkpoint_every", "an integer >= -1", self.checkpoint_every)
        require(self.lr > 0, "lr", "a number > 0", self.lr)
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "a number in [0, 1]", self.min_lr_ratio)
        require(self.weight_decay >= 0, "weight_decay", "a number >= 0", self.weight_decay)
        require(self.grad_clip >= 0, "grad_clip", "a number >= 0", self.grad_clip)
        require(self.eps > 0, "eps", "a number > 0", self.eps)
        require(all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)", self.betas)
        require(self.zero_stage in (0, 1, 2, 3), "zero_stage", "0, 1, 2 or 3", self.zero_stage)
        require(self.loss_chunk >= 0, "loss_chunk", "an integer >= 0 (0 = off)", self.loss_chunk)
        require(not (self.loss_chunk and self.zero_stage == 3), "loss_chunk",
                "0 with zero_stage 3 (the chunked loss reads the head's weight, which ZeRO-3 partitions)",
                self.loss_chunk)
        require(self.peak_flops is None or self.peak_flops > 0, "peak_flops", "a number > 0 or null",
                self.peak_flops)
        require(not (self.num_nodes > 1 and self.launcher == "deepspeed" and not self.hostfile), "hostfile",
                "a DeepSpeed hostfile with launcher 'deepspeed' and num_nodes > 1", self.hostfile)

    # -- derived ----------------------------------------------------------------------------

    @property
    def total_ranks(self) -> int:
        """Data-parallel ranks over all nodes."""
        return self.world_size * self.num_nodes

    @property
    def global_batch(self) -> int:
        """Sequences per optimiser step: micro_batch * grad_accum * world_size * num_nodes."""
        return self.micro_batch * self.grad_accum * self.total_ranks

    @property
    def global_batch_tokens(self) -> int:
        """Tokens per optimiser step: global_batch * seq_len."""
        return self.global_batch * self.seq_len

    @property
    def multi_process(self) -> bool:
        """True when the run needs a launcher (more than one rank)."""
        return self.total_ranks > 1


@dataclass(frozen=True, kw_only=True)
class SFTConfig(Config):
    """How dialogues become training rows, and the run that trains on them."""

    pack: bool = True  # pack dialogues into full rows (block-diagonal attention); False: one padded dialogue per row
    overlong: Literal["truncate", "drop"] = "truncate"  # dialogues longer than train.seq_len + 1 tokens:
    #                                                      keep the start, or drop them (both counted)
    epochs: float | None = 2.0  # passes over the rows (paper: 2); sets max_steps. None: train.max_steps
    val_fraction: float = 0.05  # dialogues held out for the validation answer loss (0 = none)
    only_last_answer: bool = False  # loss on each dialogue's last answer only (GAtt); records may override
    shuffle: bool = True  # pack in a seeded shuffled order (False: the given order)
    train: TrainConfig = field(default_factory=TrainConfig)  # the optimiser, batch and schedule

    def check(self) -> None:
        require(self.epochs is None or self.epochs > 0, "epochs", "a number > 0 or null", self.epochs)
        require(0 <= self.val_fraction < 1, "val_fraction", "a number in [0, 1)", self.val_fraction)
        require(self.epochs is not None or self.train.max_steps is not None, "train.max_steps",
                "a number of steps when epochs is null")
        require(self.epochs is None or self.train.max_steps is None, "train.max_steps",
                "absent: epochs sets it (remove it, or set epochs to null)", self.train.max_steps)

PairKind = Literal["sample_sample", "sample_reference", "sample_refusal", "sample_full_refusal"]


@dataclass(frozen=True, kw_only=True)
class PreferenceConfig(Config):
    """How new pairs are collected (the ``reward.preferences`` params group)."""

    collect: bool = True  # sample and annotate new pairs (false: train on the user's pairs only)
    temperatures: list[float] = field(default_factory=lambda: [0.6, 0.9, 1.2])  # one policy sample each
    variant_temperatures: list[float] = field(default_factory=list)  # one sample of the variant model each
    safety_samples: int = 1  # samples per (model, temperature) of a safety-tagged prompt (1 = as the others)
    top_p: float = 0.95  # nucleus-sampling mass
    max_new_tokens: int = 32  # longest sampled answer (tokens)
    batch_size: int = 64  # prompts per generation batch
    max_prompts: int = 0  # train prompts to answer (0 = all; else a seeded sample)
    pairs: list[PairKind] = field(default_factory=lambda: ["sample_sample"])  # kinds of pairs per prompt
    drop_ties: bool = True  # leave out pairs the world scores exactly equal
    eval_fraction: float = 0.2  # share of prompts whose pairs are held out (split by prompt)

    def check(self) -> None:
        require(all(t >= 0 for t in self.temperatures) and (len(self.temperatures) >= 2 or not self.collect),
                "temperatures", "a list of at least two temperatures >= 0 (one sample each per prompt)",
                self.temperatures)
        require(all(t >= 0 for t in self.variant_temperatures), "variant_temperatures",
                "a list of temperatures >= 0 ([] = no variant model samples)", self.variant_temperatures)
        require(self.safety_samples >= 1, "safety_samples", "an integer >= 1", self.safety_samples)
        require(0 < self.top_p <= 1, "top_p", "a number in (0, 1]", self.top_p)
        require(self.max_new_tokens >= 1, "max_new_tokens", "an integer >= 1", self.max_new_tokens)
        require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        require(self.max_prompts >= 0, "max_prompts", "an integer >= 0 (0 = all)", self.max_prompts)
        require(len(self.pairs) > 0, "pairs", f"a non-empty list of {list(PAIR_KINDS)}", self.pairs)
        require(0 < self.eval_fraction < 1, "eval_fraction", "a number in (0, 1)", self.eval_fraction)

@dataclass(frozen=True, kw_only=True)
class RewardEvalConfig(Config):
    batch_size: int = 32  # sequences per scoring batch
    calibration_bins: int = 10  # score-gap bins of the calibration plot

    def check(self) -> None:
        require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        require(self.calibration_bins >= 2, "calibration_bins", "an integer >= 2", self.calibration_bins)


@dataclass(frozen=True, kw_only=True)
class RewardConfig(Config):
    """Both reward models: the preference pairs, the loss, the data mixes, the run, the evaluation."""

    preferences: PreferenceConfig = field(default_factory=PreferenceConfig)
    margin: Literal["small", "large", "none"] = "small"  # m(rating) of the loss (:data:`MARGINS`)
    epochs: float | dict[str, float] = 1.0  # passes over each RM's training pairs (paper: 1): one number for
    #                                         both RMs or {helpfulness: n, safety: n}; sets train.max_steps
    warmup_fraction: float = 0.03  # linear warm-up as a share of the steps, at least 5 (paper: 3 %)
    helpfulness_mix: dict[str, float] = field(default_factory=lambda: {"helpfulness": 1.0, "safety": 0.5})
    safety_mix: dict[str, float] = field(default_factory=lambda: {"safety": 1.0, "helpfulness": 0.1})
    num_threads: int = 0  # torch CPU threads for sampling, training and scoring (0 = all cores)
    train: TrainConfig = field(default_factory=TrainConfig)  # max_steps and warmup_steps derived
    eval: RewardEvalConfig = field(default_factory=RewardEvalConfig)

    def check(self) -> None:
        per = self.epochs if isinstance(self.epochs, dict) else dict.fromkeys(CATEGORIES, self.epochs)
        require(set(per) == set(CATEGORIES) and all(v > 0 for v in per.values()), "epochs",
                f"a number > 0, or a mapping of {' and '.join(CATEGORIES)} to numbers > 0", self.epochs)
        require(0 <= self.warmup_fraction <= 1, "warmup_fraction", "a number in [0, 1]", self.warmup_fraction)
        require(0 <= self.num_threads <= 1024, "num_threads", "an integer in [0, 1024] (0 = torch's default)",
                self.num_threads)
        for name in ("helpfulness_mix", "safety_mix"):
            mix = getattr(self, name)
            require(set(mix) <= set(CATEGORIES) and all(v >= 0 for v in mix.values()) and sum(mix.values()) > 0,
                    name, f"a mapping of {list(CATEGORIES)} to shares >= 0 with a positive sum", mix)
        require(self.train.max_steps is None, "train.max_steps", "absent: reward.epochs sets it", self.train.max_steps)

    def mix(self, category: str) -> dict[str, float]:
        """The data mix of the ``category`` RM."""
        return self.helpfulness_mix if category == "helpfulness" else self.safety_mix

    def epochs_of(self, category: str) -> float:
        """The passes over its training pairs of the ``category`` RM."""
        return self.epochs[category] if isinstance(self.epochs, dict) else self.epochs

@dataclass(frozen=True, kw_only=True)
class PPOConfig(Config):
    """Hyper-parameters of :class:`PPOTrainer` and of a round's PPO (the paper's values in comments);
    the ``rlhf.ppo`` params group."""

    steps: int = 32              # PPO steps (rollout + update) of a round
    max_prompts: int = 0         # train prompts to roll out on (0 = all; else a seeded sample)
    rollouts: int = 16           # prompts sampled per PPO step (paper: 512)
    max_new_tokens: int = 32     # longest answer
    temperature: float = 1.0     # sampling temperature of the rollouts
    top_p: float = 1.0           # nucleus mass of the rollouts
    beta: float = 0.01           # KL penalty (paper: 0.01 for 7B/13B, 0.005 for 34B/70B)
    max_kl: float = 0.0          # the round's KL bound (nats per answer; 0 = none): PPO stops at the first
                                 # step whose rollouts are further from the start, and keeps the newest
                                 # policy that stayed within it
    gamma: float = 1.0           # GAE discount (paper: 1)
    lam: float = 0.95            # GAE lambda (paper: 0.95)
    clip: float = 0.2            # PPO ratio clip (paper: 0.2)
    value_clip: float = 0.2      # value-loss clip
    ppo_epochs: int = 1          # passes over each step's rollouts (paper: 1)
    minibatch: int = 8           # rollouts per gradient step (paper: 64)
    lr: float = 1e-6             # policy learning rate (paper: 1e-6, constant)
    value_lr: float = 1e-5       # value model learning rate
    weight_decay: float = 0.1    # AdamW (paper: 0.1)
    grad_clip: float = 1.0       # gradient-norm clip (paper: 1.0)
    whiten_rewards: bool = True  # the paper's WHITEN of the sequence scores, per step
    whiten_advantages: bool = True
    micro_batch: int = 0         # rollouts per forward/backward pass (0 = a whole minibatch); gradients
                                 # accumulate over a minibatch's micro-batches, so the update is the same
    precision: Literal["fp32", "bf16"] = "fp32"  # autocast of every forward pass (ppo_finetune trains fp32 weights)
    gradient_checkpointing: bool = False  # recompute each block in backward (policy and value model)
    seed: int = optional(0)      # the rollouts' and minibatches' seed (a round derives its own)

    def check(self) -> None:
        for name in ("steps", "rollouts", "max_new_tokens", "ppo_epochs", "minibatch"):
            require(getattr(self, name) >= 1, name, "an integer >= 1", getattr(self, name))
        for name in ("max_prompts", "micro_batch"):
            require(getattr(self, name) >= 0, name, "an integer >= 0 (0 = all)", getattr(self, name))
        for name in ("beta", "max_kl", "temperature", "lr", "value_lr", "weight_decay", "grad_clip"):
            require(getattr(self, name) >= 0, name, "a number >= 0", getattr(self, name))
        require(0 < self.top_p <= 1, "top_p", "a number in (0, 1]", self.top_p)
        require(0 <= self.lam <= 1, "lam", "a number in [0, 1]", self.lam)
        require(0 <= self.gamma <= 1, "gamma", "a number in [0, 1]", self.gamma)
        require(self.clip > 0, "clip", "a number > 0", self.clip)
        require(self.value_clip > 0, "value_clip", "a number > 0", self.value_clip)

@dataclass(frozen=True, kw_only=True)
class RoundSpec(Config):
    after: str  # the policy the round starts from: sft, or the previous round (rlhf_<name>)
    ppo: bool  # PPO after rejection sampling (paper: the last round)


@dataclass(frozen=True, kw_only=True)
class CandidateConfig(Config):
    """The answers the round's starting policy samples per train prompt, and the pairs among them."""

    k: int = 4  # answers per prompt (paper: up to 10)
    temperature: float = 0.7  # sampling temperature
    top_p: float = 0.95  # nucleus-sampling mass
    max_new_tokens: int = 32  # longest answer (tokens)
    batch_size: int = 64  # prompts per generation batch
    max_prompts: int = 0  # train prompts to answer (0 = all; else a seeded sample)
    drop_ties: bool = True  # leave out pairs the world scores exactly equal
    pairs_per_prompt: int = 0  # pairs of two answers compared per prompt (0 = every two; else a seeded sample)
    pairs: list[PairKind] = field(default_factory=lambda: ["sample_sample"])  # kinds of pairs
    earlier_rounds: bool = True  # rejection sampling also ranks the answers earlier rounds kept
    #: rejection sampling on prompts not tagged safety ranks by R_c / sd + w * (the round's starting
    #: policy's mean token log-likelihood of the answer) / sd, each sd over those prompts' answers
    likelihood_weight: float = 0.0
    #: share of the kept answers to safety-tagged prompts also learned under a seeded system
    #: instruction, the answer rewritten to it (:func:`llama2_pipeline.training.rejection.instructed_copies`)
    instructed_safety: float = 0.0

    def check(self) -> None:
        require(self.k >= 2, "k", "an integer >= 2 (answers per prompt)", self.k)
        require(len(self.pairs) > 0, "pairs", "a non-empty list of pair kinds", self.pairs)
        require(self.pairs_per_prompt >= 0, "pairs_per_prompt", "an integer >= 0 (0 = every two answers)",
                self.pairs_per_prompt)
        for key in ("max_new_tokens", "batch_size"):
            require(getattr(self, key) >= 1, key, "an integer >= 1", getattr(self, key))
        require(self.max_prompts >= 0, "max_prompts", "an integer >= 0 (0 = all)", self.max_prompts)
        require(self.temperature >= 0, "temperature", "a number >= 0", self.temperature)
        require(0 < self.top_p <= 1, "top_p", "a number in (0, 1]", self.top_p)
        require(self.likelihood_weight >= 0, "likelihood_weight", "a number >= 0 (0 = rank by R_c alone)",
                self.likelihood_weight)
        require(0 <= self.instructed_safety <= 1, "instructed_safety", "a number in [0, 1] (0 = no instructed copies)",
                self.instructed_safety)


@dataclass(frozen=True, kw_only=True)
class RoundEvalConfig(Config):
    """The round's held-out evaluation (greedy answers to prompts_eval)."""

    max_new_tokens: int = 64  # longest answer
    batch_size: int = 64  # prompts per generation batch
    kl_samples: int = 100  # held-out prompts with a sampled answer for the KL-to-SFT estimate

    def check(self) -> None:
        for key in ("max_new_tokens", "batch_size", "kl_samples"):
            require(getattr(self, key) >= 1, key, "an integer >= 1", getattr(self, key))


@dataclass(frozen=True, kw_only=True)
class RLHFConfig(Config):
    """The iterative rounds (the ``rlhf`` params group)."""

    rounds: dict[str, RoundSpec]  # in order: each starts after the previous one, the first after sft
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    reward_models: str = "continue"  # the round's RMs: continue (the previous RMs on the new pairs) | retrain (from SFT on every pair so far)
    reward_epochs: float = 1.0  # with continue: passes over the round's new pairs (retrain: reward.epochs)
    reward_replay: float = 0.0  # with continue: earlier train pairs replayed per new one, per category (0 = none)
    safety_threshold: float = 0.15  # R_s below it selects the safety RM's score on any prompt (paper: 0.15)
    num_threads: int = 0  # torch CPU threads for sampling, scoring and PPO (0 = all cores)
    rejection_sampling: SFTConfig = field(default_factory=SFTConfig)  # fine-tuning on the best of K
    ppo: PPOConfig = field(default_factory=PPOConfig)
    eval: RoundEvalConfig = field(default_factory=RoundEvalConfig)

    def check(self) -> None:
        require(len(self.rounds) > 0, "rounds", "a mapping of round names (v1, v2, ...) to {after, ppo}", self.rounds)
        previous = "sft"
        for name, spec in self.rounds.items():
            require(spec.after == previous, f"rounds.{name}.after",
                    f"{previous!r} (each round starts from the one before it; the first from sft)", spec.after)
            previous = f"rlhf_{name}"
        require(self.reward_models in ("continue", "retrain"), "reward_models", "continue | retrain",
                self.reward_models)
        require(self.reward_replay >= 0, "reward_replay", "a number >= 0 (earlier pairs per new pair)",
                self.reward_replay)
        require(self.reward_epochs > 0, "reward_epochs", "a number > 0", self.reward_epochs)
        require(self.reward_replay == 0 or self.reward_models == "continue", "reward_replay",
                "0 with reward_models: retrain (which trains on every pair so far)", self.reward_replay)
        require(0 <= self.safety_threshold <= 1, "safety_threshold", "a number in [0, 1]", self.safety_threshold)
        require(self.num_threads >= 0, "num_threads", "an integer >= 0", self.num_threads)

    @property
    def last(self) -> str:
        """The last round's stage name (``rlhf_<name>``)."""
        return f"rlhf_{list(self.rounds)[-1]}"

def round_seed(seed: int, round_name: str) -> int:
    """Each round samples with its own seed, derived from the one seed and the round's number."""
    return seed * 100 + int("".join(ch for ch in round_name if ch.isdigit()) or 0)


@dataclass(frozen=True, kw_only=True)
class GattEvalConfig(Config):
    """The adherence-by-turn evaluation: held-out dialogues answered greedily."""

    dialogues: int = 100  # dialogues drawn from the held-out prompts
    turns: int = 6  # user turns per dialogue
    max_new_tokens: int = 32  # longest answer
    batch_size: int = 64  # dialogues per generation batch
    safety_instructions: int = 3  # instructions each held-out safety prompt is answered under (instructed_safety)

    def check(self) -> None:
        for key in ("dialogues", "turns", "max_new_tokens", "batch_size", "safety_instructions"):
            require(getattr(self, key) >= 1, key, "an integer >= 1", getattr(self, key))


@dataclass(frozen=True, kw_only=True)
class GattConfig(Config):
    """Ghost Attention (the ``gatt`` params group)."""

    after: str = "sft"  # the policy GAtt starts from: sft or an RLHF round (rlhf_<name>)
    dialogues: int = 300  # training dialogues drawn from the train prompts
    turns: int = 6  # user turns per dialogue
    min_turns: int = 2  # shortest dialogue trained on (turns of its adherent prefix)
    # one example per cut after each turn, one seeded cut, or the whole dialogue with the loss on every
    # answer from min_turns on (every's answers, each with the context its cut gives it, in one pass)
    cuts: Literal["every", "random", "whole"] = "every"
    max_constraints: int = 2  # instructions combine up to this many compatible constraints
    tries: int = 2  # samples per answer until one follows the instruction
    select: Literal["first", "reward"] = "first"  # the first adherent sample, or the best adherent of all tries by the round's helpfulness RM
    repair: bool = False  # a sampled answer that breaks a case, prefix or suffix instruction is rewritten to obey it (the world's constraints.repair)
    case: Literal["instructed", "plain"] = "instructed"  # under a case instruction answers are sampled with it, or without it (unless with a length rule) and rewritten to it (needs repair; see sample_adherent)
    spare_messages: int = 6  # further user messages per dialogue, swapped in for one no adherent answer was found to
    safety_share: float = 0.0  # probability that a dialogue's message is a safety-tagged prompt (unsafe or borderline); with select reward scored by the round's safety RM
    safety_form: Literal["instructed", "plain"] = "instructed"  # a safety message's answer sampled under the instruction, or without its case, prefix and suffix rules and rewritten to them (needs repair; see sample_adherent)
    safety_under_length: Literal["none", "held", "exempt"] = "held"  # safety messages under a length rule: none; held to it as any answer; exempt: first sampled untold, a refusal exempt (sample_adherent)
    context: Literal["turn", "dialogue"] = "turn"  # the sampling context (see sample_adherent)
    keep_adherent: bool = True  # each dialogue kept up to its first answer that breaks the instruction
    replay: bool = False  # also fine-tune on the starting round's rejection-sampling dialogues (needs a round)
    num_threads: int = 0  # torch CPU threads for sampling and evaluation (0 = all cores)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # how the answers are sampled
    finetune: SFTConfig = field(default_factory=SFTConfig)  # the SFT machinery's settings
    eval: GattEvalConfig = field(default_factory=GattEvalConfig)

    def check(self) -> None:
        for key in ("dialogues", "turns", "min_turns", "max_constraints", "tries"):
            require(getattr(self, key) >= 1, key, "an integer >= 1", getattr(self, key))
        require(self.spare_messages >= 0, "spare_messages", "an integer >= 0", self.spare_messages)
        require(0.0 <= self.safety_share < 1.0, "safety_share", "a probability in [0, 1)", self.safety_share)
        require(self.min_turns <= self.turns, "min_turns", f"at most gatt.turns ({self.turns})", self.min_turns)
        require(self.after == "sft" or self.after.startswith("rlhf_"), "after",
                "sft or an RLHF round (rlhf_v2, ...)", self.after)
        require(self.num_threads >= 0, "num_threads", "an integer >= 0", self.num_threads)
        require(not (self.replay and self.after == "sft"), "replay",
                "false when gatt.after is sft (it replays an RLHF round's rejection-sampling dialogues)", self.replay)
        require(not (self.select == "reward" and self.after == "sft"), "select",
                "first when gatt.after is sft (reward ranks the samples with an RLHF round's helpfulness RM)",
                self.select)
        require(self.case == "instructed" or self.repair, "case",
                "instructed when gatt.repair is false (plain rewrites the answer to the case)", self.case)
        require(self.safety_form == "instructed" or self.repair, "safety_form",
                "instructed when gatt.repair is false (plain rewrites the answer to the instruction)", self.safety_form)
        require(self.safety_under_length != "exempt" or self.safety_form == "plain", "safety_under_length",
                "none or held when gatt.safety_form is instructed (exempt samples safety messages untold)", self.safety_under_length)
