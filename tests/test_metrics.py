"""SQuAD EM/F1 on hand-computed cases."""

import pytest

from hf_metaprompt.metrics import exact_match, normalize_answer, token_f1


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Eiffel Tower.", "eiffel tower"),
        ("  A  cat,\tan apple!  ", "cat apple"),
        ("Anthem of theatre", "anthem of theatre"),  # articles only as whole words
        ("U.S.A. well-known", "usa wellknown"),  # punctuation is deleted, not replaced by a space
        ("The", ""),
    ],
)
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match():
    assert exact_match("The Cat!", ["cat"]) == 1.0
    assert exact_match("cats", ["cat"]) == 0.0
    assert exact_match("a dog", ["the cat", "A  dog."]) == 1.0
    assert exact_match("dog", "the dog") == 1.0  # a single reference may be a string


def test_token_f1():
    # prediction {big, cat} vs reference {cat}: P = 1/2, R = 1, F1 = 2/3
    assert token_f1("the big cat", ["cat"]) == pytest.approx(2 / 3)
    # counts are clipped: common = {cat: 1, dog: 1}, P = R = 2/3
    assert token_f1("cat cat dog", ["cat dog dog"]) == pytest.approx(2 / 3)
    # P = 1, R = 2/5, F1 = 2 * 0.4 / 1.4
    assert token_f1("Mira Talvik", ["the engineer Mira Talvik of Oskel"]) == pytest.approx(0.8 / 1.4)
    assert token_f1("red fish", ["blue cat"]) == 0.0
    assert token_f1("The Bridge!", ["bridge"]) == 1.0


def test_multiple_references_take_the_best():
    references = ["in 1911", "1911", "the year 1911 in Oskel"]
    assert token_f1("1911", references) == 1.0
    assert token_f1("year 1911", references) == pytest.approx(2 / 3)  # best: "1911" (P 1/2, R 1)
    assert exact_match("In 1911.", references) == 1.0


def test_empty_strings():
    assert exact_match("", [""]) == 1.0
    assert token_f1("", [""]) == 1.0
    assert token_f1("the", ["a"]) == 1.0  # both normalise to nothing: F1 agrees with EM
    assert exact_match("", ["cat"]) == token_f1("", ["cat"]) == 0.0
    assert exact_match("cat", [""]) == token_f1("cat", [""]) == 0.0
    assert token_f1("", ["cat", ""]) == 1.0
    with pytest.raises(ValueError, match="at least one reference"):
        token_f1("cat", [])
