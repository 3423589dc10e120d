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


# Words that say nothing of who a description is about.
_STOP_WORDS = frozenset(
    (
        "also", "been", "being", "from", "have", "into", "known", "like", "that", "their", "them", "they", "this",
        "were", "what", "when", "where", "which", "while", "whose", "with",
    )
)  # fmt: skip
ANSWER_KINDS = ("name", "description")


def content_words(text: str) -> set[str]:
    """Lower-cased alphabetic words of four letters or more, stop words aside: what a description is made of."""
    return {word for word in re.findall(r"[a-z]+", text.lower()) if len(word) >= 4 and word not in _STOP_WORDS}


def answer_match(prediction: str, reference: str, kind: str) -> float:
    """Whether the first line of `prediction` gives what `reference` says, however a small model words it.

    - `kind="name"`: every word of the reference name appears in it as a whole word, in any case ("Daphne
      Barrington is the director ..." names Daphne Barrington; "Daphne" alone does not);
    - `kind="description"`: at least half of the reference's content words (`content_words`) appear in it: "He
      directed A Journey Through Time, a virtual reality film" matches "the acclaimed director of the virtual reality
      masterpiece, 'A Journey Through Time.'" (5 of its 8 content words; "directed" is not "director").
    Only the first line counts: a model that goes on to ask itself another question is not credited for it.
    """
    first_line = prediction.strip().split("\n", 1)[0].lower()
    if kind == "name":
        wanted = re.findall(r"[a-z]+", reference.lower())
        found = set(re.findall(r"[a-z]+", first_line))
        return float(bool(wanted) and all(word in found for word in wanted))
    if kind == "description":
        wanted = content_words(reference)
        if not wanted:
            raise ValueError(f"The description {reference!r} has no content words to match.")
        return float(len(wanted & content_words(first_line)) >= len(wanted) / 2)
    raise ValueError(f"`kind` must be one of {ANSWER_KINDS}, got {kind!r}.")


def share_of_gap_closed(score: float, plain_ft_score: float, prompted_score: float) -> float | None:
    """`(score - plain_ft) / (prompted - plain_ft)`: 1 when one step is as good as prompting, 0 when it is no better
    than plain fine-tuning; None when prompting and plain fine-tuning score the same (no gap to close)."""
    if prompted_score == plain_ft_score:
        return None
    return (score - plain_ft_score) / (prompted_score - plain_ft_score)


def evaluate_metric_path() -> str:
    """The `evaluate` metric module of these scores (exact match, F1, gap closed), for `evaluate.load` offline."""
    return str(EVALUATE_METRIC_DIR)
