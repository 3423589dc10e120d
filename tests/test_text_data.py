"""Label-free text tasks from a small WikiText-style file."""

import json
import logging
import re
from pathlib import Path

import pytest

from hf_metaprompt.data.text import load_text_tasks
from hf_metaprompt.pipeline import ScriptArguments, load_task, split_by_context

FIXTURE = Path(__file__).parent / "fixtures" / "wikitext_small.txt"
PASSAGES = [line.strip() for line in FIXTURE.read_text().splitlines()]


def _passage_of(context: str) -> str:
    (passage,) = [passage for passage in PASSAGES if passage.startswith(context)]
    return passage


def test_tasks_cut_passages_at_sentences(caplog):
    with caplog.at_level(logging.INFO, logger="hf_metaprompt.data.text"):
        tasks = load_text_tasks(FIXTURE)
    # Two paragraphs are long enough and have a boundary; headings, blank lines, a short sentence and a long
    # sentence without a full stop are skipped and counted.
    assert len(tasks) == 2
    assert "skipped 10 of 12 passages" in caplog.text
    for task in tasks:
        passage = _passage_of(task["context"])  # the context is a prefix of its passage
        assert re.search(r"[.!?]$", task["context"])  # made of whole sentences
        rest = passage[len(task["context"]) :].lstrip()
        assert rest.startswith(task["query"] + task["reference"])  # the query continues it, the reference follows
        assert len(task["query"].split()) == 4
        assert task["answer"] == ""
        assert task["direction"] == "all"
        context_share = len(task["context"].split()) / len(passage.split())
        assert 0.5 < context_share < 0.9


def test_context_fraction_and_query_words():
    tasks = load_text_tasks(FIXTURE, context_fraction=0.2, query_words=2)
    assert tasks[0]["context"] == PASSAGES[3].split(" . ")[0] + " ."
    assert tasks[0]["query"] == "The town"
    assert tasks[1]["reference"].startswith(" kept bees")


def test_json_column_split_and_max_examples(tmp_path):
    path = tmp_path / "passages.jsonl"
    path.write_text("".join(json.dumps({"body": passage}) + "\n" for passage in PASSAGES))
    tasks = load_text_tasks("json", split="test", data_files=str(path), text_column="body", max_examples=1)
    assert len(tasks) == 1
    assert tasks[0]["query"] == "Today about four thousand"
    with pytest.raises(ValueError, match="'text'"):
        load_text_tasks(path)


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"context_fraction": 1.0}, "context_fraction"), ({"query_words": 0}, "query_words")]
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_text_tasks(FIXTURE, **kwargs)


def test_one_local_file_is_split_three_ways_by_text(tmp_path):
    """`--task text --data_files FILE`: every task lands in one split, and no text is both trained on and scored."""
    words = " ".join(f"word{i}" for i in range(12))
    passages = [
        f"Passage {p} opens here with {words}. It goes on with {words}. Then it ends with {words}." for p in range(30)
    ]
    path = tmp_path / "notes.txt"
    path.write_text("\n".join(passages) + "\n")
    splits = load_task(ScriptArguments(task="text", data_files=str(path)), seed=0)
    contexts = {split: set(splits[split]["context"]) for split in splits}
    assert {split: len(rows) for split, rows in contexts.items()} == {"train": 24, "validation": 3, "test": 3}
    assert not contexts["train"] & (contexts["validation"] | contexts["test"])
    assert not contexts["validation"] & contexts["test"]
    assert sum(len(splits[split]) for split in splits) == 30
    with pytest.raises(ValueError, match="cannot fill train, validation and test"):
        split_by_context(splits["test"].select(range(2)), seed=0)
