"""The inner loss's optional backwards term (`reversed_context_weight`): what it reads, what it adds, and that every
path that absorbs a text (meta-training, `MetaPromptModel.absorb`, the evaluation) uses the checkpoint's value."""

from __future__ import annotations

import pytest
import torch
from conftest import EXAMPLES
from test_meta_gradient import assert_matches_finite_differences, batch_for, build, flat_grad

from hf_metaprompt import MetaPromptModel, inner
from hf_metaprompt.evaluation import ConditionEvaluator

PAD, BOS = 0, 1


def test_reversed_tokens_keep_a_leading_bos_and_the_padding_in_place():
    rows = torch.tensor(
        [
            [PAD, PAD, BOS, 5, 6, 7],  # left padded
            [BOS, 5, 6, 7, 8, PAD],  # right padded
            [5, 6, 7, PAD, PAD, PAD],  # no BOS: every token is reversed
            [BOS, 9, PAD, PAD, PAD, PAD],  # one token after BOS
        ]
    )
    expected = torch.tensor(
        [
            [PAD, PAD, BOS, 7, 6, 5],
            [BOS, 8, 7, 6, 5, PAD],
            [7, 6, 5, PAD, PAD, PAD],
            [BOS, 9, PAD, PAD, PAD, PAD],
        ]
    )
    # A BOS id that pads share is still only kept where it starts a row's tokens.
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    assert torch.equal(inner.reversed_tokens(rows, mask, bos_token_id=BOS), expected)
    assert torch.equal(inner.reversed_tokens(rows[2:3], mask[2:3], bos_token_id=None), expected[2:3])


@pytest.mark.parametrize("chunked_vocab", [True, False])
def test_reversed_term_adds_the_next_token_loss_of_the_text_read_backwards(llama_tokenizer, chunked_vocab):
    meta = build("llama")
    batch = batch_for(llama_tokenizer)
    ids, mask = batch["context_input_ids"], batch["context_attention_mask"]
    model = meta.model
    forward = inner.next_token_losses(model, ids, mask, chunked_vocab)
    assert torch.equal(inner.context_losses(model, ids, mask, chunked_vocab, reversed_weight=0.0), forward)
    backwards = torch.full_like(ids, llama_tokenizer.pad_token_id)
    for row, (tokens, keep) in enumerate(zip(ids, mask.bool(), strict=True)):
        text = tokens[keep]
        assert text[0] == llama_tokenizer.bos_token_id
        backwards[row, : len(text)] = torch.cat([text[:1], text[1:].flip(0)])  # contexts are right padded
    expected = forward + 0.5 * inner.next_token_losses(model, backwards, mask, chunked_vocab)
    torch.testing.assert_close(inner.context_losses(model, ids, mask, chunked_vocab, reversed_weight=0.5), expected)


def test_meta_gradient_through_the_reversed_term_matches_finite_differences(gpt2_tokenizer):
    meta = build("gpt2", reversed_context_weight=0.5)
    batch = batch_for(gpt2_tokenizer)
    grad = flat_grad(meta, batch)
    assert_matches_finite_differences(meta, batch, grad, directions=2)
    meta.settings.reversed_context_weight = 0.0
    assert torch.linalg.vector_norm(flat_grad(meta, batch) - grad) > 1e-3 * torch.linalg.vector_norm(grad)


def test_absorbing_and_evaluating_use_the_checkpoints_inner_objective(llama_tokenizer):
    """`MetaPromptModel.absorb` and the evaluation's `meta_1step` take the step the checkpoint was meta-trained
    with: the same fast weights as the meta-step's own inner update, and not those of the forward loss alone."""
    meta = build("llama", reversed_context_weight=0.5)
    batch = batch_for(llama_tokenizer, EXAMPLES[:1])
    ids, mask = batch["context_input_ids"], batch["context_attention_mask"]
    with torch.no_grad():
        trained, _ = meta.absorb_episodes(ids, mask)
    model = MetaPromptModel(meta, llama_tokenizer)
    absorbed = model.absorb(EXAMPLES[0]["context"]).fast_weights
    for got, want in zip(absorbed.tensors, trained.tensors, strict=True):
        torch.testing.assert_close(got, want)
    forward_only, _ = inner.inner_update(meta.model, meta.adapted, meta.inner_lrs(), ids, mask, create_graph=False)
    assert any(not torch.allclose(a, b) for a, b in zip(absorbed.tensors, forward_only.tensors, strict=True))

    scored = {}
    evaluator = ConditionEvaluator(meta, llama_tokenizer, show_progress=False)
    for weight in (0.5, 0.0):
        meta.settings.reversed_context_weight = weight
        rows = evaluator.evaluate(EXAMPLES, "toy", conditions=["meta_1step"])
        scored[weight] = [row["answer_logprob"] for row in rows]
    assert scored[0.5] != scored[0.0]
