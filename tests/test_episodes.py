"""Episodes of several texts: exact meta-gradients, batched = per-episode loop, T = 1 is today's step, clear errors."""

from __future__ import annotations

import pytest
import torch
from conftest import EXAMPLES, tiny_model
from peft import LoraConfig, get_peft_model
from test_meta_gradient import assert_matches_finite_differences, build, flat_grad, trainable

from hf_metaprompt import (
    MetaDistillConfig,
    MetaDistillModel,
    MetaPromptModel,
    MetaPromptSettings,
    PromptTargetCollator,
)
from hf_metaprompt.fast_weights import use_fast_weights
from hf_metaprompt.inner import absorb_groups, inner_update
from hf_metaprompt.losses import distillation_divergence
from hf_metaprompt.meta_step import causal_logits
from hf_metaprompt.tokens import IGNORE_INDEX, target_window

# Two episodes of two texts each.
EPISODES = [*EXAMPLES, {**EXAMPLES[0], "context": "Dora Lind is a poet from Riga. Bob Tanaka is a nurse."}]


def episode_batch(tokenizer, examples=EPISODES, texts=2):
    return PromptTargetCollator(tokenizer, texts_per_episode=texts)(examples)


@pytest.mark.parametrize(
    ("composition", "inner_params"), [("sequential", "lora"), ("additive", "lora"), ("sequential", "base")]
)
def test_episode_meta_gradient_matches_finite_differences(gpt2_tokenizer, composition, inner_params):
    meta = build(
        "gpt2",
        texts_per_episode=2,
        text_composition=composition,
        inner_params=inner_params,
        inner_lr=0.3 if inner_params == "lora" else 0.05,
    )
    batch = episode_batch(gpt2_tokenizer)
    grad = flat_grad(meta, batch)
    assert_matches_finite_differences(meta, batch, grad)
    # The meta-gradient reaches the first text's step: first order (detached inner gradients) differs.
    meta.settings.first_order = True
    assert torch.linalg.vector_norm(flat_grad(meta, batch) - grad) / torch.linalg.vector_norm(grad) > 0.05


@pytest.mark.parametrize("composition", ["sequential", "additive"])
def test_batched_episodes_equal_per_episode_loop(llama_tokenizer, composition):
    meta = build(texts_per_episode=2, text_composition=composition)
    batch = episode_batch(llama_tokenizer)
    total_targets = int((batch["labels"] != IGNORE_INDEX).sum())
    batched_loss = meta(**batch).loss
    batched_grad = flat_grad(meta, batch)
    loop_loss, loop_grad = 0.0, torch.zeros_like(batched_grad)
    for start in (0, 2):
        meta.zero_grad()
        loss = meta(**episode_batch(llama_tokenizer, EPISODES[start : start + 2]), num_items_in_batch=total_targets)
        loss.loss.backward()
        loop_loss += loss.loss.item()
        loop_grad += torch.cat([p.grad.reshape(-1) for p in trainable(meta)])
    assert batched_loss.item() == pytest.approx(loop_loss, rel=1e-9)
    torch.testing.assert_close(batched_grad, loop_grad, rtol=1e-7, atol=1e-10)


def test_sequential_episode_is_one_step_after_another(llama_tokenizer):
    """The second text's step starts from the weights the first text's step left (and only then)."""
    meta = build(texts_per_episode=2)
    batch = episode_batch(llama_tokenizer, EPISODES[:2])
    with torch.no_grad():
        fast, _ = meta.absorb_episodes(batch["context_input_ids"], batch["context_attention_mask"])
        lrs = meta.inner_lrs()
        ids, mask = batch["context_input_ids"], batch["context_attention_mask"]
        first, _ = inner_update(meta.model, meta.adapted, lrs, ids[:1], mask[:1], create_graph=False)
        second, _ = inner_update(meta.model, meta.adapted, lrs, ids[1:], mask[1:], create_graph=False, start=first)
    for got, expected in zip(fast.tensors, second.tensors, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert fast.rows_per_task == 2


def test_one_text_episode_is_bit_identical_to_the_single_text_step(llama_tokenizer):
    meta = build(dtype=torch.float32)
    batch = PromptTargetCollator(llama_tokenizer)(EXAMPLES)
    meta.zero_grad()
    output = meta(**batch)
    output.loss.backward()
    episode_grads = [p.grad.clone() for p in trainable(meta)]

    # The single-text meta-step written out: inner step, student with fast weights, divergence on the targets.
    meta.zero_grad()
    labels = batch["labels"]
    keep = target_window(labels)
    targets = labels[:, -keep + 1 :] != IGNORE_INDEX
    teacher = meta.teacher_logits(batch["teacher_input_ids"], batch["teacher_attention_mask"], keep)
    fast, _ = inner_update(
        meta.model, meta.adapted, meta.inner_lrs(), batch["context_input_ids"], batch["context_attention_mask"]
    )
    with use_fast_weights(fast):
        student = causal_logits(meta.model, batch["student_input_ids"], batch["student_attention_mask"], keep)
    loss = (distillation_divergence(teacher, student) * targets).sum() / targets.sum()
    loss.backward()
    assert torch.equal(output.loss.detach(), loss.detach())
    for got, expected in zip(episode_grads, (p.grad for p in trainable(meta)), strict=True):
        assert torch.equal(got, expected)


def test_truncated_meta_gradient_is_second_order_through_the_last_texts_only(llama_tokenizer):
    """`second_order_texts=K`: the steps on an episode's last K texts are second order, the earlier ones first order
    (and the meta-gradient still reaches the weights they start from)."""
    meta = build(texts_per_episode=3)
    contexts = [example["context"] for example in EPISODES[:3]]
    batch = llama_tokenizer(contexts, return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    params = trainable(meta)
    torch.manual_seed(0)
    probe = [torch.randn_like(t) for t in meta.adapted.initial(1).tensors]

    def meta_gradient(fast) -> list[torch.Tensor]:
        value = sum((probe_t * t).sum() for probe_t, t in zip(probe, fast.tensors, strict=True))
        return torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True)

    def by_hand(first_order_steps: int) -> list[torch.Tensor]:
        fast, lrs = None, meta.inner_lrs()
        for position in range(3):
            fast, _ = inner_update(
                meta.model, meta.adapted, lrs, ids[position : position + 1], mask[position : position + 1],
                start=fast, first_order=position < first_order_steps,
            )  # fmt: skip
        return meta_gradient(fast)

    def truncated(second_order_texts):
        lrs = meta.inner_lrs()
        fast, _ = absorb_groups(meta.model, meta.adapted, lrs, ids, mask, 3, second_order_texts=second_order_texts)
        return meta_gradient(fast)

    for second_order_texts, first_order_steps in ((None, 0), (3, 0), (5, 0), (2, 1), (1, 2)):
        for got, expected in zip(truncated(second_order_texts), by_hand(first_order_steps), strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # Each truncation is a different meta-gradient: the positions it detaches are the early ones, not the late.
    flat = {k: torch.cat([g.reshape(-1) for g in by_hand(k)]) for k in range(4)}
    for k in range(3):
        assert torch.linalg.vector_norm(flat[k] - flat[k + 1]) > 1e-3 * torch.linalg.vector_norm(flat[0])


def test_truncated_episode_meta_step(llama_tokenizer):
    """Through the trainer's meta-step: K >= T is the full meta-gradient bit for bit; K < T is neither it nor first
    order."""
    meta = build(texts_per_episode=2)
    batch = episode_batch(llama_tokenizer)
    full = flat_grad(meta, batch)
    meta.settings.second_order_texts = 2
    assert torch.equal(flat_grad(meta, batch), full)
    meta.settings.second_order_texts = 1
    truncated = flat_grad(meta, batch)
    meta.settings.second_order_texts, meta.settings.first_order = None, True
    first_order = flat_grad(meta, batch)
    scale = torch.linalg.vector_norm(full)
    assert torch.linalg.vector_norm(truncated - full) > 0.01 * scale
    assert torch.linalg.vector_norm(truncated - first_order) > 0.01 * scale


def test_episode_errors_are_clear(llama_tokenizer):
    with pytest.raises(ValueError, match="cannot hold one episode of texts_per_episode=4"):
        episode_batch(llama_tokenizer, EPISODES[:3], texts=4)
    lacking = [EPISODES[0], {key: value for key, value in EPISODES[1].items() if key != "context"}]
    with pytest.raises(ValueError, match="Example 1 of the batch has no 'context' field"):
        episode_batch(llama_tokenizer, lacking)
    with pytest.raises(ValueError, match="not a multiple of texts_per_episode=3"):
        MetaDistillConfig("out", texts_per_episode=3, per_device_train_batch_size=8, per_device_eval_batch_size=6)
    with pytest.raises(ValueError, match="Set inner_steps=1"):
        MetaDistillConfig("out", text_composition="additive", inner_steps=2)
    with pytest.raises(ValueError, match="text_composition"):
        MetaDistillConfig("out", text_composition="bogus")
    with pytest.raises(ValueError, match="`second_order_texts` must be a positive integer or None, got 0"):
        MetaDistillConfig("out", second_order_texts=0)
    with pytest.raises(ValueError, match="truncates sequential episodes; text_composition='additive'"):
        MetaDistillConfig("out", second_order_texts=2, text_composition="additive")
    meta = build(texts_per_episode=2)
    batch = PromptTargetCollator(llama_tokenizer)(EPISODES[:3])
    with pytest.raises(ValueError, match="not a multiple of texts_per_episode=2"):
        meta(**batch)


def test_incomplete_last_episode_is_dropped(llama_tokenizer, caplog):
    batch = episode_batch(llama_tokenizer, EPISODES[:3])
    assert batch["context_input_ids"].shape[0] == 2
    assert "incomplete episode" in caplog.text


def _additive_model(llama_tokenizer):
    peft_model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    settings = MetaPromptSettings(inner_lr=0.5, max_inner_lr=5.0, text_composition="additive", texts_per_episode=2)
    return MetaPromptModel(MetaDistillModel(peft_model, settings), llama_tokenizer)


def test_additive_absorb_is_one_step_on_the_summed_loss_in_any_order(llama_tokenizer):
    model = _additive_model(llama_tokenizer)
    texts = [EXAMPLES[0]["context"], EXAMPLES[1]["context"]]
    query = llama_tokenizer(["Q: Who is Carla Diaz?\nA:"], return_tensors="pt")

    def logits():
        with torch.no_grad():
            return model(**query).logits

    model.absorb(texts)
    together = logits()
    model.reset().absorb(texts[::-1])
    torch.testing.assert_close(logits(), together, rtol=1e-5, atol=1e-5)  # order does not matter
    model.reset().absorb(texts[0]).absorb(texts[1])
    torch.testing.assert_close(logits(), together, rtol=1e-5, atol=1e-5)  # streaming = all at once
    model.reset().absorb(texts[0])
    assert not torch.allclose(logits(), together, atol=1e-4)  # the second text did change something


def test_varied_episode_lengths_are_powers_of_two_in_training_only():
    meta = build(texts_per_episode=8, vary_texts_per_episode=True)
    meta.train()
    torch.manual_seed(0)
    drawn = {meta.episode_length() for _ in range(64)}
    assert drawn == {1, 2, 4, 8}
    meta.eval()
    assert meta.episode_length() == 8
    assert build(texts_per_episode=6, vary_texts_per_episode=True).train().episode_length() in {1, 2}
