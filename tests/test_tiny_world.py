"""The embedded tiny world (tasks that can only be answered from the context) and the base model shipped with it."""

from __future__ import annotations

import itertools
import re
from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_metaprompt import assets
from hf_metaprompt.assets import tiny_base_path
from hf_metaprompt.data.tiny_world import (
    CITIES,
    FIRST_NAMES,
    LAST_NAMES,
    PROFESSIONS,
    build_world,
    iter_pretraining_documents,
    load_tiny_world,
)

K = 8
# A little below what the shipped base measured on the first 64 test tasks: forward 0.844, reversed 0.844 prompted,
# 0 and 0 unprompted (its README.md has the 400-task numbers; the previous base: 0.875 / 0.469).
PROMPTED_FLOOR = {"forward": 0.75, "reversed": 0.75}
NAME = re.compile(rf"\b(?:{'|'.join(FIRST_NAMES)}) (?:{'|'.join(LAST_NAMES)})\b")
PROFESSION = re.compile(rf"\b(?:{'|'.join(PROFESSIONS)})\b")
CITY = re.compile(rf"\b(?:{'|'.join(CITIES)})\b")


@pytest.fixture(scope="module")
def world():
    return load_tiny_world(seed=0, num_train=400, num_validation=200, num_test=200)


def facts_of(context: str) -> dict[str, str]:
    """Each fact of a context keyed by the name it is about (facts are sentences that start with the name)."""
    facts = [fact + "." for fact in context.removesuffix(".").split(". ")]
    return {NAME.match(fact).group(0): fact for fact in facts}


def description_words(text: str) -> tuple[str, str]:
    return PROFESSION.search(text).group(0), CITY.search(text).group(0)


def test_vocabularies_are_disjoint_single_words():
    words = [*FIRST_NAMES, *LAST_NAMES, *PROFESSIONS, *CITIES]
    assert len(set(words)) == len(words)
    assert all(word.isalpha() for word in words)


def test_splits_and_columns(world):
    assert set(world) == {"train", "validation", "test"}
    assert [len(world[split]) for split in ("train", "validation", "test")] == [400, 200, 200]
    for split in world.values():
        assert split.column_names == ["context", "query", "answer", "direction"]
        for row in split.select(range(20)):
            assert row["answer"].startswith(" ") and row["answer"] == row["answer"].rstrip()
            assert not row["answer"].endswith((".", "?", "\n"))


def test_deterministic_for_a_seed_and_varies_across_seeds(world):
    again = load_tiny_world(seed=0, num_train=400, num_validation=200, num_test=200)
    other = load_tiny_world(seed=1, num_train=400, num_validation=200, num_test=200)
    for split in world:
        assert world[split].to_dict() == again[split].to_dict()
        assert world[split]["context"] != other[split]["context"]


def test_held_out_splits_do_not_depend_on_train_size(world):
    bigger = load_tiny_world(seed=0, num_train=800, num_validation=200, num_test=200)
    assert bigger["test"].to_dict() == world["test"].to_dict()


def test_people_are_disjoint_across_splits(world):
    people = build_world(0)
    names = {split: {person.name for person in people[split]} for split in people}
    assert sum(map(len, names.values())) == len(FIRST_NAMES) * len(LAST_NAMES)
    assert not (
        names["train"] & names["validation"] or names["train"] & names["test"] or names["validation"] & names["test"]
    )
    for split, tasks in world.items():
        seen = {name for context in tasks["context"] for name in facts_of(context)}
        assert seen <= names[split]


def test_both_directions_balanced(world):
    for split in world.values():
        counts = Counter(split["direction"])
        assert set(counts) == {"forward", "reversed"}
        assert abs(counts["forward"] - counts["reversed"]) <= 1


def test_contexts_hold_k_facts_and_the_answer(world):
    for row in world["test"]:
        facts = facts_of(row["context"])
        assert len(facts) == K
        descriptions = {description_words(fact) for fact in facts.values()}
        assert len(descriptions) == K, "descriptions must be unique within a context"
        if row["direction"] == "forward":
            (name,) = NAME.findall(row["query"])
            assert description_words(facts[name]) == description_words(row["answer"])
        else:
            asked = description_words(row["query"])
            assert description_words(facts[row["answer"].strip()]) == asked


def test_reversed_tasks_need_the_whole_description(world):
    """With K distinct names and distractors sharing the profession and the city, neither "say the only name seen"
    nor matching one word of the question finds the answer."""
    for row in world["test"].filter(lambda row: row["direction"] == "reversed"):
        facts = facts_of(row["context"])
        assert len(facts) == K
        profession, city = description_words(row["query"])
        others = [description_words(fact) for name, fact in facts.items() if name != row["answer"].strip()]
        assert any(other[0] == profession for other in others)
        assert any(other[1] == city for other in others)


@pytest.mark.parametrize(
    "kwargs", [{"facts_per_context": 0}, {"facts_per_context": 1000}, {"num_train": -1}, {"num_test": 1.5}]
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        load_tiny_world(**kwargs)


def test_pretraining_documents_use_train_people_only():
    train_names = {person.name for person in build_world(0)["train"]}
    for k in (1, K):
        for document in itertools.islice(iter_pretraining_documents(0, k, questions_per_context=4), 50):
            facts = facts_of(document.context)
            assert len(facts) == k and set(facts) <= train_names
            assert len(document.questions) == min(4, k)
    with pytest.raises(ValueError):
        next(iter_pretraining_documents(0, K, questions_per_context=0))


def test_missing_tiny_base_names_the_script(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "TINY_BASE_DIR", tmp_path / "tiny_base")
    with pytest.raises(FileNotFoundError, match=re.escape("examples/pretrain_tiny.py")):
        tiny_base_path()


@torch.no_grad()
def greedy_exact_match(model, tokenizer, tasks, prompted: bool) -> dict[str, float]:
    """Greedy exact match in one forward pass: greedy decoding yields exactly the answer and then stops (eos or
    newline) iff, with the answer fed in, the argmax at every answer position is the answer's next token and the
    argmax after it is a stop token. Segments are tokenized separately, as the library's collator does."""

    def tok(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    stop_ids = torch.tensor([tokenizer.eos_token_id, tok(" \n")[-1]])
    rows = []
    for row in tasks:
        prompt = [tokenizer.bos_token_id, *(tok(row["context"] + "\n") if prompted else []), *tok(row["query"])]
        rows.append((prompt, tok(row["answer"])))
    length = max(len(prompt) + len(answer) for prompt, answer in rows)
    # Right padding needs no attention mask: causal attention never looks at the padding behind a sequence.
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    for index, (prompt, answer) in enumerate(rows):
        input_ids[index, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
    predicted = model(input_ids=input_ids).logits.argmax(-1)
    hits: dict[str, list[bool]] = {}
    for index, ((prompt, answer), direction) in enumerate(zip(rows, tasks["direction"], strict=True)):
        greedy = predicted[index, len(prompt) - 1 : len(prompt) + len(answer)]
        hit = greedy[:-1].tolist() == answer and bool(torch.isin(greedy[-1], stop_ids))
        hits.setdefault(direction, []).append(hit)
    return {direction: sum(values) / len(values) for direction, values in hits.items()}


def test_shipped_base_answers_from_the_prompt_only(world):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    path = tiny_base_path()
    assert sorted(file.name for file in path.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(path.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    # Like Llama: the tokenizer puts bos in front by itself, and any text is encodable (byte level).
    assert tokenizer("Daphne Barrington, né à Zürich")["input_ids"][0] == tokenizer.bos_token_id
    tasks = world["test"].select(range(64))
    prompted = greedy_exact_match(model, tokenizer, tasks, prompted=True)
    unprompted = greedy_exact_match(model, tokenizer, tasks, prompted=False)
    assert prompted["forward"] >= PROMPTED_FLOOR["forward"] and prompted["reversed"] >= PROMPTED_FLOOR["reversed"], (
        prompted
    )
    assert max(unprompted.values()) <= 0.05, unprompted


def test_shipped_base_reads_two_texts_worth_of_facts():
    """16 facts in the prompt (two texts of the embedded default): forward 0.938, reversed 0.594 on these 64 tasks."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = AutoModelForCausalLM.from_pretrained(tiny_base_path()).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_path())
    tasks = load_tiny_world(seed=0, num_train=0, num_validation=0, num_test=64, facts_per_context=16)["test"]
    prompted = greedy_exact_match(model, tokenizer, tasks, prompted=True)
    assert prompted["forward"] >= 0.85 and prompted["reversed"] >= 0.5, prompted
    assert max(greedy_exact_match(model, tokenizer, tasks, prompted=False).values()) <= 0.05


@pytest.mark.parametrize("fresh", [False, True])
def test_fresh_descriptions_leave_no_name_to_memorise(fresh):
    train_names = {person.name for person in build_world(0)["train"]}
    seen: dict[str, set[tuple[str, str]]] = {}
    for document in itertools.islice(iter_pretraining_documents(0, K, 4, fresh_descriptions=fresh), 300):
        facts = facts_of(document.context)
        described = {name: description_words(fact) for name, fact in facts.items()}
        assert len(facts) == K and set(facts) <= train_names
        assert len(set(described.values())) == K, "two people with one description make a reversed question ambiguous"
        for query, answer in document.questions:
            asked = NAME.search(query)
            if asked:
                assert description_words(answer) == described[asked.group(0)]
            else:
                assert described[answer.strip()] == description_words(query)
        # The asked person's profession and city each appear in another fact too: one word does not find it.
        query, answer = document.questions[0]  # about the context's target
        target = (NAME.search(query) or NAME.search(answer)).group(0)
        profession, city = described[target]
        others = [words for name, words in described.items() if name != target]
        assert any(words[0] == profession for words in others) or not fresh
        assert any(words[1] == city for words in others) or not fresh
        for name, words in described.items():
            seen.setdefault(name, set()).add(words)
    # The world's people always carry their one description; with fresh descriptions names recur with new ones.
    redescribed = [name for name, descriptions in seen.items() if len(descriptions) > 1]
    assert bool(redescribed) == fresh
