"""SQuAD exact match and token F1, computed in-project.

The Hub's `evaluate` metric scripts (`squad`, `exact_match`) cannot be downloaded offline, so the SQuAD v1.1
official definitions are reimplemented here: answers are normalised (lowercase, punctuation removed, articles
removed, whitespace collapsed) and each score is the maximum over the reference answers. The same functions back
the `evaluate` metric module shipped in the package (`evaluate.load(evaluate_metric_path())`).
"""

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

EVALUATE_METRIC_DIR = Path(__file__).resolve().parent / "evaluate_metrics" / "metaprompt_qa"

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Normalise like the official SQuAD script, so that "The Eiffel Tower." matches "eiffel tower"."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _exact_match_single(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _token_f1_single(prediction: str, reference: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    reference_tokens = normalize_answer(reference).split()
    if not prediction_tokens or not reference_tokens:
        # SQuAD v1.1 scores F1 = 0 when both sides normalise to nothing while giving EM = 1; the v2.0 script's rule
        # (1 only when both are empty) keeps F1 >= EM.
        return float(prediction_tokens == reference_tokens)
    num_same = sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def _max_over_references(
    score: Callable[[str, str], float], prediction: str, references: str | Sequence[str]
) -> float:
    if isinstance(references, str):
        references = [references]
    if len(references) == 0:
        raise ValueError("`references` must hold at least one reference answer.")
    return max(score(prediction, reference) for reference in references)


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0 (SQuAD v1.1)."""
    return _max_over_references(_exact_match_single, prediction, references)


def token_f1(prediction: str, references: str | Sequence[str]) -> float:
    """Bag-of-tokens F1 between the normalised prediction and the best-matching reference (SQuAD v1.1)."""
    return _max_over_references(_token_f1_single, prediction, references)


def share_of_gap_closed(score: float, plain_ft_score: float, prompted_score: float) -> float | None:
    """`(score - plain_ft) / (prompted - plain_ft)`: 1 when one step is as good as prompting, 0 when it is no better
    than plain fine-tuning; None when prompting and plain fine-tuning score the same (no gap to close)."""
    if prompted_score == plain_ft_score:
        return None
    return (score - plain_ft_score) / (prompted_score - plain_ft_score)


def evaluate_metric_path() -> str:
    """The `evaluate` metric module of these scores (exact match, F1, gap closed), for `evaluate.load` offline."""
    return str(EVALUATE_METRIC_DIR)
