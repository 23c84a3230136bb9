"""Next-token cross-entropy through the output head without full-vocabulary fp32 logits.

The plain loss, ``F.cross_entropy(head(hidden).float(), labels)``, holds the (tokens, vocab)
logits in the compute dtype, their fp32 copy and the fp32 log-softmax at once, and keeps logits
for the backward pass: at the 1b shape (16 384 tokens x 32 000) that is about 1 GB per bf16 and
2 GB per fp32 copy. :func:`chunked_cross_entropy` runs the head, the fp32 softmax and its gradient
over ``chunk`` tokens at a time and computes the gradients of the hidden states and of the head's
weight already in the forward pass (the loss is the last op, so its backward only scales them):
at most one chunk's fp32 logits ever exist, and no matmul is recomputed.

Same numbers as the plain loss up to summation order (the logits are the same matmul in the
same dtype, rounded the same way before the fp32 softmax). Not for a head whose weight ZeRO-3
partitions (the weight is read directly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum over tokens of ``-log softmax(hidden @ weight.T)[label]``; labels equal to
    ``IGNORE_INDEX`` contribute nothing. Gradients are made chunk by chunk in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk: int, want_grad: bool):
        n, acc = hidden.size(0), torch.promote_types(hidden.dtype, torch.float32)  # fp32 (fp64 stays fp64)
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if want_grad else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_grad else None
        for s in range(0, n, chunk):
            h, y = hidden[s:s + chunk], labels[s:s + chunk]
            logits = F.linear(h, weight)  # as the plain loss: the head's output, then (at least) fp32
            logits = logits.to(acc)
            valid = y != IGNORE_INDEX
            y0 = torch.where(valid, y, 0)
            lse = torch.logsumexp(logits, dim=-1)
            target = logits.gather(1, y0[:, None]).squeeze(1)
            total += torch.where(valid, lse - target, 0.0).sum()
            if want_grad:
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                g[torch.arange(g.size(0), device=g.device), y0] -= 1.0
                g.mul_(valid[:, None])
                g = g.to(h.dtype)
                grad_h[s:s + chunk] = g @ weight
                grad_w += (g.t() @ h).to(acc)
        if want_grad:
            ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out.to(grad_h.dtype), (grad_w * grad_out).to(ctx.weight_dtype), None, None, None)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int,
                          reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T`` (logits) against ``labels``, ``chunk`` tokens at a time.

    hidden: (N, dim) or (B, T, dim); weight: (vocab, dim), the output head's; labels: (N,) or
    (B, T), ``-100`` ignored. reduction: ``mean`` over the counted labels (as ``F.cross_entropy``)
    or ``sum``. Differentiable in ``hidden`` and ``weight``.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 token, got {chunk}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    hidden, labels = hidden.reshape(-1, hidden.size(-1)), labels.reshape(-1)
    want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    total = _LinearCrossEntropy.apply(hidden, weight, labels, chunk, want_grad)
    if reduction == "sum":
        return total
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)
