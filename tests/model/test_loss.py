"""The chunked cross-entropy equals the plain loss through the output head, value and gradients.

Tolerance: fp64 1e-12 (only the summation order differs); fp32 1e-5 relative on the loss and
1e-5 absolute on gradients of size ~1e-2 (smoke shape, vocab 512).
"""

import pytest
import torch
import torch.nn.functional as F

from llama2_pipeline.model.loss import IGNORE_INDEX, chunked_cross_entropy


def _case(dtype, n=37, dim=16, vocab=50, ignore=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, dim, generator=g, dtype=dtype, requires_grad=True)
    weight = (0.3 * torch.randn(vocab, dim, generator=g, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, vocab, (n,), generator=g)
    if ignore:
        labels[::5] = IGNORE_INDEX
    return hidden, weight, labels


def _grads(loss_fn, hidden, weight, labels):
    hidden.grad = weight.grad = None
    loss = loss_fn(hidden, weight, labels)
    (2.5 * loss).backward()  # a non-unit upstream gradient reaches both inputs
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("chunk", [1, 8, 37, 1000])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_equals_plain_loss_and_gradients_fp64(chunk, reduction):
    hidden, weight, labels = _case(torch.float64)
    plain = _grads(lambda h, w, y: F.cross_entropy(F.linear(h, w), y, reduction=reduction),
                   hidden, weight, labels)
    chunked = _grads(lambda h, w, y: chunked_cross_entropy(h, w, y, chunk, reduction), hidden, weight, labels)
    for a, b in zip(plain, chunked):
        torch.testing.assert_close(b.double(), a, rtol=1e-12, atol=1e-12)


def test_chunked_equals_plain_in_fp32_on_a_model_head():
    from llama2_pipeline.model import Llama, ModelConfig

    torch.manual_seed(0)
    model = Llama(ModelConfig.from_preset("smoke"))
    x = torch.randint(3, 512, (3, 17))
    labels = x[:, 1:].clone()
    labels[0, :4] = IGNORE_INDEX

    def run(chunk):
        model.zero_grad(set_to_none=True)
        hidden = model(x[:, :-1], return_hidden=True)
        if chunk:
            loss = chunked_cross_entropy(hidden, model.output.weight, labels, chunk)
        else:
            loss = F.cross_entropy(model.output(hidden).float().flatten(0, 1), labels.flatten())
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss0, grads0 = run(0)
    loss1, grads1 = run(5)
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=0)
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-4, atol=1e-5, msg=name)


def test_no_gradients_under_no_grad_and_bad_arguments():
    hidden, weight, labels = _case(torch.float32, ignore=False)
    with torch.no_grad():
        loss = chunked_cross_entropy(hidden, weight, labels, 4)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, F.cross_entropy(F.linear(hidden, weight), labels).detach())
    all_ignored = torch.full_like(labels, IGNORE_INDEX)
    with torch.no_grad():
        assert float(chunked_cross_entropy(hidden, weight, all_ignored, 4)) == 0.0  # no NaN from 0 / 0
    with pytest.raises(ValueError, match="chunk"):
        chunked_cross_entropy(hidden, weight, labels, 0)
