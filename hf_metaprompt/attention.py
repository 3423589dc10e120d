"""Attention for the inner (context) pass whose backward is differentiable, in memory linear in the context length.

Second-order meta-gradients differentiate the inner forward twice. PyTorch's fused SDPA kernels have no double
backward, and the math kernel keeps every `[heads, L, L]` probability matrix, plus the partners its double backward
needs, alive from the inner forward until the outer backward. Here the forward runs the fused kernel and keeps only
q, k, v and the output; the backward (`_AttentionGradients`) recomputes the probabilities one block of queries at a
time, and its own backward, the second derivative, derived by hand, does the same. Nothing `[L, L]`-sized outlives
a block, and causal blocks skip the keys after them. The result is the math kernel's, to rounding, in value,
gradient and second derivative (tested against it and by finite differences).

It replaces transformers' `"sdpa"` attention function only while `double_backward_attention` is active (the inner
pass and the re-computation of its checkpointed layers), through `ALL_ATTENTION_FUNCTIONS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = ["ATTENTION_BLOCK_SIZE", "double_backward_attention", "memory_efficient_attention"]

# Queries per block of the backward: bounds its transient `[batch, heads, block, keys]` tensors.
ATTENTION_BLOCK_SIZE = 64
_ALL_BACKENDS = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.MATH,
]


class _MemoryEfficientAttention(torch.autograd.Function):
    """`softmax(q k^T * scale + mask) v`: the fused kernel forward, a blockwise backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, query, key, value, mask, scale, causal, block_size):
        groups = query.shape[1] // key.shape[1]
        # The fused kernels again (the inner pass restricts SDPA to the math kernel for any other caller).
        with torch.no_grad(), sdpa_kernel(_ALL_BACKENDS):
            output = F.scaled_dot_product_attention(
                query,
                key.repeat_interleave(groups, 1) if groups > 1 else key,
                value.repeat_interleave(groups, 1) if groups > 1 else value,
                attn_mask=_with_causal(mask, query.shape[2], key.shape[2]) if causal and mask is not None else mask,
                is_causal=causal and mask is None,
                scale=scale,
            )
        ctx.save_for_backward(query, key, value, mask, output)
        ctx.options = scale, causal, block_size
        return output

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, mask, output = ctx.saved_tensors
        grads = _AttentionGradients.apply(query, key, value, grad_output, output.detach(), mask, *ctx.options)
        return *grads, None, None, None, None


class _AttentionGradients(torch.autograd.Function):
    """`(q, k, v, dO) -> (dq, dk, dv)` of attention, block by block; its own backward (what second-order
    meta-gradients need) is derived by hand in `_second_order_block` and computed block by block too.

    `output` (the attention output O, no gradient) only gives each row's `D = rowsum(P * dO v^T) = dO . O` without an
    `[L, L]` pass; the derivatives account for D through P and dO.
    """

    @staticmethod
    def forward(ctx, query, key, value, grad_output, output, mask, scale, causal, block_size):
        ctx.save_for_backward(query, key, value, grad_output, output, mask)
        ctx.options = scale, causal, block_size
        (grad_query,), (grad_key, grad_value) = _blockwise(
            _first_order_block, (query, grad_output, output), (key, value), mask, scale, causal, block_size
        )
        return grad_query, grad_key, grad_value

    @staticmethod
    @once_differentiable  # second order is what meta-gradients need; a third derivative fails loudly
    def backward(ctx, cot_query, cot_key, cot_value):
        query, key, value, grad_output, output, mask = ctx.saved_tensors
        (g_query, g_grad_output), (g_key, g_value) = _blockwise(
            _second_order_block,
            (query, grad_output, output, cot_query),
            (key, value, cot_key, cot_value),
            mask,
            *ctx.options,
        )
        return g_query, g_key, g_value, g_grad_output, None, None, None, None, None


def memory_efficient_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    causal: bool = False,
    block_size: int = ATTENTION_BLOCK_SIZE,
) -> torch.Tensor:
    """Attention over `[batch, heads, length, head_dim]` inputs (`key`/`value` may have fewer heads: GQA).

    `mask` is boolean (True: attend) or additive, broadcastable to `[batch, heads, queries, keys]`; `causal` adds the
    causal mask (aligned at the start, queries and keys of equal length). A query row with no key to attend to
    outputs zeros, as the math kernel does.
    """
    if query.shape[1] % key.shape[1]:
        raise ValueError(f"{query.shape[1]} query heads cannot share {key.shape[1]} key/value heads evenly.")
    if causal and query.shape[2] != key.shape[2]:
        raise ValueError("`causal=True` needs as many queries as keys (no cache).")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    return _MemoryEfficientAttention.apply(query, key, value, mask, scale, causal, block_size)


def _with_causal(mask: torch.Tensor, queries: int, keys: int) -> torch.Tensor:
    allowed = torch.ones(queries, keys, dtype=torch.bool, device=mask.device).tril()
    if mask.dtype == torch.bool:
        return mask & allowed
    return mask.masked_fill(~allowed, float("-inf"))


def _blockwise(kernel, query_side, key_side, mask, scale, causal, block_size):
    """Run `kernel` on blocks of queries (all `query_side` tensors sliced alike) against the keys they can see.

    The kernels see `[batch, kv_heads, groups * block, dim]` query rows against `[batch, kv_heads, keys, dim]` keys:
    the query heads sharing a key head (GQA) become rows of one matrix product, so nothing is broadcast or copied on
    the key side, and products over rows (`P^T dO`) sum those heads for free. Computed in the dtype of
    `query_side[1]` (the incoming gradient) with autocast off: under autocast the inputs may mix float32 and
    bfloat16. Returns the query-side outputs and the key-side outputs (summed over blocks), in the shapes and dtypes
    of the first `query_side` / `key_side` inputs.
    """
    batch, heads, length, _ = query_side[0].shape
    kv_heads, keys = key_side[0].shape[1], key_side[0].shape[2]
    groups = heads // kv_heads
    dtype, device = query_side[1].dtype, query_side[0].device
    queries = [t.to(dtype).reshape(batch, kv_heads, groups, length, t.shape[-1]) for t in query_side]
    keyed = [t.to(dtype) for t in key_side]
    mask5 = None if mask is None else _grouped_mask(mask, kv_heads, groups)
    query_parts, key_totals = [], [torch.zeros_like(t) for t in keyed[:2]]
    with torch.autocast(device.type, enabled=False):
        for start in range(0, length, block_size):
            end = min(start + block_size, length)
            # With a causal mask no query of this block sees a key at or after `end`.
            visible = end if causal else keys
            block_mask = None
            if mask5 is not None:
                block_mask = mask5[..., start:end, :visible] if mask5.shape[-2] > 1 else mask5[..., :visible]
            bias, empty = _block_bias(block_mask, start if causal else None, end - start, visible, dtype, device)
            rows = [t[..., start:end, :].reshape(batch, kv_heads, -1, t.shape[-1]) for t in queries]
            query_outputs, key_outputs = kernel(
                *rows,
                *(t[..., :visible, :] for t in keyed),
                _as_rows(bias, groups),
                _as_rows(empty, groups),
                scale,
            )
            query_parts.append([t.view(batch, kv_heads, groups, end - start, -1) for t in query_outputs])
            for total, part in zip(key_totals, key_outputs, strict=True):
                total[..., :visible, :] += part
    query_outputs = [
        torch.cat(parts, dim=-2).reshape(like.shape).to(like.dtype)
        for parts, like in zip(zip(*query_parts, strict=True), query_side, strict=False)
    ]
    key_outputs = [total.to(like.dtype) for total, like in zip(key_totals, key_side, strict=False)]
    return query_outputs, key_outputs


def _grouped_mask(mask: torch.Tensor, kv_heads: int, groups: int) -> torch.Tensor:
    """A mask broadcastable to `[batch, heads, queries, keys]`, viewed against `[batch, kv_heads, groups, ...]`."""
    if mask.dim() == 4 and mask.shape[1] > 1:
        return mask.unflatten(1, (kv_heads, groups))
    return mask.unsqueeze(-3)


def _as_rows(tensor: torch.Tensor | None, groups: int) -> torch.Tensor | None:
    """`[..., 1 or groups, block, keys]` (or `[block, keys]`) to the kernels' `[..., groups * block, keys]` rows."""
    if tensor is None:
        return None
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    shape = (*tensor.shape[:-3], groups, *tensor.shape[-2:])
    return tensor.expand(shape).reshape(*shape[:-3], groups * shape[-2], shape[-1])


def _matmul_t(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.matmul(x, y.transpose(-1, -2))


def _row_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x * y).sum(-1, keepdim=True)


def _probabilities(scaled_query, key, bias, empty):
    scores = _matmul_t(scaled_query, key)
    probs = torch.softmax(scores if bias is None else scores + bias, dim=-1)
    # Rows with no visible key: the math kernel's safe softmax gives them zero probabilities (and no gradient).
    return probs if empty is None else probs.masked_fill_(empty, 0.0)


def _first_order_block(query, grad_output, output, key, value, bias, empty, scale):
    """Attention's backward on one block: dS = P (dP - D) with dP = dO v^T and D = rowsum(P dP) = dO . O;
    dq = s dS k, dk = s dS^T q, dv = P^T dO (the rows of all query heads sharing a key head)."""
    scaled_query = query * scale
    probs = _probabilities(scaled_query, key, bias, empty)
    grad_scores = _matmul_t(grad_output, value).sub_(_row_dot(grad_output, output)).mul_(probs)
    grad_query = torch.matmul(grad_scores, key) * scale
    grad_key = torch.matmul(grad_scores.transpose(-1, -2), scaled_query)
    grad_value = torch.matmul(probs.transpose(-1, -2), grad_output)
    return (grad_query,), (grad_key, grad_value)


def _second_order_block(query, grad_output, output, cot_query, key, value, cot_key, cot_value, bias, empty, scale):
    """The gradient of `<a, dq> + <b, dk> + <c, dv>` (a, b, c: cotangents of `_first_order_block`'s outputs)
    w.r.t. q, dO, k and v, on one block. With R = s (a k^T + q b^T) and r = rowsum(P R):
    E := d/d(dP) = P (R - r); d/dP = (dP - D)(R - r) + dO c^T up to a constant per row, which the softmax turns into
    G; d/dq = s (G k + dS b), d/dk = s (G^T q + dS^T a), d/dv = E^T dO, d/d(dO) = E v + P c.

    The row sums are taken through `[block, dim]` products (rowsum(P R) = s (a . Pk + q . Pb), rowsum(dS R) =
    s (a . dS k + q . dS b), rowsum(P dO c^T) = dO . Pc) instead of passes over `[block, keys]` tensors: fewer
    memory-bound passes, and the products come in wide matrix multiplications with the ones the result needs.
    """
    key_dim, value_dim = key.shape[-1], value.shape[-1]
    probs = _probabilities(query * scale, key, bias, empty)
    shifted = _matmul_t(grad_output, value).sub_(_row_dot(grad_output, output))
    grad_scores = probs * shifted
    # One copy of the key side per block: [k, b] is a view of [k, b, c].
    key_side = torch.cat([key, cot_key, cot_value], -1)
    both_keys = key_side[..., : 2 * key_dim]
    mixed = _matmul_t(torch.cat([cot_query, query], -1) * scale, both_keys)
    probs_key, probs_cot_key, probs_cot_value = torch.matmul(probs, key_side).split([key_dim, key_dim, value_dim], -1)
    mixed -= (_row_dot(cot_query, probs_key) + _row_dot(query, probs_cot_key)) * scale
    e = probs * mixed
    scores_key, scores_cot_key = torch.matmul(grad_scores, both_keys).split(key_dim, -1)
    g_row = (_row_dot(cot_query, scores_key) + _row_dot(query, scores_cot_key)) * scale
    g_row += _row_dot(grad_output, probs_cot_value)
    g_scores = _matmul_t(grad_output, cot_value).addcmul_(shifted, mixed).sub_(g_row).mul_(probs)
    g_query = (torch.matmul(g_scores, key) + scores_cot_key) * scale
    g_key = torch.matmul(g_scores.transpose(-1, -2), query) + torch.matmul(grad_scores.transpose(-1, -2), cot_query)
    g_value = torch.matmul(e.transpose(-1, -2), grad_output)
    g_grad_output = torch.matmul(e, value) + probs_cot_value
    return (g_query, g_grad_output), (g_key * scale, g_value)


def _block_bias(mask, causal_offset, queries, keys, dtype, device):
    """The additive mask of a block (small: no head dimension where the mask has none) and its rows that see no key
    (None when there are none)."""
    allowed = None
    if causal_offset is not None:
        rows = torch.arange(causal_offset, causal_offset + queries, device=device)
        allowed = rows[:, None] >= torch.arange(keys, device=device)
    bias = None
    if mask is not None and mask.dtype == torch.bool:
        allowed = mask if allowed is None else mask & allowed
    elif mask is not None:
        bias = mask.to(dtype)
    if allowed is not None:
        causal_or_bool = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))
        bias = causal_or_bool if bias is None else bias + causal_or_bool
    if bias is None or (causal_offset is not None and mask is None):  # causal alone leaves every row a key
        return bias, None
    empty = torch.isneginf(bias).all(-1, keepdim=True)
    if not bool(empty.any()):
        return bias, None
    return bias.masked_fill(empty, 0.0), empty


def _transformers_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature around `memory_efficient_attention` (sdpa's mask conventions).

    Falls back to the math kernel for what it does not cover: attention dropout, position biases, soft-capping.
    """
    if dropout > 0.0 or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # As in sdpa: without a mask the kernel applies causality; a given mask already encodes it, but adding it again
    # is exact and lets the backward skip the keys after each block.
    causal = bool(is_causal) and query.shape[2] == key.shape[2] and query.shape[2] > 1
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[1] not in (1, query.shape[1]):
        raise ValueError(f"Unexpected attention mask shape {tuple(attention_mask.shape)} for the inner attention.")
    output = memory_efficient_attention(query, key, value, attention_mask, scaling, causal)
    return output.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def double_backward_attention(memory_efficient: bool = True) -> Iterator[None]:
    """Attention that can be differentiated twice: the math SDPA kernel, plus (by default) transformers' `"sdpa"`
    models routed to `memory_efficient_attention`. Eager attention is plain ops and needs nothing."""
    with (
        sdpa_kernel(SDPBackend.MATH),
        _sdpa_replaced_by(_transformers_attention) if memory_efficient else (contextlib.nullcontext()),
    ):
        yield


@contextlib.contextmanager
def _sdpa_replaced_by(function) -> Iterator[None]:
    previous = ALL_ATTENTION_FUNCTIONS._local_mapping.get("sdpa")
    ALL_ATTENTION_FUNCTIONS["sdpa"] = function
    try:
        yield
    finally:
        if previous is None:
            del ALL_ATTENTION_FUNCTIONS["sdpa"]
        else:
            ALL_ATTENTION_FUNCTIONS["sdpa"] = previous
