"""Up-front checks of a meta-training dataset: a bad row stops the run at start-up, named by its row, instead of
crashing it at step N with the position of the row in its batch.

The per-example rules are the collator's own (types, empty fields, token limits); this module runs them over the
whole dataset once and adds what only the whole dataset or the model can tell: labelled and label-free rows mixed,
and views longer than the model's position limit.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn

from .collator import PromptTargetCollator
from .tokens import context_rows

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1000  # rows tokenized together


def position_limit(model: nn.Module) -> int | None:
    """The model's maximum number of positions (`max_position_embeddings`, GPT-2's `n_positions`), if it has one."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def validate_dataset(
    dataset: Any, collator: PromptTargetCollator, max_positions: int | None, name: str = "train_dataset"
) -> None:
    """Raise on the first bad row of `dataset`, naming `name` and the row (an `IterableDataset`: per batch)."""
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        logger.info("%s has no length: its rows are checked batch by batch during training.", name)
        return
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty: meta-training needs at least one {collator.context_field!r} row.")
    labelled: dict[bool, list[int]] = {True: [], False: []}
    already_truncated = collator.num_truncated_contexts
    with _quiet(collator):
        for start in range(0, len(dataset), CHUNK_SIZE):
            rows = [dataset[i] for i in range(start, min(start + CHUNK_SIZE, len(dataset)))]
            for offset, example in enumerate(rows):
                with _naming_row(name, start + offset):
                    labelled[collator._check([example])].append(start + offset)
            for offset, item in enumerate(_tokenize(collator, rows, name, start)):
                row = start + offset
                _check_positions(collator, item, max_positions, f"{name} row {row}", label_free=not item.answer)
        truncated = collator.num_truncated_contexts - already_truncated
    if labelled[True] and labelled[False]:
        raise ValueError(
            f"{name} mixes rows with and without {collator.answer_field!r}: rows {labelled[False][:5]} have none "
            f"(or an empty one) while rows {labelled[True][:5]} have one. A batch must be all labelled or all "
            "label-free: give every row a non-empty answer, or remove the answers to distil the teacher's own."
        )
    if truncated:
        logger.warning(
            "%d of %d rows of %s have a context longer than max_context_length=%d: their oldest tokens are dropped.",
            truncated,
            len(dataset),
            name,
            collator.max_context_length,
        )


def _tokenize(collator: PromptTargetCollator, rows: list[Mapping[str, Any]], name: str, start: int) -> list:
    try:
        return collator._tokenize(rows)
    except (TypeError, ValueError):
        for offset, example in enumerate(rows):  # find the row (the collator names its position in the chunk)
            with _naming_row(name, start + offset):
                collator._tokenize([example])
        raise


def _check_positions(
    collator: PromptTargetCollator, item: Any, max_positions: int | None, where: str, label_free: bool
) -> None:
    """The teacher view (context + separator + query + answer) is the longest; the inner view is its prefix."""
    if max_positions is None:
        return
    prefix, separator = len(collator.special_prefix), len(collator.separator_ids)
    answer = collator.max_answer_length + 1 if label_free else len(item.answer)  # label-free: the generation budget
    rest = prefix + separator + len(item.query) + answer
    context = len(item.inner) - prefix
    length = rest + context
    if length <= max_positions:
        return
    room = max_positions - rest
    fix = (
        f"lower max_context_length to {room} or less"
        if room >= 2
        else "shorten the query or the answer (they alone leave no room for a context)"
    )
    raise ValueError(
        f"{where}: the prompted (teacher) view has {length} tokens (context {context} + separator "
        f"{separator} + query {len(item.query)} + answer {answer} + special {prefix}) > the model's "
        f"max_position_embeddings={max_positions}: {fix}."
    )


@contextlib.contextmanager
def _naming_row(name: str, row: int) -> Iterator[None]:
    """The collator's messages name an example's position in its batch; here the batch is the row alone."""
    try:
        yield
    except (TypeError, ValueError) as error:
        message = re.sub(r"^Example 0(?: of the batch)?", f"{name} row {row}", str(error))
        raise type(error)(message) from error


@contextlib.contextmanager
def _quiet(collator: PromptTargetCollator) -> Iterator[None]:
    """No per-row truncation warning (one summary instead); the collator's training count is left as it was."""
    tokens_logger = logging.getLogger(context_rows.__module__)
    level, count = tokens_logger.level, collator.num_truncated_contexts
    tokens_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tokens_logger.setLevel(level)
        collator.num_truncated_contexts = count
