"""The outer loss's optional hard-target term (`answer_loss_weight`): what it adds, that its meta-gradient is exact,
and that a checkpoint records it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import EXAMPLES
from datasets import Dataset
from test_meta_gradient import assert_matches_finite_differences, batch_for, build, flat_grad

from hf_metaprompt import MetaDistillModel, MetaPromptSettings, PromptTargetCollator
from hf_metaprompt.fast_weights import use_fast_weights
from hf_metaprompt.inner import position_ids_from_mask
from hf_metaprompt.losses import mix_answer_loss
from hf_metaprompt.teacher_answers import add_teacher_answers
from hf_metaprompt.tokens import IGNORE_INDEX


def test_mix_answer_loss_interpolates_soft_and_hard_targets():
    divergence, nll = torch.tensor([0.2, 1.0]), torch.tensor([3.0, 0.5])
    assert torch.equal(mix_answer_loss(divergence, nll, 0.0), divergence)
    assert torch.equal(mix_answer_loss(divergence, nll, 1.0), nll)
    torch.testing.assert_close(mix_answer_loss(divergence, nll, 0.25), torch.tensor([0.9, 0.875]))


def updated_student_answer_nll(meta: MetaDistillModel, batch: dict) -> torch.Tensor:
    """Mean cross-entropy of the gold answer tokens under the model after its step, written out independently."""
    with torch.no_grad():
        fast, _ = meta.absorb_episodes(batch["context_input_ids"], batch["context_attention_mask"])
        ids, mask = batch["student_input_ids"], batch["student_attention_mask"]
        with use_fast_weights(fast):
            logits = meta.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


@pytest.mark.parametrize("inner_params", ["lora", "all"])
def test_answer_loss_weight_mixes_the_updated_models_answer_cross_entropy(llama_tokenizer, inner_params):
    meta = build("llama", inner_params=inner_params)
    batch = batch_for(llama_tokenizer)
    with torch.no_grad():
        divergence = meta(**batch).loss
    meta.settings.answer_loss_weight = 1.0
    with torch.no_grad():
        hard = meta(**batch).loss
    torch.testing.assert_close(hard, updated_student_answer_nll(meta, batch), rtol=1e-9, atol=0)
    assert abs(float(hard - divergence)) > 1e-3  # the two targets differ: the check above can fail
    meta.settings.answer_loss_weight = 0.3
    with torch.no_grad():
        mixed = meta(**batch).loss
    torch.testing.assert_close(mixed, 0.7 * divergence + 0.3 * hard, rtol=1e-9, atol=0)


def test_label_free_answer_loss_is_the_cross_entropy_of_the_teachers_greedy_answer(llama_tokenizer):
    meta = build("llama", answer_loss_weight=1.0, max_answer_length=4)
    collator = PromptTargetCollator(llama_tokenizer, max_answer_length=4)
    answerless = Dataset.from_list([{**example, "answer": ""} for example in EXAMPLES])
    answered = add_teacher_answers(answerless, meta, collator, llama_tokenizer)
    assert len(answered) > 0 and all(answered["answer"])
    batch = collator(list(answered))
    with torch.no_grad():
        loss = meta(**batch).loss
    torch.testing.assert_close(loss, updated_student_answer_nll(meta, batch), rtol=1e-9, atol=0)


def test_the_teacher_is_not_run_when_the_answers_carry_the_whole_weight(llama_tokenizer, monkeypatch):
    meta = build("llama")
    batch = batch_for(llama_tokenizer)
    calls = []
    original = MetaDistillModel.teacher_logits
    monkeypatch.setattr(MetaDistillModel, "teacher_logits", lambda self, *a: calls.append(1) or original(self, *a))
    meta.settings.answer_loss_weight = 0.99
    meta(**batch)
    assert calls == [1]
    meta.settings.answer_loss_weight = 1.0
    meta(**batch).loss.backward()
    assert calls == [1]  # skipped: its divergence would be multiplied by 0


def test_meta_gradient_with_answer_loss_matches_finite_differences(gpt2_tokenizer):
    meta = build("gpt2", answer_loss_weight=0.5)
    batch = batch_for(gpt2_tokenizer)
    grad = flat_grad(meta, batch)
    assert_matches_finite_differences(meta, batch, grad)
    meta.settings.answer_loss_weight = 0.0
    assert torch.linalg.vector_norm(flat_grad(meta, batch) - grad) / torch.linalg.vector_norm(grad) > 0.05


def test_answer_loss_weight_is_recorded_with_the_checkpoint(tmp_path):
    MetaPromptSettings(answer_loss_weight=0.5).save(tmp_path)
    assert MetaPromptSettings.load(tmp_path).answer_loss_weight == 0.5
