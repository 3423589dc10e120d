"""The evaluation conditions mean what they say, and the results files are written."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import EXAMPLES, tiny_model
from datasets import Dataset
from peft import LoraConfig, get_peft_model

from hf_metaprompt import MetaDistillModel, MetaPromptSettings
from hf_metaprompt.evaluation import (
    CONDITIONS,
    ConditionEvaluator,
    format_curve,
    format_table,
    gap_closed,
    save_results,
    summarize,
)

DIRECTIONS = ["forward", "reversed"] * 3
DATA = Dataset.from_list([{**e, "direction": d} for e, d in zip(EXAMPLES * 2, DIRECTIONS, strict=True)])


@pytest.fixture
def evaluator(llama_tokenizer):
    torch.manual_seed(0)
    peft_model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    settings = MetaPromptSettings(inner_lr=1.0, max_inner_lr=10.0, max_answer_length=8)
    meta = MetaDistillModel(peft_model, settings)
    return ConditionEvaluator(meta, llama_tokenizer, batch_size=4, show_progress=False)


def by_condition(rows, direction="forward"):
    return {r["condition"]: r for r in rows if r["direction"] == direction}


def test_rows_cover_every_condition_and_direction(evaluator, tmp_path):
    rows = evaluator.evaluate(DATA, "toy", plain_ft_lrs={"plain_ft_1step": 0.1, "plain_ft_5step": 0.1})
    assert {(r["condition"], r["direction"]) for r in rows} == {
        (c, d) for c in CONDITIONS for d in ("forward", "reversed")
    }
    for row in rows:
        assert set(row) == {
            "task",
            "direction",
            "condition",
            "texts",
            "questions",
            "exact_match",
            "f1",
            "answer_logprob",
            "n",
        }
        assert row["texts"] == 1 and row["questions"] == "all"
        assert row["n"] == 3 and 0 <= row["exact_match"] <= row["f1"] <= 1 and row["answer_logprob"] < 0
    json_path, plot_path = save_results(rows, tmp_path)
    assert json.loads(json_path.read_text()) == rows
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| toy | 1 | all | forward | meta_1step |" in format_table(rows)


def test_answers_that_are_a_distractor_are_counted(evaluator):
    # Every prediction is "Paris"; it is a distractor of the first two forward tasks only.
    forward = [e for e in DATA if e["direction"] == "forward"]
    data = Dataset.from_list(
        [{**e, "distractors": [" Paris", " Rome"] if i < 2 else [" Oslo"]} for i, e in enumerate(forward)]
    )
    evaluator._generate = lambda model, input_ids, attention_mask: ["Paris"] * len(input_ids)
    rows = evaluator.evaluate(data, "toy", conditions=["prompted", "meta_1step"])
    assert [(r["exact_match"], r["distractor_match"]) for r in rows] == [(0.0, 2 / 3)] * 2
    assert "| exact match | F1 | answer log-lik. | n | distractor |" in format_table(rows)
    assert "distractor" not in format_table(evaluator.evaluate(DATA, "toy", conditions=["prompted"]))


def test_conditions_are_the_models_they_claim(evaluator):
    rows = by_condition(evaluator.evaluate(DATA, "toy", plain_ft_lrs={"plain_ft_1step": 1e-12, "plain_ft_5step": 0.3}))
    # A vanishing plain fine-tuning step is the base without context.
    assert rows["plain_ft_1step"]["answer_logprob"] == pytest.approx(rows["no_context"]["answer_logprob"], abs=1e-5)
    # Five real steps move it; the adapter (meta_no_step) differs from the base; the inner step moves the adapter.
    assert rows["plain_ft_5step"]["answer_logprob"] != pytest.approx(rows["no_context"]["answer_logprob"], abs=1e-3)
    assert rows["meta_no_step"]["answer_logprob"] != pytest.approx(rows["no_context"]["answer_logprob"], abs=1e-3)
    assert rows["meta_1step"]["answer_logprob"] != pytest.approx(rows["meta_no_step"]["answer_logprob"], abs=1e-5)
    # Prompting sees the context: a different likelihood from the unprompted base.
    assert rows["prompted"]["answer_logprob"] != pytest.approx(rows["no_context"]["answer_logprob"], abs=1e-3)


def test_plain_ft_needs_a_learning_rate_and_sweep_picks_one(evaluator):
    with pytest.raises(ValueError, match="need a learning rate"):
        evaluator.evaluate(DATA, "toy", conditions=["plain_ft_1step"])
    best, results = evaluator.sweep_plain_ft_lr(DATA, steps=1, lrs=[1e-12, 0.1, 1.0])
    assert set(results) == {1e-12, 0.1, 1.0} and results[best] == max(results.values())


def test_texts_absorbed_absorbs_several_contexts(evaluator):
    single = evaluator.evaluate(DATA, "toy", conditions=["meta_1step"])
    evaluator.texts_absorbed = 3
    grouped = evaluator.evaluate(DATA, "toy", conditions=["meta_1step"])
    every = [r for r in grouped if r["questions"] == "all"]
    assert [r["n"] for r in every] == [r["n"] for r in single]
    assert all(r["texts"] == 3 for r in grouped)
    assert every[0]["answer_logprob"] != pytest.approx(single[0]["answer_logprob"], abs=1e-5)
    # Retention rows: the first task of each group of 3 (rows 0 and 1: one forward, one reversed question).
    first = [r for r in grouped if r["questions"] == "first_text"]
    assert [(r["direction"], r["n"]) for r in first] == [("forward", 1), ("reversed", 1)]
    # Groups of 2 of alternating directions still put both directions first: groups are strided, not consecutive.
    evaluator.texts_absorbed = 2
    first = [r for r in evaluator.evaluate(DATA, "toy", conditions=["meta_1step"]) if r["questions"] == "first_text"]
    assert [(r["direction"], r["n"]) for r in first] == [("forward", 2), ("reversed", 1)]
    # A group of one is the single-context evaluation.
    evaluator.texts_absorbed = 1
    assert evaluator.evaluate(DATA, "toy", conditions=["meta_1step"]) == single


def test_absorbing_in_smaller_passes_changes_no_score(evaluator):
    """The inner step's memory is bounded by absorbing a few texts per pass: the scores must not notice."""
    for texts in (1, 3):
        evaluator.texts_absorbed = texts
        evaluator.absorb_batch_size = 32
        whole = evaluator.evaluate(DATA, "toy", conditions=["meta_1step"])
        evaluator.absorb_batch_size = 1  # one text per pass; a group of 3 still absorbs as one pass
        parts = evaluator.evaluate(DATA, "toy", conditions=["meta_1step"])
        assert [r["exact_match"] for r in parts] == [r["exact_match"] for r in whole]
        for a, b in zip(parts, whole, strict=True):
            assert a["answer_logprob"] == pytest.approx(b["answer_logprob"], abs=1e-5)
    with pytest.raises(ValueError, match="absorb_batch_size"):
        ConditionEvaluator(evaluator.meta, evaluator.tokenizer, absorb_batch_size=0)


def test_prompted_all_joins_the_texts_of_a_group(evaluator):
    alone = by_condition(evaluator.evaluate(DATA, "toy", conditions=["prompted", "prompted_all"]))
    # One text per group: prompting with "all" texts is prompting with the task's own.
    assert alone["prompted_all"]["answer_logprob"] == pytest.approx(alone["prompted"]["answer_logprob"], abs=1e-6)
    evaluator.texts_absorbed = 3
    grouped = [r for r in evaluator.evaluate(DATA, "toy", conditions=["prompted", "prompted_all"])]
    rows = {(r["condition"], r["questions"], r["direction"]): r for r in grouped}
    # The ceiling (own text) does not depend on the grouping; the joined prompt does.
    assert rows[("prompted", "all", "forward")]["answer_logprob"] == pytest.approx(
        alone["prompted"]["answer_logprob"], abs=1e-6
    )
    assert rows[("prompted_all", "all", "forward")]["answer_logprob"] != pytest.approx(
        alone["prompted"]["answer_logprob"], abs=1e-4
    )
    curve = format_curve(grouped + evaluator.evaluate(DATA, "toy", conditions=["prompted"]))
    assert "| prompted | all | forward |" in curve and "N=3" in curve


def test_gap_closed():
    rows = [
        {"task": "t", "direction": "forward", "condition": c, "exact_match": v}
        for c, v in [("prompted", 0.9), ("plain_ft_1step", 0.1), ("meta_1step", 0.7)]
    ]
    assert gap_closed(rows)[("t", "forward")] == pytest.approx(0.75)


def row(condition, direction, exact_match, task="tiny_world", texts=1, questions="all"):
    return dict(task=task, condition=condition, direction=direction, exact_match=exact_match, texts=texts,
                questions=questions)  # fmt: skip


def test_summarize_reads_the_table_in_one_line():
    # The embedded default's README table (one text per update), with the 16-text rows, which it must not read.
    rows = [
        row(condition, direction, value)
        for direction, values in (
            ("forward", (0.0, 0.217, 0.0, 0.0, 0.0, 0.075)),
            ("reversed", (0.0, 0.702, 0.0, 0.0, 0.0, 0.234)),
        )
        for condition, value in zip(
            ("no_context", "prompted", "plain_ft_1step", "plain_ft_5step", "meta_no_step", "meta_1step"),
            values,
            strict=True,
        )
    ] + [
        row("meta_1step", "forward", 0.9, texts=16),
        row("meta_1step", "forward", 0.9, texts=16, questions="first_text"),
    ]
    assert summarize(rows) == (
        "Reading (exact match, one text per update): one meta-learned step rose above plain fine-tuning in forward "
        "(0.075 vs 0.000) and reversed (0.234 vs 0.000); it is at 0.35x in forward (0.075 of 0.217) and 0.33x in "
        "reversed (0.234 of 0.702) of the base prompted with the text (the teacher)."
    )


def test_summarize_says_where_the_step_did_not_help():
    # The best plain fine-tuning row is the bar; a teacher at 0 has no ratio; tasks are named when there are several.
    rows = [
        row("meta_1step", "forward", 0.2, task="a"), row("plain_ft_1step", "forward", 0.1, task="a"),
        row("plain_ft_5step", "forward", 0.3, task="a"), row("prompted", "forward", 0.0, task="a"),
        row("meta_1step", "forward", 0.5, task="b"), row("plain_ft_1step", "forward", 0.1, task="b"),
        row("prompted", "forward", 0.4, task="b"),
    ]  # fmt: skip
    assert summarize(rows) == (
        "Reading (exact match, one text per update): one meta-learned step rose above plain fine-tuning in b forward "
        "(0.500 vs 0.100) but not in a forward (0.200 vs 0.300); it is at 1.25x in b forward (0.500 of 0.400) of the "
        "base prompted with the text (the teacher); the prompted teacher scores 0 in a forward."
    )
    assert summarize([r for r in rows if r["condition"] != "meta_1step"]) == ""


def test_evaluation_needs_gold_answers(evaluator):
    with pytest.raises(ValueError, match="gold `answer`"):
        evaluator.evaluate(Dataset.from_list([{"context": "A b.", "query": "Q?", "answer": ""}]), "toy", ["prompted"])


def test_collator_views_follow_the_checkpoint_settings(evaluator, llama_tokenizer):
    """Evaluation builds its views from the checkpoint's settings (as training did), scoring answers one text each."""
    settings = dataclasses.replace(
        evaluator.meta.settings,
        max_context_length=40,
        max_query_length=9,
        context_separator="\n|",
        distill_on="query_and_answer",
        texts_per_episode=4,
    )
    evaluator.meta.settings = settings
    collator = ConditionEvaluator(evaluator.meta, llama_tokenizer, show_progress=False).collator
    assert (collator.max_context_length, collator.max_query_length, collator.context_separator) == (40, 9, "\n|")
    assert (collator.distill_on, collator.texts_per_episode, collator.append_eos_to_answer) == ("answer", 1, False)
    assert collator.max_answer_length == 256
