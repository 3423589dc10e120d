"""The meta-gradient is right: finite differences, batched = per-task loop, checkpointing, architectures."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import EXAMPLES, tiny_model
from peft import LoraConfig, get_peft_model
from torch.utils.checkpoint import CheckpointError

from hf_metaprompt import MetaDistillModel, MetaPromptSettings, PromptTargetCollator

TOKENIZER_BOS = {"llama": True, "gpt2": False, "qwen2": False}


def build(arch="llama", attn="sdpa", dtype=torch.float64, inner_params="lora", word_classes=None, **settings):
    base = tiny_model(arch, attn, dtype=dtype)
    options = {"inner_lr": 0.3, "min_inner_lr": 1e-3, "max_inner_lr": 10.0, "inner_params": inner_params, **settings}
    ids = {"word_classes": word_classes}
    if inner_params == "all":
        teacher = copy.deepcopy(base)
        meta = MetaDistillModel(base, MetaPromptSettings(**options), teacher=teacher, **ids)
    else:
        # GPT-2's Conv1D layers store the weight transposed: say so, as the trainer does (PEFT would warn and fix it).
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", fan_in_fan_out=arch == "gpt2")
        peft_model = get_peft_model(base, lora)
        torch.manual_seed(1)
        with torch.no_grad():  # B = 0 at init would hide second-order terms: start from a generic point.
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.3)
        meta = MetaDistillModel(peft_model, MetaPromptSettings(**options), **ids)
    meta.to(dtype)  # the inner learning rates too, for exact finite differences
    meta.eval()
    return meta


def batch_for(tokenizer, examples=EXAMPLES):
    return PromptTargetCollator(tokenizer)(examples)


def trainable(meta):
    return [p for p in meta.parameters() if p.requires_grad]


def flat_grad(meta, batch, **kwargs):
    meta.zero_grad()
    meta(**batch, **kwargs).loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in trainable(meta)])


def directional_fd(meta, batch, direction, eps=1e-5):
    params = trainable(meta)
    originals = [p.detach().clone() for p in params]

    def loss_at(scale):
        with torch.no_grad():
            offset = 0
            for p, original in zip(params, originals, strict=True):
                n = p.numel()
                p.copy_(original + scale * direction[offset : offset + n].view_as(p))
                offset += n
        with torch.enable_grad():
            return meta(**batch).loss.item()

    value = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    loss_at(0.0)
    return value


def assert_matches_finite_differences(meta, batch, grad, directions=3, generator=None):
    """`grad` agrees with central differences of the loss along random directions (relative error < 1e-3)."""
    generator = generator or torch.Generator().manual_seed(0)
    for _ in range(directions):
        direction = torch.randn(grad.shape, generator=generator, dtype=grad.dtype)
        analytic, numeric = float(grad @ direction), directional_fd(meta, batch, direction)
        assert abs(analytic - numeric) / abs(numeric) < 1e-3, (analytic, numeric)


@pytest.mark.parametrize(("steps", "inner_params"), [(1, "lora"), (2, "lora"), (1, "all")])
def test_meta_gradient_matches_finite_differences(gpt2_tokenizer, steps, inner_params):
    # GPT-2 runs entirely in float64 (Llama's RMSNorm computes in float32, which caps finite differences at ~1e-3).
    meta = build(
        "gpt2", inner_steps=steps, inner_params=inner_params, inner_lr=0.3 if inner_params == "lora" else 0.05
    )
    batch = batch_for(gpt2_tokenizer)
    grad = flat_grad(meta, batch)
    generator = torch.Generator().manual_seed(0)
    assert_matches_finite_differences(meta, batch, grad, generator=generator)

    # The learned inner learning rates alone.
    lr_direction = torch.zeros_like(grad)
    lr_direction[-meta.log_inner_lrs.numel() :] = torch.randn(meta.log_inner_lrs.numel(), generator=generator)
    analytic, numeric = float(grad @ lr_direction), directional_fd(meta, batch, lr_direction)
    assert abs(analytic) > 0
    assert abs(analytic - numeric) / abs(numeric) < 1e-3, (analytic, numeric)

    # First order drops the second-order terms: measurably different.
    meta.settings.first_order = True
    first_order = flat_grad(meta, batch)
    assert torch.linalg.vector_norm(first_order - grad) / torch.linalg.vector_norm(grad) > 0.05


def test_batched_inner_step_equals_per_task_loop(llama_tokenizer):
    meta = build()
    batch = batch_for(llama_tokenizer)
    total_targets = int((batch["labels"] != -100).sum())
    batched_loss = meta(**batch).loss
    batched_grad = flat_grad(meta, batch)

    loop_loss, loop_grad = 0.0, torch.zeros_like(batched_grad)
    for example in EXAMPLES:
        single = batch_for(llama_tokenizer, [example])
        meta.zero_grad()
        loss = meta(**single, num_items_in_batch=total_targets).loss
        loss.backward()
        loop_loss += loss.item()
        loop_grad += torch.cat([p.grad.reshape(-1) for p in trainable(meta)])
    assert batched_loss.item() == pytest.approx(loop_loss, rel=1e-9)
    torch.testing.assert_close(batched_grad, loop_grad, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("memory_efficient_inner", [True, False])
@pytest.mark.parametrize("inner_params", ["lora", "all"])
def test_activation_checkpointing_keeps_meta_gradient(llama_tokenizer, inner_params, memory_efficient_inner):
    batch = batch_for(llama_tokenizer)
    plain = build(inner_params=inner_params, memory_efficient_inner=memory_efficient_inner)
    plain.train()
    reference = flat_grad(plain, batch)

    checkpointed = build(inner_params=inner_params, memory_efficient_inner=memory_efficient_inner)
    checkpointed.train()
    checkpointed.activation_checkpointing_enable()
    torch.testing.assert_close(flat_grad(checkpointed, batch), reference, rtol=1e-7, atol=1e-10)

    # Guard: plain non-reentrant checkpointing recomputes with the shared weights; here that is caught (the shapes
    # differ from the per-task weights), with functional_call-style substitution it silently gave wrong gradients.
    naive = build(inner_params=inner_params, memory_efficient_inner=memory_efficient_inner)
    naive.train()
    getattr(naive.model, "get_base_model", lambda: naive.model)()._activation_checkpointing_enable(
        {"use_reentrant": False}
    )
    with pytest.raises(CheckpointError):
        flat_grad(naive, batch)


def test_reentrant_checkpointing_is_refused(llama_tokenizer):
    meta = build()
    with pytest.raises(ValueError, match="use_reentrant=True"):
        meta.activation_checkpointing_enable({"use_reentrant": True})


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_architectures_and_attention(request, arch, attn):
    tokenizer = request.getfixturevalue("llama_tokenizer" if TOKENIZER_BOS[arch] else "gpt2_tokenizer")
    meta = build(arch, attn, dtype=torch.float32)
    batch = batch_for(tokenizer)
    grad = flat_grad(meta, batch)
    assert torch.isfinite(grad).all()
    lora_grads = [p.grad for n, p in meta.named_parameters() if "lora_" in n]
    assert all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    assert meta.log_inner_lrs.grad.abs().sum() > 0
    # Same meta-gradient whatever the attention implementation (sdpa runs the math kernel in the inner pass).
    other = build(arch, "eager" if attn == "sdpa" else "sdpa", dtype=torch.float32)
    torch.testing.assert_close(flat_grad(other, batch), grad, rtol=1e-4, atol=1e-6)


def test_kernel_without_double_backward_fails_clearly():
    with pytest.raises(ValueError, match=r"no double backward.*attn_implementation='sdpa'"):
        build(attn="flash_attention_2")
    # First order never differentiates the inner forward twice, so any kernel is fine.
    build(attn="flash_attention_2", first_order=True)


def test_sdpa_fast_kernel_really_lacks_double_backward():
    """Why the inner pass forces the math kernel: the CPU flash kernel cannot be differentiated twice."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    (grad,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        grad.sum().backward()


def test_fast_weights_do_not_leak(llama_tokenizer):
    """After a meta-step the model computes with its shared weights again (no forward left patched)."""
    meta = build(dtype=torch.float32)
    batch = batch_for(llama_tokenizer)
    ids, mask = batch["student_input_ids"], batch["student_attention_mask"]
    before = meta.model(input_ids=ids, attention_mask=mask).logits
    meta(**batch)
    after = meta.model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert not any("forward" in m.__dict__ for m in meta.model.modules())
