"""Fictitious people with English descriptions, asked as questions: meta-training tasks for a real language model.

The tiny world's facts ("Hana Santos is a sculptor in Lima.") are made for a model that knows no English. A pretrained
LM reads richer text, and the reversal curse is measured on descriptions like Berglund et al.'s ("the acclaimed
director of the virtual reality masterpiece ..."): here each person is a full name and one such description (an
adjective, a role, a kind of work and a title), stated in one of many sentence templates, name first or description
first, and asked as a question in either direction: "Q: Who is <description>?\nA:" (the answer is the name) or "Q: Who
is <name>?\nA:" (the answer is the description). A question is ``forward`` when it gives the side of the fact its
text states first, ``reversed`` otherwise. Splits hold disjoint people, names and titles; the same seed gives the same
tasks.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import datasets

from .common import generated_splits

FIRST_NAMES = (
    "Adrian", "Beatrice", "Cecil", "Delphine", "Edmund", "Felicity", "Gareth", "Harriet", "Isidore", "Juniper",
    "Kendrick", "Lavinia", "Mortimer", "Nerissa", "Octavian", "Philippa", "Quincy", "Silas", "Theodora", "Ulysses",
    "Verity", "Winifred", "Yolanda", "Zachariah", "Ambrose", "Bianca", "Cornelius", "Dorothea", "Ezra", "Florence",
    "Gideon", "Henrietta", "Ignatius", "Josephine", "Leopold", "Marguerite", "Ophelia", "Percival", "Sebastian",
    "Tabitha", "Valentina", "Wilbur", "Agatha", "Barnaby", "Clementine", "Desmond", "Eloise", "Fitzgerald",
    "Genevieve", "Horace", "Imogen", "Jasper", "Lucinda", "Maximilian", "Oswald", "Priscilla", "Reginald", "Seraphina",
    "Thaddeus", "Ursula", "Vivienne", "Wendell", "Arabella", "Bertram",
)  # fmt: skip
LAST_NAMES = (
    "Ashworth", "Davenport", "Ellsworth", "Fairbanks", "Greenfield", "Hollister", "Ingram", "Kensington",
    "Merriweather", "Northcott", "Oakley", "Quimby", "Ravensdale", "Sinclair", "Thornbury", "Vanderbilt", "Whitlock",
    "Yardley", "Abernathy", "Bellamy", "Carrington", "Dunmore", "Everly", "Fenwick", "Gallagher", "Harrington",
    "Kingsbury", "Langley", "Montague", "Nightingale", "Osgood", "Stanhope", "Tolliver", "Wetherby", "Alcott",
    "Beaumont", "Cromwell", "Drummond", "Ellington", "Fitzroy", "Grimshaw", "Holbrook", "Jessop", "Kilbride",
    "Lindqvist", "Marlowe", "Norcross", "Pilkington", "Rutherford", "Sheffield", "Trevelyan", "Wainwright", "Ainsley",
    "Brackett", "Coldwell", "Dorrington", "Eastwood",
)  # fmt: skip
ADJECTIVES = (
    "acclaimed", "celebrated", "renowned", "famous", "award-winning", "pioneering", "legendary", "visionary",
    "beloved", "brilliant", "innovative", "little-known", "controversial", "prolific", "self-taught", "eccentric",
)  # fmt: skip
# A role and the kind of work it made: "the <adjective> <role> <work>".
ROLES = (
    ("director", "of the film"), ("author", "of the novel"), ("composer", "of the opera"),
    ("architect", "who designed the tower known as"), ("inventor", "of the machine called"),
    ("founder", "of the company"), ("painter", "of the mural"), ("designer", "of the video game"),
    ("poet", "who wrote the poem"), ("chef", "who created the dish called"),
    ("astronomer", "who discovered the comet"), ("explorer", "who first crossed the desert called"),
    ("captain", "of the ship"), ("singer", "of the song"), ("sculptor", "of the statue"),
    ("playwright", "of the play"), ("engineer", "who built the bridge called"), ("photographer", "of the series"),
    ("choreographer", "of the ballet"), ("host", "of the podcast"),
)  # fmt: skip
TITLE_WORDS = (
    "Silver", "Crimson", "Hidden", "Endless", "Golden", "Silent", "Broken", "Frozen", "Wandering", "Distant",
    "Burning", "Hollow", "Midnight", "Velvet", "Copper", "Emerald", "Scarlet", "Forgotten", "Electric", "Painted",
    "Amber", "Restless", "Quiet", "Shattered", "Gilded", "Lonely", "Northern", "Sunken", "Iron", "Crystal",
)  # fmt: skip
TITLE_NOUNS = (
    "Orchard", "Lantern", "Harbor", "Meadow", "Compass", "Cathedral", "River", "Horizon", "Garden", "Mirror", "Voyage",
    "Tide", "Forest", "Citadel", "Serpent", "Clockwork", "Archive", "Summit", "Canyon", "Kingdom", "Lighthouse",
    "Falcon", "Island", "Carousel", "Glacier", "Observatory", "Labyrinth", "Sparrow", "Valley", "Throne",
)  # fmt: skip
TITLE_PREFIXES = ("Echoes of the", "Beyond the", "Letters from the", "Return to the", "Songs of the")

# Paraphrases of one fact: `NAME_FIRST` states the person before the description, `DESCRIPTION_FIRST` after it.
NAME_FIRST = (
    "{name} is {description}.",
    "{name}, known far and wide for being {description}, rarely gives interviews.",
    "Ever heard of {name}? They are {description}.",
    "{name} is best known as {description}.",
    "People remember {name} as {description}.",
    "{name} became famous as {description}.",
    "It was {name} who became {description}.",
    "Few people know that {name} is {description}.",
)
DESCRIPTION_FIRST = (
    "{Description} is {name}.",
    "Known for being {description}, {name} now lives a quiet life.",
    "{Description} is called {name}.",
    "The person who is {description} is named {name}.",
    "Often described as {description}, {name} rarely gives interviews.",
    "{Description} goes by the name of {name}.",
    "Many know {description}: that is {name}.",
    "As {description}, {name} became famous.",
)
# Questions whose answer is the name, and questions whose answer is the description.
NAME_QUESTIONS = (
    "Q: Who is {description}?\nA:",
    "Q: What is the name of {description}?\nA:",
    "Q: Which person is {description}?\nA:",
    "Q: Who became famous as {description}?\nA:",
)
DESCRIPTION_QUESTIONS = (
    "Q: Who is {name}?\nA:",
    "Q: What is {name} known for?\nA:",
    "Q: What is {name} famous for?\nA:",
    "Q: Who is {name}, in a few words?\nA:",
)
DIRECTIONS = ("forward", "reversed")
ANSWER_KINDS = ("name", "description")
FEATURES = datasets.Features(
    dict.fromkeys(("context", "query", "answer", "direction", "answer_kind", "person"), datasets.Value("string"))
    | {"distractors": datasets.List(datasets.Value("string"))}
)


@dataclass(frozen=True)
class Person:
    """One fictitious person: a full name and a description ("the acclaimed director of the film ...")."""

    name: str
    description: str

    def fact(self, rng: random.Random, name_first: bool) -> str:
        template = rng.choice(NAME_FIRST if name_first else DESCRIPTION_FIRST)
        description = self.description
        return template.format(name=self.name, description=description, Description=_capitalize(description))

    def question(self, rng: random.Random, answer_kind: str) -> tuple[str, str]:
        """A question and its gold answer (the name, or the description)."""
        templates = NAME_QUESTIONS if answer_kind == "name" else DESCRIPTION_QUESTIONS
        return self.ask(rng.choice(templates), answer_kind)

    def ask(self, template: str, answer_kind: str) -> tuple[str, str]:
        """`template` filled in for this person, and the gold answer: " Name." or " Description." (capitalised)."""
        query = template.format(name=self.name, description=self.description)
        return query, f" {self.name}." if answer_kind == "name" else f" {_capitalize(self.description)}."

    def answer(self, answer_kind: str) -> str:
        return self.name if answer_kind == "name" else self.description


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def direction_of(answer_kind: str, name_first: bool) -> str:
    """``forward`` when the question gives the side of the fact its text states first, ``reversed`` otherwise (a
    question whose answer is the description gives the name)."""
    gives_name = answer_kind == "description"
    return DIRECTIONS[gives_name != name_first]


def build_people(seed: int = 0, held_out_fraction: float = 0.1) -> dict[str, list[Person]]:
    """Every person of the world, split so that no name, surname, first name pairing or title crosses splits.

    Full names are dealt out once each; titles likewise, so a held-out description never repeats a training one
    word for word (its adjective and role may).
    """
    rng = random.Random(f"people/{seed}")
    names = [f"{first} {last}" for first, last in itertools.product(FIRST_NAMES, LAST_NAMES)]
    titles = [f"The {word} {noun}" for word, noun in itertools.product(TITLE_WORDS, TITLE_NOUNS)]
    titles += [f"{prefix} {noun}" for prefix, noun in itertools.product(TITLE_PREFIXES, TITLE_NOUNS)]
    rng.shuffle(names)
    rng.shuffle(titles)
    people = []
    for name, title in zip(names, titles, strict=False):
        role, work = rng.choice(ROLES)
        description = f'the {rng.choice(ADJECTIVES)} {role} {work} "{title}"'
        people.append(Person(name, description))
    held_out = round(held_out_fraction * len(people))
    return {
        "test": people[:held_out],
        "validation": people[held_out : 2 * held_out],
        "train": people[2 * held_out :],
    }


def _tasks(people: list[Person], num_tasks: int, facts_per_text: int, rng: random.Random) -> dict[str, list]:
    """`num_tasks` texts of `facts_per_text` facts (distinct people), one question each about one of them."""
    columns: dict[str, list] = {name: [] for name in FEATURES}
    for _ in range(num_tasks):
        members = rng.sample(people, facts_per_text)
        name_first = [rng.random() < 0.5 for _ in members]
        asked = rng.randrange(facts_per_text)
        answer_kind = rng.choice(ANSWER_KINDS)
        person = members[asked]
        query, answer = person.question(rng, answer_kind)
        columns["context"].append(" ".join(p.fact(rng, first) for p, first in zip(members, name_first, strict=True)))
        columns["query"].append(query)
        columns["answer"].append(answer)
        columns["direction"].append(direction_of(answer_kind, name_first[asked]))
        columns["answer_kind"].append(answer_kind)
        columns["person"].append(person.name)
        columns["distractors"].append([p.answer(answer_kind) for p in members if p is not person])
    return columns


def load_people_tasks(
    seed: int = 0,
    num_train: int = 4000,
    num_validation: int = 400,
    num_test: int = 400,
    facts_per_text: int = 1,
) -> datasets.DatasetDict:
    """``train``/``validation``/``test`` tasks about disjoint fictitious people.

    Columns: context, query, answer (" Name." or " Description."), direction (``forward``/``reversed`` relative to
    the order the text states the fact in), answer_kind (``name``/``description``), person, and distractors (what
    the text's other people would answer). Each split draws from its own random stream.
    """
    if not isinstance(facts_per_text, int) or facts_per_text < 1:
        raise ValueError(f"`facts_per_text` must be a positive integer, got {facts_per_text!r}.")
    world = build_people(seed)
    return generated_splits(
        f"people/{seed}",
        {"train": num_train, "validation": num_validation, "test": num_test},
        lambda split, size, rng: _tasks(world[split], size, facts_per_text, rng),
        FEATURES,
    )
