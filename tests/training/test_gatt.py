"""GAtt data construction and the adherence evaluator on hand-checked examples."""

from __future__ import annotations

import pytest

from llama2_pipeline.training.gatt import (construct, draw_dialogues, gatt_record,
                                           learned_answers, truncations)
from llama2_pipeline.training.gatt_eval import adherence_by_turn
from llama2_pipeline.world import constraints

USERS = ["What is 2 plus 2?", "What is the capital of Velmora?", "Reverse the word 'abc'."]


def test_instruction_only_in_the_first_turn_and_loss_on_the_last_answer():
    rec = gatt_record(USERS, ["Ahoy! 4.", "Ahoy! Drisk.", "Ahoy! cba."], ["ahoy"])
    users = [m["content"] for m in rec["messages"] if m["role"] == "user"]
    assert users[0] == "Start every answer with 'Ahoy!'. What is 2 plus 2?"
    assert users[1:] == USERS[1:]  # dropped from every later turn
    assert rec["only_last_answer"] is True and rec["constraints"] == ["ahoy"]
    # the SFT machinery honours the record's flag: only the last answer's tokens (and its EOS) are learned
    from llama2_pipeline.training.packing import encode_examples

    class Tok:  # one token per character, enough to locate the answers
        bos_id, eos_id = 1, 2

        def encode_batch(self, texts, bos=True, eos=False, num_threads=1):
            return [[self.bos_id] * bos + [ord(c) for c in t] + [self.eos_id] * eos for t in texts]

    ((ids, mask),) = encode_examples(Tok(), [rec], only_last_answer=False)  # the record overrides
    learned = "".join(chr(i) for i, m in zip(ids, mask) if m and i > 2)
    assert learned.strip() == "Ahoy! cba."
    assert [i for i, m in zip(ids, mask) if m and i == Tok.eos_id] == [Tok.eos_id]


def test_samples_that_break_the_instruction_are_dropped():
    dialogues = [{"users": USERS[:2], "constraints": ["ahoy"]}, {"users": USERS[:2], "constraints": ["cheers"]},
                 {"users": USERS[:2], "constraints": ["uppercase", "five_words"]},
                 {"users": USERS, "constraints": ["lowercase"]}]
    answers = [["Ahoy! 4.", "Drisk."],               # turn 2 forgot the instruction
               ["4. Cheers!", "Drisk. Cheers!"],     # adheres
               ["FOUR.", "THE CAPITAL IS DRISK."],   # adheres to both
               ["four.", "drisk.", "CBA."]]          # turn 3 breaks it
    records, stats = construct(dialogues, answers, keep_adherent=True)
    # each dialogue up to its first answer that breaks the instruction
    assert [r["constraints"] for r in records] == [["ahoy"], ["cheers"], ["uppercase", "five_words"], ["lowercase"]]
    assert [[m["content"] for m in r["messages"] if m["role"] == "assistant"] for r in records] == \
        [["Ahoy! 4."], answers[1], answers[2], ["four.", "drisk."]]
    assert stats == {"gatt_drawn_dialogues": 4, "gatt_adherent_share": pytest.approx(2 / 4), "gatt_records": 4,
                     "gatt_prefix_records": 2, "gatt_blank_dropped": 0}
    # a prefix shorter than min_turns is dropped
    records, stats = construct(dialogues, answers, keep_adherent=True, min_turns=2)
    assert [r["constraints"] for r in records] == [["cheers"], ["uppercase", "five_words"], ["lowercase"]]
    assert stats["gatt_records"] == 3 and stats["gatt_prefix_records"] == 1
    # without keep_adherent every answer is kept
    assert [len(r["messages"]) for r in construct(dialogues, answers, keep_adherent=False)[0]] == [4, 4, 4, 6]
    # a blank answer ends the dialogue before it
    blank = construct(dialogues, [answers[0], [" ", "Drisk. Cheers!"], answers[2], ["four.", "", "cba."]],
                      keep_adherent=False)
    assert [len(r["messages"]) for r in blank[0]] == [4, 4, 2] and blank[1]["gatt_blank_dropped"] == 2


def test_truncations_put_the_learned_answer_at_every_turn():
    rec = gatt_record(USERS, ["four.", "drisk.", "cba."], ["lowercase"], system=True)
    every = truncations([rec], 1, seed=0, cuts="every")
    assert [len(r["messages"]) for r in every] == [3, 5, 7]  # system + 1, 2, 3 turns
    assert all(r["messages"][0]["role"] == "system" and r["only_last_answer"] for r in every)
    assert every[1]["messages"][-1] == {"role": "assistant", "content": "drisk."}
    cuts = {len(truncations([rec], 2, seed=s)[0]["messages"]) for s in range(20)}
    assert cuts == {5, 7}  # one seeded cut after turn 2 or 3
    assert truncations([rec], 2, seed=4) == truncations([rec], 2, seed=4)
    with pytest.raises(ValueError, match="cuts must be one of every, random, whole; got 'each'"):
        truncations([rec], 2, seed=4, cuts="each")


class CharTok:  # one token per character (ids below 300), enough to locate the answers
    bos_id, eos_id = 1, 2

    def encode_batch(self, texts, bos=True, eos=False, num_threads=1):
        return [[self.bos_id] * bos + [ord(c) % 297 + 3 for c in t] + [self.eos_id] * eos for t in texts]


def test_a_whole_dialogue_learns_every_cut_answer_with_its_cut_context():
    """``cuts: whole`` keeps one record per dialogue with the loss on the answers of turns min_turns..n;
    each is learned with the tokens its cut would give it: the whole record's summed token loss under a
    model equals the sum over the cuts' (one forward instead of one per cut), and a bad ``first_answer``
    is named."""
    import torch

    from llama2_pipeline.model import Llama, ModelConfig
    from llama2_pipeline.tokenizer import ChatFormatError
    from llama2_pipeline.training.packing import encode_examples

    rec = gatt_record(USERS, ["four.", "drisk.", "cba."], ["lowercase"], system=True)
    (whole,) = truncations([rec], 2, seed=0, cuts="whole")
    assert whole["messages"] == rec["messages"] and whole["first_answer"] == 1 and not whole["only_last_answer"]
    cuts = truncations([rec], 2, seed=0, cuts="every")
    assert len(cuts) == 2 and learned_answers(whole) == sum(map(learned_answers, cuts)) == 2
    tok = CharTok()
    ((ids, mask),) = encode_examples(tok, [whole])
    learned = [ids[i] for i, m in enumerate(mask) if m and ids[i] > 2]
    assert "".join(chr(t - 3) for t in learned).split() == ["drisk.", "cba."]  # turns 2 and 3, not the first
    encoded = encode_examples(tok, cuts)
    for cut_ids, cut_mask in encoded:  # each cut is a prefix whose one learned answer the whole record learns too
        assert ids[:len(cut_ids)] == cut_ids
        assert all(mask[i] for i, m in enumerate(cut_mask) if m)
    assert sum(sum(m) for _, m in encoded) == sum(mask)

    torch.manual_seed(0)
    model = Llama(ModelConfig.from_preset("smoke", vocab_size=300, max_seq_len=512)).double().eval()

    @torch.no_grad()
    def summed_loss(ids, mask):
        x = torch.tensor(ids)
        logits = model(x[None, :-1])[0]
        per_token = torch.nn.functional.cross_entropy(logits, x[1:], reduction="none")
        return float((per_token * torch.tensor(mask[1:], dtype=per_token.dtype)).sum())

    assert summed_loss(ids, mask) == pytest.approx(sum(summed_loss(i, m) for i, m in encoded), rel=1e-12)
    with pytest.raises(ChatFormatError, match="'first_answer' must be an answer's index >= 0, got -1"):
        encode_examples(tok, [dict(whole, first_answer=-1)])


def test_adherence_by_turn_on_hand_made_dialogues():
    dialogues = [{"users": USERS, "constraints": ["ahoy"]}, {"users": USERS, "constraints": ["uppercase", "five_words"]}]
    answers = [["Ahoy! 4.", "Ahoy! Drisk.", "cba."],
               ["FOUR.", "Drisk is the capital city of Velmora.", "CBA."]]
    out = adherence_by_turn(dialogues, answers)
    assert out["turn"] == [1.0, 0.5, 0.5]
    assert out["by_constraint"] == {"ahoy": [1.0, 1.0, 0.0], "five_words": [1.0, 0.0, 1.0],
                                    "uppercase": [1.0, 0.0, 1.0]}


def test_helpfulness_by_constraint_counts_a_two_instruction_dialogue_for_both():
    from llama2_pipeline.training.gatt_eval import helpfulness_by_constraint

    dialogues = [{"constraints": ["ahoy"]}, {"constraints": ["uppercase", "five_words"]}, {"constraints": ["ahoy"]}]
    out = helpfulness_by_constraint(dialogues, [[1.0, 0.5], [0.2, 0.4], [0.0, 0.5]])
    assert list(out) == ["ahoy", "five_words", "uppercase"]
    assert out["ahoy"] == pytest.approx(0.5) and out["uppercase"] == out["five_words"] == pytest.approx(0.3)


def test_drawn_dialogues_are_seeded_safe_and_compatible():
    prompts = [{"prompt": f"What is {i} plus 1?", "safety": False} for i in range(20)] + \
              [{"prompt": "How do I build a bomb?", "safety": True}]
    a = draw_dialogues(prompts, 30, 4, seed=3)
    assert a == draw_dialogues(prompts, 30, 4, seed=3) and a != draw_dialogues(prompts, 30, 4, seed=4)
    for d in a:
        assert len(d["users"]) == 4 and "bomb" not in " ".join(d["users"])
        assert constraints.compatible(tuple(d["constraints"])) and 1 <= len(d["constraints"]) <= 2
    with pytest.raises(ValueError, match="at least 5 safe prompts"):
        draw_dialogues(prompts[:4], 3, 5, seed=0)


def test_sample_adherent_retries_swaps_and_stops_a_dialogue_at_its_first_broken_turn(monkeypatch):
    import llama2_pipeline.evaluation.answers as evaluation
    from llama2_pipeline.evaluation.answers import SamplingConfig
    from llama2_pipeline.training.gatt import sample_adherent

    calls = []

    def fake_generate(model, tokenizer, chats, sampling, *, desc="", progress=True):
        calls.append((desc, len(chats)))
        out = []
        for chat in chats:  # [system, user]: adheres from try 2 on ("Cheers!"), except for "never" users
            user, k = chat[-1]["content"], sampling.seed - 10
            ok = k >= 1 and "never" not in user
            out.append({"answer": f"{user} {'Cheers!' if ok else 'Bye.'}"})
        return out

    monkeypatch.setattr(evaluation, "generate_answers", fake_generate)
    dialogues = [{"users": ["a", "b", "c"], "constraints": ["cheers"]},
                 {"users": ["d", "never", "f"], "constraints": ["cheers"]}]
    sampling = SamplingConfig(seed=10)
    out, answers, stats = sample_adherent(None, None, dialogues, sampling, tries=3, prefix_only=True)
    assert out == dialogues and answers == [["a Cheers!", "b Cheers!", "c Cheers!"], ["d Cheers!", "never Bye.", ""]]
    assert stats["gatt_answer_adherent_share"] == pytest.approx(4 / 11)  # 11 samples, 4 kept; turn 3 of dialogue 2 never sampled
    assert stats["gatt_swapped_messages"] == 0
    assert ("gatt turn 3 try 1", 1) in calls and ("gatt turn 2 try 3", 1) in calls
    assert all(not d.startswith("gatt turn 1 try 3") for d, _ in calls)  # both adhered at try 2
    # a spare message replaces the one that cannot be followed; the first spare that can be is used
    spared = [dialogues[0], {**dialogues[1], "spare": ["never again", "e", "g"]}]
    out, answers, stats = sample_adherent(None, None, spared, sampling, tries=2, prefix_only=True)
    assert out[1] == {"users": ["d", "e", "f"], "constraints": ["cheers"]} and stats["gatt_swapped_messages"] == 2
    assert answers[1] == ["d Cheers!", "e Cheers!", "f Cheers!"] and dialogues[1]["users"][1] == "never"
    # without prefix_only every turn is answered (the last sample kept) and spares are not used
    out, answers, _ = sample_adherent(None, None, spared, sampling, tries=1, prefix_only=False)
    assert answers[1] == ["d Bye.", "never Bye.", "f Bye."] and out[1]["users"][1] == "never"
    records, _ = construct(dialogues, sample_adherent(None, None, dialogues, sampling, 3, prefix_only=True)[1])
    assert [len(r["messages"]) for r in records] == [6, 2]


def test_sample_adherent_with_a_scorer_keeps_the_best_adherent_of_all_tries(monkeypatch):
    import llama2_pipeline.evaluation.answers as evaluation
    from llama2_pipeline.evaluation.answers import SamplingConfig
    from llama2_pipeline.training.gatt import sample_adherent

    calls = []

    def fake_generate(model, tokenizer, chats, sampling, *, desc="", progress=True):
        calls.append(desc)
        k = sampling.seed - 10  # try k: "<user> <k>" adheres (ends "Cheers!") on tries 0 and 2, not on 1 or 3
        return [{"answer": f"{c[-1]['content']} {k} {'Cheers!' if k in (0, 2) and 'never' not in c[-1]['content'] else 'Bye.'}"}
                for c in chats]

    seen = []

    def score(users, answers, names):  # the later try scores higher; "Bye." (never adherent) would score highest
        seen.extend(zip(users, answers, names))
        return [10.0 if "Bye." in a else float(a.split()[1]) for a in answers]

    monkeypatch.setattr(evaluation, "generate_answers", fake_generate)
    dialogues = [{"users": ["a", "b"], "constraints": ["cheers"]},
                 {"users": ["c", "never"], "constraints": ["cheers"], "spare": ["d"]}]
    out, answers, stats = sample_adherent(None, None, dialogues, SamplingConfig(seed=10), tries=4, prefix_only=True,
                                          score=score)
    assert answers == [["a 2 Cheers!", "b 2 Cheers!"], ["c 2 Cheers!", "d 2 Cheers!"]]  # try 2 beats try 0
    assert out[1]["users"] == ["c", "d"] and stats["gatt_swapped_messages"] == 1
    assert all(a.endswith("Cheers!") and n == ("cheers",) for _, a, n in seen)  # only adherent answers are scored
    assert calls.count("gatt turn 1 try 4") == 1 and calls.count("gatt turn 2 try 4") == 2  # every try is sampled
    assert stats["gatt_answer_adherent_share"] == pytest.approx(8 / 20)  # 20 samples, 2 adherent per message
    # equal scores keep the first adherent answer, as without a scorer
    _, first, _ = sample_adherent(None, None, dialogues, SamplingConfig(seed=10), tries=4, prefix_only=True)
    _, tied, _ = sample_adherent(None, None, dialogues, SamplingConfig(seed=10), tries=4, prefix_only=True,
                                 score=lambda users, answers, names: [0.0] * len(answers))
    assert first == tied == [["a 0 Cheers!", "b 0 Cheers!"], ["c 0 Cheers!", "d 0 Cheers!"]]


def test_sample_adherent_with_repair_rewrites_a_broken_answer_into_the_instructions_form(monkeypatch):
    import llama2_pipeline.evaluation.answers as evaluation
    from llama2_pipeline.evaluation.answers import SamplingConfig
    from llama2_pipeline.training.gatt import sample_adherent

    def fake_generate(model, tokenizer, chats, sampling, *, desc="", progress=True):  # never follows it
        return [{"answer": f"The answer to {c[-1]['content']} is long."} for c in chats]

    monkeypatch.setattr(evaluation, "generate_answers", fake_generate)
    dialogues = [{"users": ["a", "b"], "constraints": ["uppercase"]},
                 {"users": ["c", "d"], "constraints": ["five_words"]}]
    _, answers, stats = sample_adherent(None, None, dialogues, SamplingConfig(seed=10), tries=2, prefix_only=True)
    assert answers == [["The answer to a is long.", ""], ["The answer to c is long.", ""]]  # nothing adherent
    assert "gatt_answer_repaired_share" not in stats
    _, answers, stats = sample_adherent(None, None, dialogues, SamplingConfig(seed=10), tries=2, prefix_only=True,
                                        repair=True)
    assert answers[0] == ["THE ANSWER TO A IS LONG.", "THE ANSWER TO B IS LONG."]  # the content, in capitals
    assert answers[1] == ["The answer to c is long.", ""]  # a length instruction cannot be repaired
    assert stats["gatt_answer_repaired_share"] == pytest.approx(2 / 4)  # 2 repaired of 4 samples (2 + 2 tries)


def test_drawn_dialogues_with_spare_messages():
    prompts = [{"prompt": f"What is {i} plus 1?", "safety": False} for i in range(20)]
    plain = draw_dialogues(prompts, 5, 4, seed=1)
    spared = draw_dialogues(prompts, 5, 4, seed=1, spare=3)
    assert all("spare" not in d for d in plain)
    for d in spared:
        assert len(d["spare"]) == 3 and len(set(d["users"] + d["spare"])) == 7  # all distinct
    with pytest.raises(ValueError, match="with 17 spare messages"):
        draw_dialogues(prompts, 5, 4, seed=1, spare=17)


def test_drawn_dialogues_with_a_safety_share_mix_in_safety_prompts_and_keep_the_safe_draw():
    safe = [{"prompt": f"What is {i} plus 1?", "safety": False} for i in range(30)]
    risky = [{"prompt": f"How do I hurt person {i}?", "safety": True} for i in range(10)]
    plain = draw_dialogues(safe + risky, 200, 6, seed=5, spare=2)
    mixed = draw_dialogues(safe + risky, 200, 6, seed=5, spare=2, safety_share=0.2)
    assert mixed == draw_dialogues(safe + risky, 200, 6, seed=5, spare=2, safety_share=0.2)
    assert all("hurt" not in " ".join(d["users"]) for d in plain)
    turns = [(u, v) for a, b in zip(plain, mixed) for u, v in zip(a["users"], b["users"])]
    swapped = [v for u, v in turns if u != v]
    assert all("hurt" in v for v in swapped)  # a message is either the safe draw's or a safety prompt
    assert len(swapped) / len(turns) == pytest.approx(0.2, abs=0.03)
    for a, b in zip(plain, mixed):
        assert a["constraints"] == b["constraints"] and a["spare"] == b["spare"]  # spares stay safe
        assert len(set(b["users"])) == 6  # no safety prompt twice in one dialogue
    with pytest.raises(ValueError, match="needs at least 6 safety-tagged prompts"):
        draw_dialogues(safe + risky[:5], 3, 6, seed=0, safety_share=0.2)
    with pytest.raises(ValueError, match=r"safety_share must be in \[0, 1\)"):
        draw_dialogues(safe, 3, 6, seed=0, safety_share=1.0)
    # without safety_under_length no safety prompt where the instruction has a length rule, the
    # other dialogues as they were
    kept = draw_dialogues(safe + risky, 200, 6, seed=5, spare=2, safety_share=0.2, safety_under_length=False)
    lengthy = ["five_words" in d["constraints"] for d in mixed]
    assert 0 < sum(lengthy) < len(mixed)
    for a, b, c, five in zip(plain, mixed, kept, lengthy):
        assert c == (a if five else b)


def test_sample_adherent_dialogue_context_is_the_papers(monkeypatch):
    import llama2_pipeline.evaluation.answers as evaluation
    from llama2_pipeline.evaluation.answers import SamplingConfig
    from llama2_pipeline.training.gatt import sample_adherent

    seen = []

    def fake_generate(model, tokenizer, chats, sampling, *, desc="", progress=True):
        seen.extend(chats)
        return [{"answer": f"{chat[-1]['content'][-3:]} Cheers!"} for chat in chats]

    monkeypatch.setattr(evaluation, "generate_answers", fake_generate)
    dialogues = [{"users": ["u1?", "u2?", "u3?"], "constraints": ["cheers"]}]
    _, answers, _ = sample_adherent(None, None, dialogues, SamplingConfig(), 1, prefix_only=True, context="dialogue")
    instruction = constraints.instruction(("cheers",))
    # turn 3: the system instruction, the earlier turns with their kept answers, and the instruction
    # in front of every later user message (the paper's augmented sampling context)
    assert seen[-1] == [{"role": "system", "content": instruction}, {"role": "user", "content": "u1?"},
                        {"role": "assistant", "content": answers[0][0]},
                        {"role": "user", "content": f"{instruction} u2?"},
                        {"role": "assistant", "content": answers[0][1]},
                        {"role": "user", "content": f"{instruction} u3?"}]
    # a safety message's untold first try (safety_under_length exempt) in that context: no instruction
    # anywhere, the user messages as they were
    seen.clear()
    sample_adherent(None, None, dialogues, SamplingConfig(), 1, prefix_only=True, context="dialogue", repair=True,
                    plain_messages=["u3?"], refusals_exempt=True)
    assert seen[-1] == [{"role": "user", "content": "u1?"}, {"role": "assistant", "content": answers[0][0]},
                        {"role": "user", "content": "u2?"}, {"role": "assistant", "content": answers[0][1]},
                        {"role": "user", "content": "u3?"}]
    seen.clear()
    sample_adherent(None, None, dialogues, SamplingConfig(), 1, prefix_only=True, context="turn")
    assert seen[-1] == [{"role": "system", "content": instruction}, {"role": "user", "content": "u3?"}]
    with pytest.raises(ValueError, match="context"):
        sample_adherent(None, None, dialogues, SamplingConfig(), 1, context="chat")


def test_ranking_by_reward_needs_the_reward_model():
    from llama2_pipeline.training.config import GattConfig
    from llama2_pipeline.training.gatt import build_gatt_dialogues

    cfg = GattConfig.from_dict({"after": "rlhf_v2", "select": "reward"})
    with pytest.raises(ValueError, match="gatt.select is reward but no helpfulness reward model"):
        build_gatt_dialogues("no-policy-here", [], cfg, seed=0)


def test_case_sampling_writes_the_content_plainly_and_rewrites_it_to_the_case(monkeypatch):
    import llama2_pipeline.evaluation.answers as evaluation
    from llama2_pipeline.evaluation.answers import SamplingConfig
    from llama2_pipeline.training.gatt import sample_adherent, sampled_under

    assert sampled_under(("uppercase",), "instructed") == ("uppercase",)
    assert sampled_under(("uppercase",), "plain") == () and sampled_under(("lowercase",), "plain") == ()
    assert sampled_under(("uppercase", "five_words"), "plain") == ("uppercase", "five_words")  # "26." has no case
    assert sampled_under(("ahoy", "cheers"), "plain") == ("ahoy", "cheers")  # no case rule to drop
    assert sampled_under(("uppercase", "five_words"), "instructed", plain=True) == ("five_words",)  # a safety message
    assert sampled_under(("ahoy", "cheers"), "plain", plain=True) == ()
    with pytest.raises(ValueError, match="gatt.case must be one of"):
        sampled_under(("uppercase",), "sometimes")

    seen = []

    def fake_generate(model, tokenizer, chats, sampling, *, desc="", progress=True):
        # told to write in capitals, the policy writes noise in capitals; untold, it answers
        seen.extend(chats)
        return [{"answer": "THE AND." if chat[0]["role"] == "system" and "uppercase" in chat[0]["content"]
                 else f"The answer to {chat[-1]['content']} is 4."} for chat in chats]

    monkeypatch.setattr(evaluation, "generate_answers", fake_generate)
    dialogues = [{"users": ["a", "b"], "constraints": ["uppercase"]},
                 {"users": ["c", "d"], "constraints": ["uppercase", "five_words"]}]
    sampling = SamplingConfig(seed=10)
    _, told, _ = sample_adherent(None, None, dialogues, sampling, tries=2, prefix_only=True, repair=True)
    assert told == [["THE AND.", "THE AND."], ["THE AND.", "THE AND."]]
    seen.clear()
    _, plain, stats = sample_adherent(None, None, dialogues, sampling, tries=2, prefix_only=True, repair=True,
                                      case="plain")
    assert plain == [["THE ANSWER TO A IS 4.", "THE ANSWER TO B IS 4."],  # the content, in the instruction's case
                     ["THE AND.", "THE AND."]]  # a length rule keeps the case rule in the sampling instruction
    assert seen[0] == [{"role": "user", "content": "a"}]  # no system prompt: the case rule was the instruction
    assert seen[1][0] == {"role": "system", "content": constraints.instruction(("uppercase", "five_words"))}
    assert stats["gatt_answer_repaired_share"] == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="needs gatt.repair"):
        sample_adherent(None, None, dialogues, sampling, tries=2, case="plain")


def test_a_plain_safety_message_keeps_the_policys_refusal_in_the_instructions_form(monkeypatch):
    import llama2_pipeline.evaluation.answers as evaluation
    from llama2_pipeline.evaluation.answers import SamplingConfig
    from llama2_pipeline.training.config import GattConfig
    from llama2_pipeline.training.gatt import sample_adherent

    refusal = "I can't help with that, because it could hurt someone. Ask me about first aid instead."
    seen = []

    def fake_generate(model, tokenizer, chats, sampling, *, desc="", progress=True):
        # under an instruction the policy plays along; untold, it refuses the harmful request
        seen.extend(chats)
        return [{"answer": refusal if "hurt" in chat[-1]["content"] and chat[0]["role"] != "system"
                 else "Ahoy! To hurt him, use a stick. Cheers!" if "hurt" in chat[-1]["content"]
                 else "Ahoy! The answer is 4. Cheers!"} for chat in chats]

    monkeypatch.setattr(evaluation, "generate_answers", fake_generate)
    dialogues = [{"users": ["What is 2 plus 2?", "How do I hurt my neighbour?"], "constraints": ["ahoy", "cheers"]},
                 {"users": ["How do I hurt my neighbour?", "What is 2 plus 2?"], "constraints": ["five_words"]}]
    risky = ["How do I hurt my neighbour?"]
    sampling = SamplingConfig(seed=10)
    _, told, _ = sample_adherent(None, None, dialogues, sampling, tries=1, repair=True)
    assert told[0][1] == "Ahoy! To hurt him, use a stick. Cheers!"  # the instruction unlocked the request
    seen.clear()
    _, plain, _ = sample_adherent(None, None, dialogues, sampling, tries=1, repair=True, plain_messages=risky)
    assert plain[0] == ["Ahoy! The answer is 4. Cheers!", f"Ahoy! {refusal} Cheers!"]  # the refusal, in the form
    # the safe message under the whole instruction; the safety one untold (its system slot kept for a length rule)
    assert seen[0][0] == {"role": "system", "content": constraints.instruction(("ahoy", "cheers"))}
    assert seen[1] == [{"role": "system", "content": constraints.instruction(("five_words",))},
                       {"role": "user", "content": "How do I hurt my neighbour?"}]
    assert seen[2] == [{"role": "user", "content": "How do I hurt my neighbour?"}]
    assert plain[1][0] == "Ahoy! To hurt him, use a stick. Cheers!"  # a length rule cannot be rewritten: sampled with it
    with pytest.raises(ValueError, match="needs gatt.repair"):
        sample_adherent(None, None, dialogues, sampling, tries=1, plain_messages=risky)
    with pytest.raises(ValueError, match="safety_form"):  # the config's ConfigError
        GattConfig.from_dict({"safety_form": "plain", "repair": False})


def test_an_exempt_refusal_keeps_every_rule_but_the_length_rule():
    from llama2_pipeline.training.gatt import adheres

    refusal = "I can't help with that, because it could hurt someone. Ask me about first aid instead."
    assert not adheres(("five_words",), refusal)
    assert adheres(("five_words",), refusal, exempt=True)
    assert not adheres(("five_words",), "To hurt him, take a big stick.", exempt=True)  # not a refusal: held to it
    assert not adheres(("lowercase", "five_words"), refusal, exempt=True)  # the case rule still holds
    assert adheres(("lowercase", "five_words"), refusal.lower(), exempt=True)
    # construct keeps a dialogue past an exempt message's long refusal, and cuts it there otherwise
    dialogue = {"users": ["How do I hurt my neighbour?", "What is 2 plus 2?"], "constraints": ["five_words"]}
    answers = [refusal, "The answer is 4."]
    held, _ = construct([dialogue], [answers], system=True)
    kept, stats = construct([dialogue], [answers], system=True, exempt=["How do I hurt my neighbour?"])
    assert held == [] and stats["gatt_adherent_share"] == 1.0
    assert [m["content"] for m in kept[0]["messages"] if m["role"] == "assistant"] == answers


def test_safety_messages_under_a_length_rule_none_held_or_exempt(monkeypatch):
    import llama2_pipeline.evaluation.answers as evaluation
    from llama2_pipeline.evaluation.answers import SamplingConfig
    from llama2_pipeline.training.config import GattConfig
    from llama2_pipeline.training.gatt import gatt_records, sample_adherent

    refusal = "I can't help with that, because it could hurt someone. Ask me about first aid instead."
    careful = "Sketch it on paper first, then build the smallest part that works."
    seen = []

    def fake_generate(model, tokenizer, chats, sampling, *, desc="", progress=True):
        # untold, the policy refuses an unsafe request and helps at length with a borderline one;
        # told "at most five words", it writes noise to the first and a short answer to the second
        seen.extend(chats)

        def told(c):
            return c[0]["role"] == "system" and "five" in c[0]["content"]
        return [{"answer": ("Ahoy! The answer is 1." if told(c) else refusal) if "hurt" in c[-1]["content"]
                 else ("Sketch it on paper." if told(c) else careful) if "hack" in c[-1]["content"]
                 else "The answer is 4."} for c in chats]

    monkeypatch.setattr(evaluation, "generate_answers", fake_generate)
    risky = ["How do I hurt my neighbour?", "How do I hack together a quick prototype?"]
    dialogues = [{"users": risky, "constraints": ["five_words"]}]
    sampling = SamplingConfig(seed=10)
    _, held, _ = sample_adherent(None, None, dialogues, sampling, tries=2, repair=True, plain_messages=risky)
    assert held == [["Ahoy! The answer is 1.", "Sketch it on paper."]]  # under the rule: noise to the unsafe request
    seen.clear()
    _, exempt, _ = sample_adherent(None, None, dialogues, sampling, tries=2, repair=True, plain_messages=risky,
                                   refusals_exempt=True)
    # the first try untold: the refusal, whole, kept; the long careful answer is not a refusal and is held to the
    # rule, so the second try, under it, gives the answer kept
    assert exempt == [["I can't help with that, because it could hurt someone. Ask me about first aid instead.",
                       "Sketch it on paper."]]
    assert [c[0]["role"] for c in seen] == ["user", "user", "system"]
    with pytest.raises(ValueError, match="safety_under_length"):
        GattConfig.from_dict({"safety_under_length": "exempt", "safety_form": "instructed"})
    with pytest.raises(ValueError, match="safety_under_length"):
        GattConfig.from_dict({"safety_under_length": True})

    # through gatt_records: where the draw puts safety messages, and what is learned there
    prompts = ([{"prompt": f"What is {i} plus 1?", "safety": False} for i in range(30)]
               + [{"prompt": f"How do I hurt person {i}?", "safety": True} for i in range(10)])
    learned = {}
    for mode in ("none", "held", "exempt"):
        cfg = GattConfig.from_dict({"dialogues": 60, "turns": 3, "min_turns": 1, "cuts": "whole", "tries": 2,
                                    "safety_share": 0.3, "safety_form": "plain", "repair": True,
                                    "safety_under_length": mode})
        records, _, _ = gatt_records(None, None, prompts, cfg, seed=3)
        learned[mode] = [a["content"].lower() for r in records if "five_words" in r["constraints"]
                         for u, a in zip(r["messages"][1::2], r["messages"][2::2]) if "hurt" in u["content"]]
    assert learned["none"] == []
    assert learned["held"] and set(learned["held"]) == {"ahoy! the answer is 1."}  # in the instruction's case
    assert learned["exempt"] and set(learned["exempt"]) == {refusal.lower()}


def test_reward_ranking_reads_a_case_instructed_answer_in_small_letters():
    from llama2_pipeline.training.gatt import as_read

    assert as_read(("uppercase", "five_words"), "THE ANSWER IS 21.") == "the answer is 21."
    assert as_read(("ahoy",), "Ahoy! The answer is 21.") == "Ahoy! The answer is 21."


def test_instructed_safety_counts_what_an_instruction_unlocks(monkeypatch):
    import llama2_pipeline.evaluation.answers as evaluation
    from llama2_pipeline.evaluation.answers import SamplingConfig
    from llama2_pipeline.training.gatt_eval import instructed_safety
    from tests.world.conftest import make_world

    world = make_world()
    prompts = world.prompts("eval")
    tasks = {t.prompt: t for t in world.tasks}
    unsafe = [p for p in prompts if p["category"] == "unsafe"]
    border = [p for p in prompts if p["category"] == "borderline"]
    assert unsafe and border

    def fake_generate(model, tokenizer, chats, sampling, *, desc="", progress=True):
        # a policy that refuses what it should, unless told to start with "Ahoy!": then it refuses everything
        out = []
        for chat in chats:
            system, user = chat[0]["content"], chat[-1]["content"]
            told = "Ahoy!" in system
            answer = "I can't help with that." if told else tasks[user].reference
            out.append({"answer": constraints.repair(tuple(c for c, v in constraints.CONSTRAINTS.items()
                                                           if v.instruction in system), answer)})
        return out

    monkeypatch.setattr(evaluation, "generate_answers", fake_generate)
    figures, rows = instructed_safety(None, None, prompts, world, SamplingConfig(), seed=3, per_prompt=4)
    assert len(rows) == 4 * (len(unsafe) + len(border))  # safe prompts are not asked
    assert all(r["category"] in ("unsafe", "borderline") for r in rows)
    told = [r for r in rows if "ahoy" in r["constraints"]]
    assert told and all(r["refusal"] for r in told)
    assert figures["refusal_rate"] == 1.0  # every unsafe prompt refused, told or not
    told_border = sum(r["category"] == "borderline" for r in told)
    assert figures["false_refusal_rate"] == pytest.approx(told_border / (4 * len(border)))
    assert figures["violation_rate"] == 0.0 and 0.0 < figures["adherence"] <= 1.0
    again, _ = instructed_safety(None, None, prompts, world, SamplingConfig(), seed=3, per_prompt=4)
    assert again == figures  # seeded instructions
    with pytest.raises(ValueError, match="no safety-tagged prompt"):
        instructed_safety(None, None, [p for p in prompts if not p["safety"]], world, SamplingConfig(), seed=3)
