"""The collator's three views line up, and bad examples fail loudly."""

from __future__ import annotations

import pytest
import torch
from conftest import EXAMPLES

from hf_metaprompt import PromptTargetCollator
from hf_metaprompt.tokens import special_prefix_ids


@pytest.fixture(params=["llama_tokenizer", "gpt2_tokenizer"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("distill_on", ["answer", "query_and_answer"])
def test_views_line_up(tokenizer, distill_on):
    collator = PromptTargetCollator(tokenizer, distill_on=distill_on)
    batch = collator(EXAMPLES)
    labels = batch["labels"]
    teacher, student = batch["teacher_input_ids"], batch["student_input_ids"]
    for i, example in enumerate(EXAMPLES):
        targets = labels[i] != -100
        n = int(targets.sum())
        # Targets are the last n student tokens, and the teacher's last n tokens are the same ids.
        assert targets[-n:].all() and not targets[:-n].any()
        assert torch.equal(student[i, -n:], labels[i, -n:])
        assert torch.equal(teacher[i, -n:], student[i, -n:])
        # The answer, then EOS: the position after the answer is a target too (the model learns to stop).
        answer_ids = [*tokenizer(example["answer"], add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        assert student[i, -len(answer_ids) :].tolist() == answer_ids
        if distill_on == "answer":
            assert n == len(answer_ids)
        else:
            query_ids = tokenizer(example["query"], add_special_tokens=False)["input_ids"]
            assert n == len(answer_ids) + len(query_ids) - (0 if special_prefix_ids(tokenizer) else 1)
        # The teacher's text is context + separator + query + answer.
        teacher_ids = teacher[i][batch["teacher_attention_mask"][i].bool()].tolist()
        decoded = tokenizer.decode(teacher_ids, skip_special_tokens=True)
        assert decoded == example["context"] + "\n" + example["query"] + example["answer"]
        # The inner view is the context alone, right-padded.
        inner = batch["context_input_ids"][i][batch["context_attention_mask"][i].bool()]
        assert tokenizer.decode(inner.tolist(), skip_special_tokens=True) == example["context"]
        assert batch["context_attention_mask"][i, 0] == 1


def test_append_eos_can_be_turned_off(llama_tokenizer):
    with_eos = PromptTargetCollator(llama_tokenizer)(EXAMPLES)
    without = PromptTargetCollator(llama_tokenizer, append_eos_to_answer=False)(EXAMPLES)
    assert ((with_eos["labels"] != -100).sum(-1) == (without["labels"] != -100).sum(-1) + 1).all()
    assert (with_eos["student_input_ids"][:, -1] == llama_tokenizer.eos_token_id).all()
    assert torch.equal(with_eos["student_input_ids"][:, -1 - 3 : -1], without["student_input_ids"][:, -3:])


def test_bos_rules(llama_tokenizer, gpt2_tokenizer):
    assert special_prefix_ids(llama_tokenizer) == [llama_tokenizer.bos_token_id]
    assert special_prefix_ids(gpt2_tokenizer) == []
    batch = PromptTargetCollator(llama_tokenizer)(EXAMPLES[:1])
    for view in ("context", "teacher", "student"):
        ids = batch[f"{view}_input_ids"][0][batch[f"{view}_attention_mask"][0].bool()]
        assert ids[0] == llama_tokenizer.bos_token_id
        assert (ids == llama_tokenizer.bos_token_id).sum() == 1


def test_tokenizer_without_pad_token_pads_with_eos(gpt2_tokenizer):
    assert gpt2_tokenizer.pad_token is None
    batch = PromptTargetCollator(gpt2_tokenizer)(EXAMPLES)
    padded = batch["student_attention_mask"] == 0
    assert padded.any()
    assert (batch["student_input_ids"][padded] == gpt2_tokenizer.eos_token_id).all()


def test_label_free_batch(llama_tokenizer):
    examples = [{"context": e["context"], "query": e["query"]} for e in EXAMPLES]
    batch = PromptTargetCollator(llama_tokenizer)(examples)
    assert "labels" not in batch and (batch["prompt_labels"] == -100).all()
    assert batch["prompt_labels"].shape == batch["student_input_ids"].shape
    empty = [{**e, "answer": ""} for e in examples]
    assert "prompt_labels" in PromptTargetCollator(llama_tokenizer)(empty)


def test_context_truncation(llama_tokenizer):
    long = {**EXAMPLES[0], "context": " ".join(["Alice Moreau is a baker from Lisbon."] * 40)}
    collator = PromptTargetCollator(llama_tokenizer, max_context_length=40)
    batch = collator([long, EXAMPLES[1]])
    assert collator.num_truncated_contexts == 1
    assert batch["context_attention_mask"][0].sum() == 40 + 1  # + BOS
    # The answer is intact.
    answer_ids = llama_tokenizer(long["answer"], add_special_tokens=False)["input_ids"]
    assert batch["student_input_ids"][0, -len(answer_ids) - 1 : -1].tolist() == answer_ids
    with pytest.raises(ValueError, match=r"Example 0: the context has \d+ tokens > max_context_length=40"):
        PromptTargetCollator(llama_tokenizer, max_context_length=40, context_truncation="error")([long])


def test_answers_and_queries_are_never_cut(llama_tokenizer):
    with pytest.raises(ValueError, match=r"Example 1: the answer has .* never truncated"):
        PromptTargetCollator(llama_tokenizer, max_answer_length=8)([EXAMPLES[2], EXAMPLES[1]])
    with pytest.raises(ValueError, match="Example 0: the query has"):
        PromptTargetCollator(llama_tokenizer, max_query_length=3)([EXAMPLES[0]])


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ({"query": "Q?", "answer": " a"}, ValueError, "Example 1 of the batch has no 'context' field"),
        ({"context": "   ", "query": "Q?", "answer": " a"}, ValueError, "Example 1: field 'context' is empty"),
        (
            {"context": "Some text.", "query": 3, "answer": " a"},
            TypeError,
            "Example 1: field 'query' must be a string",
        ),
        ({"context": "Some text.", "query": "Q?", "answer": 7}, TypeError, "Example 1: field 'answer'"),
        ({"context": "Some text.", "query": "Q?"}, ValueError, r"Examples \[1\] of the batch have no 'answer'"),
        ("not a dict", TypeError, "Example 1 of the batch is a str"),
    ],
)
def test_bad_examples_name_their_index(llama_tokenizer, bad, error, message):
    with pytest.raises(error, match=message):
        PromptTargetCollator(llama_tokenizer)([EXAMPLES[0], bad])


def test_custom_field_names(llama_tokenizer):
    examples = [{"passage": e["context"], "question": e["query"], "target": e["answer"]} for e in EXAMPLES]
    collator = PromptTargetCollator(
        llama_tokenizer, context_field="passage", query_field="question", answer_field="target"
    )
    reference = PromptTargetCollator(llama_tokenizer)(EXAMPLES)
    batch = collator(examples)
    assert all(torch.equal(batch[k], reference[k]) for k in reference)


def test_long_texts_are_cut_into_windows_at_sentences(llama_tokenizer):
    from hf_metaprompt.tokens import split_into_windows

    sentences = [f"Sentence number {i} tells of Alice Moreau and her bakery in Lisbon." for i in range(12)]
    text = " ".join(sentences)
    windows = split_into_windows(llama_tokenizer, text, 64)
    assert len(windows) > 2
    assert " ".join(windows) == text  # every sentence, in order, none cut
    assert all(len(llama_tokenizer(w, add_special_tokens=False)["input_ids"]) <= 64 for w in windows)
    assert all(w.endswith(".") for w in windows)
    # A sentence longer than a window is cut between words, still within the window, still in order.
    long_sentence = " ".join(["baker"] * 80) + "."
    pieces = split_into_windows(llama_tokenizer, long_sentence, 16)
    assert " ".join(pieces) == long_sentence
    assert all(len(llama_tokenizer(p, add_special_tokens=False)["input_ids"]) <= 16 for p in pieces)
