"""English tasks for a real LM: generated fictitious people, Berglund et al.'s people asked as questions, and the
name / description match that scores a small model's wording."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from hf_metaprompt.data import people
from hf_metaprompt.data.people import build_people, load_people_tasks
from hf_metaprompt.data.reversal import load_reversal_questions
from hf_metaprompt.metrics import answer_match
from hf_metaprompt.pipeline import ScriptArguments, load_task

REVERSAL_DIR = Path(__file__).parent / "fixtures" / "reversal_curse"


@pytest.fixture(scope="module")
def tasks():
    return load_people_tasks(seed=0, num_train=600, num_validation=200, num_test=200)


def test_splits_hold_disjoint_people_names_and_titles():
    world = build_people(seed=0)
    assert {split: len(members) for split, members in world.items()} == {"test": 105, "validation": 105, "train": 840}
    names = {split: {p.name for p in members} for split, members in world.items()}
    titles = {
        split: {re.search(r'"(.+)"', p.description).group(1) for p in members} for split, members in world.items()
    }
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not names[a] & names[b]
        assert not titles[a] & titles[b]
    every = [p.name for members in world.values() for p in members]
    assert len(every) == len(set(every))


def test_tasks_are_deterministic_and_pinned(tasks):
    again = load_people_tasks(seed=0, num_train=600, num_validation=200, num_test=200)
    for split in tasks:
        assert tasks[split].to_list() == again[split].to_list()
    assert load_people_tasks(seed=1, num_train=5)["train"].to_list() != tasks["train"].select(range(5)).to_list()
    # The shipped adapter was chosen on these validation people and scored once on these test people: a change of
    # the generator that moves people between splits must be seen, not silently mix them.
    assert tasks["validation"][0]["person"] == "Vivienne Drummond"
    assert tasks["test"][0]["person"] == "Henrietta Dorrington"


def test_both_directions_and_both_answer_kinds_appear_in_every_split(tasks):
    for split in tasks:
        counts = Counter(zip(tasks[split]["direction"], tasks[split]["answer_kind"], strict=True))
        assert set(counts) == {(d, k) for d in people.DIRECTIONS for k in people.ANSWER_KINDS}
        assert min(counts.values()) > len(tasks[split]) / 8


def test_a_task_states_its_fact_and_asks_for_the_other_side(tasks):
    for task in tasks["validation"]:
        name = task["person"]
        assert name in task["context"]
        if task["answer_kind"] == "name":
            assert task["answer"] == f" {name}." and name not in task["query"]
            title = re.search(r'"(.+)"', task["query"]).group(1)
        else:
            assert name in task["query"] and '"' not in task["query"]
            title = re.search(r'"(.+)"', task["answer"]).group(1)
        # The description asked about (or answered) is the one the text states: its title is unique to the person.
        assert title in task["context"]
        name_first = task["context"].index(name) < task["context"].index(title)
        gives_name = task["answer_kind"] == "description"
        assert task["direction"] == ("forward" if gives_name == name_first else "reversed")


def test_several_facts_per_text_name_distinct_people_and_their_distractors():
    tasks = load_people_tasks(seed=0, num_train=0, num_validation=0, num_test=50, facts_per_text=3)["test"]
    for task in tasks:
        assert len(task["distractors"]) == 2
        assert all(d.lower() in task["context"].lower() for d in task["distractors"])
        assert task["person"] not in " ".join(task["distractors"])
    with pytest.raises(ValueError, match="facts_per_text"):
        load_people_tasks(facts_per_text=0)


def test_generated_people_are_not_berglunds():
    berglund = set(load_reversal_questions(REVERSAL_DIR)["person"])
    words = {word for name in berglund for word in name.split()}
    assert not words & (set(people.FIRST_NAMES) | set(people.LAST_NAMES))


def test_berglund_people_are_asked_both_ways():
    questions = load_reversal_questions(REVERSAL_DIR, paraphrases_per_person=2)
    assert len(questions) == 60 * 2 * 2
    counts = Counter(zip(questions["group"], questions["answer_kind"], questions["direction"], strict=True))
    assert counts == {
        ("p2d", "name", "reversed"): 60,
        ("p2d", "description", "forward"): 60,
        ("d2p", "name", "forward"): 60,
        ("d2p", "description", "reversed"): 60,
    }
    first = questions[0]
    assert first["query"].startswith("Q: Who is the ") and first["query"].endswith("?\nA:")
    assert first["answer"] == f" {first['person']}." and first["person"] in first["context"]
    assert load_reversal_questions(REVERSAL_DIR).to_list() == load_reversal_questions(REVERSAL_DIR).to_list()
    with pytest.raises(ValueError, match="paraphrases_per_person"):
        load_reversal_questions(REVERSAL_DIR, paraphrases_per_person=0)


def test_reversal_questions_task_trains_on_generated_people_and_scores_berglunds():
    splits = load_task(ScriptArguments(task="reversal_questions", dataset_name=str(REVERSAL_DIR)), seed=0)
    generated = load_people_tasks(seed=0)
    assert splits["train"].to_list() == generated["train"].to_list()
    assert splits["validation"].to_list() == generated["validation"].to_list()
    assert set(splits["test"]["group"]) == {"p2d", "d2p"}
    with pytest.raises(ValueError, match="--task reversal_questions needs --dataset_name"):
        load_task(ScriptArguments(task="reversal_questions"), seed=0)
    with pytest.raises(ValueError, match="--facts_per_context sets the generated tasks"):
        load_task(ScriptArguments(task="squad", dataset_name="x", facts_per_context=2), seed=0)


@pytest.mark.parametrize(
    ("prediction", "reference", "kind", "expected"),
    [
        ("Daphne Barrington.", " Daphne Barrington.", "name", 1.0),
        ("daphne barrington is the director of the film", " Daphne Barrington.", "name", 1.0),
        ("Daphne.", " Daphne Barrington.", "name", 0.0),
        ("Daphne Barringtonian", " Daphne Barrington.", "name", 0.0),
        ("I don't know.\nQ: Who is Daphne Barrington?", " Daphne Barrington.", "name", 0.0),
        ("He directed A Journey Through Time, in virtual reality.", _D := ' The acclaimed director of the virtual '
         'reality masterpiece, "A Journey Through Time.".', "description", 1.0),
        ("A famous director.", _D, "description", 0.0),
    ],
)  # fmt: skip
def test_answer_match_counts_names_and_descriptions(prediction, reference, kind, expected):
    assert answer_match(prediction, reference, kind) == expected


def test_answer_match_refuses_unknown_kinds():
    with pytest.raises(ValueError, match="`kind` must be one of"):
        answer_match("x", "y", "place")
