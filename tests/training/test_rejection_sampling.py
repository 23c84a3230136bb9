"""Rejection sampling's pool: best of K by R_c, and (after the first round) the answers earlier
rounds kept, re-ranked by the new reward models (llama2_pipeline.training.rlhf)."""

from __future__ import annotations

import copy

import pytest

from llama2_pipeline.training.rejection import pool_earlier, rejection_sample

PROMPTS = [{"id": "a", "prompt": "What is 2 plus 2?", "category": "arithmetic", "safety": False},
           {"id": "b", "prompt": "How do I pick a lock?", "category": "unsafe", "safety": True},
           {"id": "c", "prompt": "What is the capital of Saifan?", "category": "fact", "safety": False}]


def dialogue(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


class LengthRM:
    """Stand-in scorer: the raw score is the answer's length in characters (scaled)."""

    def score(self, prompts, answers, batch_size=64):
        return [len(a) / 10 for a in answers]


def candidates():
    return [{"id": "a", "prompt": PROMPTS[0]["prompt"], "safety": False, "answers": ["4.", "2 plus 2 is 5."]},
            {"id": "b", "prompt": PROMPTS[1]["prompt"], "safety": True, "answers": ["No.", "I can't help."]}]


def test_pool_adds_earlier_answers_and_earlier_only_prompts():
    earlier = [dialogue(PROMPTS[0]["prompt"], "2 plus 2 is 4, the sum."),
               dialogue(PROMPTS[1]["prompt"], "I can't help."),          # already in the pool: not twice
               dialogue(PROMPTS[2]["prompt"], "The capital of Saifan is Maithand.")]
    before = copy.deepcopy(candidates())
    pool = pool_earlier(before, earlier, PROMPTS)
    assert before == candidates()  # the inputs are left as they were
    by = {c["prompt"]: c for c in pool}
    assert [c["prompt"] for c in pool] == [p["prompt"] for p in PROMPTS]  # this round's first, then earlier-only
    assert by[PROMPTS[0]["prompt"]]["answers"] == ["4.", "2 plus 2 is 5.", "2 plus 2 is 4, the sum."]
    assert by[PROMPTS[0]["prompt"]]["earlier"] == 1
    assert by[PROMPTS[1]["prompt"]]["answers"] == ["No.", "I can't help."] and by[PROMPTS[1]["prompt"]]["earlier"] == 0
    only = by[PROMPTS[2]["prompt"]]
    assert only["answers"] == ["The capital of Saifan is Maithand."] and only["earlier"] == 1
    assert only["id"] == "c" and only["safety"] is False and only["category"] == "fact"


def test_rejection_sampling_reranks_the_pool_with_this_rounds_rms():
    earlier = [dialogue(PROMPTS[0]["prompt"], "2 plus 2 is 4, the sum."),
               dialogue(PROMPTS[2]["prompt"], "The capital of Saifan is Maithand.")]
    dialogues, scored, stats = rejection_sample(pool_earlier(candidates(), earlier, PROMPTS), LengthRM(), LengthRM(),
                                                threshold=0.15)
    kept = {d["messages"][0]["content"]: d["messages"][1]["content"] for d in dialogues}
    # the longest answer wins under the stand-in RM: for "a" the earlier round's answer
    assert kept == {PROMPTS[0]["prompt"]: "2 plus 2 is 4, the sum.", PROMPTS[1]["prompt"]: "I can't help.",
                    PROMPTS[2]["prompt"]: "The capital of Saifan is Maithand."}
    assert [c["best"] for c in scored] == [2, 1, 0]
    assert stats["rs_prompts"] == 3 and stats["rs_kept_earlier_share"] == pytest.approx(2 / 3)
    # without earlier rounds: best of this round's K only
    dialogues, scored, stats = rejection_sample(candidates(), LengthRM(), LengthRM(), threshold=0.15)
    assert [c["best"] for c in scored] == [1, 1] and stats["rs_kept_earlier_share"] == 0.0


def test_pool_errors_name_the_row():
    with pytest.raises(ValueError, match=r"row 1: the prompt 'Who are you\?' is not in prompts_train"):
        pool_earlier(candidates(), [dialogue(PROMPTS[0]["prompt"], "4."), dialogue("Who are you?", "Me.")], PROMPTS)
    with pytest.raises(ValueError, match=r"row 0: expected 'messages' ending with a user and an assistant"):
        pool_earlier(candidates(), [{"messages": [{"role": "user", "content": "hi"}]}], PROMPTS)


def test_the_policys_likelihood_breaks_the_rms_tie_on_helpfulness_prompts_only():
    """The stand-in RM prefers the longer, wrong "2 plus 2 is 5."; a policy that finds "4." far likelier
    moves the pick once the weight outweighs the RM's gap (sd-scaled: R_c 0.2 / 1.4, sd 0.6;
    likelihood -0.5 / -3.0, sd 1.25: w > 1). The safety prompt keeps R_c's pick whatever the weight."""
    lik = {"4.": -0.5, "2 plus 2 is 5.": -3.0, "No.": -0.1, "I can't help.": -4.0}
    calls = []

    def likelihood(prompts, answers):
        calls.append(len(answers))
        return [lik[a] for a in answers]

    picks = {}
    for w in (0.0, 0.5, 2.0):
        _, scored, stats = rejection_sample(candidates(), LengthRM(), LengthRM(), 0.15, likelihood=likelihood,
                                            likelihood_weight=w)
        picks[w] = [c["best"] for c in scored]
        assert stats.get("rs_likelihood_changed_share") == {0.0: None, 0.5: 0.0, 2.0: 0.5}[w]
        assert ("likelihood" in scored[0]) == (w > 0)
    assert picks == {0.0: [1, 1], 0.5: [1, 1], 2.0: [0, 1]}
    assert calls == [4, 4]  # asked once per ranking with a weight, for every answer
    assert scored[0]["likelihood"] == [-0.5, -3.0] and scored[0]["reward"] == [0.2, 1.4]  # R_c itself unscaled
    with pytest.raises(ValueError, match=r"4 finite numbers, got 4 \(1 not finite\)"):
        rejection_sample(candidates(), LengthRM(), LengthRM(), 0.15, likelihood_weight=1.0,
                         likelihood=lambda p, a: [0.0, float("nan"), 0.0, 0.0])


def test_best_of_k_needs_the_starting_policy_to_rank_by_its_likelihood():
    from llama2_pipeline.training.config import CandidateConfig, RLHFConfig
    from llama2_pipeline.training.rejection import best_of_k

    cfg = RLHFConfig(rounds={"v1": {"after": "sft", "ppo": False}}, candidates=CandidateConfig(likelihood_weight=0.25))
    with pytest.raises(ValueError, match="likelihood_weight > 0 ranks by the round's starting policy"):
        best_of_k(candidates(), "rm_h", "rm_s", cfg)


def scored_safety(n: int) -> list[dict]:
    """``n`` kept refusals to unsafe prompts, ``n`` kept answers to borderline ones, one safe prompt."""
    out = [{"prompt": f"How do I make poison number {i}?", "safety": True, "category": "unsafe",
            "answers": ["Sure.", "I can't help with that, because it could cause harm."], "best": 1} for i in range(n)]
    out += [{"prompt": f"How do I shoot photos {i}?", "safety": True, "category": "borderline",
             "answers": ["Use a tripod.", "1 2 3"], "best": 0} for i in range(n)]
    return out + [{"prompt": "What is 2 plus 2?", "safety": False, "answers": ["4."], "best": 0},
                  {"prompt": "How do I make a bomb?", "safety": True, "answers": [""], "best": None}]


def test_instructed_copies_teach_the_kept_answer_in_the_instructions_form():
    from llama2_pipeline.training.rejection import instructed_copies
    from llama2_pipeline.world import constraints

    scored = scored_safety(30)
    copies = instructed_copies(scored, seed=7, share=1.0)
    assert len(copies) == 60  # every safety-tagged prompt with a kept answer, none of the others
    seen = set()
    for c in copies:
        system, user, assistant = c["messages"]
        assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
        names = next(n for n in constraints.combinations(2) if constraints.instruction(n) == system["content"])
        assert all(constraints.CONSTRAINTS[n].kind != "length" for n in names)  # only rules a rewrite can keep
        assert constraints.check(names, assistant["content"])
        kept = next(s for s in scored if s["prompt"] == user["content"])
        assert assistant["content"] == constraints.repair(names, kept["answers"][kept["best"]])
        assert assistant["content"].lower().replace("ahoy! ", "").replace(" cheers!", "") == \
            kept["answers"][kept["best"]].lower()  # the same answer, in the instruction's form
        seen.add(names)
    assert len(seen) >= 4  # the draw uses the instructions, not one
    assert copies == instructed_copies(scored, seed=7, share=1.0)  # seeded
    assert copies != instructed_copies(scored, seed=8, share=1.0)
    assert instructed_copies(scored, seed=7, share=0.0) == []
    half = instructed_copies(scored, seed=7, share=0.5)
    assert 15 <= len(half) <= 45 and all(c in copies for c in half)  # the same draws, a share of them kept
    with pytest.raises(ValueError, match=r"instructed_safety must be in \[0, 1\], got 1.5"):
        instructed_copies(scored, seed=7, share=1.5)


def test_instructed_copies_leave_out_an_answer_the_instruction_cannot_be_written_into():
    from llama2_pipeline.training.rejection import instructed_copies

    scored = [{"prompt": f"Borderline {i}?", "safety": True, "answers": ["12."], "best": 0} for i in range(40)]
    copies = instructed_copies(scored, seed=1, share=1.0)
    # "12." has no letters to put in a case: only prefix and suffix instructions could be kept
    assert 0 < len(copies) < 40
    assert all("case" not in c["messages"][0]["content"] and "letters" not in c["messages"][0]["content"]
               for c in copies)


def test_the_next_round_pools_the_plain_answers_not_their_instructed_copies():
    from llama2_pipeline.training.rejection import instructed_copies

    earlier = [dialogue(PROMPTS[1]["prompt"], "I can't help with that.")]
    earlier += instructed_copies([{"prompt": PROMPTS[1]["prompt"], "safety": True,
                                   "answers": ["I can't help with that."], "best": 0}], seed=3, share=1.0)
    assert len(earlier) == 2 and earlier[1]["messages"][0]["role"] == "system"
    pool = {c["prompt"]: c for c in pool_earlier(candidates(), earlier, PROMPTS)}
    assert pool[PROMPTS[1]["prompt"]]["answers"] == ["No.", "I can't help.", "I can't help with that."]
    assert pool[PROMPTS[1]["prompt"]]["earlier"] == 1


def test_best_of_k_ends_its_dialogues_with_the_instructed_copies(monkeypatch):
    from llama2_pipeline.training import rejection
    from llama2_pipeline.training.config import CandidateConfig, RLHFConfig

    monkeypatch.setattr(rejection, "load_reward_models", lambda h, s: (LengthRM(), LengthRM()))
    rounds = {"v1": {"after": "sft", "ppo": False}}
    plain, _, stats = rejection.best_of_k(candidates(), "rm_h", "rm_s", RLHFConfig(rounds=rounds))
    assert len(plain) == 2 and "rs_instructed_copies" not in stats
    cfg = RLHFConfig(rounds=rounds, candidates=CandidateConfig(instructed_safety=1.0))
    dialogues, _, stats = rejection.best_of_k(candidates(), "rm_h", "rm_s", cfg, seed=5)
    assert dialogues[:2] == plain and stats["rs_instructed_copies"] == 1 and len(dialogues) == 3
    system, user, assistant = dialogues[2]["messages"]
    assert system["role"] == "system" and user["content"] == PROMPTS[1]["prompt"]
    assert "can't help" in assistant["content"].lower()
