"""Label-free mode on every task family: without answers, the teacher's greedy continuation is the target."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from peft import LoraConfig, get_peft_model

from hf_metaprompt import MetaDistillModel, MetaPromptSettings, PromptTargetCollator
from hf_metaprompt.data.reversal import load_reversal_tasks
from hf_metaprompt.data.squad import load_squad_tasks
from hf_metaprompt.data.text import load_text_tasks
from hf_metaprompt.data.tiny_world import load_tiny_world

FIXTURES = Path(__file__).parent / "fixtures"
REVERSAL_DIR = FIXTURES / "reversal_curse"


def task_examples(task: str) -> list[dict]:
    if task == "tiny_world":
        dataset = load_tiny_world(num_train=8, num_validation=8, num_test=8)["test"]
    elif task in ("reversal", "character_description"):
        dataset = load_reversal_tasks(REVERSAL_DIR, task=task)["test"]
    elif task == "squad":
        dataset = load_squad_tasks(FIXTURES / "squad_small.json")
    else:
        dataset = load_text_tasks(FIXTURES / "wikitext_small.txt", min_words=20)
    return [{"context": e["context"], "query": e["query"], "answer": ""} for e in dataset.select(range(2))]


@pytest.mark.parametrize("task", ["tiny_world", "reversal", "character_description", "squad", "text"])
def test_label_free_meta_step(task, llama_tokenizer, monkeypatch):
    examples = task_examples(task)
    collator = PromptTargetCollator(llama_tokenizer, max_context_length=64, max_query_length=256)
    batch = collator(examples)
    assert "labels" not in batch

    peft_model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    settings = MetaPromptSettings(max_answer_length=5)
    meta = MetaDistillModel(peft_model, settings, pad_token_id=collator.pad_token_id, eos_token_id=2)

    generated = {}
    original = MetaDistillModel._append_teacher_answers

    def spy(self, *args):
        result = original(self, *args)
        generated["views"] = result
        return result

    monkeypatch.setattr(MetaDistillModel, "_append_teacher_answers", spy)
    output = meta(**batch)
    output.loss.backward()

    teacher_ids, teacher_mask, student_ids, student_mask, labels = generated["views"]
    targets = labels != -100
    assert 0 < output.num_targets <= len(examples) * settings.max_answer_length
    for row in range(len(examples)):
        n = int(targets[row].sum())
        assert n > 0 and targets[row, -n:].all()
        # The generated answer ends both views, so the teacher's targets are the student's.
        assert torch.equal(teacher_ids[row, -n:], student_ids[row, -n:])
        assert torch.equal(student_ids[row, -n:], labels[row, -n:])
        assert teacher_mask[row, -n:].all() and student_mask[row, -n:].all()
    assert all(torch.isfinite(p.grad).all() for p in meta.parameters() if p.grad is not None)
    assert meta.log_inner_lrs.grad.abs().sum() > 0
