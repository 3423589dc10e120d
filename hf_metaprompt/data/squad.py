"""Reading-comprehension tasks from datasets with the `squad` schema (`squad`, `squad_v2`, local copies).

The passage is the context to absorb, the question (through `query_template`) the query, the first reference the
gold answer; all references are kept in `answers` so that EM/F1 can take the best match, as SQuAD does.
"""

import logging
import os

import datasets

from .common import DataFiles, load_split, require_columns

logger = logging.getLogger(__name__)


def squad_task(example: dict, query_template: str = "Q: {question}\nA:") -> dict:
    """One SQuAD-schema row as a task: the passage to absorb, the question as the query, the first reference (with a
    leading space, so it continues the query) as the answer, every reference in `answers`."""
    references = example["answers"]["text"]
    return {
        "context": example["context"],
        "query": query_template.format(question=example["question"]),
        "answer": " " + references[0].strip(),
        "answers": list(references),
        "direction": "all",
    }


def load_squad_tasks(
    name_or_path: str | os.PathLike,
    split: str = "validation",
    data_files: DataFiles | None = None,
    dataset_config: str | None = None,
    query_template: str = "Q: {question}\nA:",
    max_examples: int | None = None,
) -> datasets.Dataset:
    """Map a `squad`-schema split to tasks with columns `context`, `query`, `answer` (space-prefixed, so it continues
    the query), `answers` (all reference texts) and `direction` (`"all"`); `id` is kept when present.

    `name_or_path` is a Hub dataset (`"rajpurkar/squad"`), a builder such as `"json"`/`"parquet"` used with
    `data_files`, or a local JSON/JSONL/Parquet file. Questions without any answer (SQuAD v2 unanswerables) are
    dropped, since there is no target to distil; the count is logged.
    """
    if "{question}" not in query_template:
        raise ValueError(f"`query_template` must contain '{{question}}', got {query_template!r}.")
    dataset = load_split(name_or_path, split, data_files, dataset_config)
    require_columns(dataset, ["context", "question", "answers"])
    answers_feature = dataset.features["answers"]
    if not (isinstance(answers_feature, dict) and "text" in answers_feature):
        raise ValueError(f"The 'answers' column must be a struct with a 'text' list, got {answers_feature}.")

    answerable = dataset.filter(lambda answers: len(answers["text"]) > 0, input_columns="answers")
    if len(answerable) < len(dataset):
        logger.info("Dropped %d of %d questions that have no answer.", len(dataset) - len(answerable), len(dataset))
    if max_examples is not None:
        answerable = answerable.select(range(min(max_examples, len(answerable))))
    return answerable.map(
        squad_task,
        fn_kwargs={"query_template": query_template},
        remove_columns=[column for column in answerable.column_names if column != "id"],
    )
