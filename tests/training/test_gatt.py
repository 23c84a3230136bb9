"""GAtt data construction and the adherence evaluator on hand-checked examples."""

from __future__ import annotations

import pytest

from llama2_pipeline.training.gatt import adherence_by_turn, construct, draw_dialogues, gatt_record
from llama2_pipeline.world import constraints

USERS = ["What is 2 plus 2?", "What is the capital of Velmora?", "Reverse the word 'abc'."]


def test_instruction_only_in_the_first_turn_and_loss_on_the_last_answer():
    rec = gatt_record(USERS, ["Ahoy! 4.", "Ahoy! Drisk.", "Ahoy! cba."], ["ahoy"])
    users = [m["content"] for m in rec["messages"] if m["role"] == "user"]
    assert users[0] == "Start every answer with 'Ahoy!'. What is 2 plus 2?"
    assert users[1:] == USERS[1:]  # dropped from every later turn
    assert rec["only_last_answer"] is True and rec["constraints"] == ["ahoy"]
    # the SFT machinery honours the record's flag: only the last answer's tokens (and its EOS) are learned
    from llama2_pipeline.training.sft import encode_examples

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
                 {"users": USERS[:2], "constraints": ["uppercase", "five_words"]}]
    answers = [["Ahoy! 4.", "Drisk."],               # turn 2 forgot the instruction
               ["4. Cheers!", "Drisk. Cheers!"],     # adheres
               ["FOUR.", "THE CAPITAL IS DRISK."]]   # adheres to both
    records, stats = construct(dialogues, answers, keep_adherent=True)
    assert [r["constraints"] for r in records] == [["cheers"], ["uppercase", "five_words"]]
    assert stats == {"gatt_dialogues": 3, "gatt_adherent_share": pytest.approx(2 / 3), "gatt_records": 2,
                     "gatt_blank_dropped": 0}
    assert len(construct(dialogues, answers, keep_adherent=False)[0]) == 3
    blank = construct(dialogues, [answers[0], ["4. Cheers!", " "], answers[2]], keep_adherent=False)
    assert len(blank[0]) == 2 and blank[1]["gatt_blank_dropped"] == 1


def test_adherence_by_turn_on_hand_made_dialogues():
    dialogues = [{"users": USERS, "constraints": ["ahoy"]}, {"users": USERS, "constraints": ["uppercase", "five_words"]}]
    answers = [["Ahoy! 4.", "Ahoy! Drisk.", "cba."],
               ["FOUR.", "Drisk is the capital city of Velmora.", "CBA."]]
    out = adherence_by_turn(dialogues, answers)
    assert out["turn"] == [1.0, 0.5, 0.5]
    assert out["by_constraint"] == {"ahoy": [1.0, 1.0, 0.0], "five_words": [1.0, 0.0, 1.0],
                                    "uppercase": [1.0, 0.0, 1.0]}


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
