"""Next-token NLL from hidden states through a frozen output head, in chunks of tokens, twice differentiable.

The inner loss is differentiated twice (inner gradient, then the outer backward through it). Through full logits
that keeps several `[tokens, vocab]` tensors alive from the inner forward to the outer backward: with a 32k
vocabulary and 4 x 1,024 context tokens, 0.5 GB each. Here no `[tokens, vocab]` tensor outlives a chunk:

- the forward computes each chunk's NLL and, while its softmax is at hand, the NLL's gradient w.r.t. the hidden
  states, `G = W^T (softmax(W h) - onehot(y))` (`[tokens, hidden]`, small), which the inner backward then only scales;
- differentiating `G` (the outer backward) recomputes each chunk's softmax `p` and applies its Jacobian:
  for an upstream `v`, `d<v, G>/dh = W^T (p * (u - <p, u>))` with `u = W v`.

The head weight is treated as a constant (callers use this only when it does not require gradients). Under autocast
the logits are computed in the autocast dtype and upcast, as `token_logprobs` does on a model's logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["VOCAB_CHUNK_ELEMENTS", "chunked_token_nll"]

# Logit elements per chunk (tokens x vocabulary): 64 MiB of float32.
VOCAB_CHUNK_ELEMENTS = 2**24


def chunked_token_nll(
    hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor, chunk_elements: int = VOCAB_CHUNK_ELEMENTS
) -> torch.Tensor:
    """`-log softmax(hidden @ head_weight.T)[targets]` for `hidden` `[tokens, dim]` and `targets` `[tokens]`."""
    if head_weight.requires_grad:
        raise ValueError("chunked_token_nll treats the output head as frozen; use the logits path to train it.")
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"Expected hidden [tokens, dim] and targets [tokens], got {hidden.shape}, {targets.shape}.")
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    chunk = max(1, chunk_elements // head_weight.shape[0])
    return _ChunkedTokenNLL.apply(hidden, head_weight, targets, dtype, chunk)


class _ChunkedTokenNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype, chunk):
        nll, grad_hidden = [], []
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                probs, logprob_target = _softmax_chunk(hidden[start : start + chunk], weight, targets, start, dtype)
                nll.append(-logprob_target)
                probs[torch.arange(probs.shape[0]), targets[start : start + chunk]] -= 1.0
                grad_hidden.append(_to_hidden(probs, weight, dtype, hidden.dtype))
        ctx.save_for_backward(hidden, weight, torch.cat(grad_hidden))
        ctx.dtype, ctx.chunk = dtype, chunk
        return torch.cat(nll)

    @staticmethod
    def backward(ctx, grad_nll):
        hidden, weight, grad_hidden = ctx.saved_tensors
        nll_grad = _NLLGradient.apply(hidden, weight, grad_hidden, ctx.dtype, ctx.chunk)
        return grad_nll.unsqueeze(-1).to(nll_grad.dtype) * nll_grad, None, None, None, None


class _NLLGradient(torch.autograd.Function):
    """Returns the precomputed `dNLL/dhidden`; its backward is the Hessian-vector product, chunk by chunk (the
    Hessian of the NLL w.r.t. the logits is the softmax Jacobian, which does not depend on the targets)."""

    @staticmethod
    def forward(ctx, hidden, weight, grad_hidden, dtype, chunk):
        ctx.save_for_backward(hidden, weight)
        ctx.dtype, ctx.chunk = dtype, chunk
        return grad_hidden.clone()

    @staticmethod
    @once_differentiable  # second order is what meta-gradients need; a third derivative fails loudly
    def backward(ctx, upstream):
        hidden, weight = ctx.saved_tensors
        parts = []
        with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], ctx.chunk):
                probs = torch.softmax(_logits(hidden[start : start + ctx.chunk], weight, ctx.dtype), dim=-1)
                u = F.linear(upstream[start : start + ctx.chunk].to(ctx.dtype), weight.to(ctx.dtype)).to(probs.dtype)
                probs_u = probs * u
                jacobian_u = torch.addcmul(probs_u, probs, probs_u.sum(-1, keepdim=True), value=-1.0)
                parts.append(_to_hidden(jacobian_u, weight, ctx.dtype, hidden.dtype))
        return torch.cat(parts), None, None, None, None


def _logits(hidden, weight, dtype):
    """One chunk's logits, computed in `dtype` and kept in at least float32 for the softmax."""
    logits = F.linear(hidden.to(dtype), weight.to(dtype))
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _softmax_chunk(hidden, weight, targets, start, dtype):
    """Softmax of one chunk's logits and the log-probability of its targets."""
    logprobs = torch.log_softmax(_logits(hidden, weight, dtype), dim=-1)
    target_logprob = logprobs.gather(-1, targets[start : start + hidden.shape[0]].unsqueeze(-1)).squeeze(-1)
    return logprobs.exp_(), target_logprob


def _to_hidden(logit_grads, weight, dtype, hidden_dtype):
    """`logit_grads @ W` in the logits' compute dtype (as the backward of the head's linear would), to hidden dtype."""
    return torch.matmul(logit_grads.to(dtype), weight.to(dtype)).to(hidden_dtype)
