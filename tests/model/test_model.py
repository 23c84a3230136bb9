import math
import subprocess
import sys

import torch
import torch.nn.functional as F

from llama2_pipeline.model import Llama, ModelConfig
from llama2_pipeline.model.model import documents

from .conftest import make_model


def reference_logits(model: Llama, idx: torch.Tensor) -> torch.Tensor:
    """Textbook Llama forward from our weights: explicit softmax attention with every KV head
    materialised per query head (repeat_interleave), RoPE from its complex-rotation definition."""
    c = model.config
    H, KV, hd = c.n_heads, c.n_kv_heads, c.head_dim
    B, T = idx.shape
    inv = 1.0 / c.rope_theta ** (torch.arange(0, hd, 2).float() / hd)
    angles = torch.outer(torch.arange(T).float(), inv).double()  # float32 angles, as Meta and HF
    rot = torch.polar(torch.ones(T, hd // 2, dtype=torch.float64), angles)  # (T, hd/2)

    def rope(x):  # x (B, T, heads, hd), rotate-half layout: dim i pairs with i + hd/2
        z = torch.complex(x[..., : hd // 2].double(), x[..., hd // 2:].double()) * rot[None, :, None]
        return torch.cat((z.real, z.imag), dim=-1).to(x.dtype)

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.norm_eps) * w

    x = model.tok_embeddings.weight[idx]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for layer in model.layers:
        h = norm(x, layer.attention_norm.weight)
        wq, wk, wv = layer.attention.wqkv.weight.split([H * hd, KV * hd, KV * hd])
        q, k, v = (h @ wq.T).view(B, T, H, hd), (h @ wk.T).view(B, T, KV, hd), (h @ wv.T).view(B, T, KV, hd)
        q, k = rope(q).transpose(1, 2), rope(k).transpose(1, 2)
        k = k.repeat_interleave(H // KV, dim=1)  # materialised GQA
        v = v.transpose(1, 2).repeat_interleave(H // KV, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, H * hd)
        x = x + y @ layer.attention.wo.weight.T
        h = norm(x, layer.ffn_norm.weight)
        gate, up = (h @ layer.feed_forward.w13.weight.T).chunk(2, dim=-1)
        x = x + (F.silu(gate) * up) @ layer.feed_forward.w2.weight.T
    return norm(x, model.norm.weight) @ model.output.weight.T


def test_forward_shapes(model):
    idx = torch.randint(0, 512, (3, 17))
    with torch.no_grad():
        assert model(idx).shape == (3, 17, 512)
        assert model(idx, return_hidden=True).shape == (3, 17, 64)
        # the output head applied to the hidden states gives the logits
        torch.testing.assert_close(model.output(model(idx, return_hidden=True)), model(idx))


def test_gqa_matches_reference_with_materialised_kv_heads(model64):
    assert model64.config.n_kv_heads < model64.config.n_heads
    idx = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(model64(idx), reference_logits(model64, idx), rtol=0, atol=1e-10)


def test_causal_future_tokens_do_not_change_past_logits(model):
    a = torch.randint(0, 512, (2, 20))
    b = a.clone()
    b[:, 12:] = torch.randint(0, 512, (2, 8))
    with torch.no_grad():
        la, lb = model(a), model(b)
    torch.testing.assert_close(la[:, :12], lb[:, :12])
    assert not torch.allclose(la[:, 12:], lb[:, 12:])


def test_packed_documents_equal_separate_documents(model):
    d1, d2, d3 = torch.randint(0, 512, (7,)), torch.randint(0, 512, (11,)), torch.randint(0, 512, (5,))
    packed = torch.cat([d1, d2, d3]).unsqueeze(0)
    doc_ids = torch.tensor([0] * 7 + [1] * 11 + [2] * 5).unsqueeze(0)
    with torch.no_grad():
        out = model(packed, doc_ids=doc_ids)[0]
        alone = [model(d.unsqueeze(0))[0] for d in (d1, d2, d3)]
        unmasked = model(packed)[0]
    torch.testing.assert_close(out, torch.cat(alone), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked[7:18], alone[1], atol=1e-3)  # the mask matters


def test_documents_are_runs_of_equal_ids():
    segments, positions = documents(torch.tensor([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 5, 5], [7, 7, 3, 3, 3, 7]]))
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5], [0, 1, 0, 1, 2, 0]]
    assert segments.tolist() == [[1, 1, 1, 2, 2, 3], [1] * 6, [1, 1, 2, 2, 2, 3]]


def test_reused_doc_id_does_not_attend_to_an_earlier_document(model):
    d1, d2 = torch.randint(0, 512, (6,)), torch.randint(0, 512, (4,))
    with torch.no_grad():
        out = model(torch.cat([d1, d2]).unsqueeze(0), doc_ids=torch.tensor([[3] * 6 + [9] * 4]))
        out2 = model(torch.cat([d1, d2, d1]).unsqueeze(0), doc_ids=torch.tensor([[3] * 6 + [9] * 4 + [3] * 6]))
    torch.testing.assert_close(out2[0, 10:], out[0, :6], atol=1e-5, rtol=1e-5)


def test_left_padding_mask_gives_same_logits(model):
    idx = torch.randint(0, 512, (1, 9))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), idx], dim=1)
    mask = torch.tensor([[0] * 4 + [1] * 9])
    with torch.no_grad():
        out = model(padded, attention_mask=mask)
        assert torch.isfinite(out).all()  # padding queries see themselves: no NaN rows
        torch.testing.assert_close(out[:, 4:], model(idx), atol=1e-5, rtol=1e-5)


def test_right_padding_and_explicit_4d_mask(model):
    idx = torch.randint(0, 512, (1, 9))
    padded = torch.cat([idx, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        want = model(idx)
        right = model(padded, attention_mask=torch.tensor([[1] * 9 + [0] * 3]), return_hidden=True)
        torch.testing.assert_close(model.output(right[:, :9]), want, atol=1e-5, rtol=1e-5)
        causal = torch.ones(12, 12, dtype=torch.bool).tril()[None, None]
        torch.testing.assert_close(model(padded, attention_mask=causal)[:, :9], want, atol=1e-5, rtol=1e-5)


def test_init_is_deterministic_and_gpt_style():
    a, b, c = make_model(seed=1), make_model(seed=1), make_model(seed=2)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.output.weight, c.output.weight)
    big = Llama(ModelConfig.from_preset("smoke", dim=256, n_heads=4, n_kv_heads=2, n_layers=8))
    std = big.config.init_std
    assert abs(big.tok_embeddings.weight.std().item() - std) < 0.002
    assert abs(big.layers[0].attention.wqkv.weight.std().item() - std) < 0.002
    assert abs(big.layers[0].attention.wo.weight.std().item() - std / 4) < 0.001  # 1/sqrt(2*8)
    assert abs(big.layers[0].feed_forward.w2.weight.std().item() - std / 4) < 0.001
    assert torch.equal(big.norm.weight, torch.ones(256))
    assert all(m.bias is None for m in big.modules() if isinstance(m, torch.nn.Linear))


def test_gradient_checkpointing_gives_same_gradients():
    idx = torch.randint(0, 512, (2, 16))
    grads = []
    for ckpt in (False, True):
        model = make_model().train()
        model.gradient_checkpointing = ckpt
        model(idx).square().mean().backward()
        grads.append(model.layers[0].attention.wqkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_sequence_longer_than_context_raises(model):
    try:
        model(torch.zeros(1, 257, dtype=torch.long))
    except ValueError as e:
        assert "max_seq_len 256" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_library_imports_no_kedro_mlflow_or_transformers():
    code = ("import sys, llama2_pipeline.model as m; "
            "bad = [k for k in ('kedro', 'mlflow', 'transformers') if k in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_meta_device_model_can_be_materialised():
    with torch.device("meta"):
        model = Llama(ModelConfig.from_preset("smoke"))
    model.to_empty(device="cpu")
    model.init_weights()  # RoPE tables are built lazily on the real device
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 512, (1, 8)))).all()


def test_attention_flash_cannot_take_repeats_kv_heads_instead_of_enable_gqa(monkeypatch):
    """On CUDA, attention with a padding/document mask or in fp32 (no flash kernel for either) repeats
    the KV heads rather than passing enable_gqa, which would fall back to the O(T^2) math kernel.
    Forced on the CPU here: the same logits and gradients; bf16 without a mask keeps enable_gqa."""
    from llama2_pipeline.model import model as model_module

    m = make_model(torch.float64)
    assert m.config.n_kv_heads < m.config.n_heads
    idx = torch.randint(0, 512, (2, 12))
    doc_ids = torch.tensor([[0] * 5 + [1] * 7, [4] * 12])
    pad = torch.tensor([[0] * 3 + [1] * 9, [1] * 12])

    def run():
        m.zero_grad()
        a, b, c = m(idx, doc_ids=doc_ids), m(idx, attention_mask=pad), m(idx)
        (a.sum() + b.sum() + c.sum()).backward()
        return a.detach(), b.detach(), c.detach(), [p.grad.clone() for p in m.parameters()]

    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((k.shape[1], kw["enable_gqa"]))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", spy)
    want = run()
    assert set(calls) == {(m.config.n_kv_heads, True)}  # the CPU: enable_gqa throughout
    calls.clear()
    monkeypatch.setattr(model_module, "REPEAT_KV_ON", ("cpu", "cuda"))
    got = run()
    assert set(calls) == {(m.config.n_heads, False)}  # repeated heads, plain SDPA
    for x, y in zip(got[:3] + tuple(got[3]), want[:3] + tuple(want[3])):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-10)
    calls.clear()
    with torch.no_grad():
        make_model(torch.bfloat16)(idx)  # bf16, causal, no mask: the flash case keeps enable_gqa
        m(idx[:, :1], attention_mask=pad[:, :1])  # one token (a decoding step): no copy of the cache
    assert set(calls) == {(m.config.n_kv_heads, True)}
