"""The inner loss's optional backwards term (`reversed_context_weight`): what it reads, what it adds, and that every
path that absorbs a text (meta-training, `MetaPromptModel.absorb`, the evaluation) uses the checkpoint's value."""

from __future__ import annotations

import pytest
import torch
from conftest import EXAMPLES
from test_meta_gradient import assert_matches_finite_differences, batch_for, build, flat_grad
from transformers import AutoTokenizer

from hf_metaprompt import MetaPromptModel, inner
from hf_metaprompt.assets import tiny_base_path
from hf_metaprompt.evaluation import ConditionEvaluator
from hf_metaprompt.settings import MetaPromptSettings
from hf_metaprompt.tokens import encode, pad_rows, word_classes

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


def test_entity_reversal_puts_each_name_whole_after_its_description():
    """The tiny world's tokenizer has a token per word: the words come back in reverse order, a name's (and a
    city's) run of capitalised words in reading order, a leading BOS first and the padding where it was."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_path())
    texts = ["Hana Santos, an electrician, is based in New Porto.", "Julia Larsen is a sculptor."]
    rows = [[tokenizer.bos_token_id, *ids] for ids in encode(tokenizer, texts)]
    classes = word_classes(tokenizer)
    for left in (True, False):
        ids, mask = pad_rows(rows, tokenizer.pad_token_id, left=left)
        backwards = inner.reversed_tokens(ids, mask, tokenizer.bos_token_id, classes)
        assert torch.equal(backwards[mask == 0], ids[mask == 0])
        read = [tokenizer.decode(row[keep.bool()]) for row, keep in zip(backwards, mask, strict=True)]
        assert read == ["<s>. New Porto in based is, electrician an, Hana Santos", "<s>. sculptor a is Julia Larsen"]
    ids, mask = pad_rows(rows, tokenizer.pad_token_id, left=False)
    token_reversal = tokenizer.decode(inner.reversed_tokens(ids, mask, tokenizer.bos_token_id)[1][mask[1].bool()])
    assert token_reversal == "<s>. sculptor a is Larsen Julia"


def test_entity_reversal_keeps_the_pieces_of_a_word_together(llama_tokenizer):
    """Where the tokenizer splits a word into pieces, the word moves as a whole, its pieces in reading order."""
    text = "Alice Moreau is a zygomorphic baker."
    units = ["Alice", " Moreau", " is", " a", " zygomorphic", " baker", "."]
    pieces = encode(llama_tokenizer, units)
    assert len(pieces[4]) > 2  # the test needs a word of several pieces
    ids = torch.tensor([llama_tokenizer(text)["input_ids"]])
    assert ids[0, 1:].tolist() == [token for unit in pieces for token in unit]
    backwards = inner.reversed_tokens(ids, torch.ones_like(ids), 1, word_classes(llama_tokenizer))
    name, *words = pieces[:2], *pieces[2:]
    expected = [1] + [token for unit in [*reversed(words), *name] for token in unit]
    assert backwards[0].tolist() == expected


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


def test_the_entity_unit_needs_a_backwards_term_and_the_tokenizers_words():
    with pytest.raises(ValueError, match="reversed_context_unit='entity'` acts only on the backwards loss"):
        MetaPromptSettings(reversed_context_unit="entity")
    with pytest.raises(ValueError, match="`reversed_context_unit` must be one of 'token', 'entity'; got 'word'"):
        MetaPromptSettings(reversed_context_weight=1.0, reversed_context_unit="word")
    with pytest.raises(ValueError, match=r"pass word_classes=hf_metaprompt.tokens.word_classes\(tokenizer\)"):
        build("llama", reversed_context_weight=1.0, reversed_context_unit="entity")


def test_meta_gradient_through_the_entity_reversed_term_matches_finite_differences(gpt2_tokenizer):
    classes = word_classes(gpt2_tokenizer)
    meta = build("gpt2", reversed_context_weight=0.5, reversed_context_unit="entity", word_classes=classes)
    batch = batch_for(gpt2_tokenizer)
    grad = flat_grad(meta, batch)
    assert_matches_finite_differences(meta, batch, grad, directions=2)
    meta.word_classes = None  # the same term, read token by token
    assert torch.linalg.vector_norm(flat_grad(meta, batch) - grad) > 1e-3 * torch.linalg.vector_norm(grad)


@pytest.mark.parametrize("unit", ["token", "entity"])
def test_absorbing_and_evaluating_use_the_checkpoints_inner_objective(llama_tokenizer, unit):
    """`MetaPromptModel.absorb` and the evaluation's `meta_1step` take the step the checkpoint was meta-trained
    with: the same fast weights as the meta-step's own inner update, and not those of the forward loss alone."""
    classes = word_classes(llama_tokenizer) if unit == "entity" else None
    meta = build("llama", reversed_context_weight=0.5, reversed_context_unit=unit, word_classes=classes)
    batch = batch_for(llama_tokenizer, EXAMPLES[:1])
    ids, mask = batch["context_input_ids"], batch["context_attention_mask"]
    with torch.no_grad():
        trained, _ = meta.absorb_episodes(ids, mask)
    model = MetaPromptModel(meta, llama_tokenizer)
    absorbed = model.absorb(EXAMPLES[0]["context"]).fast_weights
    for got, want in zip(absorbed.tensors, trained.tensors, strict=True):
        torch.testing.assert_close(got, want)
    step = (meta.model, meta.adapted, meta.inner_lrs(), ids, mask)
    others = [inner.inner_update(*step, create_graph=False)[0]]  # the forward loss alone
    if unit == "entity":
        others.append(inner.inner_update(*step, create_graph=False, reversed_weight=0.5)[0])  # read token by token
    for other in others:
        assert any(not torch.allclose(a, b) for a, b in zip(absorbed.tensors, other.tensors, strict=True))

    evaluator = ConditionEvaluator(meta, llama_tokenizer, show_progress=False)

    def scores():
        return [row["answer_logprob"] for row in evaluator.evaluate(EXAMPLES, "toy", conditions=["meta_1step"])]

    as_trained = scores()
    if unit == "entity":
        meta.word_classes = None
        assert scores() != as_trained
    meta.settings.reversed_context_weight = 0.0
    assert scores() != as_trained
