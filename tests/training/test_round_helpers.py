"""The RLHF round's helpers on hand-made inputs (llama2_pipeline.training.rlhf): R_c scoring of
answers by both reward models, prompt selection, the annotator's win rate, KL to a reference
policy, PPO's reward from a judge, and a round's evaluation and metrics file."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from llama2_pipeline.training import rlhf
from llama2_pipeline.training.config import RLHFConfig, RoundEvalConfig



class FixedRM:
    """An RM stand-in whose raw score (a logit) is given per answer text."""

    def __init__(self, scores: dict[str, float], default: float = 0.0):
        self.scores, self.default = scores, default

    def score(self, prompts, answers, batch_size=64):
        return [self.scores.get(a, self.default) for a in answers]

    def score_ids(self, seqs, batch_size=32):
        return [float(len(s)) / 10 for s in seqs]


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_round_rewards_pick_the_safety_score_by_the_papers_rule():
    answers = ["helpful", "risky", "refusal"]
    rm_h = FixedRM({"helpful": _logit(0.9), "risky": _logit(0.95), "refusal": _logit(0.2)})
    rm_s = FixedRM({"helpful": _logit(0.8), "risky": _logit(0.1), "refusal": _logit(0.7)})
    r = rlhf.round_rewards(rm_h, rm_s, ["p"] * 3, answers, [False, False, True], threshold=0.15)
    assert r["helpfulness"].tolist() == pytest.approx([0.9, 0.95, 0.2])
    assert r["used_safety"].tolist() == [False, True, True]  # R_s < 0.15, a safety-tagged prompt
    assert r["reward"].tolist() == pytest.approx([_logit(0.9), _logit(0.1), _logit(0.7)])  # LOGIT(R_c)


def test_select_prompts_is_a_seeded_sample_in_file_order():
    prompts = [{"prompt": f"q{i}"} for i in range(20)] + [{"text": "no prompt"}]
    picked = rlhf.select_prompts(prompts, 5, seed=3, salt="x")
    assert len(picked) == 5 and picked == sorted(picked, key=lambda p: int(p["prompt"][1:]))
    assert picked == rlhf.select_prompts(prompts, 5, seed=3, salt="x")
    assert picked != rlhf.select_prompts(prompts, 5, seed=4, salt="x")
    assert len(rlhf.select_prompts(prompts, 0, seed=3, salt="x")) == 20  # 0 = all (records with a prompt)
    with pytest.raises(ValueError, match="no prompts to answer"):
        rlhf.select_prompts([{"text": "x"}], 0, seed=0, salt="x")


def test_win_rate_counts_identical_answers_half(world):
    from llama2_pipeline.evaluation.answers import win_rate

    assert rlhf.win_rate is win_rate  # the round's evaluation uses the annotator's win rate
    fact = next(p for p in world.prompts("train") if p["category"] == "fact")
    right, wrong = fact["reference"], "I do not know."
    prompts = [fact["prompt"]] * 3
    assert win_rate(world, prompts, [right, right, right], [wrong, right, wrong]) == pytest.approx(
        (1 + 0.5 + 1) / 3)
    assert win_rate(world, prompts, [wrong] * 3, [right] * 3) == 0.0
    assert win_rate(world, [], [], []) == 0.0


def test_kl_to_itself_is_zero_and_to_another_policy_positive(init_dir, tok):
    from llama2_pipeline.model import load_hf

    model = load_hf(init_dir).eval()
    prompts = ["What is 2 plus 2?", "Sort the list 3, 1, 2."]
    assert rlhf.kl_to(model, copy.deepcopy(model), tok, prompts, max_new_tokens=6, seed=0) == pytest.approx(0, abs=1e-6)
    sharp, uniform = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        sharp.output.weight.mul_(20.0)  # peaked next-token distributions
        uniform.output.weight.zero_()  # every token equally likely
    kl = rlhf.kl_to(sharp, uniform, tok, prompts, max_new_tokens=6, seed=0)
    assert kl > 1.0 and kl == rlhf.kl_to(sharp, uniform, tok, prompts, max_new_tokens=6, seed=0)


def test_rm_judge_scores_prompt_answer_and_eos_ids():
    judge = rlhf.rm_judge(FixedRM({}), FixedRM({}), eos_id=2)
    h, s = judge([{}, {}], [[1, 5, 6], [1, 7]], [[9, 9, 2], [4]])
    # both answers are scored as prompt + answer without EOS + one EOS: 6 and 4 ids
    assert h.tolist() == pytest.approx(torch.sigmoid(torch.tensor([0.6, 0.4])).tolist())
    assert s.dtype == torch.float32


def test_round_metrics_join_the_evaluation_the_rms_and_rejection_sampling(init_dir, world, monkeypatch):
    """The round's metrics file: the evaluation's figures, the RM figures (rm_*/reward_*, nothing
    else of the reward stage), rejection sampling's statistics and PPO's summary, rounded."""
    seen = {}

    def fake_evaluate(policy, previous, sft, h, s, prompts, w, sampling, threshold, seed, progress=True):
        seen.update(sampling=sampling, threshold=threshold, seed=seed)
        return {"policy_helpfulness": 0.51234567, "kl_to_sft": 0.1}, [{"id": 1}]

    monkeypatch.setattr(rlhf, "evaluate_round", fake_evaluate)
    cfg = RLHFConfig.from_dict({"rounds": {"v1": {"after": "sft", "ppo": True}}, "safety_threshold": 0.2,
                                "eval": {"max_new_tokens": 8, "batch_size": 4, "kl_samples": 2}})
    history = [{"step": i, "reward": float(i), "kl": 0.0} for i in range(1, 11)]
    metrics, samples = rlhf.round_metrics(init_dir, init_dir, init_dir, init_dir, init_dir, [], world, cfg, 7,
                                          reward_metrics={"rm_helpfulness_acc": 0.9, "reward_heldout_pairs": 12,
                                                          "sft_loss": 1.0, "rm_note": "text"},
                                          rs_stats={"rs_reward_best": 1.5}, ppo_history=history)
    assert seen == {"sampling": RoundEvalConfig(max_new_tokens=8, batch_size=4, kl_samples=2), "threshold": 0.2,
                    "seed": 7}
    assert metrics["policy_helpfulness"] == 0.512346 and samples == [{"id": 1}]
    assert metrics["rm_helpfulness_acc"] == 0.9 and metrics["reward_heldout_pairs"] == 12
    assert "sft_loss" not in metrics and "rm_note" not in metrics
    assert metrics["rs_reward_best"] == 1.5
    assert metrics["ppo_reward"] == pytest.approx(np.mean([9.0, 10.0])) and metrics["ppo_reward_first"] == 1.5
