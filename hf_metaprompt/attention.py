"""Attention for the inner (context) pass whose backward is differentiable in memory linear in the context length.

Second-order meta-gradients differentiate the inner forward twice. PyTorch's fused SDPA kernels have no double
backward, and the math kernel keeps every `[heads, L, L]` probability matrix, plus the partners its double backward
needs, alive from the inner forward until the outer backward. Here the forward runs the fused kernel and keeps only
q, k and v; the backward recomputes the probabilities block of queries by block of queries with ordinary torch ops,
each block under non-reentrant checkpointing when a graph is being built (the inner step's `create_graph=True`), so
the outer backward recomputes one block at a time instead of finding them all stored. The result is the math
kernel's, to rounding, in value, gradient and second derivative.

It replaces transformers' `"sdpa"` attention function only while `double_backward_attention` is active (the inner
pass and the re-computation of its checkpointed layers), through `ALL_ATTENTION_FUNCTIONS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint
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
    """`softmax(q k^T * scale + mask) v` with a backward written in differentiable ops (see the module docstring)."""

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
        ctx.save_for_backward(query, key, value, mask)
        ctx.scale, ctx.causal, ctx.block_size = scale, causal, block_size
        return output

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, mask = ctx.saved_tensors
        return (*_attention_grads(query, key, value, mask, grad_output, ctx.scale, ctx.causal, ctx.block_size),) + (
            None,
        ) * 4


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


def _attention_grads(query, key, value, mask, grad_output, scale, causal, block_size):
    """Gradients w.r.t. query, key and value, one block of queries at a time (a graph is built if grad mode is on).

    Computed in the output's dtype with autocast off, whatever the autocast state of the backward: under autocast
    the inputs may mix float32 and bfloat16.
    """
    batch, heads, length, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    groups, dtype = heads // kv_heads, grad_output.dtype
    # GQA without copies: queries as [batch, kv_heads, groups, queries, dim] against keys [batch, kv_heads, 1, ...].
    query5 = query.to(dtype).reshape(batch, kv_heads, groups, length, dim)
    grad5 = grad_output.reshape(batch, kv_heads, groups, length, value.shape[-1])
    key5, value5 = key.to(dtype).unsqueeze(2), value.to(dtype).unsqueeze(2)
    mask5 = None if mask is None else mask.unsqueeze(2) if mask.dim() == 4 else mask
    build_graph = torch.is_grad_enabled()
    grad_query, grad_key, grad_value = [], torch.zeros_like(key5), torch.zeros_like(value5)
    with torch.autocast(query.device.type, enabled=False):
        for start in range(0, length, block_size):
            end = min(start + block_size, length)
            # With a causal mask no query of this block sees a key at or after `end`.
            visible = end if causal else keys
            block_mask = None
            if mask5 is not None:
                block_mask = mask5[..., start:end, :visible] if mask5.shape[-2] > 1 else mask5[..., :visible]
            args = (
                query5[..., start:end, :],
                key5[..., :visible, :],
                value5[..., :visible, :],
                grad5[..., start:end, :],
                block_mask,
                scale,
                start if causal else None,
            )
            block = checkpoint(_block_grads, *args, use_reentrant=False) if build_graph else _block_grads(*args)
            grad_query.append(block[0])
            grad_key = _add_prefix(grad_key, block[1])
            grad_value = _add_prefix(grad_value, block[2])
    grad_query = torch.cat(grad_query, dim=3).reshape(query.shape).to(query.dtype)
    return grad_query, grad_key.squeeze(2).to(key.dtype), grad_value.squeeze(2).to(value.dtype)


def _add_prefix(total: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """`total` plus `part` on its first keys (out of place: both may be part of a graph)."""
    if part.shape[-2] == total.shape[-2]:
        return total + part
    return torch.cat([total[..., : part.shape[-2], :] + part, total[..., part.shape[-2] :, :]], dim=-2)


def _block_grads(query, key, value, grad_output, mask, scale, causal_offset):
    """Backward of attention for one block of queries; plain differentiable ops, so it has its own backward."""
    query = query * scale
    scores = torch.matmul(query, key.transpose(-1, -2))
    bias, empty = _block_bias(mask, causal_offset, query.shape[-2], key.shape[-2], scores.dtype, scores.device)
    probs = torch.softmax(scores if bias is None else scores + bias, dim=-1)
    if empty is not None:
        # Rows with no visible key: the math kernel's safe softmax gives them zero probabilities (and no gradient).
        probs = probs.masked_fill(empty, 0.0)
    grad_probs = torch.matmul(grad_output, value.transpose(-1, -2))
    weighted = probs * grad_probs
    grad_scores = torch.addcmul(weighted, probs, weighted.sum(-1, keepdim=True), value=-1.0)
    grad_query = torch.matmul(grad_scores, key) * scale
    grad_key = torch.matmul(grad_scores.transpose(-1, -2), query).sum(2, keepdim=True)
    grad_value = torch.matmul(probs.transpose(-1, -2), grad_output).sum(2, keepdim=True)
    return grad_query, grad_key, grad_value


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
