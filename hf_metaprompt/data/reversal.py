"""Reversal-curse and character-description tasks from Berglund et al. (2023), "The Reversal Curse".

The data (one `{"prompt", "completion"}` per line) describe 60 fictitious people: 30 "p2d" people whose training
paraphrases name the person first ("Daphne Barrington, known far and wide for being" + " the acclaimed director of
...") and 30 "d2p" people stated description first. A task absorbs one training paraphrase (prompt + completion as one
sentence) and asks either a held-out paraphrase in the same order (`character_description`) or the reversed prompt
(`reversal`), where fine-tuning on the statement famously fails while putting it in the prompt succeeds.
"""

import logging
import os
import random
import re
from collections import Counter, defaultdict
from typing import Literal

import datasets

from .people import DESCRIPTION_QUESTIONS, NAME_QUESTIONS, Person, direction_of

logger = logging.getLogger(__name__)

_GROUPS = ("p2d", "d2p")
_TRAIN_FILE = "{group}_prompts_train"
_QUERY_FILES = {"character_description": "{group}_prompts_test", "reversal": "{group}_reverse_prompts_test"}
# The lines that ask for the person given the description: their completions are the bare names, i.e. the people.
_NAME_FILES = {"p2d": "p2d_reverse_prompts_test", "d2p": "d2p_prompts_test"}
_FILES = tuple(file.format(group=group) for group in _GROUPS for file in (_TRAIN_FILE, *_QUERY_FILES.values()))
_COLUMNS = ("context", "query", "answer", "direction", "person", "group")


def _load_files(path_or_dataset_id: str | os.PathLike) -> datasets.DatasetDict:
    """Read the six files, by name, from a local directory or a Hub dataset repository alike."""
    data_files = {name: f"{name}.jsonl" for name in _FILES}
    return datasets.load_dataset(os.fspath(path_or_dataset_id), data_files=data_files)


def _name_pattern(raw: datasets.DatasetDict) -> re.Pattern:
    """A regex matching any person's full name as whole words, longest names first so no name shadows another."""
    names = {completion.strip().rstrip(".") for file in _NAME_FILES.values() for completion in raw[file]["completion"]}
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b")


def _lines_by_person(lines: datasets.Dataset, pattern: re.Pattern, file: str) -> dict[str, list[dict]]:
    """Group lines by the one person each names (in its prompt or its completion), keeping file order."""
    by_person = defaultdict(list)
    for index, line in enumerate(lines):
        people = set(pattern.findall(line["prompt"] + line["completion"]))
        if len(people) != 1:
            raise ValueError(f"Line {index} of {file} names {len(people)} known people ({sorted(people)}), not 1.")
        by_person[people.pop()].append(line)
    return by_person


def _assign_splits(
    people: dict[str, list[str]], seed: int, validation_fraction: float, test_fraction: float
) -> dict[str, str]:
    """Split people (never lines) per group, so every split holds both directions of storage; seeded and
    independent of file order."""
    split_of = {}
    for group_people in people.values():
        shuffled = sorted(group_people)
        random.Random(seed).shuffle(shuffled)
        num_test = round(test_fraction * len(shuffled))
        num_held_out = num_test + round(validation_fraction * len(shuffled))
        members = {"test": shuffled[:num_test], "validation": shuffled[num_test:num_held_out]}
        members["train"] = shuffled[num_held_out:]
        split_of.update({person: split for split, split_people in members.items() for person in split_people})
    return split_of


def _pair(person: str, group: str, contexts: list[dict], queries: list[dict]) -> list[dict]:
    """Pair the person's statements with their queries, cycling the shorter list, so that every statement and every
    query is used. The direction is read off the data: "forward" when the query's prompt holds the same side of the
    fact (name or description) as the statement's prompt, "reversed" otherwise."""
    tasks = []
    for index in range(max(len(contexts), len(queries))):
        context, query = contexts[index % len(contexts)], queries[index % len(queries)]
        same_order = (person in context["prompt"]) == (person in query["prompt"])
        tasks.append(
            {
                "context": (context["prompt"] + context["completion"]).strip(),
                "query": query["prompt"],
                "answer": query["completion"],
                "direction": "forward" if same_order else "reversed",
                "person": person,
                "group": group,
            }
        )
    return tasks


def load_reversal_tasks(
    path_or_dataset_id: str | os.PathLike,
    task: Literal["reversal", "character_description"] = "reversal",
    seed: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> datasets.DatasetDict:
    """Build train/validation/test tasks from the reversal-curse files, split by person.

    `path_or_dataset_id` is a local directory or a Hub dataset repository holding `{p2d,d2p}_prompts_train.jsonl`,
    `{p2d,d2p}_prompts_test.jsonl` and `{p2d,d2p}_reverse_prompts_test.jsonl`. The context is a training paraphrase;
    the query is a held-out paraphrase asked in the same order (`task="character_description"`, direction
    `"forward"`) or the reversed prompt (`task="reversal"`, direction `"reversed"`: the answer is the name for p2d
    people and the description for d2p people). Besides the four task columns, `person` and `group` (`"p2d"`/`"d2p"`)
    allow per-person and per-direction analysis.
    """
    if task not in _QUERY_FILES:
        raise ValueError(f"`task` must be one of {sorted(_QUERY_FILES)}, got {task!r}.")
    if min(validation_fraction, test_fraction) < 0 or validation_fraction + test_fraction >= 1:
        raise ValueError(
            "`validation_fraction` and `test_fraction` must be non-negative and leave people for training, got "
            f"{validation_fraction} and {test_fraction}."
        )
    raw = _load_files(path_or_dataset_id)
    pattern = _name_pattern(raw)

    per_group = {}
    for group in _GROUPS:
        train_file, query_file = _TRAIN_FILE.format(group=group), _QUERY_FILES[task].format(group=group)
        statements = _lines_by_person(raw[train_file], pattern, train_file)
        queries = _lines_by_person(raw[query_file], pattern, query_file)
        if statements.keys() != queries.keys():
            raise ValueError(
                f"{train_file} and {query_file} describe different people: "
                f"{sorted(statements.keys() ^ queries.keys())}."
            )
        per_group[group] = (statements, queries)
    split_of = _assign_splits(
        {group: list(statements) for group, (statements, _) in per_group.items()},
        seed,
        validation_fraction,
        test_fraction,
    )

    tasks = {"train": [], "validation": [], "test": []}
    for group, (statements, queries) in per_group.items():
        for person, person_statements in statements.items():
            tasks[split_of[person]].extend(_pair(person, group, person_statements, queries[person]))
    logger.info(
        "Reversal-curse %s tasks from %d people: %s.",
        task,
        len(split_of),
        ", ".join(f"{len(rows)} {split}" for split, rows in tasks.items()),
    )
    features = datasets.Features({column: datasets.Value("string") for column in _COLUMNS})
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict({column: [row[column] for row in rows] for column in _COLUMNS}, features)
            for split, rows in tasks.items()
        }
    )


# Asked as questions ("Q: Who is <description>?", "Q: Who is <name>?", the people tasks' first templates): a 135M
# model does not complete Berglund's templates with a name, but it answers questions.
QUESTIONS = {"name": NAME_QUESTIONS[0], "description": DESCRIPTION_QUESTIONS[0]}
# The files whose completions are each group's descriptions (in several grammatical forms).
_DESCRIPTION_FILES = {"p2d": "p2d_prompts_test", "d2p": "d2p_reverse_prompts_test"}
QUESTION_COLUMNS = ("context", "query", "answer", "direction", "answer_kind", "person", "group")


def _noun_phrase(completions: list[str], person: str) -> str:
    """The person's description as a noun phrase ("the acclaimed director of ..."): the most frequent completion
    that reads as one, its final period dropped."""
    phrases = Counter(c.strip()[:-1] for c in completions if c.strip().startswith("the ") and c.strip().endswith("."))
    if not phrases:
        raise ValueError(f"No completion describes {person} with a noun phrase starting with 'the '.")
    return phrases.most_common(1)[0][0]


def load_reversal_questions(
    path_or_dataset_id: str | os.PathLike, paraphrases_per_person: int = 1, seed: int = 0
) -> datasets.Dataset:
    """Every person of the reversal-curse files, asked about as a question in both directions.

    Each task absorbs one of the person's training paraphrases (stated name first for p2d people, description first
    for d2p people) and asks "Q: Who is <description>?\\nA:" (answer: the name) or "Q: Who is <name>?\\nA:" (answer:
    the description). `direction` is ``reversed`` when the question gives the side the statement gives last: the
    description of a p2d person, the name of a d2p person. `paraphrases_per_person` statements per person and
    question (seeded choice) give ``4 * 30 * paraphrases_per_person`` tasks. These people are written by nobody here:
    a held-out test of a model meta-trained on other people.
    """
    if not isinstance(paraphrases_per_person, int) or not 1 <= paraphrases_per_person <= 30:
        raise ValueError(f"`paraphrases_per_person` must be an integer in [1, 30], got {paraphrases_per_person!r}.")
    raw = _load_files(path_or_dataset_id)
    pattern = _name_pattern(raw)
    rng = random.Random(f"reversal_questions/{seed}")
    rows = {column: [] for column in QUESTION_COLUMNS}
    for group in _GROUPS:
        train_file, description_file = _TRAIN_FILE.format(group=group), _DESCRIPTION_FILES[group]
        statements = _lines_by_person(raw[train_file], pattern, train_file)
        descriptions = _lines_by_person(raw[description_file], pattern, description_file)
        for person in sorted(statements):
            description = _noun_phrase([line["completion"] for line in descriptions[person]], person)
            for answer_kind, template in QUESTIONS.items():
                query, answer = Person(person, description).ask(template, answer_kind)
                for line in rng.sample(statements[person], paraphrases_per_person):
                    rows["context"].append((line["prompt"] + line["completion"]).strip())
                    rows["query"].append(query)
                    rows["answer"].append(answer)
                    rows["direction"].append(direction_of(answer_kind, name_first=group == "p2d"))
                    rows["answer_kind"].append(answer_kind)
                    rows["person"].append(person)
                    rows["group"].append(group)
    features = datasets.Features({column: datasets.Value("string") for column in QUESTION_COLUMNS})
    return datasets.Dataset.from_dict(rows, features)
