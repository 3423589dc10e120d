"""Fictitious English passages about many kinds of things, with questions answered by a span: documents for a real LM.

A one-sentence bio is not what users absorb. Here each passage is 2-6 sentences about one invented thing (a bridge, a
ship, a company, a festival, a novel, a library, a town, a person), each sentence one fact of it: who made or led it
(a person), when (a year), where (a town), a colour, a number, a material or a month, stated in one of several
templates. Each passage is asked several questions, each answered by a span of the passage, and the rows carry the
SQuAD schema (`question`, `answers: {text, answer_start}`), so they become tasks through the same code as a user's
SQuAD (`data.squad`). Questions about the person of a fact can also be asked the other way ("What did Ada Quill
design?"): a question is ``forward`` when it gives the side of its sentence that comes first, ``reversed`` otherwise.
Train, validation and test hold disjoint names (people, towns, things); the same seed gives the same tasks.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

import datasets

from .common import generated_splits
from .people import FIRST_NAMES, LAST_NAMES
from .squad import squad_task

# Invented words: two syllables each, for towns ("Brackmere") and things ("the Oskel Bridge").
_STARTS = (
    "Ash", "Brack", "Cal", "Dun", "Elm", "Fen", "Gar", "Hal", "Ivel", "Kes", "Lor", "Mar", "Nor", "Ost", "Pel",
    "Quen", "Rav", "Sel", "Tam", "Ul", "Ves", "Wyn", "Yar", "Zel", "Bel", "Cor", "Dar", "Ems", "Fal", "Grim",
)  # fmt: skip
_ENDS = (
    "mere", "ford", "wick", "stead", "holm", "dale", "mouth", "brook", "haven", "ridge", "worth", "field", "moor",
    "gate", "by", "ton", "vale", "crest",
)  # fmt: skip
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "grey", "orange", "purple", "brown", "silver", "golden")
MATERIALS = ("granite", "oak", "iron", "brick", "marble", "glass", "steel", "sandstone", "limestone", "copper")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
    "December",
)  # fmt: skip
NUMBER_WORDS = ("three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


@dataclass(frozen=True)
class Relation:
    """One kind of fact of a thing: the type of its value, how a sentence states it (value last or value first), and
    how a question asks for the value (`about_value`: the questions that give the value and ask for the thing)."""

    value: str  # person, year, town, colour, material, month, count
    value_last: tuple[str, ...]
    value_first: tuple[str, ...]
    questions: tuple[str, ...]
    about_value: tuple[str, ...] = ()


# Per kind: the noun that names it and its relations. Templates fill {thing}, {Thing} (capitalised), {value} and
# {unit} for counts.
KINDS: dict[str, tuple[str, dict[str, Relation]]] = {
    "bridge": (
        "Bridge",
        {
            "designer": Relation(
                "person",
                ("{Thing} was designed by {value}.", "{Thing} is the work of the engineer {value}."),
                ("{value} designed {thing}.", "The engineer {value} drew the plans of {thing}."),
                ("Who designed {thing}?", "Which engineer designed {thing}?"),
                ("What did {value} design?", "Which bridge is the work of {value}?"),
            ),
            "year": Relation(
                "year",
                ("{Thing} opened in {value}.", "{Thing} was completed in {value}."),
                ("In {value}, {thing} opened to traffic.",),
                ("When did {thing} open?", "In which year was {thing} completed?"),
            ),
            "colour": Relation(
                "colour",
                ("{Thing} is painted {value}.",),
                ("A coat of {value} paint covers {thing}.",),
                ("What colour is {thing}?", "What colour is {thing} painted?"),
            ),
            "material": Relation(
                "material",
                ("{Thing} is built of {value}.",),
                ("It took tons of {value} to build {thing}.",),
                ("What is {thing} built of?",),
            ),
            "town": Relation(
                "town",
                ("{Thing} crosses the river at {value}.",),
                ("The town of {value} lies at the foot of {thing}.",),
                ("In which town is {thing}?", "Where is {thing}?"),
            ),
            "count": Relation(
                "count",
                ("{Thing} has {value} arches.",),
                ("Exactly {value} arches hold up {thing}.",),
                ("How many arches does {thing} have?",),
            ),
        },
    ),
    "ship": (
        "",
        {
            "captain": Relation(
                "person",
                ("{Thing} was captained by {value}.", "{Thing} sailed under captain {value}."),
                ("{value} was the captain of {thing}.",),
                ("Who captained {thing}?", "Who was the captain of {thing}?"),
                ("Which ship did {value} captain?",),
            ),
            "year": Relation(
                "year",
                ("{Thing} was launched in {value}.",),
                ("In {value}, {thing} was launched.",),
                ("When was {thing} launched?", "In which year was {thing} launched?"),
            ),
            "colour": Relation(
                "colour",
                ("{Thing} has a {value} hull.",),
                ("A {value} hull made {thing} easy to spot.",),
                ("What colour is the hull of {thing}?",),
            ),
            "town": Relation(
                "town",
                ("{Thing} sailed from the port of {value}.", "{Thing} was built in {value}."),
                ("The harbour of {value} was home to {thing}.",),
                ("Which port was {thing} based in?", "Where was {thing} based?"),
            ),
            "count": Relation(
                "count",
                ("{Thing} carried a crew of {value}.",),
                ("A crew of {value} sailed on {thing}.",),
                ("How many sailors were in the crew of {thing}?",),
            ),
        },
    ),
    "company": (
        "Company",
        {
            "founder": Relation(
                "person",
                ("{Thing} was founded by {value}.",),
                ("{value} founded {thing}.", "It was {value} who started {thing}."),
                ("Who founded {thing}?",),
                ("Which company did {value} found?",),
            ),
            "year": Relation(
                "year",
                ("{Thing} was founded in {value}.",),
                ("In {value}, {thing} opened its doors.",),
                ("When was {thing} founded?", "In which year was {thing} founded?"),
            ),
            "town": Relation(
                "town",
                ("{Thing} has its offices in {value}.",),
                ("The town of {value} is home to {thing}.",),
                ("Where does {thing} have its offices?", "In which town is {thing}?"),
            ),
            "colour": Relation(
                "colour",
                ("The logo of {thing} is {value}.",),
                ("A {value} logo marks everything {thing} sells.",),
                ("What colour is the logo of {thing}?",),
            ),
            "count": Relation(
                "count",
                ("{Thing} employs {value} hundred people.",),
                ("About {value} hundred people work for {thing}.",),
                ("How many hundred people work for {thing}?",),
            ),
        },
    ),
    "festival": (
        "Festival",
        {
            "organiser": Relation(
                "person",
                ("{Thing} is organised by {value}.",),
                ("{value} organises {thing} every year.",),
                ("Who organises {thing}?",),
                ("Which festival does {value} organise?",),
            ),
            "year": Relation(
                "year",
                ("{Thing} was first held in {value}.",),
                ("In {value}, {thing} was held for the first time.",),
                ("When was {thing} first held?",),
            ),
            "month": Relation(
                "month",
                ("{Thing} takes place every {value}.",),
                ("Every {value}, crowds gather for {thing}.",),
                ("In which month does {thing} take place?", "When does {thing} take place each year?"),
            ),
            "town": Relation(
                "town",
                ("{Thing} is held in {value}.",),
                ("The streets of {value} fill up during {thing}.",),
                ("Where is {thing} held?", "In which town is {thing} held?"),
            ),
            "colour": Relation(
                "colour",
                ("The flags of {thing} are {value}.",),
                ("{Value} flags hang everywhere during {thing}.",),
                ("What colour are the flags of {thing}?",),
            ),
        },
    ),
    "novel": (
        "",
        {
            "author": Relation(
                "person",
                ("The novel {thing} was written by {value}.",),
                ("{value} wrote the novel {thing}.",),
                ("Who wrote {thing}?", "Who is the author of {thing}?"),
                ("Which novel did {value} write?",),
            ),
            "year": Relation(
                "year",
                ("{Thing} was published in {value}.",),
                ("In {value}, {thing} was published.",),
                ("When was {thing} published?", "In which year was {thing} published?"),
            ),
            "town": Relation(
                "town",
                ("{Thing} is set in the town of {value}.",),
                ("The town of {value} is the setting of {thing}.",),
                ("Where is {thing} set?", "In which town is {thing} set?"),
            ),
            "colour": Relation(
                "colour",
                ("The first edition of {thing} had a {value} cover.",),
                ("A {value} cover wrapped the first edition of {thing}.",),
                ("What colour was the cover of {thing}?",),
            ),
            "count": Relation(
                "count",
                ("{Thing} has {value} chapters.",),
                ("Exactly {value} chapters make up {thing}.",),
                ("How many chapters does {thing} have?",),
            ),
        },
    ),
    "library": (
        "Library",
        {
            "architect": Relation(
                "person",
                ("{Thing} was designed by the architect {value}.",),
                ("The architect {value} designed {thing}.",),
                ("Who designed {thing}?", "Which architect designed {thing}?"),
                ("Which library did {value} design?",),
            ),
            "year": Relation(
                "year",
                ("{Thing} opened in {value}.",),
                ("In {value}, {thing} opened its doors.",),
                ("When did {thing} open?",),
            ),
            "material": Relation(
                "material",
                ("{Thing} is built of {value}.",),
                ("Walls of {value} surround {thing}.",),
                ("What is {thing} built of?",),
            ),
            "colour": Relation(
                "colour",
                ("{Thing} has a {value} roof.",),
                ("A {value} roof tops {thing}.",),
                ("What colour is the roof of {thing}?",),
            ),
            "town": Relation(
                "town",
                ("{Thing} stands in {value}.",),
                ("The town of {value} is proud of {thing}.",),
                ("Where does {thing} stand?", "In which town is {thing}?"),
            ),
        },
    ),
    "regatta": (
        "Regatta",
        {
            "winner": Relation(
                "person",
                ("{Thing} was last won by {value}.",),
                ("{value} won the last {thing}.",),
                ("Who won the last {thing}?", "Who was the winner of {thing}?"),
                ("Which race did {value} win?",),
            ),
            "town": Relation(
                "town",
                ("{Thing} is rowed on the lake at {value}.",),
                ("The lake at {value} hosts {thing}.",),
                ("Where is {thing} rowed?",),
            ),
            "month": Relation(
                "month",
                ("{Thing} is held each {value}.",),
                ("Each {value}, rowers come for {thing}.",),
                ("In which month is {thing} held?",),
            ),
            "count": Relation(
                "count",
                ("{Thing} has {value} races.",),
                ("Crews row {value} races at {thing}.",),
                ("How many races does {thing} have?",),
            ),
            "colour": Relation(
                "colour",
                ("The winners of {thing} wear {value} caps.",),
                ("{Value} caps go to the winners of {thing}.",),
                ("What colour are the caps of the winners of {thing}?",),
            ),
        },
    ),
}
DIRECTIONS = ("forward", "reversed")
FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {
            "text": datasets.List(datasets.Value("string")),
            "answer_start": datasets.List(datasets.Value("int32")),
        },
        "direction": datasets.Value("string"),
        "relation": datasets.Value("string"),
    }
)


@dataclass(frozen=True)
class Names:
    """The names one split may use: no person, town or thing of one split appears in another."""

    people: list[str]
    towns: list[str]
    things: list[str]


def build_names(seed: int = 0, held_out_fraction: float = 0.15) -> dict[str, Names]:
    rng = random.Random(f"passages/{seed}")
    people = [f"{first} {last}" for first, last in itertools.product(FIRST_NAMES, LAST_NAMES)]
    # A coined word that is also a first or last name ("Ashworth") would cross splits as a person's name.
    person_words = set(FIRST_NAMES) | set(LAST_NAMES)
    words = [start + end for start, end in itertools.product(_STARTS, _ENDS) if start + end not in person_words]
    rng.shuffle(people)
    rng.shuffle(words)
    towns, things = words[::2], words[1::2]

    def deal(items: list[str]) -> dict[str, list[str]]:
        held_out = round(held_out_fraction * len(items))
        return {"test": items[:held_out], "validation": items[held_out : 2 * held_out], "train": items[2 * held_out :]}

    by_kind = {name: deal(items) for name, items in (("people", people), ("towns", towns), ("things", things))}
    return {
        split: Names(**{name: by_kind[name][split] for name in by_kind}) for split in ("train", "validation", "test")
    }


def _thing_name(kind: str, word: str) -> str:
    noun = KINDS[kind][0]
    if kind == "ship":
        return f"the {word}"
    if kind == "novel":
        return f'"{word}"'
    return f"the {word} {noun}"


def _value(kind: str, rng: random.Random, names: Names) -> str:
    if kind == "person":
        return rng.choice(names.people)
    if kind == "year":
        return str(rng.randrange(1720, 2021))
    if kind == "town":
        return rng.choice(names.towns)
    if kind == "colour":
        return rng.choice(COLOURS)
    if kind == "material":
        return rng.choice(MATERIALS)
    if kind == "month":
        return rng.choice(MONTHS)
    return rng.choice(NUMBER_WORDS)


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def make_passage(rng: random.Random, names: Names, num_facts: int) -> tuple[str, str, list[tuple]]:
    """A passage about one invented thing: its title, its text and its facts as (relation name, relation, value,
    sentence, value first?)."""
    kind = rng.choice(list(KINDS))
    thing = _thing_name(kind, rng.choice(names.things))
    relations = rng.sample(sorted(KINDS[kind][1].items()), min(num_facts, len(KINDS[kind][1])))
    facts, sentences = [], []
    for relation_name, relation in relations:
        value = _value(relation.value, rng, names)
        first = rng.random() < 0.5 and bool(relation.value_first)
        template = rng.choice(relation.value_first if first else relation.value_last)
        sentence = template.format(thing=thing, Thing=_capitalize(thing), value=value, Value=_capitalize(value))
        sentences.append(_capitalize(sentence))
        facts.append((relation_name, relation, value, sentences[-1], first))
    return thing, " ".join(sentences), facts


def _rows(names: Names, num_passages: int, questions_per_passage: int, rng: random.Random, split: str) -> dict:
    columns: dict[str, list] = {name: [] for name in FEATURES}
    for index in range(num_passages):
        thing, context, facts = make_passage(rng, names, rng.randint(2, 6))
        asked = rng.sample(facts, min(questions_per_passage, len(facts)))
        for number, (relation_name, relation, value, sentence, value_first) in enumerate(asked):
            backwards = bool(relation.about_value) and rng.random() < 0.5
            template = rng.choice(relation.about_value if backwards else relation.questions)
            question = template.format(thing=thing, value=value)
            answer = thing if backwards else value
            # The answer as a whole word of its own sentence ("red" never inside "Fredholm").
            found = re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", sentence, flags=re.IGNORECASE)
            if found is None:
                raise AssertionError(f"{answer!r} is not a span of {sentence!r}")  # a template without its value
            start = context.index(sentence) + found.start()
            columns["id"].append(f"{split}-{index}-{number}")
            columns["title"].append(thing)
            columns["context"].append(context)
            columns["question"].append(question)
            columns["answers"].append({"text": [context[start : start + len(answer)]], "answer_start": [start]})
            # A question gives the thing (asking for the value) or the value (asking for the thing); it is forward
            # when what it gives comes first in its sentence.
            gives_value_first = value_first if backwards else not value_first
            columns["direction"].append(DIRECTIONS[not gives_value_first])
            columns["relation"].append(relation_name)
    return columns


def load_passage_rows(
    seed: int = 0,
    num_train: int = 1500,
    num_validation: int = 150,
    num_test: int = 150,
    questions_per_passage: int = 3,
) -> datasets.DatasetDict:
    """Passages in the SQuAD schema (`id`, `title`, `context`, `question`, `answers`) plus `direction` and
    `relation`: `num_*` passages per split, up to `questions_per_passage` questions each."""
    if not isinstance(questions_per_passage, int) or questions_per_passage < 1:
        raise ValueError(f"`questions_per_passage` must be a positive integer, got {questions_per_passage!r}.")
    names = build_names(seed)
    return generated_splits(
        f"passages/{seed}",
        {"train": num_train, "validation": num_validation, "test": num_test},
        lambda split, size, rng: _rows(names[split], size, questions_per_passage, rng, split),
        FEATURES,
    )


def load_passage_tasks(seed: int = 0, **sizes: int) -> datasets.DatasetDict:
    """`load_passage_rows` as tasks (`context`, `query`, `answer`, `answers`, `direction`, `answer_kind`), through
    the SQuAD mapping: `answer_kind` is "name" (every word of the span must appear in an answer's first line)."""
    rows = load_passage_rows(seed, **sizes)

    def to_task(example: dict) -> dict:
        return {**squad_task(example), "direction": example["direction"], "answer_kind": "name"}

    return rows.map(to_task, remove_columns=["title", "question", "relation"])
