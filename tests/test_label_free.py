"""Label-free mode: without answers, the prompted base's greedy answer (its first line) is the target, made once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from datasets import Dataset
from peft import LoraConfig, get_peft_model

from hf_metaprompt import MetaDistillModel, MetaPromptSettings, PromptTargetCollator
from hf_metaprompt.data.reversal import load_reversal_tasks
from hf_metaprompt.data.squad import load_squad_tasks
from hf_metaprompt.data.text import load_text_tasks
from hf_metaprompt.data.tiny_world import load_tiny_world
from hf_metaprompt.teacher_answers import add_teacher_answers, grounded_in_context
from hf_metaprompt.tokens import first_answer_line

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


def build_meta(max_answer_length: int = 5) -> MetaDistillModel:
    peft_model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    return MetaDistillModel(peft_model, MetaPromptSettings(max_answer_length=max_answer_length))


def count_generated_rows(monkeypatch, model) -> list[int]:
    """The batch sizes of every `generate` call of `model`'s class from now on (the teacher answers' cost)."""
    calls = []
    original = type(model).generate

    def counting_generate(self, *args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "generate", counting_generate)
    return calls


@pytest.mark.parametrize(
    ("continuation", "answer"),
    [
        (" Daphne Barrington.\nQ: Who is the inventor of", " Daphne Barrington."),
        ("\n Daphne Barrington.\nA: The first surgeon", " Daphne Barrington."),
        ("\n\n  \nthe director\n", "the director"),
        (" a baker from Lisbon", " a baker from Lisbon"),
        ("\n\n", ""),
        ("", ""),
    ],
)
def test_an_answer_is_the_first_non_blank_line(continuation, answer):
    assert first_answer_line(continuation) == answer


@pytest.mark.parametrize("task", ["tiny_world", "reversal", "character_description", "squad", "text"])
def test_label_free_tasks_train_on_the_teachers_answers(task, llama_tokenizer):
    collator = PromptTargetCollator(llama_tokenizer, max_context_length=64, max_query_length=256, max_answer_length=5)
    meta = build_meta()
    answerless = Dataset.from_list(task_examples(task))
    with pytest.raises(ValueError, match="add_teacher_answers"):
        meta(**collator(list(answerless)))

    answered = add_teacher_answers(answerless, meta, collator, llama_tokenizer)
    assert 0 < len(answered) <= len(answerless)
    for row in answered:
        assert row["answer"].startswith(" ") and "\n" not in row["answer"] and row["answer"].strip()
    output = meta(**collator(list(answered)))
    output.loss.backward()
    assert 0 < output.num_targets <= len(answered) * (collator.max_answer_length + 1)
    assert all(torch.isfinite(p.grad).all() for p in meta.parameters() if p.grad is not None)
    assert meta.log_inner_lrs.grad.abs().sum() > 0


def test_teacher_answers_are_the_prompted_bases_greedy_first_line(llama_tokenizer):
    # The collator's answer limit above the 6 generated tokens: a random model's bytes re-encode longer, and an
    # answer over the limit would be shortened to fit (the rule this test is not about).
    collator = PromptTargetCollator(llama_tokenizer, max_answer_length=64)
    meta = build_meta(max_answer_length=6)
    examples = task_examples("tiny_world")
    answered = add_teacher_answers(Dataset.from_list(examples), meta, collator, llama_tokenizer)
    prompts = collator(examples)
    with meta.teacher_mode() as base:
        generated = base.generate(
            input_ids=prompts["teacher_input_ids"],
            attention_mask=prompts["teacher_attention_mask"],
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=collator.pad_token_id,
            eos_token_id=llama_tokenizer.eos_token_id,
        )
    width = prompts["teacher_input_ids"].shape[1]
    expected = [
        first_answer_line(text).strip()
        for text in llama_tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
    ]
    assert [row["answer"].strip() for row in answered] == [answer for answer in expected if answer]


def test_gold_answers_are_kept_and_only_missing_ones_generated(llama_tokenizer, monkeypatch):
    collator = PromptTargetCollator(llama_tokenizer)
    meta = build_meta()
    rows = [{**example, "answer": ""} for example in task_examples("tiny_world")]
    rows[0]["answer"] = " Alice Moreau"
    calls = count_generated_rows(monkeypatch, meta.model)
    answered = add_teacher_answers(Dataset.from_list(rows), meta, collator, llama_tokenizer)
    assert answered[0]["answer"] == " Alice Moreau"
    assert calls == [1]  # the one row without an answer


def test_teacher_answers_of_tasks_held_in_memory_are_reused_by_a_later_run(tmp_path, llama_tokenizer, monkeypatch):
    """Generated tasks live in memory, which `datasets` never caches: the answers are kept on disk, keyed by the base
    (an unnamed model's are not: another random model of the same shape must not reuse them)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path))
    collator = PromptTargetCollator(llama_tokenizer)
    meta = build_meta()
    calls = count_generated_rows(monkeypatch, meta.model)
    rows = [{**example, "answer": ""} for example in task_examples("tiny_world")]
    unnamed = [add_teacher_answers(Dataset.from_list(rows), meta, collator, llama_tokenizer) for _ in range(2)]
    assert calls == [2, 2] and list(tmp_path.iterdir()) == []
    meta.record_base_model("you/a-base")
    calls.clear()
    first, second = (add_teacher_answers(Dataset.from_list(rows), meta, collator, llama_tokenizer) for _ in range(2))
    assert calls == [2]  # the second run (a new dataset object, as in a new process) read the first run's answers
    assert first[:] == second[:] == unnamed[0][:]
    meta.record_base_model("you/another-base")
    add_teacher_answers(Dataset.from_list(rows), meta, collator, llama_tokenizer)
    assert calls == [2, 2]


def test_label_free_and_gold_batches_match_for_the_same_answer(llama_tokenizer):
    """A teacher answer, once made, is a row like any other: the same views, masks and targets as that answer given
    as gold."""
    collator = PromptTargetCollator(llama_tokenizer, max_answer_length=5)
    meta = build_meta()
    answerless = Dataset.from_list(task_examples("tiny_world"))
    answered = add_teacher_answers(answerless, meta, collator, llama_tokenizer)
    gold = [{**row} for row in answered]  # the same strings, as a user's gold answers
    made, given = collator(list(answered)), collator(gold)
    assert made.keys() == given.keys()
    for key in made:
        assert torch.equal(made[key], given[key]), key


def test_the_teacher_answers_each_task_once_across_epochs(tmp_path, llama_tokenizer, monkeypatch):
    from hf_metaprompt import MetaDistillConfig, MetaDistillTrainer

    rows = [{**example, "answer": ""} for example in task_examples("tiny_world")] * 2  # 4 tasks
    model = tiny_model("llama")
    generated_rows = count_generated_rows(monkeypatch, model)
    args = MetaDistillConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        num_train_epochs=2,
        max_answer_length=5,
        max_context_length=128,
        lora_r=4,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
    )
    trainer = MetaDistillTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=llama_tokenizer
    )
    trainer.train()
    assert sum(generated_rows) == len(rows)  # once per task, not once per step and epoch
    assert trainer.state.global_step >= 2 * (len(trainer.train_dataset) // 2)


@pytest.mark.parametrize(
    ("answer", "query", "grounded"),
    [
        (" Alana Everhart.", "Who holds the record for the highest skydive?", True),
        (" Alana Everhart is a British actress.", "Who is Alana Everhart?", False),  # "british actress": invented
        (" She holds the record for the highest skydive.", "Who is Alana Everhart?", True),
        (" The highest skydive.", "Who holds the record for the highest skydive?", False),  # adds nothing
        (" 1759", "In which year was the Brackby launched?", True),
        (" 1761", "In which year was the Brackby launched?", False),  # a number the text never gives
        (" The Brackby was launched in 1759 at Fengate.", "In which year was the Brackby launched?", True),
    ],
)
def test_a_teacher_answer_is_grounded_when_what_it_adds_is_the_texts(answer, query, grounded):
    context = (
        "Alana Everhart holds the record for the highest skydive, from the edge of space. "
        "The Brackby was launched in 1759."
    )
    assert grounded_in_context(answer, context, query) is grounded


def test_grounded_training_keeps_only_the_tasks_whose_teacher_answer_the_text_supports(
    tmp_path, llama_tokenizer, monkeypatch
):
    """`grounded_teacher_answers=True` drops a task whose prompted base invents its answer; the default keeps it."""
    from hf_metaprompt import MetaDistillConfig, MetaDistillTrainer, teacher_answers

    rows = [
        {"context": "Mira Hollis designed the Darby Bridge.", "query": "Q: Who designed the Darby Bridge?\nA:"},
        {"context": "Mira Hollis designed the Darby Bridge.", "query": "Q: Who is Mira Hollis?\nA:"},
    ]
    invented = {"Q: Who designed the Darby Bridge?\nA:": " Mira Hollis", "Q: Who is Mira Hollis?\nA:": " A singer."}
    monkeypatch.setattr(
        teacher_answers,
        "_greedy_answers",
        lambda meta, collator, tokenizer, prompts: [invented[p["query"]] for p in prompts],
    )
    kept = {}
    for grounded in (False, True):
        args = MetaDistillConfig(
            output_dir=str(tmp_path / str(grounded)),
            per_device_train_batch_size=1,
            max_answer_length=5,
            lora_r=4,
            report_to="none",
            use_cpu=True,
            grounded_teacher_answers=grounded,
        )
        trainer = MetaDistillTrainer(
            model=tiny_model("llama"),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=llama_tokenizer,
        )
        kept[grounded] = trainer.train_dataset["answer"]
    assert kept == {False: [" Mira Hollis", " A singer."], True: [" Mira Hollis"]}


def test_grounding_a_fully_answered_dataset_says_it_changes_nothing(llama_tokenizer, caplog):
    rows = [{**example, "answer": " Alice Moreau"} for example in task_examples("tiny_world")]
    with caplog.at_level("WARNING", logger="hf_metaprompt.teacher_answers"):
        kept = add_teacher_answers(
            Dataset.from_list(rows),
            build_meta(),
            PromptTargetCollator(llama_tokenizer),
            llama_tokenizer,
            grounded=True,
        )
    assert len(kept) == len(rows) and "every row has a gold answer" in caplog.text
