"""Label-free tasks from plain text (WikiText-style passages).

A passage is cut at a sentence boundary: its first sentences (about `context_fraction` of its words) are the context
to absorb and the first words of the next sentence are the query. There is no gold answer (`answer == ""`): the
trainer then uses the teacher's greedy continuation of context + query as the target, so any corpus can meta-train.
"""

import bisect
import itertools
import logging
import os
import re

import datasets

from .common import DataFiles, load_split, require_columns

logger = logging.getLogger(__name__)


_COLUMNS = ("context", "query", "answer", "reference", "direction")
# A sentence ends at ".", "!" or "?" (plus closing quotes/brackets) before whitespace and a capital or digit, maybe
# behind an opening quote/bracket. WikiText's detached punctuation (" . \" It") is covered too.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s+(?:[\"'(\[]\s*)?[A-Z0-9])")
_WORD = re.compile(r"\S+")


def _cut_passage(
    passage: str, context_fraction: float, min_words: int, query_words: int
) -> tuple[str, str, str] | None:
    """Split `passage` into (context, query, reference) at the sentence boundary closest to `context_fraction` of its
    words whose next sentence is longer than the query; `None` if there is no such boundary or too few words."""
    word_ends = [match.end() for match in _WORD.finditer(passage)]
    if len(word_ends) < min_words:
        return None
    boundaries = [match.end() for match in _SENTENCE_END.finditer(passage)]
    candidates = []
    for boundary, next_boundary in itertools.pairwise([*boundaries, len(passage)]):
        context_words = bisect.bisect_right(word_ends, boundary)
        if bisect.bisect_right(word_ends, next_boundary) - context_words > query_words:
            candidates.append((boundary, context_words, next_boundary))
    target = context_fraction * len(word_ends)
    best = min(candidates, key=lambda candidate: abs(candidate[1] - target), default=None)
    if best is None:
        return None
    boundary, context_words, next_boundary = best
    query_end = word_ends[context_words + query_words - 1]
    return passage[:boundary], passage[boundary:query_end].lstrip(), passage[query_end:next_boundary]


def load_text_tasks(
    name_or_path: str | os.PathLike,
    split: str = "train",
    data_files: DataFiles | None = None,
    dataset_config: str | None = None,
    text_column: str = "text",
    context_fraction: float = 0.75,
    min_words: int = 40,
    query_words: int = 4,
    max_examples: int | None = None,
) -> datasets.Dataset:
    """Build label-free tasks from the passages (rows) of a text dataset, e.g.
    `load_text_tasks("wikitext", "train", dataset_config="wikitext-103-raw-v1")` or a local `.txt` file (one passage
    per line).

    Columns: `context` (a prefix of the stripped passage made of whole sentences), `query` (the first `query_words`
    words of the next sentence), `answer` (always `""`: the teacher's continuation is the target), `reference` (the
    rest of that sentence, for inspection only) and `direction` (`"all"`: no fact direction is involved). Passages
    with fewer than `min_words` words or no usable sentence boundary are skipped and counted in a log message.
    """
    if not 0 < context_fraction < 1:
        raise ValueError(f"`context_fraction` must be in (0, 1), got {context_fraction}.")
    if query_words < 1:
        raise ValueError(f"`query_words` must be at least 1, got {query_words}.")
    dataset = load_split(name_or_path, split, data_files, dataset_config)
    require_columns(dataset, [text_column])

    rows = {column: [] for column in _COLUMNS}
    num_passages = 0
    for text in dataset[text_column]:
        if max_examples is not None and len(rows["context"]) >= max_examples:
            break
        num_passages += 1
        cut = _cut_passage(text.strip(), context_fraction, min_words, query_words)
        if cut is not None:
            for column, value in zip(("context", "query", "reference"), cut, strict=True):
                rows[column].append(value)
            rows["answer"].append("")
            rows["direction"].append("all")
    num_tasks = len(rows["context"])
    logger.info(
        "Built %d text tasks; skipped %d of %d passages (under %d words, or no sentence boundary followed by a "
        "sentence of more than %d words).",
        num_tasks,
        num_passages - num_tasks,
        num_passages,
        min_words,
        query_words,
    )
    features = datasets.Features({column: datasets.Value("string") for column in _COLUMNS})
    return datasets.Dataset.from_dict(rows, features=features)
