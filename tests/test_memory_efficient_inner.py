"""The memory-efficient inner pass (blockwise attention, chunked vocabulary loss) is exact to second order, is what
the inner pass really runs, and keeps no `[L, L]` or `[tokens, vocab]` tensor for the outer backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from peft import LoraConfig, get_peft_model
from test_meta_gradient import TOKENIZER_BOS, batch_for, build, flat_grad
from torch.nn.attention import SDPBackend, sdpa_kernel

from hf_metaprompt import attention, inner
from hf_metaprompt.attention import memory_efficient_attention
from hf_metaprompt.chunked_nll import chunked_token_nll
from hf_metaprompt.fast_weights import AdaptedModules
from hf_metaprompt.meta_step import right_align


def padded_causal_mask(lengths: list[int], total: int, left: bool) -> torch.Tensor:
    """`[batch, 1, total, total]` causal mask with each row's padding masked out (as transformers builds it)."""
    keep = torch.zeros(len(lengths), total, dtype=torch.bool)
    for row, length in enumerate(lengths):
        if left:
            keep[row, total - length :] = True
        else:
            keep[row, :length] = True
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    return (causal & keep[:, None, :])[:, None]


def math_attention(query, key, value, mask, causal):
    groups = query.shape[1] // key.shape[1]
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(
            query,
            key.repeat_interleave(groups, 1),
            value.repeat_interleave(groups, 1),
            attn_mask=mask,
            is_causal=causal,
        )


def second_order_terms(function, inputs, seed=0):
    """Value, gradient of a random projection of it, and the gradient of a random projection of that gradient."""
    generator = torch.Generator().manual_seed(seed)
    output = function(*inputs)
    weights = torch.randn(output.shape, generator=generator, dtype=output.dtype)
    grads = torch.autograd.grad((output * weights).sum(), inputs, create_graph=True)
    projection = sum((g * torch.randn(g.shape, generator=generator, dtype=g.dtype)).sum() for g in grads)
    return [output, *grads, *torch.autograd.grad(projection, inputs)]


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("masking", ["causal", "right_padding", "left_padding", "additive", "per_head"])
def test_attention_matches_math_kernel_to_second_order(kv_heads, masking):
    torch.manual_seed(0)
    batch, heads, length, dim = 2, 4, 19, 8
    query = torch.randn(batch, heads, length, dim, dtype=torch.float64, requires_grad=True)
    key, value = (torch.randn(batch, kv_heads, length, dim, dtype=torch.float64, requires_grad=True) for _ in "kv")
    mask = None
    if masking in ("right_padding", "left_padding"):
        # Left padding leaves query rows with no visible key: the math kernel gives them zeros, and so must we.
        mask = padded_causal_mask([length, 12], length, left=masking == "left_padding")
    elif masking == "additive":
        mask = torch.randn(batch, 1, length, length, dtype=torch.float64)
    elif masking == "per_head":  # one mask per query head: the heads sharing a key head must each get their own
        mask = torch.randn(batch, heads, length, length, dtype=torch.float64)
        mask[:, 1::2] = mask[:, 1::2].tril().masked_fill(torch.ones(length, length).triu(1).bool(), float("-inf"))
    causal = masking in ("causal", "right_padding", "left_padding")

    def reference(q, k, v):
        return math_attention(q, k, v, mask, causal and mask is None)

    def blockwise(q, k, v):  # 19 queries in blocks of 8: uneven blocks, causal key cut-off per block
        return memory_efficient_attention(q, k, v, mask, causal=causal, block_size=8)

    expected, actual = (
        second_order_terms(reference, (query, key, value)),
        second_order_terms(blockwise, (query, key, value)),
    )
    for a, e in zip(actual, expected, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_attention_second_derivative_matches_finite_differences(kv_heads):
    torch.manual_seed(0)
    query = torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True)
    inputs = [query, *(torch.randn(1, kv_heads, 6, 4, dtype=torch.float64, requires_grad=True) for _ in "kv")]
    mask = padded_causal_mask([4], 6, left=True)
    assert torch.autograd.gradgradcheck(
        lambda q, k, v: memory_efficient_attention(q, k, v, mask, causal=True, block_size=4), inputs
    )


def test_chunked_nll_matches_full_logits_to_second_order():
    torch.manual_seed(0)
    tokens, dim, vocab = 23, 8, 50
    features = torch.randn(tokens, dim, dtype=torch.float64, requires_grad=True)
    mixing = torch.randn(dim, dim, dtype=torch.float64, requires_grad=True)
    head = torch.randn(vocab, dim, dtype=torch.float64)
    targets = torch.randint(0, vocab, (tokens,))

    def reference(x, a):
        return -F.log_softmax(torch.tanh(x @ a) @ head.T, -1).gather(-1, targets[:, None]).squeeze(-1)

    def chunked(x, a):  # chunks of 7 tokens: uneven
        return chunked_token_nll(torch.tanh(x @ a), head, targets, chunk_elements=7 * vocab)

    inputs = (features, mixing)
    for a, e in zip(second_order_terms(chunked, inputs), second_order_terms(reference, inputs), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    few = features[:9].detach().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: chunked_token_nll(x, head, targets[:9], 5 * vocab), few)
    with pytest.raises(ValueError, match="frozen"):
        chunked_token_nll(features, head.requires_grad_(), targets)


def count_calls(monkeypatch, module, name: str) -> list:
    calls, original = [], getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def left_padded(batch: dict) -> dict:
    ids, mask = right_align(batch["context_input_ids"], batch["context_attention_mask"])
    assert not mask[:, 0].all(), "the test needs a left-padded row"
    return {**batch, "context_input_ids": ids, "context_attention_mask": mask}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_meta_gradient_equals_reference_path(request, monkeypatch, arch, padding):
    tokenizer = request.getfixturevalue("llama_tokenizer" if TOKENIZER_BOS[arch] else "gpt2_tokenizer")
    batch = batch_for(tokenizer)
    batch = left_padded(batch) if padding == "left" else batch
    reference = flat_grad(build(arch, memory_efficient_inner=False), batch)

    attention_calls = count_calls(monkeypatch, attention, "memory_efficient_attention")
    nll_calls = count_calls(monkeypatch, inner, "chunked_token_nll")
    efficient = flat_grad(build(arch), batch)
    # Both layers' attention and the loss went through the new path (GQA for Llama/Qwen2: 4 heads, 2 KV heads).
    assert (len(attention_calls), len(nll_calls)) == (2, 1)
    torch.testing.assert_close(efficient, reference, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_float32_and_bf16_close_to_reference_path(request, arch):
    tokenizer = request.getfixturevalue("llama_tokenizer" if TOKENIZER_BOS[arch] else "gpt2_tokenizer")
    batch = batch_for(tokenizer)

    def meta_gradient(memory_efficient: bool, autocast: bool) -> torch.Tensor:
        meta = build(arch, dtype=torch.float32, memory_efficient_inner=memory_efficient)
        meta.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = meta(**batch).loss
        loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in meta.parameters() if p.requires_grad])

    torch.testing.assert_close(meta_gradient(True, False), meta_gradient(False, False), rtol=1e-4, atol=1e-6)
    efficient, reference = meta_gradient(True, True), meta_gradient(False, True)
    assert torch.nn.functional.cosine_similarity(efficient, reference, dim=0) > 0.99


@pytest.mark.parametrize("memory_efficient", [True, False])
def test_inner_step_keeps_no_quadratic_or_vocabulary_tensor(memory_efficient):
    """What the outer backward finds stored: only the reference path keeps `[.., L, L]` or `[.., vocab]` tensors."""
    length, vocab = 48, 300
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules="all-linear"))
    modules = AdaptedModules.from_peft(model)
    ids = torch.randint(3, vocab, (2, length))
    saved_shapes = []

    def pack(tensor):
        if tensor.is_floating_point():  # boolean attention masks are inputs, not activations
            saved_shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        inner.inner_update(
            model,
            modules,
            torch.full((len(modules.group_names),), 0.1),
            ids,
            torch.ones_like(ids),
            memory_efficient=memory_efficient,
        )
    quadratic = [s for s in saved_shapes if len(s) >= 2 and s[-2:] == (length, length)]
    vocabulary = [s for s in saved_shapes if s and s[-1] == vocab and len(s) > 1 and s[0] != vocab]
    if memory_efficient:
        assert not quadratic and not vocabulary, (quadratic, vocabulary)
    else:  # the guard can fail: the math kernel and full logits do keep them
        assert quadratic and vocabulary


def test_attention_dropout_falls_back_to_math_kernel(gpt2_tokenizer, monkeypatch):
    """GPT-2 trains with attention dropout, which the blockwise attention does not implement: the inner pass then
    runs the math kernel, and the meta-gradient exists."""
    meta = build("gpt2", dtype=torch.float32)
    for module in meta.model.modules():
        if hasattr(module, "attn_dropout"):
            module.attn_dropout.p = 0.1
    meta.train()
    monkeypatch.setattr(attention, "memory_efficient_attention", lambda *a, **k: pytest.fail("dropout not honoured"))
    grad = flat_grad(meta, batch_for(gpt2_tokenizer))
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
