"""The shipped meta-trained tiny-world checkpoint: absorb held-out facts in one step, then answer without them."""

from __future__ import annotations

import pytest
import torch

from hf_metaprompt import MetaPromptModel
from hf_metaprompt.assets import tiny_metaprompt_path
from hf_metaprompt.data.tiny_world import load_tiny_world
from hf_metaprompt.metrics import exact_match

NUM_TASKS = 96


@pytest.fixture(scope="module")
def model() -> MetaPromptModel:
    return MetaPromptModel.from_pretrained(tiny_metaprompt_path())


@pytest.fixture(scope="module")
def tasks():
    return load_tiny_world()["test"].select(range(NUM_TASKS))


def accuracy(answers: list[str], tasks) -> float:
    return sum(exact_match(a.split("\n")[0], t["answer"]) for a, t in zip(answers, tasks, strict=True)) / len(tasks)


def test_absorbing_held_out_facts_answers_questions(model, tasks):
    queries = list(tasks["query"])
    before = accuracy(model.reset().ask(queries), tasks)
    after = accuracy(model.absorb(list(tasks["context"]), per_row=True).ask(queries), tasks)
    model.reset()
    # Held-out people: unanswerable before the step (the adapter leaks nothing), answered after it.
    assert before <= 0.05
    assert after >= 0.6, (before, after)


def test_reset_restores_bit_identical_outputs(model, tasks):
    batch = model.tokenizer(list(tasks["query"][:8]), return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model.reset()(**batch).logits
        model.absorb(list(tasks["context"][:8]), per_row=True)
        absorbed = model(**batch).logits
        after = model.reset()(**batch).logits
    assert not torch.equal(before, absorbed)
    assert torch.equal(before, after)
