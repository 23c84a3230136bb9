"""Supervised fine-tuning: answer masks, packing without cross-dialogue attention, resumable
batches, a short run that lowers the answer loss, exact resume, and bad dialogues named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from llama2_pipeline.model import Llama, ModelConfig, export_hf, load_hf
from llama2_pipeline.tokenizer import ChatFormatError, Tokenizer, encode_chat, save_hf_tokenizer, train_tokenizer
from llama2_pipeline.training import read_metrics
from llama2_pipeline.training.config import SFTConfig
from llama2_pipeline.training.packing import (IGNORE, PackedBatches, _first_fit, encode_examples, load_examples,
                                              pack_examples, save_examples)
from llama2_pipeline.training.sft import finetune, plan_steps
from llama2_pipeline.training.config import TrainConfig

SYSTEM = "You are a terse assistant."
DIALOGUE = {"id": "hand-1", "messages": [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What is the capital of Varnholm?"},
    {"role": "assistant", "content": "The capital of Varnholm is Quillsby."},
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "2 plus 3 is 5."},
]}
SHORT = {"messages": [{"role": "user", "content": "Reverse the word 'cat'."},
                      {"role": "assistant", "content": "The word reversed is 'tac'."}]}


# --------------------------------------------------------------------------------------------
# Shared inputs: world-style dialogues, a tokenizer trained on them, a smoke model to start from
# (helpers also used by tests/test_sft_stage.py)
# --------------------------------------------------------------------------------------------


def smoke_world():
    """The simulated world of the smoke profile."""
    from llama2_pipeline.recipe import load

    recipe = load(Path(__file__).resolve().parents[2] / "params.yaml", profile="smoke")
    return recipe.world.world(recipe.seed)


def make_chat_tokenizer(folder: Path, dialogues: list[dict], prompts: list[dict], vocab_size: int = 512) -> Path:
    """A sentencepiece tokenizer trained on the dialogues' and prompts' text (~1 s)."""
    corpus = folder / "corpus"
    corpus.mkdir(parents=True)
    texts = ["\n".join(m["content"] for m in d["messages"]) for d in dialogues] + [p["prompt"] for p in prompts]
    texts.append("[INST] <<SYS>> <</SYS>> [/INST]")
    pd.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts, "source": "sft"}).to_parquet(
        corpus / "part-00000.parquet", index=False)
    train_tokenizer(corpus, folder / "tokenizer", vocab_size=vocab_size, num_threads=1, progress=False)
    return folder / "tokenizer"


def make_init_model(folder: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A randomly initialised smoke-preset model in HF format with its tokenizer files."""
    tok = Tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    model = Llama(ModelConfig.from_preset("smoke", vocab_size=tok.vocab_size, bos_id=tok.bos_id, eos_id=tok.eos_id,
                                          pad_id=tok.pad_id))
    export_hf(model, folder, tokenizer_model_path=tokenizer_dir / "tokenizer.model")
    save_hf_tokenizer(tokenizer_dir, folder)
    return folder


@pytest.fixture(scope="module")
def world_dialogues() -> list[dict]:
    return smoke_world().sft_dialogues()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, world_dialogues) -> Path:
    w = smoke_world()
    return make_chat_tokenizer(tmp_path_factory.mktemp("sft_tok"), world_dialogues, w.prompts("train"))


@pytest.fixture(scope="module")
def tok(tok_dir) -> Tokenizer:
    return Tokenizer(tok_dir)


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory, tok_dir) -> Path:
    return make_init_model(tmp_path_factory.mktemp("sft_init") / "init", tok_dir)


# --------------------------------------------------------------------------------------------
# Masks and packing
# --------------------------------------------------------------------------------------------


def trained_texts(tok, labels) -> list[str]:
    """The target tokens that carry loss, split at EOS and decoded: what the model learns to say."""
    out, cur = [], []
    for t in labels[labels != IGNORE].tolist():
        if t == tok.eos_id:
            out.append(tok.decode(cur).strip())
            cur = []
        else:
            cur.append(t)
    assert cur == []  # every trained answer ends with its EOS
    return out


def test_answer_mask_has_no_loss_on_prompts(tok):
    rows = pack_examples(encode_examples(tok, [DIALOGUE]), 128, pack=False, pad_id=tok.pad_id)
    x, y = rows.input_ids[0], rows.labels[0]
    # inputs are the dialogue's ids, targets the same ids shifted by one
    enc = encode_chat(tok, DIALOGUE["messages"])
    n = len(enc.ids) - 1
    assert x[:n].tolist() == enc.ids[:-1]
    kept = y[:n] != IGNORE
    assert (y[:n][kept] == np.array(enc.ids[1:])[kept]).all()
    assert (x[n:] == tok.pad_id).all() and (y[n:] == IGNORE).all()
    # loss exactly on the two answers and their EOS; not on the system prompt, questions, [INST]
    assert trained_texts(tok, y) == ["The capital of Varnholm is Quillsby.", "2 plus 3 is 5."]
    untrained = tok.decode(np.array(enc.ids[1:])[~kept].tolist())  # every token never learnt as a target
    for part in (SYSTEM, "What is the capital of Varnholm?", "What is 2 plus 3?", "[INST]", "[/INST]", "<<SYS>>"):
        assert part in untrained
    # GAtt-style: only the last answer, by flag or per record
    for ex in (encode_examples(tok, [DIALOGUE], only_last_answer=True),
               encode_examples(tok, [{**DIALOGUE, "only_last_answer": True}])):
        r = pack_examples(ex, 128, pack=False)
        assert trained_texts(tok, r.labels[0]) == ["2 plus 3 is 5."]
    # already-encoded examples pass through unchanged
    assert encode_examples(None, [enc, {"ids": enc.ids, "mask": enc.mask}]) == [(enc.ids, enc.mask)] * 2


def test_packed_row_computes_each_dialogue_alone(tok, world_dialogues):
    dialogues = [DIALOGUE, SHORT] + world_dialogues[:10]
    examples = encode_examples(tok, dialogues)
    rows = pack_examples(examples, 128, seed=3, pad_id=tok.pad_id)
    assert rows.stats["rows"] < len(dialogues) and rows.stats["used"] == len(dialogues)
    # every dialogue is placed exactly once, in one row, as a contiguous document
    seen = []
    for r in range(len(rows)):
        docs = rows.doc_ids[r]
        for d in np.unique(docs[docs >= 0]):
            seen.append(tuple(rows.input_ids[r][docs == d].tolist()))
        assert (rows.input_ids[r][docs < 0] == tok.pad_id).all()
    assert sorted(seen) == sorted(tuple(ids[:129][:-1]) for ids, _ in examples)  # (long ones truncated)
    # block-diagonal attention: a packed row's logits equal each dialogue run on its own
    torch.manual_seed(0)
    model = Llama(ModelConfig.from_preset("smoke", vocab_size=tok.vocab_size)).eval()
    batch = rows.batch(range(len(rows)))
    with torch.no_grad():
        packed = model(batch["input_ids"], doc_ids=batch["doc_ids"])
        for r in range(len(rows)):
            for d in batch["doc_ids"][r].unique().tolist():
                if d < 0:
                    continue
                cols = (batch["doc_ids"][r] == d).nonzero().flatten()
                alone = model(batch["input_ids"][r:r + 1, cols])
                torch.testing.assert_close(packed[r:r + 1, cols], alone, atol=2e-5, rtol=1e-5)
    # the same seed packs the same rows; another seed another order
    again = pack_examples(examples, 128, seed=3, pad_id=tok.pad_id)
    assert (again.input_ids == rows.input_ids).all() and (again.doc_ids == rows.doc_ids).all()
    assert not np.array_equal(pack_examples(examples, 128, seed=4).input_ids, rows.input_ids)
    # without packing: one dialogue per row, plain causal attention (no doc_ids)
    single = pack_examples(examples, 128, pack=False)
    assert len(single) == len(dialogues) and single.doc_ids is None


def test_first_fit_and_overlong_dialogues(tok):
    assert _first_fit([5, 3, 4, 2, 6], 8) == [[0, 1], [2, 3], [4]]
    examples = encode_examples(tok, [DIALOGUE, SHORT])
    long_len = len(examples[0][0])
    seq = long_len - 5  # DIALOGUE is too long, SHORT fits
    cut = pack_examples(examples, seq, overlong="truncate", shuffle=False)
    assert cut.stats["truncated"] == 1 and cut.stats["used"] == 2 and cut.stats["dropped_overlong"] == 0
    ids, mask = examples[0]
    assert cut.input_ids[0].tolist() == ids[:seq]  # the start of the dialogue fills the row
    kept = cut.labels[0] != IGNORE
    assert cut.labels[0][kept].tolist() == [t for t, m in zip(ids[1:seq + 1], mask[1:seq + 1]) if m]
    dropped = pack_examples(examples, seq, overlong="drop")
    assert dropped.stats["dropped_overlong"] == 1 and dropped.stats["used"] == 1
    # cut before the first answer: nothing left to learn, so the dialogue is dropped too
    first_answer = examples[0][1].index(1)
    none_left = pack_examples(examples[:1], first_answer - 1, overlong="truncate")
    assert none_left.stats["used"] == 0 and none_left.stats["dropped_overlong"] == 1
    with pytest.raises(ValueError, match="overlong must be one of"):
        pack_examples(examples, 64, overlong="wrap")


def test_packed_batches_epochs_and_exact_resume(tok, world_dialogues):
    rows = pack_examples(encode_examples(tok, world_dialogues[:60]), 64, seed=0)
    R = len(rows)
    a = PackedBatches(rows, 2, grad_accum=3, seed=5)
    # epoch e visits every row once, in the order of a permutation seeded by (seed, e); the
    # stream runs on into the next epoch
    orders = [np.random.default_rng([5, 0x5F7, e]).permutation(R) for e in range(2)]
    assert not np.array_equal(orders[0], orders[1])
    stream = np.concatenate(orders)
    for k in range(-(-R // 2)):
        got = next(a)
        assert torch.equal(got["input_ids"], rows.batch(stream[2 * k:2 * k + 2])["input_ids"])
    assert a.epoch == 1 and set(got) == {"input_ids", "labels", "doc_ids"}
    state = json.loads(json.dumps(a.state_dict()))  # plain data
    want = [next(a) for _ in range(7)]
    b = PackedBatches(rows, 2, grad_accum=3, seed=5)
    b.load_state_dict(state)
    for w in want:
        got = next(b)
        assert all(torch.equal(w[k], got[k]) for k in w)
    # 1 rank x grad_accum 2 sees the rows of 2 ranks x grad_accum 1, in rank order
    one = PackedBatches(rows, 2, grad_accum=2, seed=5)
    two = [PackedBatches(rows, 2, rank=r, num_ranks=2, seed=5) for r in range(2)]
    for _ in range(5):
        for r in range(2):
            assert torch.equal(next(one)["input_ids"], next(two[r])["input_ids"])
    cfg = TrainConfig(micro_batch=2, grad_accum=3, seq_len=64)
    assert plan_steps(R, cfg, 2) == -(-2 * R // 6) and plan_steps(R, cfg, None) == cfg.max_steps


def test_bad_dialogues_name_the_record(tok, init_dir, tmp_path):
    assistant_first = {"messages": [{"role": "assistant", "content": "Hello."},
                                    {"role": "user", "content": "Hi?"}]}
    with pytest.raises(ChatFormatError, match=r"dialogue 3, message 1: expected role 'user' first, got 'assistant'"):
        encode_examples(tok, [SHORT, DIALOGUE, assistant_first])
    with pytest.raises(ChatFormatError, match=r"dialogue 'bad-7', message 1: expected role 'user' first"):
        finetune(init_dir, tok, [SHORT, {**assistant_first, "id": "bad-7"}], {"train": {"seq_len": 64}}, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before any work
    with pytest.raises(ChatFormatError, match=r"dialogue 2: expected an object with a 'messages' list"):
        encode_examples(tok, [SHORT, {"text": "hello"}])
    with pytest.raises(ChatFormatError, match=r"dialogue 1: token ids outside the model's vocabulary"):
        encode_examples(None, [([1, 9999], [0, 1])], vocab_size=512)
    with pytest.raises(ValueError, match="unknown key 'epoch'"):
        SFTConfig.from_dict({"epoch": 2})
    with pytest.raises(ValueError, match="seq_len 512 exceeds"):
        finetune(init_dir, tok, [SHORT], {"train": {"seq_len": 512}}, tmp_path / "run")


def test_examples_file_round_trip(tok, tmp_path):
    examples = encode_examples(tok, [DIALOGUE, SHORT])
    save_examples(tmp_path / "ex.npz", examples)
    assert load_examples(tmp_path / "ex.npz") == examples


# --------------------------------------------------------------------------------------------
# Fine-tuning end to end (smoke preset, a few seconds)
# --------------------------------------------------------------------------------------------

TRAIN = dict(micro_batch=8, seq_len=128, lr=3e-3, warmup_steps=3, eval_every=10, eval_batches=2, checkpoint_every=10,
             keep_checkpoints=2, log_every=5, seed=7, num_threads=1)
OPTIONS = dict(epochs=2, val_fraction=0.1)
CFG = {**OPTIONS, "train": TRAIN}


@pytest.fixture(scope="module")
def reference(init_dir, tok, world_dialogues, tmp_path_factory) -> tuple[Path, dict, list]:
    run_dir = tmp_path_factory.mktemp("sft") / "run"
    logged = []
    metrics = finetune(init_dir, tok, world_dialogues, CFG, run_dir, progress=False,
                       log_fn=lambda m, step: logged.append((step, m)))
    return run_dir, metrics, logged


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def test_finetune_lowers_answer_loss_and_exports(reference, world_dialogues, tok):
    run_dir, m, logged = reference
    assert m["sft_val_loss"] < m["sft_val_loss_initial"] - 1.0
    assert m["sft_dialogues"] + m["sft_dialogues_val"] == len(world_dialogues) == 200
    assert m["sft_dialogues_val"] == 20 and m["sft_dropped"] == 0
    rows = m["sft_rows"]
    assert m["sft_steps"] == -(-2 * rows // 8) and m["sft_epochs"] == pytest.approx(2.0, abs=8 / rows)
    assert 0.5 < m["sft_packing_efficiency"] <= 1.0
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if "val_loss" in r][0] == 0
    assert [s for s, _ in logged] == [r["step"] for r in records]  # streamed to log_fn as it trained
    assert all(isinstance(v, (int, float)) for v in m.values())
    # the export: HF files with the tokenizer, weights equal to the trained ones
    hf = run_dir / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in hf.iterdir()}
    from llama2_pipeline.training.runner import weights_digest

    assert weights_digest(load_hf(hf).state_dict()) == _result(run_dir)["weights_sha256"]
    assert (run_dir / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"


class _Crash(RuntimeError):
    pass


def test_interrupted_run_resumes_to_identical_weights(reference, init_dir, tok, world_dialogues, tmp_path):
    ref_dir, ref_metrics, _ = reference

    def crash_after_checkpoint(metrics, step):
        if step > 10 and "train_loss" in metrics:  # the checkpoint of step 10 is on disk
            raise _Crash(step)

    with pytest.raises(_Crash):
        finetune(init_dir, tok, world_dialogues, CFG, tmp_path / "run", progress=False,
                 log_fn=crash_after_checkpoint)
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_00000010"
    metrics = finetune(init_dir, tok, world_dialogues, CFG, tmp_path / "run", progress=False)
    result = _result(tmp_path / "run")
    assert result["resumed_from"] == 10
    assert result["weights_sha256"] == _result(ref_dir)["weights_sha256"]
    assert metrics["sft_val_loss"] == ref_metrics["sft_val_loss"]
    # other data in the same run folder is refused instead of silently resumed
    from llama2_pipeline.training import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match="trained on other SFT data"):
        finetune(init_dir, tok, world_dialogues[:50], CFG, tmp_path / "run", progress=False)


def test_unpacked_training_uses_one_dialogue_per_row(init_dir, tok, world_dialogues, tmp_path):
    m = finetune(init_dir, tok, world_dialogues[:40],
                 {"pack": False, "epochs": 1, "val_fraction": 0.0,
                  "train": {**TRAIN, "checkpoint_every": -1, "eval_every": 0}}, tmp_path / "run", progress=False)
    assert m["sft_rows"] == m["sft_dialogues"] == 40 and m["sft_steps"] == 5
    assert "sft_val_loss" not in m and m["sft_packing_efficiency"] < 0.7
    assert np.isfinite(m["sft_train_loss"])


@pytest.mark.multirank
@pytest.mark.slow
def test_two_ranks_match_one_rank_with_accumulation(init_dir, tok, world_dialogues, tmp_path):
    """The launch path (run_config.json + examples.npz + the CLI on 2 torchrun ranks, ZeRO-2)
    follows the loss curve of 1 rank accumulating the same global batch."""
    common = {**TRAIN, "micro_batch": 4, "max_steps": 4, "log_every": 1, "eval_every": 2, "checkpoint_every": 2,
              "zero_stage": 2}
    options = {"epochs": None, "val_fraction": 0.1}
    forwarded = []
    two = finetune(init_dir, tok, world_dialogues[:80], {**options, "train": {**common, "world_size": 2}},
                   tmp_path / "two", progress=False, log_fn=lambda m, step: forwarded.append(step))
    one = finetune(init_dir, tok, world_dialogues[:80], {**options, "train": {**common, "grad_accum": 2}},
                   tmp_path / "one", progress=False)
    curve = lambda d: [(r["step"], r.get("train_loss", r.get("val_loss"))) for r in read_metrics(d / "metrics.jsonl")]
    assert [s for s, _ in curve(tmp_path / "two")] == [s for s, _ in curve(tmp_path / "one")] == [0, 1, 2, 2, 3, 4, 4]
    assert max(abs(a - b) for (_, a), (_, b) in zip(curve(tmp_path / "two"), curve(tmp_path / "one"))) < 1e-4
    assert two["sft_val_loss"] == pytest.approx(one["sft_val_loss"], abs=1e-4)
    assert sorted(set(forwarded)) == [0, 1, 2, 3, 4]  # streamed from rank 0's metrics.jsonl
    assert (tmp_path / "two" / "examples.npz").exists() and (tmp_path / "two" / "hf" / "tokenizer.json").exists()
