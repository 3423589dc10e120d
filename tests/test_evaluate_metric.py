"""The shipped `evaluate` metric module loads offline and gives the library's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import evaluate
import pytest

from hf_metaprompt.evaluation import gap_closed
from hf_metaprompt.metrics import evaluate_metric_path, exact_match, share_of_gap_closed, token_f1

REPO_ROOT = Path(__file__).resolve().parents[1]
# Several references per question, and answers that only match after normalisation (case, punctuation, articles,
# whitespace), partial overlaps and an empty answer.
PREDICTIONS = ["The Eiffel Tower.", "in Lisbon", "year 1911", "cat cat dog", "", "  A  Baker!", "red fish"]
REFERENCES = [
    ["eiffel tower"],
    ["Oslo", "Lisbon"],
    ["in 1911", "1911", "the year 1911 in Oskel"],
    ["cat dog dog"],
    ["Mira Talvik"],
    ["baker", "a baker from Lisbon"],
    ["blue cat"],
]
PLAIN_FT = ["Paris", "Oslo", "", "dog", "", "pilot", "fish"]
PROMPTED = ["Eiffel Tower", "Lisbon", "1911", "cat dog dog", "Mira", "the baker", "blue cat"]


def _library_scores(predictions: list[str], references: list) -> dict[str, float]:
    n = len(predictions)
    return {
        "exact_match": sum(exact_match(p, r) for p, r in zip(predictions, references, strict=True)) / n,
        "f1": sum(token_f1(p, r) for p, r in zip(predictions, references, strict=True)) / n,
    }


@pytest.fixture(scope="module")
def qa_metric(tmp_path_factory):
    """The metric loaded from the package, its module copied to a temporary cache rather than ~/.cache."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path_factory.mktemp("hf_modules"))
        monkeypatch.setattr(sys, "path", list(sys.path))  # evaluate appends the cache to sys.path
        yield evaluate.load(evaluate_metric_path(), keep_in_memory=True)
    for name in [name for name in sys.modules if name.split(".")[0] == "evaluate_modules"]:
        del sys.modules[name]


def test_loads_offline_from_the_package(tmp_path):
    """A fresh interpreter with the Hub switched off (and unreachable) loads the module by directory and by file."""
    script = f"""
import json
import evaluate
from hf_metaprompt.metrics import evaluate_metric_path
predictions, references = {PREDICTIONS!r}, {REFERENCES!r}
results = [
    evaluate.load(path, keep_in_memory=True).compute(predictions=predictions, references=references)
    for path in (evaluate_metric_path(), evaluate_metric_path() + "/metaprompt_qa.py")
]
print(json.dumps(results))
"""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there: any Hub call would fail
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
    }
    completed = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr
    by_directory, by_file = json.loads(completed.stdout.strip().splitlines()[-1])
    expected = _library_scores(PREDICTIONS, REFERENCES)
    assert by_directory == pytest.approx(expected)
    assert by_file == pytest.approx(expected)


def test_same_numbers_as_the_library(qa_metric):
    expected = _library_scores(PREDICTIONS, REFERENCES)
    assert 0 < expected["exact_match"] < expected["f1"] < 1  # the cases exercise partial credit
    assert qa_metric.compute(predictions=PREDICTIONS, references=REFERENCES) == pytest.approx(expected)
    # Batches accumulate like any `evaluate` metric.
    for start in range(0, len(PREDICTIONS), 3):
        qa_metric.add_batch(predictions=PREDICTIONS[start : start + 3], references=REFERENCES[start : start + 3])
    assert qa_metric.compute() == pytest.approx(expected)


def test_hand_computed_scores(qa_metric):
    # EM: 1 and 0; F1: 1 and 2/3 ("in Lisbon" vs "Lisbon": P = 1/2, R = 1).
    scores = qa_metric.compute(
        predictions=["The Eiffel Tower.", "in Lisbon"], references=[["Eiffel tower"], ["Oslo", "Lisbon"]]
    )
    assert scores == pytest.approx({"exact_match": 0.5, "f1": 5 / 6})


def test_single_string_references(qa_metric):
    """One reference per question may be a plain string, scored as a whole answer (not a list of characters)."""
    references = ["the cat", "A dog!", "Mira Talvik"]
    predictions = ["cat", "dog", "Talvik"]
    scores = qa_metric.compute(predictions=predictions, references=references)
    assert scores == pytest.approx(_library_scores(predictions, references))
    assert scores == pytest.approx({"exact_match": 2 / 3, "f1": (1 + 1 + 2 / 3) / 3})


def test_share_of_gap_closed():
    assert share_of_gap_closed(0.7, 0.1, 0.9) == pytest.approx(0.75)
    assert share_of_gap_closed(0.1, 0.1, 0.9) == 0.0
    assert share_of_gap_closed(0.0, 0.2, 0.6) == pytest.approx(-0.5)  # worse than plain fine-tuning
    assert share_of_gap_closed(0.5, 0.3, 0.3) is None


def test_gap_closed_matches_the_evaluation_table(qa_metric):
    scores = qa_metric.compute(
        predictions=PREDICTIONS, references=REFERENCES, plain_ft_predictions=PLAIN_FT, prompted_predictions=PROMPTED
    )
    by_condition = {
        "meta_1step": _library_scores(PREDICTIONS, REFERENCES),
        "plain_ft_1step": _library_scores(PLAIN_FT, REFERENCES),
        "prompted": _library_scores(PROMPTED, REFERENCES),
    }
    rows = [
        {"task": "qa", "direction": "forward", "condition": condition, **values}
        for condition, values in by_condition.items()
    ]
    for metric in ("exact_match", "f1"):
        assert scores[metric] == pytest.approx(by_condition["meta_1step"][metric])
        assert scores[f"plain_ft_{metric}"] == pytest.approx(by_condition["plain_ft_1step"][metric])
        assert scores[f"prompted_{metric}"] == pytest.approx(by_condition["prompted"][metric])
        assert scores[f"gap_closed_{metric}"] == pytest.approx(gap_closed(rows, metric)[("qa", "forward")])
    # EM: ours 2/7, plain FT 1/7 ("Oslo"), prompted 6/7 (all but "Mira") -> (2 - 1) / (6 - 1).
    assert scores["gap_closed_exact_match"] == pytest.approx(1 / 5)


def test_gap_closed_is_none_without_a_gap(qa_metric):
    scores = qa_metric.compute(
        predictions=["cat"], references=["cat"], plain_ft_predictions=["dog"], prompted_predictions=["fish"]
    )
    assert scores["gap_closed_exact_match"] is None
    assert scores["gap_closed_f1"] is None


def test_bad_inputs_raise(qa_metric):
    with pytest.raises(ValueError, match="pass both `plain_ft_predictions` and `prompted_predictions`"):
        qa_metric.compute(predictions=["cat"], references=["cat"], prompted_predictions=["cat"])
    with pytest.raises(ValueError, match="`plain_ft_predictions` has 1 answers but `predictions` has 2"):
        qa_metric.compute(
            predictions=["a", "b"], references=["a", "b"], plain_ft_predictions=["a"], prompted_predictions=["a", "b"]
        )
    with pytest.raises(ValueError, match="at least one reference"):
        qa_metric.compute(predictions=["cat"], references=[[]])
    with pytest.raises(ValueError, match="don't match the expected format"):
        qa_metric.compute(predictions=["cat"], references=[[1]])


def test_package_data_ships_the_module():
    tomllib = pytest.importorskip("tomllib")
    module = Path(evaluate_metric_path()) / "metaprompt_qa.py"
    assert module.is_file()
    package_dir = REPO_ROOT / "hf_metaprompt"
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {path for pattern in patterns["hf_metaprompt"] for path in package_dir.glob(pattern)}
    assert module in shipped
