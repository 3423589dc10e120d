"""Generated passages: SQuAD-schema rows whose answers are spans, disjoint names across splits, deterministic."""

from __future__ import annotations

import re

import pytest

from hf_metaprompt.data.passages import KINDS, build_names, load_passage_rows, load_passage_tasks
from hf_metaprompt.pipeline import load_task, parse_args

SIZES = {"num_train": 300, "num_validation": 60, "num_test": 60}


@pytest.fixture(scope="module")
def rows():
    return load_passage_rows(seed=0, **SIZES)


def test_every_answer_is_a_span_of_its_passage(rows):
    for split in rows.values():
        for row in split:
            (text,), (start,) = row["answers"]["text"], row["answers"]["answer_start"]
            assert row["context"][start : start + len(text)] == text
            assert text.strip() == text and text


def test_passages_hold_two_to_six_sentences_and_several_questions(rows):
    train = rows["train"]
    sentences = {len(re.findall(r"[.!?](?= |$)", context)) for context in train["context"]}
    assert min(sentences) == 2 and max(sentences) >= 5 and max(sentences) <= 6
    per_passage = {}
    for row in train:
        per_passage.setdefault(row["context"], set()).add(row["question"])
    assert max(map(len, per_passage.values())) == 3 and min(map(len, per_passage.values())) >= 2
    assert {title.split()[-1] for title in train["title"]} >= {"Bridge", "Company", "Festival", "Library", "Regatta"}
    assert {"forward", "reversed"} == set(train["direction"])
    # Persons asked the other way: the question gives the person, the answer names the thing.
    assert any(row["answers"]["text"][0] == row["title"].strip('"') or row["title"] in row["answers"]["text"][0]
               or row["answers"]["text"][0].lower() == row["title"].lower() for row in train)  # fmt: skip


def test_splits_share_no_name():
    names = build_names(seed=0)
    for kind in ("people", "towns", "things"):
        pools = [set(getattr(names[split], kind)) for split in ("train", "validation", "test")]
        assert all(pools), kind
        assert not (pools[0] & pools[1] or pools[0] & pools[2] or pools[1] & pools[2]), kind


def test_held_out_passages_mention_no_training_name(rows):
    names = build_names(seed=0)
    training_words = set(names["train"].towns + names["train"].things)
    for context in rows["test"]["context"]:
        assert not training_words & set(re.findall(r"[A-Z][a-z]+", context)), context
        assert not any(person in context for person in names["train"].people)


def test_the_same_seed_gives_the_same_rows_and_a_pinned_sample():
    first, again = load_passage_rows(seed=0, **SIZES), load_passage_rows(seed=0, **SIZES)
    assert first["test"].to_list() == again["test"].to_list()
    assert load_passage_rows(seed=1, **SIZES)["test"]["context"] != first["test"]["context"]
    assert first["test"][0] == {
        "id": "test-0-0",
        "title": "the Halmoor Library",
        "context": "In 1794, the Halmoor Library opened its doors. The Halmoor Library is built of sandstone.",
        "question": "What is the Halmoor Library built of?",
        "answers": {"text": ["sandstone"], "answer_start": [79]},
        "direction": "forward",
        "relation": "material",
    }


def test_passage_tasks_go_through_the_squad_mapping():
    tasks = load_passage_tasks(seed=0, **SIZES)["test"]
    task = tasks[0]
    assert task["query"] == "Q: What is the Halmoor Library built of?\nA:"
    assert task["answer"] == " sandstone" and task["answers"] == ["sandstone"]
    assert set(tasks["answer_kind"]) == {"name"}


def test_documents_mix_people_and_passages():
    script_args, _ = parse_args(["--task", "documents"])
    splits = load_task(script_args, seed=0)
    contexts = splits["train"]["context"]
    assert any("Q:" not in c and c.count(". ") >= 2 for c in contexts)  # passages
    assert any(c.count(". ") == 0 for c in contexts)  # one-sentence bios
    assert set(splits["train"].column_names) == {"context", "query", "answer", "direction", "answer_kind"}
    with pytest.raises(ValueError, match="--facts_per_context"):
        load_task(parse_args(["--task", "passages", "--facts_per_context", "2"])[0], seed=0)


def test_every_kind_states_and_asks_each_relation_with_its_value():
    for kind, (_, relations) in KINDS.items():
        for name, relation in relations.items():
            for template in relation.value_last + relation.value_first:
                assert "{value}" in template or "{Value}" in template, (kind, name, template)
            for template in relation.questions:
                assert "{thing}" in template and "{value}" not in template, (kind, name, template)
            for template in relation.about_value:
                assert "{value}" in template and "{thing}" not in template, (kind, name, template)
