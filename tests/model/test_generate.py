import pytest
import torch

from llama2_pipeline.model import generate
from llama2_pipeline.model.generation import _sample

from .conftest import make_model


def greedy_without_cache(model, prompt, n):
    """Reference decoding: re-run the full forward on the whole sequence for every new token."""
    seq, logprobs = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq]))[0, -1]
            tok = int(logits.argmax())
            logprobs.append(float(torch.log_softmax(logits, -1)[tok]))
            seq.append(tok)
    return seq[len(prompt):], logprobs


def test_kv_cache_greedy_equals_no_cache_decoding(model64):
    prompt = torch.randint(3, 512, (6,)).tolist()
    out = generate(model64, [prompt], 24, temperature=0, eos_id=[])
    tokens, logprobs = greedy_without_cache(model64, prompt, 24)
    assert out.tokens == [tokens] and out.finished == [False]
    assert out.logprobs[0] == pytest.approx(logprobs, abs=1e-9)


def test_left_padded_batch_equals_each_prompt_alone(model64):
    prompts = [torch.randint(3, 512, (n,)).tolist() for n in (3, 14, 9, 1)]
    batch = generate(model64, prompts, 16, temperature=0, eos_id=[])
    for i, p in enumerate(prompts):
        alone = generate(model64, [p], 16, temperature=0, eos_id=[])
        assert batch.tokens[i] == alone.tokens[0], i
        assert batch.logprobs[i] == pytest.approx(alone.logprobs[0], abs=1e-9)


def test_stops_at_eos_per_sequence(model64):
    prompts = [torch.randint(3, 512, (n,)).tolist() for n in (5, 8)]
    free = generate(model64, prompts, 20, temperature=0, eos_id=[])
    eos = free.tokens[0][3]  # row 0 will stop at its 4th token at the latest
    out = generate(model64, prompts, 20, temperature=0, eos_id=eos)
    for row_free, row, done, lp in zip(free.tokens, out.tokens, out.finished, out.logprobs):
        cut = row_free.index(eos) + 1 if eos in row_free else len(row_free)
        assert row == row_free[:cut] and len(lp) == len(row)
        assert done == (eos in row_free)
    assert out.finished[0] and out.tokens[0][-1] == eos and len(out.tokens[0]) <= 4
    # the config's eos_id is the default stop token
    model64.config.eos_id, saved = eos, model64.config.eos_id
    try:
        assert generate(model64, prompts, 20, temperature=0).tokens == out.tokens
    finally:
        model64.config.eos_id = saved


def test_seeded_top_p_sampling_is_deterministic(model):
    prompts = [[1, 5, 9], [1, 7]]

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return generate(model, prompts, 12, temperature=0.9, top_p=0.8, generator=g, eos_id=[])

    a, b, c = run(123), run(123), run(7)
    assert a.tokens == b.tokens and a.logprobs == b.logprobs
    assert a.tokens != c.tokens


def test_logprobs_are_temperature_one_model_logprobs(model64):
    prompt = [1, 2, 3, 4]
    g = torch.Generator().manual_seed(0)
    out = generate(model64, [prompt], 10, temperature=1.7, top_p=0.9, generator=g, eos_id=[])
    seq = torch.tensor([prompt + out.tokens[0]])
    with torch.no_grad():
        logp = torch.log_softmax(model64(seq)[0, len(prompt) - 1:-1], -1)
    expected = logp.gather(-1, torch.tensor(out.tokens[0])[:, None]).squeeze(1)
    assert out.logprobs[0] == pytest.approx(expected.tolist(), abs=1e-9)


def test_sampler_distribution_and_nucleus():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -30.0]]).repeat(20000, 1)
    probs = torch.softmax(logits[0], -1)
    g = torch.Generator().manual_seed(0)
    full = torch.bincount(_sample(logits, 1.0, 1.0, g), minlength=6) / 20000
    assert torch.allclose(full, probs, atol=0.015)
    # top_p 0.8 keeps the 3 most likely tokens (mass before the 4th is 0.896 >= 0.8), renormalised
    nucleus = torch.bincount(_sample(logits, 1.0, 0.8, g), minlength=6) / 20000
    assert nucleus[3:].sum() == 0
    assert torch.allclose(nucleus[:3], probs[:3] / probs[:3].sum(), atol=0.015)
    assert _sample(logits[:5], 1.0, 0.3, g).tolist() == [0] * 5  # only the top token
    assert _sample(logits[:5], 0.0, 1.0, g).tolist() == [0] * 5  # greedy


def test_tensor_prompts_max_new_tokens_zero_and_mode_restored(model):
    model.train()
    try:
        out = generate(model, torch.tensor([[1, 2, 3], [4, 5, 6]]), 4, temperature=0, eos_id=[])
        assert [len(t) for t in out.tokens] == [4, 4] and model.training
        assert generate(model, [[1]], 0).tokens == [[]]
    finally:
        model.eval()


@pytest.mark.parametrize("prompts,kwargs,match", [
    ([[1] * 250], dict(max_new_tokens=10), "max_seq_len"),
    ([[1], []], dict(max_new_tokens=1), ">= 1 token"),
    ([[1]], dict(max_new_tokens=1, top_p=0.0), "top_p"),
    ([[1], [3, 512]], dict(max_new_tokens=1), "prompt 1 has token id 512"),
    ([[1]], dict(max_new_tokens=1, temperature=-1.0), "temperature"),
])
def test_bad_generation_arguments(model, prompts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(model, prompts, **kwargs)


def test_nucleus_keeps_ties_on_both_paths():
    # probabilities .3 .3 .2 .2: with top_p 0.5 the nucleus is {0, 1}; with 0.7 all four (tie kept)
    logits = torch.log(torch.tensor([[0.3, 0.3, 0.2, 0.2, 1e-9]])).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    for top_p, support in ((0.5, {0, 1}), (0.7, {0, 1, 2, 3})):
        counts = torch.bincount(_sample(logits, 1.0, top_p, g), minlength=5)
        assert {i for i in range(5) if counts[i] > 0} == support


@pytest.mark.parametrize("check_every", [3, 7, 64])
def test_finished_check_cadence_changes_no_output(model64, check_every):
    """The GPU's finished-check every few tokens (one host sync each) gives exactly the outputs of
    the check every token, greedy and seeded sampling, with rows stopping at different steps."""
    prompts = [torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (5, 8, 2)]
    free = generate(model64, prompts, 24, temperature=0, eos_id=[])
    eos = [free.tokens[0][2], free.tokens[1][9]]  # rows stop at different steps, one maybe never
    for kwargs in ({"temperature": 0}, {"temperature": 1.0, "top_p": 0.9}):
        outs = [generate(model64, prompts, 24, eos_id=eos, check_every=k,
                         generator=torch.Generator().manual_seed(5), **kwargs) for k in (1, check_every)]
        assert outs[0].tokens == outs[1].tokens and outs[0].finished == outs[1].finished
        for a, b in zip(*(o.logprobs for o in outs)):  # the cadence decides when finished rows leave
            assert a == pytest.approx(b, abs=1e-9)      # the batch: a smaller batch may round differently
        if kwargs["temperature"] == 0:
            assert outs[0].finished[:2] == [True, True] and len(outs[0].tokens[0]) <= 3
    with pytest.raises(ValueError, match="check_every"):
        generate(model64, prompts, 4, check_every=0)


def test_finished_rows_leave_the_batch_and_change_no_row(model64):
    """Eager decoding drops rows that have finished from the forward once a quarter of the batch has:
    the later steps run on fewer rows, and every row's tokens are those of a call that keeps every
    row (``drop_finished=False``) and of the static path (each row's sampling draws are its own,
    whichever rows are left)."""
    prompts = [torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(n)).tolist()
               for n in (5, 8, 2, 11, 6, 3, 9, 4)]
    free = generate(model64, prompts, 24, temperature=0, eos_id=[])
    eos = sorted({row[1] for row in free.tokens[:4]})  # at least four rows stop by their 2nd token
    batches: list[int] = []
    hook = model64.register_forward_pre_hook(lambda m, args, kw: batches.append(args[0].size(0)), with_kwargs=True)
    try:
        for kwargs in ({"temperature": 0}, {"temperature": 1.0, "top_p": 0.9}):
            batches.clear()
            eager = generate(model64, prompts, 24, eos_id=eos, generator=torch.Generator().manual_seed(3), **kwargs)
            shrunk = min(batches)
            batches.clear()
            kept = generate(model64, prompts, 24, eos_id=eos, drop_finished=False,
                            generator=torch.Generator().manual_seed(3), **kwargs)
            assert min(batches) == len(prompts)
            static = generate(model64, prompts, 24, eos_id=eos, decode="static",
                              generator=torch.Generator().manual_seed(3), **kwargs)
            for other in (kept, static):
                assert eager.tokens == other.tokens and eager.finished == other.finished
                for a, b in zip(eager.logprobs, other.logprobs):
                    assert a == pytest.approx(b, abs=1e-9)
            if kwargs["temperature"] == 0:
                assert sum(eager.finished) >= 4 and shrunk <= len(prompts) - sum(len(t) <= 2 for t in eager.tokens)
                assert shrunk < len(prompts) and batches[0] == len(prompts)
    finally:
        hook.remove()


# -- static-shape decoding (the step a CUDA graph captures) ----------------------------------------

def test_static_decoding_gives_the_tokens_of_eager_decoding(model64):
    """decode='static' (write column in a device tensor, attention over the whole preallocated cache
    behind a mask, GQA folded into the query axis) = the eager path: greedy and seeded sampling, a
    left-padded batch, rows stopping at EOS at different steps."""
    assert model64.config.n_kv_heads < model64.config.n_heads  # the folded-GQA branch is exercised
    prompts = [torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (3, 14, 9, 1)]
    free = generate(model64, prompts, 30, temperature=0, eos_id=[])
    eos = [free.tokens[0][4], free.tokens[2][11]]
    for kwargs in ({"temperature": 0}, {"temperature": 1.0, "top_p": 0.9}):
        eager, static = (generate(model64, prompts, 30, eos_id=eos, decode=mode,
                                  generator=torch.Generator().manual_seed(5), **kwargs) for mode in ("eager", "static"))
        assert static.tokens == eager.tokens and static.finished == eager.finished
        for a, b in zip(static.logprobs, eager.logprobs):
            assert a == pytest.approx(b, abs=1e-9)
        if kwargs["temperature"] == 0:
            assert eager.finished[0] and eager.finished[2] and len(eager.tokens[0]) <= 5
            assert len({len(t) for t in eager.tokens}) > 1  # rows stopped at different steps


def test_static_decoding_step_traces_as_one_graph(model):
    """A CUDA graph replays device work only: the step must have no host sync and no data-dependent
    Python branch. torch.compile(fullgraph=True) refuses any such graph break, so this checks on the CPU
    that the step can be captured, and that the traced step computes the same logits."""
    from llama2_pipeline.model.generation import _static_decoder

    prompts = [[5, 9, 11, 2], [7, 3]]
    L = 4
    idx = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = torch.zeros(2, L + 8, dtype=torch.bool)
    mask[:, :L] = idx > 0
    positions = (mask[:, :L].long().cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode():
        dec = _static_decoder(model, 2, L + 8, torch.device("cpu"), graph=False)
        logits = dec.prefill(model, idx, mask, positions, padded=True)
        eager = dec.step(model, logits.argmax(-1), L, graph=False)
        traced = torch.compile(dec._forward, backend="eager", fullgraph=True)(model)
    assert torch.equal(traced, eager)
    assert dec.cache.k.size(3) == 64  # the cache length is rounded up (STATIC_ALIGN)


def test_captured_decoder_is_reused_per_model_and_shape(model):
    """The decoder a CUDA graph is captured into is kept per model and reused only while the batch,
    the (rounded) cache length and the parameter storages are the same."""
    import gc

    from llama2_pipeline.model.generation import (
        _DECODERS,
        _static_decoder,
        release_decoders,
    )

    cpu = torch.device("cpu")
    first = _static_decoder(model, 4, 30, cpu, graph=True)
    assert _static_decoder(model, 4, 60, cpu, graph=True) is first  # 30 and 60 both round to 64
    other = _static_decoder(model, 8, 30, cpu, graph=True)
    assert other is not first and _DECODERS[model][1] is other  # one held per model
    moved = make_model(seed=0)
    assert _static_decoder(moved, 8, 30, cpu, graph=True) is not other  # other storages
    assert _static_decoder(model, 8, 30, cpu, graph=False) is not other  # static mode holds none
    assert len(_DECODERS) == 2
    del moved
    gc.collect()
    assert len(_DECODERS) == 1  # a dropped model's decoder goes with it
    release_decoders()
    assert len(_DECODERS) == 0


def test_graph_decoding_needs_cuda_and_modes_are_checked(model):
    with pytest.raises(ValueError, match="CUDA graph.*cpu"):
        generate(model, [[1, 2]], 4, decode="graph")
    with pytest.raises(ValueError, match="decode must be one of"):
        generate(model, [[1, 2]], 4, decode="cuda")


def test_sync_free_nucleus_sampling_keeps_the_distribution():
    """The CUDA sampler computes the sorted fallback for every row instead of asking the device which
    rows need it: the same nucleus and the same distribution."""
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.08, 0.02]])).repeat(20000, 1)
    probs = torch.softmax(logits[0], -1)
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(_sample(logits, 1.0, 0.8, g, sync_free=True), minlength=5) / 20000
    assert counts[4] == 0 and counts[3] == 0
    assert torch.allclose(counts[:3], probs[:3] / probs[:3].sum(), atol=0.015)
    # a row whose two candidates both miss the tiny nucleus takes the sorted draw: only the top token
    assert _sample(logits[:200], 1.0, 0.05, g, sync_free=True).unique().tolist() == [0]


def test_static_decoding_under_autocast_keeps_its_cache_in_the_autocast_dtype(model):
    """PPO samples an fp32 policy under bf16 autocast: the static cache is bf16 (what SDPA reads under
    autocast anyway), the keys and values are cast on writing, and the tokens are the eager path's."""
    from llama2_pipeline.model.generation import _static_decoder

    prompts = [[5, 9, 11, 2], [7, 3]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _static_decoder(model, 2, 24, torch.device("cpu"), graph=False).cache.k.dtype == torch.bfloat16
        eager, static = (generate(model, prompts, 12, temperature=0, eos_id=[], decode=m) for m in ("eager", "static"))
    assert _static_decoder(model, 2, 24, torch.device("cpu"), graph=False).cache.k.dtype == torch.float32
    assert static.tokens == eager.tokens and all(len(t) == 12 for t in static.tokens)
