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


def test_held_out_people_are_unknown_before_absorbing(model, tasks):
    # The adapter leaks nothing: without a step, held-out people cannot be answered.
    assert accuracy(model.reset().ask(list(tasks["query"])), tasks) <= 0.05


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="the shipped checkpoint's teacher (the shipped base) reads only part of its prompt (issue 13), and the "
    "checkpoint reaches 0.3x of it; remove once a checkpoint on a base at issue 13's levels ships",
)
def test_absorbing_held_out_facts_answers_questions(model, tasks):
    after = accuracy(model.absorb(list(tasks["context"]), per_row=True).ask(list(tasks["query"])), tasks)
    model.reset()
    assert after >= 0.6, after


def test_reset_restores_bit_identical_outputs(model, tasks):
    batch = model.tokenizer(list(tasks["query"][:8]), return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model.reset()(**batch).logits
        model.absorb(list(tasks["context"][:8]), per_row=True)
        absorbed = model(**batch).logits
        after = model.reset()(**batch).logits
    assert not torch.equal(before, absorbed)
    assert torch.equal(before, after)
