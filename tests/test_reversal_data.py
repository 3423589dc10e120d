"""The reversal-curse loader on the real Berglund et al. files (shipped in tests/fixtures/reversal_curse)."""

import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import datasets
import pytest

from hf_metaprompt.data.reversal import load_reversal_tasks
from hf_metaprompt.metrics import normalize_answer

DATA_DIR = Path(__file__).parent / "fixtures" / "reversal_curse"
TASKS = ("reversal", "character_description")


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="module")
def all_tasks(data_dir: Path) -> dict[str, datasets.DatasetDict]:
    return {task: load_reversal_tasks(data_dir, task=task) for task in TASKS}


def _rows(tasks: datasets.DatasetDict) -> list[dict]:
    return datasets.concatenate_datasets(list(tasks.values())).to_list()


def _by_person(rows: list[dict]) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for row in rows:
        grouped[row["person"]].append(row)
    return grouped


@pytest.mark.parametrize("task", TASKS)
def test_people_and_paraphrases(all_tasks, task):
    by_person = _by_person(_rows(all_tasks[task]))
    groups = {person: {row["group"] for row in rows} for person, rows in by_person.items()}
    assert Counter(group for person_groups in groups.values() for group in person_groups) == {"p2d": 30, "d2p": 30}
    for rows in by_person.values():
        # Every one of the 30 training paraphrases is a context once; the 10 queries cycle through them.
        assert len(rows) == 30
        assert len({row["context"] for row in rows}) == 30
        assert len({row["query"] for row in rows}) == 10


@pytest.mark.parametrize("task", TASKS)
def test_split_by_person(all_tasks, task):
    tasks = all_tasks[task]
    people = {split: set(tasks[split]["person"]) for split in tasks}
    assert not people["train"] & people["validation"]
    assert not people["train"] & people["test"]
    assert not people["validation"] & people["test"]
    # Defaults 0.1/0.2 applied per group of 30: both storage orders are in every split.
    assert {split: len(members) for split, members in people.items()} == {"train": 42, "validation": 6, "test": 12}
    for split in tasks:
        assert sorted(set(tasks[split]["group"])) == ["d2p", "p2d"]


def test_split_is_seeded(data_dir, all_tasks):
    same = load_reversal_tasks(data_dir, task="reversal", seed=0)
    other = load_reversal_tasks(data_dir, task="reversal", seed=1)
    assert same["test"]["person"] == all_tasks["reversal"]["test"]["person"]
    assert set(other["test"]["person"]) != set(same["test"]["person"])


@pytest.mark.parametrize("task", TASKS)
def test_context_and_query(all_tasks, task):
    for row in _rows(all_tasks[task]):
        assert row["person"] in row["context"]
        assert row["query"] != row["context"]
        assert row["query"] not in row["context"]
        assert row["answer"].startswith(" ") and row["answer"].strip()


def test_reversal_queries_answer_the_other_side(all_tasks):
    rows = _rows(all_tasks["reversal"])
    assert {row["direction"] for row in rows} == {"reversed"}
    statement_words = {
        person: {word for row in person_rows for word in normalize_answer(row["context"]).split()}
        for person, person_rows in _by_person(rows).items()
    }
    for row in rows:
        if row["group"] == "p2d":
            # Statements name the person first; the reversed query gives the description and asks for the name.
            assert row["answer"] == " " + row["person"]
            assert row["person"] not in row["query"]
        else:
            # Statements give the description first; the reversed query names the person and asks for the description.
            assert row["person"] in row["query"]
            assert not any(person in row["answer"] for person in statement_words)
            answer_words = set(normalize_answer(row["answer"]).split())
            # The description is this person's: its words are best covered by this person's statements.
            best = max(statement_words, key=lambda person: len(answer_words & statement_words[person]))
            assert best == row["person"]


def test_character_description_keeps_the_order(all_tasks):
    rows = _rows(all_tasks["character_description"])
    assert {row["direction"] for row in rows} == {"forward"}
    for row in rows:
        if row["group"] == "d2p":
            assert row["answer"] == " " + row["person"]
            assert row["person"] not in row["query"]
        else:
            assert row["person"] in row["query"]
            assert row["person"] not in row["answer"]


def test_unknown_person_raises(data_dir, tmp_path):
    shutil.copytree(data_dir, tmp_path, dirs_exist_ok=True)
    train_file = tmp_path / "p2d_prompts_train.jsonl"
    lines = train_file.read_text().splitlines()
    first = json.loads(lines[0])
    person = first["prompt"].split(",")[0]
    first["prompt"] = first["prompt"].replace(person, "Somebody Unknown")
    train_file.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="Line 0 of p2d_prompts_train names 0 known people"):
        load_reversal_tasks(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "both"}, "`task` must be one of"),
        ({"validation_fraction": 0.5, "test_fraction": 0.5}, "leave people for training"),
        ({"test_fraction": -0.1}, "non-negative"),
    ],
)
def test_bad_arguments_raise(data_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_reversal_tasks(data_dir, **kwargs)
