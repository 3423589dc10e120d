"""The SQuAD-schema loader on a small fixture, as JSON, JSONL and Parquet."""

import json
from pathlib import Path

import datasets
import pytest

from hf_metaprompt.data.squad import load_squad_tasks

FIXTURE = Path(__file__).parent / "fixtures" / "squad_small.json"


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return json.loads(FIXTURE.read_text())


def _write(records: list[dict], path: Path) -> Path:
    if path.suffix == ".parquet":
        datasets.Dataset.from_list(records).to_parquet(path)
    else:
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet"])
def test_round_trip(records, tmp_path, suffix):
    path = FIXTURE if suffix == ".json" else _write(records, tmp_path / f"squad{suffix}")
    tasks = load_squad_tasks(path)
    answerable = [record for record in records if record["answers"]["text"]]
    assert len(tasks) == len(answerable) == len(records) - 1  # the unanswerable (SQuAD v2 style) row is dropped
    for task, record in zip(tasks, answerable, strict=True):
        assert task["id"] == record["id"]
        assert task["context"] == record["context"]
        assert task["query"] == f"Q: {record['question']}\nA:"
        assert task["answer"] == " " + record["answers"]["text"][0]
        assert task["answers"] == record["answers"]["text"]
        assert task["direction"] == "all"


def test_builder_with_data_files_and_split():
    tasks = load_squad_tasks("json", split="validation", data_files=str(FIXTURE))
    assert tasks.split == "validation"
    assert tasks[1]["answers"] == ["1911", "in 1911", "1911"]  # every reference is kept, duplicates included
    with pytest.raises(ValueError, match="both a data file"):
        load_squad_tasks(FIXTURE, data_files=str(FIXTURE))


def test_template_and_max_examples():
    tasks = load_squad_tasks(FIXTURE, query_template="Question: {question}\nAnswer:", max_examples=2)
    assert tasks["query"] == [
        "Question: Who designed the Lumen Bridge?\nAnswer:",
        "Question: When did the bridge open?\nAnswer:",
    ]
    with pytest.raises(ValueError, match=r"\{question\}"):
        load_squad_tasks(FIXTURE, query_template="Q: {q}\nA:")


@pytest.mark.parametrize(
    ("rename", "message"),
    [({"question": "query_text"}, "'question'"), ({"context": "passage"}, "'context'")],
)
def test_missing_column_is_named(records, tmp_path, rename, message):
    renamed = [{rename.get(key, key): value for key, value in record.items()} for record in records]
    with pytest.raises(ValueError, match=message):
        load_squad_tasks(_write(renamed, tmp_path / "bad.jsonl"))


def test_answers_without_text_field(records, tmp_path):
    flat = [{**record, "answers": record["answers"]["text"]} for record in records]
    with pytest.raises(ValueError, match="'answers' column must be a struct with a 'text' list"):
        load_squad_tasks(_write(flat, tmp_path / "flat.jsonl"))
