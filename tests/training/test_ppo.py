"""The PPO arithmetic of llama2_pipeline.training.ppo on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from llama2_pipeline.training.ppo import (combined_reward, entropy_from_logits, gae, kl_per_token, logit,
                                          logprobs_of, ppo_losses, token_rewards, whiten)



def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_combined_reward_follows_the_piecewise_rule():
    # (helpfulness p, safety p, safety-tagged prompt) -> which RM the paper's rule picks
    cases = [(0.9, 0.8, False, "h"),   # safe answer to a normal prompt: helpfulness
             (0.9, 0.8, True, "s"),    # safety-tagged prompt: safety, whatever its value
             (0.9, 0.10, False, "s"),  # R_s < 0.15 on a normal prompt: safety (unsafe answer)
             (0.9, 0.15, False, "h"),  # exactly the threshold: not below it
             (0.2, 0.149, False, "s")]
    h = torch.tensor([_logit(c[0]) for c in cases], dtype=torch.float64)  # the RMs' raw scores
    s = torch.tensor([_logit(c[1]) for c in cases], dtype=torch.float64)
    tagged = torch.tensor([c[2] for c in cases])
    r_c, used = combined_reward(torch.sigmoid(h), torch.sigmoid(s), tagged, threshold=0.15)
    expected = [c[1] if c[3] == "s" else c[0] for c in cases]
    assert r_c.tolist() == pytest.approx(expected, abs=1e-12)
    assert used.tolist() == [c[3] == "s" for c in cases]
    # logit undoes the sigmoid: unwhitened R~_c is the selected RM's raw score
    raw = logit(r_c)
    assert raw.tolist() == pytest.approx([float(s[i]) if c[3] == "s" else float(h[i]) for i, c in enumerate(cases)],
                                         abs=1e-9)
    whitened = whiten(raw)
    assert float(whitened.mean()) == pytest.approx(0.0, abs=1e-9)
    assert float(whitened.std()) == pytest.approx(1.0, abs=1e-6)


def test_logit_and_whiten_on_hand_values():
    assert logit(torch.tensor([0.5, 0.8])).tolist() == pytest.approx([0.0, math.log(4)], abs=1e-6)
    assert torch.isfinite(logit(torch.tensor([0.0, 1.0]))).all()  # clamped, not +-inf
    assert whiten(torch.tensor([1.0, 2.0, 3.0])).tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    assert whiten(torch.tensor([1.0, 2.0, 3.0]), shift_mean=False).tolist() == pytest.approx([1.0, 2.0, 3.0], abs=1e-6)
    # masked: the padding neither counts nor changes
    x, m = torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]])
    close(whiten(x, m), [[-0.7071068, 0.7071068, 0.0]])
    assert whiten(torch.tensor([5.0])).tolist() == [5.0]


def test_kl_is_zero_when_policy_is_the_reference():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.1, 0.7, 0.3]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert kl_per_token(logp, logp.clone(), mask).abs().sum() == 0
    r = token_rewards(torch.tensor([2.0, -1.0]), logp, logp.clone(), mask, beta=0.01)
    assert r.tolist() == [[0.0, 0.0, 2.0], [0.0, -1.0, 0.0]]  # the score on each answer's last token only
    # a policy that moved: -beta * (logp - ref) on every answer token, padding untouched
    ref = logp - 0.5
    r = token_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, beta=0.1)
    close(r, [[-0.05, -0.05, 1.95], [-0.05, -1.05, 0.0]])
    # an empty answer gets no reward at all
    assert token_rewards(torch.tensor([3.0]), logp[:1], logp[:1], torch.zeros(1, 3), 0.1).abs().sum() == 0


def test_gae_on_a_hand_computed_toy():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 9.0]], dtype=torch.float64)  # 9.0: padding, ignored
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: delta = (0, 0, 0.5); A_2 = 0.5, A_1 = 0.95 * 0.5, A_0 = 0.95^2 * 0.5
    # row 1: delta = (0, 1, -); A_1 = 1, A_0 = 0.95
    close(adv, [[0.45125, 0.475, 0.5], [0.95, 1.0, 0.0]])
    close(ret, [[0.95125, 0.975, 1.0], [1.95, 2.0, 0.0]])
    # lambda = 1: returns are the Monte-Carlo sums of the rewards still to come
    _, mc = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(mc, [[1.0, 1.0, 1.0], [2.0, 2.0, 0.0]])


def test_ppo_losses_on_a_hand_computed_toy():
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    # unchanged policy: the surrogate is -mean(A), nothing clipped
    out = ppo_losses(old, old, torch.tensor([[1.0, -3.0]]), old, old, old, mask)
    assert float(out["policy_loss"]) == pytest.approx(1.0)
    assert float(out["clip_frac"]) == 0.0 and float(out["approx_kl"]) == 0.0
    # ratio 1.5: a positive advantage is clipped at 1.2, a negative one is not (the pessimistic bound)
    logp = torch.full((1, 2), math.log(1.5))
    out = ppo_losses(logp, old, torch.tensor([[1.0, -1.0]]), old, old, old, mask, clip=0.2)
    assert float(out["policy_loss"]) == pytest.approx((-1.2 + 1.5) / 2)
    assert float(out["clip_frac"]) == pytest.approx(0.5)
    assert float(out["approx_kl"]) == pytest.approx(0.5 * math.log(1.5) ** 2)
    # value moved from 0 to 1 toward a return of 1: the clipped value (0.2) bounds the loss pessimistically
    out = ppo_losses(old, old, torch.zeros(1, 2), torch.ones(1, 2), old, torch.ones(1, 2), mask, value_clip=0.2)
    assert float(out["value_loss"]) == pytest.approx(0.5 * 0.8 ** 2)
    assert float(out["value_clip_frac"]) == 1.0
    # padding does not count
    out = ppo_losses(old, old, torch.tensor([[2.0, 100.0]]), old, old, old, torch.tensor([[1.0, 0.0]]))
    assert float(out["policy_loss"]) == pytest.approx(-2.0)


def test_entropy_and_logprobs():
    logits = torch.zeros(2, 3, 7)
    close(entropy_from_logits(logits), [[math.log(7)] * 3] * 2)
    peaked = torch.full((1, 1, 4), -1e9)
    peaked[..., 2] = 0.0
    assert float(entropy_from_logits(peaked)) == pytest.approx(0.0, abs=1e-6)
    lp = logprobs_of(torch.log(torch.tensor([[[0.1, 0.2, 0.7]]])), torch.tensor([[2]]))
    close(lp, [[math.log(0.7)]])


# ---- the PPO loop on a smoke model -----------------------------------------------------------------


def _even_share(prompts, answers):
    """A dense toy reward: the share of even token ids in the answer (0.5 for a uniform policy)."""
    return torch.tensor([sum(t % 2 == 0 for t in a) / max(1, len(a)) for a in answers])


def _trainer(seed: int = 0, **overrides):
    from llama2_pipeline.model import Llama, ModelConfig
    from llama2_pipeline.training.config import PPOConfig
    from llama2_pipeline.training.ppo import PPOTrainer, ValueModel
    from llama2_pipeline.training.reward import RewardModel

    torch.manual_seed(seed)
    config = ModelConfig.from_preset("smoke", vocab_size=64, eos_id=None)
    policy = Llama(config)
    rm = RewardModel(config)
    cfg = PPOConfig(**{"rollouts": 16, "max_new_tokens": 8, "minibatch": 8, "ppo_epochs": 2, "lr": 3e-3,
                       "value_lr": 3e-3, "beta": 0.0, "seed": seed, **overrides})
    return PPOTrainer(policy, ValueModel.from_reward_model(rm), _even_share, cfg)


PROMPTS = [[1, 5 + i, 9, 11 + i] for i in range(12)]


def test_ppo_raises_a_toy_reward():
    from llama2_pipeline.training.ppo import train_ppo

    history = train_ppo(_trainer(), PROMPTS, 25, progress=False)
    first = sum(h["reward"] for h in history[:3]) / 3
    last = sum(h["reward"] for h in history[-3:]) / 3
    assert 0.3 < first < 0.7  # a random policy: about half the tokens even
    assert last > first + 0.25, (first, last)
    assert history[-1]["kl"] > 0.05  # it moved away from the reference to get there
    assert {"policy_loss", "value_loss", "clip_frac", "approx_kl", "entropy", "answer_tokens"} <= set(history[0])
    assert all(h["answer_tokens"] == 8 for h in history)  # no EOS in this toy: full-length answers


def test_ppo_is_deterministic_and_kl_penalty_holds_the_policy():
    from llama2_pipeline.training.ppo import train_ppo

    a = train_ppo(_trainer(), PROMPTS, 3, progress=False)
    b = train_ppo(_trainer(), PROMPTS, 3, progress=False)
    assert a == b
    free = train_ppo(_trainer(beta=0.0), PROMPTS, 12, progress=False)
    held = train_ppo(_trainer(beta=2.0), PROMPTS, 12, progress=False)
    assert held[-1]["kl"] < free[-1]["kl"]


def test_kl_bound_stops_and_keeps_the_newest_policy_within_it():
    """Past max_kl PPO stops and goes back to the last policy whose rollouts stayed within the
    bound: the same weights as an unbounded run stopped two updates earlier."""
    from llama2_pipeline.training.ppo import train_ppo
    from llama2_pipeline.training.rlhf import summarise_ppo

    bounded = _trainer(max_kl=0.5)
    history = train_ppo(bounded, PROMPTS, 25, progress=False)
    assert history[-1]["kl_bound_hit"] == 1.0 and history[-1]["kl"] > 0.5
    assert all(h["kl_bound_hit"] == 0.0 and h["kl"] <= 0.5 for h in history[:-1])
    assert 3 <= len(history) < 25
    free = _trainer()
    train_ppo(free, PROMPTS, len(history) - 2, progress=False)
    for (name, a), b in zip(bounded.policy.state_dict().items(), free.policy.state_dict().values()):
        assert torch.equal(a, b), name
    summary = summarise_ppo(history)
    assert summary["ppo_kl_bound_hit"] == 1.0 and summary["ppo_steps"] == len(history) - 1
    assert summary["ppo_kl_max"] == max(h["kl"] for h in history[:-1]) <= 0.5


def test_first_update_starts_at_ratio_one_and_value_model_copies_the_rm():
    from llama2_pipeline.training.ppo import answer_logprobs

    t = _trainer()
    ro = t.rollout(PROMPTS[:4])
    again = answer_logprobs(t.policy, ro.ids, ro.attention, ro.prompt_len) * ro.mask
    torch.testing.assert_close(again, ro.logprobs)  # old log-probs are the policy's: ratio 1 at first
    torch.testing.assert_close(ro.ref_logprobs, ro.logprobs)  # the reference is a copy of the policy
    assert ro.ids.shape == (4, 4 + 8) and float(ro.mask.sum()) == 32


# ---- memory knobs for large policies: micro-batches, bf16 autocast, activation checkpointing ------------


def _params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.policy.parameters()])


def test_micro_batches_accumulate_to_the_minibatch_update():
    """micro_batch splits every forward/backward of a minibatch; the accumulated gradients are the
    minibatch's, so the policy lands where the unsplit run does (up to float summation order)."""
    from llama2_pipeline.training.ppo import train_ppo

    whole, split = _trainer(), _trainer(micro_batch=3)  # 8-rollout minibatches as 3 + 3 + 2
    a = train_ppo(whole, PROMPTS, 3, progress=False)
    b = train_ppo(split, PROMPTS, 3, progress=False)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:  # the clip shares count tokens past a threshold: rounding may tip one of them
            assert y[k] == pytest.approx(x[k], rel=1e-4, abs=0.02 if k.endswith("_frac") else 1e-5), k
    moved = (_params(whole) - _params(_trainer())).abs().max()
    assert moved > 1e-3  # the updates did something ...
    torch.testing.assert_close(_params(split), _params(whole), rtol=1e-4, atol=1e-5)  # ... and the same thing
    again = train_ppo(_trainer(micro_batch=3), PROMPTS, 3, progress=False)
    assert again == b  # still deterministic


def test_gradient_checkpointing_changes_nothing_but_memory():
    from llama2_pipeline.training.ppo import train_ppo

    plain, ckpt = _trainer(), _trainer(gradient_checkpointing=True)
    assert ckpt.policy.gradient_checkpointing and ckpt.value_model.backbone.gradient_checkpointing
    assert train_ppo(ckpt, PROMPTS, 2, progress=False) == train_ppo(plain, PROMPTS, 2, progress=False)
    assert torch.equal(_params(ckpt), _params(plain))


def test_bf16_autocast_runs_the_forward_passes_in_bf16():
    t32, t16 = _trainer(), _trainer(precision="bf16")
    ro32, ro16 = t32.rollout(PROMPTS[:4]), t16.rollout(PROMPTS[:4])
    assert ro16.logprobs.dtype == torch.float32  # log-probs and values come back in fp32
    assert torch.isfinite(ro16.logprobs).all() and torch.isfinite(ro16.values).all()
    assert next(t16.policy.parameters()).dtype == torch.float32  # weights stay fp32
    from llama2_pipeline.training.ppo import answer_logprobs

    with t16._autocast():  # the same answers scored both ways differ by bf16 rounding only
        lp16 = answer_logprobs(t16.policy, ro32.ids, ro32.attention, ro32.prompt_len) * ro32.mask
    diff = (lp16 - ro32.logprobs).abs().max()
    assert 0 < diff < 0.1, float(diff)
    stats = t16.step(PROMPTS[:8])
    assert all(math.isfinite(v) for v in stats.values())


@pytest.mark.parametrize("bad, message", [({"micro_batch": -1}, "micro_batch"), ({"precision": "fp16"}, "precision"),
                                          ({"gradient_checkpointing": "yes"}, "gradient_checkpointing")])
def test_memory_knobs_are_checked(bad, message):
    from llama2_pipeline.training.config import PPOConfig

    with pytest.raises(ValueError, match=message):
        PPOConfig(**bad)


def test_ppo_trains_fp32_weights_of_a_bf16_policy_and_exports_it_as_stored(tmp_path, monkeypatch, init_dir, world):
    """A GPU run stores its policies in bf16; PPO's plain AdamW steps (lr ~1e-6) would vanish in bf16
    weights, so the policy and value model train in fp32, the frozen models stay as stored, and the
    result is exported in the stored dtype."""
    from llama2_pipeline.model import export_hf, load_hf
    from llama2_pipeline.tokenizer import save_hf_tokenizer
    from llama2_pipeline.training import rlhf
    from llama2_pipeline.model.reward import RewardModel, export_reward_hf
    from llama2_pipeline.training.config import PPOConfig

    tok_model = init_dir / "tokenizer.model"
    policy_dir = export_hf(load_hf(init_dir, dtype=torch.bfloat16), tmp_path / "policy", tokenizer_model_path=tok_model)
    save_hf_tokenizer(tok_model, policy_dir)
    rm_dir = export_reward_hf(RewardModel.from_pretrained(policy_dir), tmp_path / "rm", tokenizer_model=tok_model)
    seen = {}

    class Spy(rlhf.PPOTrainer):
        def __init__(self, policy, value_model, score_fn, config, *, reference=None):
            super().__init__(policy, value_model, score_fn, config, reference=reference)
            seen.update(reference={p.dtype for p in self.reference.parameters()},
                        start=[p.detach().clone() for p in policy.parameters()])

        def step(self, prompts):
            out = super().step(prompts)
            seen["trained"] = {p.dtype for m in (self.policy, self.value_model) for p in m.parameters()}
            seen["moved"] = max(float((p.detach() - s).abs().max())
                                for p, s in zip(self.policy.parameters(), seen["start"]))
            return out

    monkeypatch.setattr(rlhf, "PPOTrainer", Spy)
    ppo = PPOConfig(steps=2, max_prompts=8, rollouts=4, minibatch=4, max_new_tokens=6, lr=1e-6, value_lr=1e-6)
    out, history, _ = rlhf.ppo_finetune(policy_dir, rm_dir, world.prompts("train"), ppo, 0.15, safety_dir=rm_dir,
                                        out_dir=tmp_path / "out", progress=False)
    assert seen["trained"] == {torch.float32} and seen["reference"] == {torch.bfloat16}
    assert 0 < seen["moved"] < 1e-3  # 1e-6 steps moved the fp32 weights (in bf16 most would round away)
    assert {p.dtype for p in load_hf(out).parameters()} == {torch.bfloat16}  # exported as stored
    assert len(history) == 2
