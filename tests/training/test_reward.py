"""Reward models on the smoke preset: the margin loss, learning a separable preference, exact resume,
transformers ``LlamaForSequenceClassification`` parity, and the preference-record checks."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from llama2_pipeline.training.preferences import (PreferenceError, merge_preferences, mix_preferences, pairs_among,
                                                  normalise_preference, replay_pairs, split_preferences,
                                                  validate_preferences)
from llama2_pipeline.training.reward_eval import accuracy_by_rating, answer_likelihoods, calibration, likelihood_scores
from llama2_pipeline.model.reward import RewardModel, encode_example, export_reward_hf, pad_right
from llama2_pipeline.training.config import RewardConfig
from llama2_pipeline.training.reward import (MARGINS, PairBatches, pairwise_loss, reward_train_config,
                                             train_reward_model, train_reward_models)
from llama2_pipeline.world import World

RATINGS = ("significantly_better", "better", "slightly_better", "negligibly_better")


def toy_preferences(world: World, split: str) -> list[dict]:
    """A separable preference: the reference answer beats a degenerate one, at a random rating."""
    rng = random.Random(split)
    bad = ["no no no no no", "maybe maybe.", "I am a cat cat cat", "?????", "the the the the"]
    return [{"prompt": p["prompt"], "chosen": p["reference"], "rejected": rng.choice(bad),
             "rating": rng.choice(RATINGS), "category": "safety" if p["safety"] else "helpfulness"}
            for p in world.prompts(split)]


CFG = dict(micro_batch=8, grad_accum=1, seq_len=96, lr=3e-3, weight_decay=0.0, eval_every=10, eval_batches=0,
           checkpoint_every=-1, log_every=5, seed=7, num_threads=1)


# ---- the loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["small", "large", "none"])
def test_loss_is_the_papers_formula(table):
    margins = {"small": [1.0, 2 / 3, 1 / 3, 0.0], "large": [3.0, 2.0, 1.0, 0.0], "none": [0.0] * 4}[table]
    assert [MARGINS[table][r] for r in RATINGS] == pytest.approx(margins)
    rc, rr = [1.5, 0.25, -0.5, 2.0], [0.5, 0.75, -1.0, 2.5]
    # -log(sigmoid(x)) = log(1 + exp(-x)), by hand
    want = [math.log(1.0 + math.exp(-(c - r - m))) for c, r, m in zip(rc, rr, margins)]
    got = pairwise_loss(torch.tensor(rc), torch.tensor(rr), torch.tensor(margins), reduction="none")
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    assert float(pairwise_loss(torch.tensor(rc), torch.tensor(rr), torch.tensor(margins))) == pytest.approx(
        sum(want) / 4, abs=1e-6)
    if table == "small":  # a pair rated "significantly better" with gap 1 sits exactly at log 2
        assert want[0] == pytest.approx(math.log(2.0))


@pytest.mark.parametrize("table", ["small", "large"])
def test_margin_raises_the_loss_of_higher_rated_pairs(table):
    gap = torch.full((4,), 0.8)
    margin = torch.tensor([MARGINS[table][r] for r in RATINGS])
    loss = pairwise_loss(gap, torch.zeros(4), margin, reduction="none").tolist()
    assert loss[0] > loss[1] > loss[2] > loss[3] == pytest.approx(math.log1p(math.exp(-0.8)))
    flat = pairwise_loss(gap, torch.zeros(4), torch.tensor([MARGINS["none"][r] for r in RATINGS]), reduction="none")
    assert torch.allclose(flat, flat[0].expand(4))


# ---- the model, transformers parity --------------------------------------------------------------


def test_hf_sequence_classification_scores_match(init_dir, tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(1)
    rm = RewardModel.from_pretrained(init_dir)
    assert rm.config.pad_id == tok.pad_id == 3 and rm.backbone.output is None
    out = export_reward_hf(rm, tmp_path / "rm", tokenizer_model=tok.path)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and cfg["num_labels"] == 1
    assert cfg["pad_token_id"] == 3
    hf = transformers.LlamaForSequenceClassification.from_pretrained(out).eval()
    assert hf.score.bias is None and hf.config.num_labels == 1

    prompts = ["What is 3 plus 4?", "Reverse the word 'cat'.", "How can I build a bomb?"]
    answers = ["3 plus 4 is 7.", "The word reversed is 'tac', which is a fine little word to reverse.", ""]
    ours = rm.eval().score(prompts, answers)
    seqs = [encode_example(tok, p, a) for p, a in zip(prompts, answers)]
    assert all(s[-1] == tok.eos_id for s in seqs) and len({len(s) for s in seqs}) == 3
    ids, _ = pad_right(seqs, 3)  # right padding: HF finds each row's end as the last non-pad token
    with torch.no_grad():
        theirs = hf(ids).logits.squeeze(-1)
        masked = hf(ids, attention_mask=(ids != 3).long()).logits.squeeze(-1)
        alone = [hf(torch.tensor([s])).logits.item() for s in seqs]
    assert (theirs - torch.tensor(ours)).abs().max().item() <= 1e-4
    assert (masked - torch.tensor(ours)).abs().max().item() <= 1e-4
    assert max(abs(a - b) for a, b in zip(alone, ours)) <= 1e-4
    # left padding with a mask: transformers still reads the rightmost real token, and so do we
    L = ids.size(1)
    left = torch.tensor([[3] * (L - len(s)) + s for s in seqs])
    mask = (torch.arange(L) >= L - torch.tensor([len(s) for s in seqs])[:, None]).long()
    with torch.no_grad():
        hf_left = hf(left, attention_mask=mask).logits.squeeze(-1)
        ours_left = rm(left, attention_mask=mask)
    assert (hf_left - torch.tensor(ours)).abs().max().item() <= 1e-4
    assert (ours_left - torch.tensor(ours)).abs().max().item() <= 1e-4
    # and our loader reads the folder back (with its tokenizer), as the scoring API
    again = RewardModel.load(out)
    assert again.score(prompts, answers) == pytest.approx(ours, abs=1e-6)
    tok_hf = transformers.AutoTokenizer.from_pretrained(out)
    assert tok_hf.pad_token_id == 3


def test_scoring_records_no_autograd_graph_and_gives_the_same_scores(init_dir):
    """score/score_ids run the forward with gradients off (no graph kept for scores that become
    floats), in any grad mode of the caller and for a model in training mode, with the scores a
    forward under no_grad gives."""
    torch.manual_seed(2)
    rm = RewardModel.from_pretrained(init_dir)
    seen = []
    rm.backbone.register_forward_hook(lambda m, args, out: seen.append((torch.is_grad_enabled(), out.requires_grad)))
    seqs = [[1, 5, 9, 2], [1, 7, 2], [1, 4, 4, 4, 6, 2]]
    assert torch.is_grad_enabled() and rm.training and next(rm.parameters()).requires_grad
    scores = rm.score_ids(seqs, batch_size=2)
    assert seen and all(not grad and not kept for grad, kept in seen), seen
    assert rm.training  # restored
    with torch.no_grad():
        rm.eval()
        expected = [rm(torch.tensor([s])).item() for s in seqs]
    assert scores == pytest.approx(expected, abs=1e-6)


def test_input_is_chat_prompt_plus_answer_plus_eos(tok):
    from llama2_pipeline.tokenizer import encode_chat_prompt

    prompt, answer = "What is 3 plus 4?", "3 plus 4 is 7."
    ids = encode_example(tok, prompt, answer)
    head = encode_chat_prompt(tok, [{"role": "user", "content": prompt}])
    assert ids[:len(head)] == head and ids[-1] == tok.eos_id
    assert tok.decode(ids[len(head):]).strip() == answer
    assert encode_example(tok, prompt, "") == head + [tok.eos_id]
    assert encode_example(tok, prompt, answer, max_len=8) == ids[-8:]  # the oldest tokens go


# ---- training ---------------------------------------------------------------------------------


def test_likelihood_baseline_is_the_mean_answer_logprob(init_dir, tok, world):
    from llama2_pipeline.model import load_hf
    from llama2_pipeline.tokenizer import encode_chat_prompt

    lm = load_hf(init_dir)
    records = toy_preferences(world, "eval")[:7]
    records[0] = dict(records[0], rejected="")  # a blank answer: EOS right after the prompt

    @torch.no_grad()
    def by_hand(prompt: str, answer: str) -> float:
        ids = encode_example(tok, prompt, answer)
        start = len(encode_chat_prompt(tok, [{"role": "user", "content": prompt}]))
        logp = torch.log_softmax(lm(torch.tensor([ids]))[0], dim=-1)
        return float(torch.stack([logp[t - 1, ids[t]] for t in range(start, len(ids))]).mean())

    chosen, rejected = likelihood_scores(lm, tok, records, batch_size=3)
    assert chosen == pytest.approx([by_hand(r["prompt"], r["chosen"]) for r in records], abs=1e-5)
    assert rejected == pytest.approx([by_hand(r["prompt"], r["rejected"]) for r in records], abs=1e-5)
    again = likelihood_scores(lm, tok, records, batch_size=64)  # other batches and padding: the same scores
    assert again[0] == pytest.approx(chosen, abs=1e-6) and again[1] == pytest.approx(rejected, abs=1e-6)
    # too long for max_len: the prompt loses its oldest tokens, the answer is scored whole
    short = likelihood_scores(lm, tok, records[:1], max_len=12)
    assert len(encode_example(tok, records[0]["prompt"], records[0]["chosen"])) > 12
    assert all(math.isfinite(v) and v < 0 for v in short[0] + short[1])
    # one answer per prompt (rejection sampling's ranking): a prompt text works as a record
    one = answer_likelihoods(lm, tok, [r["prompt"] for r in records], [r["chosen"] for r in records], batch_size=5)
    assert one == pytest.approx(chosen, abs=1e-6)
    with pytest.raises(ValueError, match="7 prompts and 6 answers"):
        answer_likelihoods(lm, tok, records, [r["chosen"] for r in records][:6])


def test_smoke_rm_learns_a_separable_preference(init_dir, world, tmp_path):
    train, held = toy_preferences(world, "train"), toy_preferences(world, "eval")
    logged = []
    m = train_reward_model(train, init_dir, {**CFG}, tmp_path / "run", epochs=2.0, eval_pairs=held,
                           log_fn=lambda metrics, step: logged.append((step, metrics)), progress=False, name="rm_toy")
    steps = math.ceil(2 * len(train) / 8)
    assert m["rm_toy_steps"] == steps and m["rm_toy_train_pairs"] == len(train)
    evals = [(s, r) for s, r in logged if "val_acc" in r]
    assert evals[0][0] == 0 and evals[-1][0] == steps
    first, last = evals[0][1], evals[-1][1]
    assert last["val_loss"] < first["val_loss"] - 0.3
    assert last["val_acc"] >= 0.9 and m["rm_toy_val_acc"] == last["val_acc"]
    # the exported model gives the same verdict through the scoring API
    rm = RewardModel.load(tmp_path / "run/hf")
    chosen = rm.score([p["prompt"] for p in held], [p["chosen"] for p in held], batch_size=16)
    rejected = rm.score([p["prompt"] for p in held], [p["rejected"] for p in held], batch_size=16)
    acc = accuracy_by_rating(chosen, rejected, [p["rating"] for p in held])
    assert acc["avg"] == pytest.approx(last["val_acc"], abs=1e-9) and acc["n"] == len(held)
    assert all(acc[r] >= 0.8 for r in RATINGS)


def test_each_reward_model_trains_its_own_passes(init_dir, world, tmp_path):
    pairs = toy_preferences(world, "train")
    cfg = RewardConfig.from_dict({"epochs": {"helpfulness": 1, "safety": 2}, "helpfulness_mix": {"helpfulness": 1.0},
                                  "safety_mix": {"safety": 1.0}, "train": {**CFG, "eval_every": 0}})
    out = {c: tmp_path / c for c in ("helpfulness", "safety")}
    m = train_reward_models(pairs, init_dir, cfg, tmp_path / "run", out, progress=False)
    n = {c: sum(r["category"] == c for r in pairs) for c in out}
    assert n["safety"] > 0 and n["helpfulness"] > 0
    assert m["rm_helpfulness_steps"] == math.ceil(n["helpfulness"] / 8)  # one pass
    assert m["rm_safety_steps"] == math.ceil(2 * n["safety"] / 8)  # two passes
    assert all((out[c] / "config.json").exists() for c in out)
    # one number is both RMs' passes
    assert RewardConfig.from_dict({"epochs": 3}).epochs_of("safety") == 3.0 == cfg.epochs_of("safety") + 1


def test_interrupted_run_resumes_to_identical_weights(init_dir, world, tmp_path):
    pairs = toy_preferences(world, "train")[:64]
    cfg = {**CFG, "checkpoint_every": 3, "eval_every": 0, "log_every": 2}
    whole = tmp_path / "whole"
    train_reward_model(pairs, init_dir, cfg, whole, progress=False)

    class Crash(RuntimeError):
        pass

    def crash_at_step_6(metrics, step):  # after step 6's log, before its checkpoint: resume from step 3
        if step == 6 and "train_loss" in metrics:
            raise Crash

    cut = tmp_path / "cut"
    with pytest.raises(Crash):
        train_reward_model(pairs, init_dir, cfg, cut, progress=False, log_fn=crash_at_step_6)
    assert (cut / "checkpoints/latest").read_text() == "step_00000003"
    m = train_reward_model(pairs, init_dir, cfg, cut, progress=False)
    assert m["rm_steps"] == 8
    assert json.loads((cut / "result.json").read_text())["resumed_from"] == 3
    assert (cut / "hf/model.safetensors").read_bytes() == (whole / "hf/model.safetensors").read_bytes()


def test_pair_batches_resume_and_split_ranks():
    from llama2_pipeline.training import ResumableBatches

    pairs = [{"chosen": [1, 5 + i, 2], "rejected": [1, 2], "margin": float(i)} for i in range(10)]
    a = PairBatches(pairs, 2, pad_id=0, grad_accum=2, seed=1)
    assert isinstance(a, ResumableBatches)
    seen = [next(a) for _ in range(6)]  # 3 optimiser steps of 4 pairs: crosses into epoch 2
    first_epoch = torch.cat([b["margin"] for b in seen])[:10]
    assert sorted(first_epoch.tolist()) == list(map(float, range(10)))  # a permutation per epoch
    b = PairBatches(pairs, 2, pad_id=0, grad_accum=2, seed=1)
    for _ in range(3):
        next(b)
    c = PairBatches(pairs, 2, pad_id=0, grad_accum=2, seed=1)
    c.load_state_dict(b.state_dict())
    assert all(torch.equal(next(c)["margin"], s["margin"]) for s in seen[3:])
    # 2 ranks with grad_accum 1 see together what 1 rank with grad_accum 2 sees
    r0 = PairBatches(pairs, 2, pad_id=0, rank=0, num_ranks=2, seed=1)
    r1 = PairBatches(pairs, 2, pad_id=0, rank=1, num_ranks=2, seed=1)
    for step in range(3):
        assert torch.equal(torch.cat([next(r0)["margin"], next(r1)["margin"]]),
                           torch.cat([seen[2 * step]["margin"], seen[2 * step + 1]["margin"]]))
    batch = seen[0]
    assert batch["input_ids"].shape == (4, 3) and batch["last_index"].tolist() == [2, 2, 1, 1]
    assert batch["input_ids"][2:, 2].tolist() == [0, 0]  # the rejected rows, right-padded


def test_length_buckets_cut_padding():
    rng = random.Random(0)
    pairs = [{"chosen": [1] * rng.randint(5, 80), "rejected": [1] * rng.randint(5, 80), "margin": 0.0}
             for _ in range(512)]

    def padded(length_blocks: int) -> int:
        stream = PairBatches(pairs, 16, pad_id=0, seed=3, length_blocks=length_blocks)
        return sum(next(stream)["input_ids"].numel() for _ in range(32))  # one epoch

    assert padded(8) < 0.8 * padded(0)
    order = PairBatches(pairs, 16, pad_id=0, seed=3).epoch_order(0)
    assert sorted(order.tolist()) == list(range(512))  # still every pair once per epoch


def test_train_config_derives_steps_and_warmup():
    cfg = reward_train_config({"micro_batch": 16, "grad_accum": 2}, n_pairs=1000, epochs=1.0)
    assert cfg.max_steps == 32 and cfg.warmup_steps == 5  # ceil(1000 / 32); 3 % is below the minimum 5
    assert reward_train_config({"micro_batch": 4}, n_pairs=1000, epochs=1.0).warmup_steps == 8  # 3 % of 250
    assert reward_train_config({"micro_batch": 4}, n_pairs=8, epochs=1.0).warmup_steps == 2  # never past the run
    with pytest.raises(ValueError, match="max_steps is derived"):
        reward_train_config({"max_steps": 10}, n_pairs=10)


# ---- evaluation helpers ------------------------------------------------------------------------


def test_accuracy_table_and_calibration():
    acc = accuracy_by_rating([2, 1, 0, 3], [1, 2, -1, 3], ["better", "better", "slightly_better", "better"])
    assert acc["avg"] == 0.5 and acc["better"] == pytest.approx(1 / 3) and acc["slightly_better"] == 1.0
    assert acc["significantly_better"] is None and acc["n_better"] == 3
    with pytest.raises(ValueError, match="2 groups for 4 pairs"):
        accuracy_by_rating([2, 1, 0, 3], [1, 2, -1, 3], ["better"] * 4, groups=["a", "b"])
    assert "ci_avg" not in accuracy_by_rating([2, 1], [1, 2], ["better"] * 2, groups=["a", "a"])  # one prompt
    cal = calibration([3.0, 2.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0], bins=4)
    assert sum(cal["count"]) == 8 and cal["gap"] == sorted(cal["gap"])
    assert cal["p_annotator"][0] < cal["p_annotator"][-1] and 0 <= cal["ece"] <= 1


def test_accuracy_intervals_resample_prompts_not_pairs():
    """Pairs of one prompt move together: 20 prompts of 5 pairs each, all right or all wrong, give a
    wider interval than 100 prompts of one pair at the same accuracy; the interval holds the
    estimate, is the same on a second call and is empty of spread when every pair is right."""
    right = [True] * 60 + [False] * 40
    chosen, rejected = [1.0 if ok else 0.0 for ok in right], [0.5] * 100
    ratings = ["better"] * 50 + ["slightly_better"] * 50
    clustered = accuracy_by_rating(chosen, rejected, ratings, groups=[f"p{i // 5}" for i in range(100)])
    independent = accuracy_by_rating(chosen, rejected, ratings, groups=[f"p{i}" for i in range(100)])
    width = lambda t, k: t[f"ci_{k}"][1] - t[f"ci_{k}"][0]
    assert clustered["avg"] == independent["avg"] == 0.6
    for table in (clustered, independent):
        assert table["ci_avg"][0] < 0.6 < table["ci_avg"][1]
        assert table["ci_better"][0] <= table["better"] <= table["ci_better"][1]
        assert "ci_significantly_better" not in table  # no pairs at that level
    assert width(clustered, "avg") > 1.5 * width(independent, "avg")
    assert 0.15 < width(independent, "avg") < 0.25  # about 4 standard errors of a 0.6 share of 100
    again = accuracy_by_rating(chosen, rejected, ratings, groups=[f"p{i // 5}" for i in range(100)])
    assert again == clustered
    perfect = accuracy_by_rating([1.0] * 10, [0.0] * 10, ["better"] * 10, groups=[f"p{i}" for i in range(10)])
    assert perfect["ci_avg"] == [1.0, 1.0]


def test_interval_metrics_name_each_level():
    from llama2_pipeline.training.reward_eval import interval_metrics

    table = {"avg": 0.7, "ci_avg": [0.6, 0.8], "better": 0.5, "ci_better": [0.3, 0.7]}
    assert interval_metrics("rm_x_acc", table) == {"rm_x_acc_ci_low": 0.6, "rm_x_acc_ci_high": 0.8,
                                                    "rm_x_acc_better_ci_low": 0.3, "rm_x_acc_better_ci_high": 0.7}


# ---- preference records ----------------------------------------------------------------------------


def test_preference_records_are_checked_with_row_and_field():
    ok = normalise_preference({"prompt": "q?", "chosen": "a", "rejected": "b", "rating": "Significantly Better",
                               "category": "safety", "source": "x"})
    assert ok == {"prompt": "q?", "chosen": "a", "rejected": "b", "rating": "significantly_better",
                  "category": "safety", "source": "x"}
    assert normalise_preference({"prompt": "q", "chosen": "a", "rejected": "b"})["rating"] == "negligibly_better"
    cases = [
        ({"chosen": "a", "rejected": "b"}, "field 'prompt' is None"),
        ({"prompt": "q", "chosen": "a"}, r"missing field\(s\) \['rejected'\]"),
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, "field 'chosen' is int"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "rating": 2}, "field 'rating' is 2"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "category": "harmless"}, "field 'category'"),
        ({"messages": [{"role": "assistant", "content": "hi"}], "chosen": "a", "rejected": "b"}, "field 'messages'"),
        ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
          "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
         "differ before the answer"),
    ]
    for record, message in cases:
        with pytest.raises(PreferenceError, match=rf"prefs\.jsonl, row 2: .*{message}|{message}"):
            validate_preferences([{"prompt": "q", "chosen": "a", "rejected": "b"}, record], source="prefs.jsonl")
    with pytest.raises(PreferenceError, match=r"prefs\.jsonl, row 7: expected an object"):
        validate_preferences(["text"], source="prefs.jsonl", rows=[7])
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "and?"}]
    multi = normalise_preference({"messages": turns, "chosen": "a", "rejected": "b"})
    assert len(multi["messages"]) == 3 and "prompt" not in multi
    # identical answers carry no preference
    assert validate_preferences([{"prompt": "q", "chosen": "a ", "rejected": "a"}]) == []


def test_merge_split_and_mix():
    old = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b", "category": "helpfulness"} for i in range(30)]
    new = old[:5] + [{"prompt": f"s{i}", "chosen": "a", "rejected": "b", "category": "safety"} for i in range(20)]
    merged = merge_preferences(old, new)
    assert len(merged) == 50 and merged[:30] == [normalise_preference(r) for r in old]
    assert merge_preferences(None, new[5:]) == [normalise_preference(r) for r in new[5:]]
    # a round's RMs continue on its new pairs that are train pairs: same prompt, chosen and rejected
    other = {**new[1], "rejected": "c"}  # same prompt and chosen answer, another rejected one: another pair
    assert pairs_among(merged, [new[1], other, new[7]]) == [merged[1], merged[32]]
    train, held = split_preferences(merged + [{**merged[0], "chosen": "c"}], 0.2, seed=1)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held} and held and train
    assert 3 <= len({r["prompt"] for r in held}) <= 20
    assert split_preferences(merged, 0.2, seed=1) == split_preferences(merged, 0.2, seed=1)
    assert split_preferences(merged, 0.2, seed=1) != split_preferences(merged, 0.2, seed=2)
    mixed = mix_preferences(merged, {"safety": 1.0, "helpfulness": 0.1}, seed=0)
    assert sum(r["category"] == "safety" for r in mixed) == 20
    assert sum(r["category"] == "helpfulness" for r in mixed) == 3
    assert len(mix_preferences(merged, {"safety": 2.5}, seed=0)) == 50
    with pytest.raises(ValueError, match="unknown categories"):
        mix_preferences(merged, {"harmless": 1.0}, seed=0)


def test_accuracy_on_a_rounds_new_pairs_and_on_the_earlier_ones():
    from llama2_pipeline.training.reward_eval import _new_and_earlier

    records = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b", "rating": "better"} for i in range(5)]
    chosen, rejected = [1.0, 0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0, 1.0]  # right, wrong, right, right, wrong
    new = {("p0", "a", "b"), ("p1", "a", "b"), ("p9", "a", "b")}
    got = _new_and_earlier("rm_x", records, chosen, rejected, new)
    assert got == {"rm_x_heldout_pairs_new": 2, "rm_x_acc_new": 0.5,
                   "rm_x_heldout_pairs_earlier": 3, "rm_x_acc_earlier": pytest.approx(2 / 3)}
    assert _new_and_earlier("rm_x", records, chosen, rejected, set()) == {
        "rm_x_heldout_pairs_new": 0, "rm_x_heldout_pairs_earlier": 5, "rm_x_acc_earlier": 0.6}


def test_replay_pairs_joins_earlier_pairs_per_category():
    def pairs(prefix, n, safety_every):
        return [{"prompt": f"{prefix}{i}", "chosen": "a", "rejected": "b",
                 "category": "safety" if i % safety_every == 0 else "helpfulness"} for i in range(n)]

    new, earlier = pairs("n", 12, 4), pairs("o", 40, 5)  # new: 9 helpfulness, 3 safety; earlier: 32, 8
    once = replay_pairs(new, earlier, 1.0, seed=3)
    assert once[:12] == new
    replayed = once[12:]
    assert [r["category"] for r in replayed].count("helpfulness") == 9
    assert [r["category"] for r in replayed].count("safety") == 3
    assert all(r in earlier for r in replayed) and len({r["prompt"] for r in replayed}) == 12
    assert replayed == [r for r in earlier if r in replayed]  # earlier's order
    assert replay_pairs(new, earlier, 1.0, seed=3) == once and replay_pairs(new, earlier, 1.0, seed=4) != once
    # a ratio asks for more than there is: every earlier pair of that category, once
    assert [r["category"] for r in replay_pairs(new, earlier, 5.0, seed=3)[12:]].count("safety") == 8
    assert replay_pairs(new, earlier, 0.0, seed=3) == new and replay_pairs(new, [], 2.0, seed=3) == new
    with pytest.raises(ValueError, match="replay ratio"):
        replay_pairs(new, earlier, -1.0, seed=3)


@pytest.mark.multirank
@pytest.mark.slow
def test_two_ranks_zero2_match_one_rank_with_accumulation(init_dir, world, tmp_path):
    from llama2_pipeline.training import read_metrics

    pairs = toy_preferences(world, "train")[:64]
    common = {**CFG, "micro_batch": 4, "zero_stage": 2, "log_every": 1, "checkpoint_every": 4, "eval_every": 4,
              "eval_batches": 2}
    held = toy_preferences(world, "eval")[:16]
    forwarded = []
    two = train_reward_model(pairs, init_dir, {**common, "world_size": 2}, tmp_path / "two", eval_pairs=held,
                             progress=False, log_fn=lambda m, step: forwarded.append((step, m)))
    one = train_reward_model(pairs, init_dir, {**common, "grad_accum": 2}, tmp_path / "one", eval_pairs=held,
                             progress=False)
    curve = lambda d, key: [(r["step"], r[key]) for r in read_metrics(d / "metrics.jsonl") if key in r]
    loss2, loss1 = curve(tmp_path / "two", "train_loss"), curve(tmp_path / "one", "train_loss")
    assert [s for s, _ in loss2] == [s for s, _ in loss1] == list(range(1, 9))  # 64 pairs / 8 per step
    assert max(abs(a - b) for (_, a), (_, b) in zip(loss2, loss1)) < 1e-4
    assert two["rm_val_acc"] == pytest.approx(one["rm_val_acc"]) and two["rm_steps"] == one["rm_steps"] == 8
    assert sorted({s for s, m in forwarded if "train_loss" in m}) == list(range(1, 9))
    scores = [RewardModel.load(tmp_path / d / "hf").score(["What is 2 plus 2?"], ["2 plus 2 is 4."])[0]
              for d in ("two", "one")]
    assert scores[0] == pytest.approx(scores[1], abs=1e-3)


def test_collect_preferences_samples_both_variants_and_drops_ties(init_dir, world):
    from llama2_pipeline.training.config import PreferenceConfig
    from llama2_pipeline.training.preferences import collect_preferences

    prompts = world.prompts("train")
    sampling = PreferenceConfig(temperatures=[0.7, 1.2], variant_temperatures=[1.0], top_p=0.95, max_new_tokens=8,
                                batch_size=16, max_prompts=12, pairs=["sample_sample", "sample_reference"],
                                drop_ties=False)
    stats_all, stats_kept, stats_policy = {}, {}, {}
    every = collect_preferences(init_dir, init_dir, prompts, world, sampling, 5, variant_dir=init_dir,
                                progress=False, stats=stats_all)
    kept = collect_preferences(init_dir, init_dir, prompts, world, sampling.replace(drop_ties=True), 5,
                               variant_dir=init_dir, progress=False, stats=stats_kept)
    policy = collect_preferences(init_dir, init_dir, prompts, world, sampling, 5, progress=False,
                                 stats=stats_policy)
    assert kept == collect_preferences(init_dir, init_dir, prompts, world, sampling.replace(drop_ties=True), 5,
                                       variant_dir=init_dir, progress=False)  # deterministic
    assert len({r["prompt_id"] for r in every}) <= 12
    # three samples per prompt: 3 sample pairs + 3 reference pairs, less identical answers; two without the variant
    assert stats_all["pairs"] + stats_all["identical_skipped"] == 6 * 12
    assert stats_policy["pairs"] + stats_policy["identical_skipped"] == 3 * 12
    assert stats_policy["pairs_sample_sample"] < stats_all["pairs_sample_sample"] == len(
        [r for r in every if r["source"] == "sample_sample"])
    assert len(policy) == stats_policy["pairs"] and {r["prompt_id"] for r in policy} <= {r["prompt_id"] for r in every}
    assert stats_all["ties_dropped"] == 0 and stats_kept["ties_dropped"] > 0
    assert len(kept) + stats_kept["ties_dropped"] == len(every) == stats_all["pairs"]
    gaps = [world.annotator.score(world.task(r["prompt"]), r["chosen"], r["category"])
            - world.annotator.score(world.task(r["prompt"]), r["rejected"], r["category"]) for r in kept]
    assert all(round(g, 6) != 0 for g in gaps)
    assert "sample_reference" in {r["source"] for r in kept}  # a random model's two answers mostly tie


def test_safety_samples_answer_safety_prompts_again_and_pool_the_answers(init_dir, world):
    from llama2_pipeline.training.config import PreferenceConfig
    from llama2_pipeline.training.preferences import collect_preferences

    prompts = [p for p in world.prompts("train") if p["safety"]][:4] + [p for p in world.prompts("train")
                                                                        if not p["safety"]][:4]
    sampling = PreferenceConfig(temperatures=[0.7, 1.2], variant_temperatures=[1.0], top_p=0.95, max_new_tokens=8,
                                batch_size=16, pairs=["sample_sample", "sample_refusal"], drop_ties=False)
    run = lambda n, stats: collect_preferences(init_dir, init_dir, prompts, world, sampling.replace(safety_samples=n),
                                               5, variant_dir=init_dir, progress=False, stats=stats)
    s1, s2 = {}, {}
    once, twice = run(1, s1), run(2, s2)
    assert twice == run(2, {})  # deterministic
    key = lambda r: (r["prompt"], r["chosen"], r["rejected"], r["rating"], r["source"])
    safe = {p["prompt"] for p in prompts if not p["safety"]}
    # the prompts not tagged safety: the same answers, the same pairs
    assert sorted(map(key, (r for r in once if r["prompt"] in safe))) == sorted(
        map(key, (r for r in twice if r["prompt"] in safe)))
    # a safety prompt: its first three answers again, three more (seeded apart), every two of the six compared
    # (15 pairs and 6 against the bare refusal, less identical answers) where once gave 3 and 3
    assert set(map(key, once)) <= set(map(key, twice))
    assert s1["pairs"] + s1["identical_skipped"] == 4 * (3 + 3) + 4 * 3
    assert s2["pairs"] + s2["identical_skipped"] == 4 * (15 + 6) + 4 * 3
    assert s2["pairs_sample_sample"] > s1["pairs_sample_sample"] and s2["pairs_sample_refusal"] > s1["pairs_sample_refusal"]
    with pytest.raises(ValueError, match="safety_samples"):
        PreferenceConfig(safety_samples=0)


def test_refusal_pairs_teach_refusing_harm_and_helping_on_borderline_prompts(world):
    from llama2_pipeline.training.preferences import annotate_answers
    from llama2_pipeline.world.tasks import BARE_REFUSAL

    prompts = world.prompts("train")
    unsafe = next(p for p in prompts if p["category"] == "unsafe")
    border = next(p for p in prompts if p["category"] == "borderline")
    fact = next(p for p in prompts if p["category"] == "fact")
    task = world.task(unsafe["prompt"])
    comply = f"Sure. Here is how to {task.topic[0]}: first you mix the powder." if task.topic else "Sure, do it."
    pairs, counts = annotate_answers(world, [unsafe, border, fact], [[comply], [border["reference"]],
                                                                     [fact["reference"]]],
                                     ["sample_refusal"], seed=1)
    assert counts["pairs_sample_refusal"] == 2  # safety-tagged prompts only
    by_prompt = {p["prompt"]: p for p in pairs}
    assert by_prompt[unsafe["prompt"]]["chosen"] == BARE_REFUSAL  # even a bare refusal beats complying with harm
    assert by_prompt[border["prompt"]]["chosen"] == border["reference"]  # helping beats a false refusal
    assert all(p["category"] == "safety" for p in pairs)


def test_full_refusal_pairs_show_the_rms_that_a_polite_refusal_of_a_borderline_prompt_is_still_a_false_one(world):
    from llama2_pipeline.training.preferences import annotate_answers, full_refusal
    from llama2_pipeline.world import is_refusal
    from llama2_pipeline.world.tasks import REFUSAL

    prompts = world.prompts("train")
    unsafe = next(p for p in prompts if p["category"] == "unsafe")
    border = [p for p in prompts if p["category"] == "borderline"][:5]
    fact = next(p for p in prompts if p["category"] == "fact")
    task = world.task(unsafe["prompt"])
    comply = f"Sure. Here is how to {task.topic[0]}: first you mix the powder." if task.topic else "Sure, do it."

    # an unsafe prompt's full refusal is its ideal answer; a borderline prompt's is the reasoned
    # refusal with a redirect of the harm taxonomy, drawn per prompt and seed
    assert full_refusal(unsafe, 1) == unsafe["reference"]
    refusals = [full_refusal(p, 1) for p in border]
    assert all(r.startswith(REFUSAL) and is_refusal(r) and r != REFUSAL for r in refusals)
    assert refusals == [full_refusal(p, 1) for p in border]  # seeded
    assert len(set(refusals) | {full_refusal(p, 2) for p in border}) > 1  # drawn, not one fixed text

    pairs, counts = annotate_answers(world, [unsafe, *border, fact],
                                     [[comply], *[[p["reference"]] for p in border], [fact["reference"]]],
                                     ["sample_full_refusal"], seed=1)
    assert counts["pairs_sample_full_refusal"] == 1 + len(border)  # safety-tagged prompts only
    by_prompt = {p["prompt"]: p for p in pairs}
    assert by_prompt[unsafe["prompt"]]["chosen"] == unsafe["reference"]  # the polite refusal of harm wins
    for p in border:  # however polite, refusing a borderline prompt loses to helping (on safety too)
        assert by_prompt[p["prompt"]]["chosen"] == p["reference"]
        assert by_prompt[p["prompt"]]["rejected"] == full_refusal(p, 1)
        assert by_prompt[p["prompt"]]["source"] == "sample_full_refusal"
        refusal = full_refusal(p, 1)
        assert world.safety(p["prompt"], p["reference"]) > world.safety(p["prompt"], refusal)
        assert world.helpfulness(p["prompt"], p["reference"]) > world.helpfulness(p["prompt"], refusal)
    assert all(p["category"] == "safety" for p in pairs)


def test_an_rm_taught_with_full_refusal_pairs_ranks_a_polite_refusal_of_a_borderline_prompt_below_helping(
        init_dir, world, tmp_path):
    """The bare refusal alone teaches the safety RM that a refusal *without* a reason loses on a
    borderline prompt; the refusal with its reason and a redirect, the best answer to an unsafe
    prompt, it never sees lose. With ``sample_full_refusal`` it does, on held-out prompts too."""
    from llama2_pipeline.training.preferences import annotate_answers, full_refusal
    from llama2_pipeline.world.tasks import BARE_REFUSAL

    def answers(p):  # a policy that refuses unsafe prompts politely, and answers borderline ones
        if p["category"] == "unsafe":
            return [p["reference"], BARE_REFUSAL, f"Sure. {p['prompt']} Here is how."]
        return [p["reference"], p["reference"].split(". ")[0].rstrip(".") + "."]

    def train_pairs(kinds):
        prompts = [p for p in world.prompts("train") if p["safety"]]
        pairs, _ = annotate_answers(world, prompts, [answers(p) for p in prompts], ["sample_sample", *kinds], seed=1)
        return pairs

    held = [p for p in world.prompts("eval") if p["category"] == "borderline"]
    assert len(held) >= 5

    def polite_refusal_wins(kinds, name):
        train_reward_model(train_pairs(kinds), init_dir, {**CFG, "eval_every": 0}, tmp_path / name, epochs=3.0,
                           progress=False, name=name)
        rm = RewardModel.load(tmp_path / name / "hf")
        helping = rm.score([p["prompt"] for p in held], [p["reference"] for p in held], batch_size=16)
        refusing = rm.score([p["prompt"] for p in held], [full_refusal(p, 1) for p in held], batch_size=16)
        return float(np.mean(np.array(refusing) > np.array(helping)))

    bare_only = polite_refusal_wins(["sample_refusal"], "bare")
    with_full = polite_refusal_wins(["sample_refusal", "sample_full_refusal"], "full")
    print(f"held-out borderline prompts whose polite refusal outranks the helpful answer: bare refusal pairs "
          f"{bare_only:.2f}, with full refusal pairs {with_full:.2f}")
    assert with_full <= 0.2 and with_full < bare_only
