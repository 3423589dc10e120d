"""A tiny synthetic world of fictitious people, the library's embedded default task set.

Each person is a name (first x last) with a description (profession x city). A task shows K facts about K related
people (each shares part of its name or description with another of them) and asks one question about one of them,
drawn at random, either ``forward`` (name -> description) or ``reversed`` (description -> name). Facts always state
the name first, so a reversed question asks for the direction a model only reads backwards: the reversal-curse
direction. Distractors are what keep plain fine-tuning on the context honest: with a single fact, "say the only
name you saw" answers reversed questions; with K distinct names it is right about 1/K of the time.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import datasets

from .common import generated_splits

FIRST_NAMES = (
    "Alice", "Bruno", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ingrid", "Jonas",
    "Keiko", "Liam", "Maya", "Nikolai", "Olga", "Pablo", "Quentin", "Rosa", "Sven", "Tara",
    "Umar", "Vera", "Walter", "Ximena", "Yusuf", "Zoe", "Amara", "Boris", "Celine", "Diego",
    "Esther", "Felix", "Gloria", "Hassan", "Irene", "Jasper", "Kira", "Lorenzo", "Mila", "Nadia",
    "Oscar", "Priya", "Rafael", "Selma", "Tobias", "Ursula", "Victor", "Wendy", "Yara", "Zane",
    "Anton", "Beatrix", "Cyrus", "Daria", "Emil", "Fiona", "Gideon", "Hana", "Igor", "Julia",
)  # fmt: skip
LAST_NAMES = (
    "Moreau", "Novak", "Castillo", "Lindqvist", "Okafor", "Tanaka", "Brennan", "Kowalski", "Haddad", "Ferreira",
    "Jansen", "Petrov", "Rossi", "Schmidt", "Dubois", "Nakamura", "Oliveira", "Kaplan", "Sorensen", "Mendez",
    "Varga", "Fischer", "Costa", "Quinn", "Horvat", "Eriksen", "Bianchi", "Duarte", "Weber", "Romero",
    "Larsen", "Marchetti", "Kuznetsov", "Alvarez", "Berger", "Yilmaz", "Lambert", "Morales", "Hoffmann", "Ivanov",
    "Keller", "Moretti", "Navarro", "Popescu", "Richter", "Santos", "Takahashi", "Vogel", "Wagner", "Zielinski",
    "Abbott", "Barlow", "Carver", "Dalton", "Ellison", "Fairley", "Garrity", "Holloway", "Kingsley", "Mercer",
)  # fmt: skip
PROFESSIONS = (
    "baker", "teacher", "pilot", "nurse", "farmer", "painter", "lawyer", "dentist", "chemist", "carpenter",
    "architect", "librarian", "plumber", "sculptor", "journalist", "engineer", "florist", "tailor", "butcher",
    "surgeon", "astronomer", "violinist", "photographer", "electrician", "jeweler", "pharmacist", "poet",
    "gardener", "mechanic", "economist",
)  # fmt: skip
CITIES = (
    "Lisbon", "Oslo", "Cairo", "Lima", "Dublin", "Vienna", "Prague", "Seoul", "Nairobi", "Quito",
    "Madrid", "Berlin", "Warsaw", "Athens", "Helsinki", "Manila", "Bogota", "Havana", "Tunis", "Riga",
    "Zagreb", "Porto", "Geneva", "Naples", "Kyoto", "Montreal", "Denver", "Perth", "Accra", "Hanoi",
)  # fmt: skip

# Paraphrases of one fact; the name always comes first so that description -> name is the reversed direction.
FACT_TEMPLATES = (
    "{name} is {description}.",
    "{name} works as {article} {profession} in {city}.",
    "{name} lives in {city} and works as {article} {profession}.",
    "{name}, {article} {profession}, is based in {city}.",
)
FORWARD_QUERIES = ("Q: Who is {name}?\nA:", "Q: Tell me about {name}.\nA:")
REVERSED_QUERIES = (
    "Q: Who is the {profession} from {city}?\nA:",
    "Q: Which person is {article} {profession} in {city}?\nA:",
)
DIRECTIONS = ("forward", "reversed")
# What a distractor may share with the asked person.
ATTRIBUTES = ("profession", "city", "first", "last")
# What the people of a context share, so that one word of the question does not find the asked fact: a reversed
# question names a profession and a city, a forward one a first and a last name.
SHARED_FOR = {"forward": ("first", "last"), "reversed": ("profession", "city")}
# Bounded so that every held-out split always has enough people with distinct descriptions to fill a context.
MAX_FACTS_PER_CONTEXT = 64

# Share of the world's people (all first x last names) held out for validation and for test.
HELD_OUT_FRACTION = 0.1
# The columns of every split: a task, and the answers the other people of its context would give.
FEATURES = datasets.Features(
    dict.fromkeys(("context", "query", "answer", "direction"), datasets.Value("string"))
    | {"distractors": datasets.List(datasets.Value("string"))}
)


@dataclass(frozen=True)
class Person:
    """One fictitious person; the world holds each name once."""

    first: str
    last: str
    profession: str
    city: str

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"

    @property
    def article(self) -> str:
        return "an" if self.profession[0] in "aeiou" else "a"

    @property
    def description(self) -> str:
        """The canonical description, also the forward answer (after a leading space)."""
        return f"{self.article} {self.profession} from {self.city}"

    def _fields(self) -> dict[str, str]:
        return {
            "name": self.name,
            "description": self.description,
            "article": self.article,
            "profession": self.profession,
            "city": self.city,
        }

    def fact(self, rng: random.Random) -> str:
        """One paraphrase of the person's fact, chosen by ``rng``."""
        return rng.choice(FACT_TEMPLATES).format(**self._fields())

    def answer(self, direction: str) -> str:
        """The answer to a question about this person: it starts with a space and carries no punctuation."""
        if direction == "forward":
            return f" {self.description}"
        if direction == "reversed":
            return f" {self.name}"
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")

    def question(self, direction: str, rng: random.Random) -> tuple[str, str]:
        """A ``(query, answer)`` pair about this person."""
        answer = self.answer(direction)
        queries = FORWARD_QUERIES if direction == "forward" else REVERSED_QUERIES
        return rng.choice(queries).format(**self._fields()), answer


def build_world(seed: int = 0) -> dict[str, list[Person]]:
    """Every first x last name once, with a random description, split by person into train/validation/test."""
    rng = random.Random(f"tiny_world/{seed}/people")
    names = [(first, last) for first in FIRST_NAMES for last in LAST_NAMES]
    rng.shuffle(names)
    people = [Person(first, last, rng.choice(PROFESSIONS), rng.choice(CITIES)) for first, last in names]
    num_held_out = int(len(people) * HELD_OUT_FRACTION)
    return {
        "validation": people[:num_held_out],
        "test": people[num_held_out : 2 * num_held_out],
        "train": people[2 * num_held_out :],
    }


class _ContextSampler:
    """Draws contexts of related people from one split: every person shares a word with someone else in it."""

    def __init__(self, people: list[Person], facts_per_context: int, rng: random.Random) -> None:
        self.people = people
        self.facts_per_context = facts_per_context
        self.rng = rng
        # One index per attribute, so that people sharing an attribute with a given one are found fast.
        self.by_attribute: dict[tuple[str, str], list[Person]] = {}
        for person in people:
            for attribute in ATTRIBUTES:
                self.by_attribute.setdefault((attribute, getattr(person, attribute)), []).append(person)

    def cluster(self, first: Person, attributes: tuple[str, ...] = ATTRIBUTES) -> list[Person]:
        """``first`` and K - 1 more people in random order, all with distinct names and descriptions.

        People are added to give someone already chosen a sharer of an attribute (profession, city, first or last
        name) it has none of yet, someone and attribute drawn at random, where the split allows: matching a single
        word of a question is then rarely enough to find the asked fact, whoever is asked. No one is a centre that
        the others are drawn around: when contexts were built around the asked person, the asked person was the
        one sharing the most words with the others, and a model could answer from that alone without reading the
        question (the previous base did: 0.02 exact match on questions about anyone else in those contexts).
        """
        chosen = [first]
        names, descriptions = {first.name}, {first.description}

        def draw(candidates: list[Person], attempts: int) -> Person | None:
            # Random draws with a bounded number of attempts: cheap even when few candidates are admissible.
            for _ in range(attempts):
                person = self.rng.choice(candidates)
                if person.name not in names and person.description not in descriptions:
                    return person
            return None

        while len(chosen) < self.facts_per_context:
            lacking = [
                (person, attribute)
                for person in chosen
                for attribute in attributes
                if not any(
                    getattr(other, attribute) == getattr(person, attribute) for other in chosen if other is not person
                )
            ]
            anchor, attribute = self.rng.choice(lacking or [(self.rng.choice(chosen), self.rng.choice(attributes))])
            person = draw(self.by_attribute[(attribute, getattr(anchor, attribute))], attempts=8)
            while person is None:
                person = draw(self.people, attempts=64)
            chosen.append(person)
            names.add(person.name)
            descriptions.add(person.description)
        self.rng.shuffle(chosen)
        return chosen

    def context(self, people: list[Person]) -> str:
        """The facts about ``people``, one paraphrase each, joined into one paragraph."""
        return " ".join(person.fact(self.rng) for person in people)


def _check_facts_per_context(facts_per_context: int) -> None:
    if not isinstance(facts_per_context, int) or not 1 <= facts_per_context <= MAX_FACTS_PER_CONTEXT:
        raise ValueError(
            f"facts_per_context must be an integer in [1, {MAX_FACTS_PER_CONTEXT}], got {facts_per_context!r}"
        )


def _split_tasks(people: list[Person], num_tasks: int, facts_per_context: int, rng: random.Random) -> dict:
    """``num_tasks`` tasks on one split's people; directions alternate so both are balanced in every prefix.

    ``distractors`` are the answers the other people of the context would give: a model that reads the context
    without binding a fact to its person answers one of them.
    """
    sampler = _ContextSampler(people, facts_per_context, rng)
    columns: dict[str, list] = {column: [] for column in FEATURES}
    for index in range(num_tasks):
        direction = DIRECTIONS[index % 2]
        people_in_context = sampler.cluster(rng.choice(people), SHARED_FOR[direction])
        asked = rng.choice(people_in_context)
        query, answer = asked.question(direction, rng)
        columns["context"].append(sampler.context(people_in_context))
        columns["query"].append(query)
        columns["answer"].append(answer)
        columns["direction"].append(direction)
        columns["distractors"].append([person.answer(direction) for person in people_in_context if person != asked])
    return columns


def load_tiny_world(
    seed: int = 0,
    num_train: int = 4000,
    num_validation: int = 400,
    num_test: int = 400,
    facts_per_context: int = 8,
) -> datasets.DatasetDict:
    """The embedded task set: ``train``/``validation``/``test`` with columns context, query, answer, direction and
    distractors (the answers of the context's other people; evaluation reports how often a model gives one).

    Splits hold disjoint people; each split's tasks come from their own random stream, so changing ``num_train``
    leaves validation and test unchanged.
    """
    _check_facts_per_context(facts_per_context)
    world = build_world(seed)
    return generated_splits(
        f"tiny_world/{seed}",
        {"train": num_train, "validation": num_validation, "test": num_test},
        lambda split, size, rng: _split_tasks(world[split], size, facts_per_context, rng),
        FEATURES,
    )


@dataclass(frozen=True)
class PretrainingDocument:
    """One context and several questions about distinct people in it, drawn at random."""

    context: str
    questions: list[tuple[str, str]]


def iter_pretraining_documents(
    seed: int = 0,
    facts_per_context: int = 8,
    questions_per_context: int = 4,
    fresh_descriptions: bool = False,
    stream: int = 0,
) -> Iterator[PretrainingDocument]:
    """An endless stream of documents on the TRAIN people of ``build_world(seed)``, for pretraining the base.

    Validation and test people never appear, so a base trained on this stream can only answer them from a prompt.
    Each document asks ``min(questions_per_context, facts_per_context - 1)`` questions (one with a single fact) about
    distinct people of its context, people and directions drawn at random: someone is always left unasked, since
    when everyone is asked the last answer is the one person not yet named, found without reading the question.
    Streams for different context sizes are independent, so a training curriculum can mix them.

    With ``fresh_descriptions``, every document gives its people new random descriptions (each still shares a
    profession or city with another person of the context): nothing about a name can be memorised, so
    the only way to answer is to read the context. Without it, a long enough run learns the train people by heart
    and answers forward questions from memory, which fails on held-out people.

    ``stream`` picks one of many independent streams on the same people (0 is the first): a training stage that
    continues another can draw documents the first did not see.
    """
    _check_facts_per_context(facts_per_context)
    if questions_per_context < 1:
        raise ValueError(f"questions_per_context must be positive, got {questions_per_context}")
    people = build_world(seed)["train"]
    rng = random.Random(
        f"tiny_world/{seed}/pretraining/{facts_per_context}"
        + ("/fresh" if fresh_descriptions else "")
        + (f"/stream{stream}" if stream else "")
    )
    sampler = _ContextSampler(people, facts_per_context, rng)
    num_questions = min(questions_per_context, max(1, facts_per_context - 1))
    while True:
        people_in_context = sampler.cluster(rng.choice(people))
        if fresh_descriptions:
            people_in_context = _redescribed(people_in_context, rng)
        yield PretrainingDocument(
            context=sampler.context(people_in_context),
            questions=[
                person.question(rng.choice(DIRECTIONS), rng) for person in rng.sample(people_in_context, num_questions)
            ],
        )


def _redescribed(people: list[Person], rng: random.Random) -> list[Person]:
    """``people`` with new descriptions, distinct from each other, in the same order.

    Each person after the first keeps sharing the profession or the city of someone before it, so that a single
    word of a reversed question still does not find the asked fact.
    """
    result: list[Person] = []
    descriptions: set[str] = set()
    for person in people:
        while True:
            profession, city = rng.choice(PROFESSIONS), rng.choice(CITIES)
            if result:
                anchor = rng.choice(result)
                if rng.random() < 0.5:
                    profession = anchor.profession
                else:
                    city = anchor.city
            candidate = Person(person.first, person.last, profession, city)
            if candidate.description not in descriptions:
                break
        result.append(candidate)
        descriptions.add(candidate.description)
    return result
