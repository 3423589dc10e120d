"""Exact match, token F1 and the share of the prompted gap closed, as an `evaluate` metric module.

Shipped inside the package so that `evaluate.load(hf_metaprompt.metrics.evaluate_metric_path())` works offline
(the Hub's `squad` metric needs a download). It scores with the library's own functions (`hf_metaprompt.metrics`),
so its numbers are those of `hf-metaprompt eval`: fractions in [0, 1], not the percentages of the Hub's `squad`.
Evaluate reads this file's import lines to check its dependencies: keep one import per line.
"""

import datasets
import evaluate

from hf_metaprompt.metrics import exact_match, share_of_gap_closed, token_f1

_CITATION = """\
@inproceedings{rajpurkar-etal-2016-squad,
    title = "{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text",
    author = "Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy",
    booktitle = "Proceedings of the 2016 Conference on Empirical Methods in Natural Language Processing",
    year = "2016",
    pages = "2383--2392",
}
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list[str]`): the answers of the model under test (e.g. the meta-trained model after absorbing the
        context).
    references (`list[str]` or `list[list[str]]`): the gold answer(s) of each question; each score is the best over
        a question's references.
    plain_ft_predictions (`list[str]`, *optional*): the answers of the base model after plain fine-tuning on the
        context, for the same questions.
    prompted_predictions (`list[str]`, *optional*): the answers of the base model with the context in its prompt, for
        the same questions. Give both baselines (or neither) to get the share of the prompted gap closed.

Returns:
    exact_match (`float`): mean SQuAD v1.1 exact match of `predictions`, in [0, 1].
    f1 (`float`): mean SQuAD v1.1 token F1 of `predictions`, in [0, 1].
    With both baselines, also `plain_ft_exact_match`, `plain_ft_f1`, `prompted_exact_match`, `prompted_f1` and
    `gap_closed_exact_match`, `gap_closed_f1`: `(score - plain_ft) / (prompted - plain_ft)` (1 = as good as
    prompting, 0 = no better than plain fine-tuning; None when prompting and plain fine-tuning score the same).

Examples:
    >>> import evaluate
    >>> from hf_metaprompt.metrics import evaluate_metric_path
    >>> qa = evaluate.load(evaluate_metric_path())
    >>> qa.compute(predictions=["The Eiffel Tower.", "in Lisbon"], references=[["Eiffel tower"], ["Oslo", "Lisbon"]])
    {'exact_match': 0.5, 'f1': 0.8333333333333333}
"""


def _mean_scores(predictions: list[str], references: list) -> dict[str, float]:
    if not predictions:
        raise ValueError("`predictions` is empty: give at least one answer to score.")
    return {
        "exact_match": sum(map(exact_match, predictions, references)) / len(predictions),
        "f1": sum(map(token_f1, predictions, references)) / len(predictions),
    }


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class MetapromptQA(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Several references per question, or a single one as a plain string.
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(
        self,
        predictions: list[str],
        references: list,
        plain_ft_predictions: list[str] | None = None,
        prompted_predictions: list[str] | None = None,
    ) -> dict[str, float | None]:
        scores = _mean_scores(predictions, references)
        baselines = {"plain_ft": plain_ft_predictions, "prompted": prompted_predictions}
        given = [name for name, answers in baselines.items() if answers is not None]
        if not given:
            return scores
        if len(given) == 1:
            raise ValueError(
                f"Only `{given[0]}_predictions` was given: pass both `plain_ft_predictions` and "
                "`prompted_predictions` to get the share of the prompted gap closed, or neither."
            )
        for name, answers in baselines.items():
            if len(answers) != len(predictions):
                raise ValueError(
                    f"`{name}_predictions` has {len(answers)} answers but `predictions` has {len(predictions)}: "
                    "the baselines must answer the same questions, in the same order."
                )
        baseline_scores = {name: _mean_scores(answers, references) for name, answers in baselines.items()}
        result = dict(scores)
        for name, name_scores in baseline_scores.items():
            result.update({f"{name}_{metric}": value for metric, value in name_scores.items()})
        for metric, value in scores.items():
            result[f"gap_closed_{metric}"] = share_of_gap_closed(
                value, baseline_scores["plain_ft"][metric], baseline_scores["prompted"][metric]
            )
        return result
