"""Token-level helpers shared by training (collator, meta-step) and inference (`MetaPromptModel`, evaluation).

Written once so that a text absorbed at inference is tokenised, cut and padded exactly as meta-training saw it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text alone, without special tokens (segments are concatenated afterwards)."""
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def context_rows(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    truncation: str = "left",
    prefix: Sequence[int] | None = None,
) -> tuple[list[list[int]], int]:
    """The inner view of each text: `prefix + its tokens`, keeping the last `max_length` tokens of a longer text.

    `truncation="error"` raises instead of cutting. Returns the rows and how many texts were cut.
    """
    prefix = list(special_prefix_ids(tokenizer) if prefix is None else prefix)
    rows, truncated = [], 0
    for index, ids in enumerate(encode(tokenizer, texts)):
        if len(ids) > max_length:
            if truncation == "error":
                raise ValueError(
                    f"Example {index}: the context has {len(ids)} tokens > max_context_length={max_length}. Raise "
                    "max_context_length or use context_truncation='left'."
                )
            ids = ids[-max_length:]
            truncated += 1
        if len(prefix) + len(ids) < 2:
            raise ValueError(f"Example {index}: the context must span at least two tokens to learn from.")
        rows.append(prefix + ids)
    if truncated:  # one line per batch, not one per text
        logger.warning(
            "%d of %d contexts truncated from the left to their last %d tokens.", truncated, len(rows), max_length
        )
    return rows, truncated


# Where an answer ends: models go on after it with the next question ("...\nQ: Who is ...").
ANSWER_STOP = "\n"


def first_answer_line(text: str, stop: str | None = ANSWER_STOP) -> str:
    """What a reader takes as the answer in a continuation: its first non-blank piece before `stop` (a leading line
    break is skipped, as a reader would). The one rule of `ask`, the evaluation and label-free teacher targets."""
    if not stop:
        return text
    return next((piece for piece in text.split(stop) if piece.strip()), "")


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_into_windows(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int) -> list[str]:
    """`text` cut into consecutive windows of at most `max_tokens` tokens, at sentence boundaries (a sentence longer
    than a window is cut between words; a word longer than a window, between tokens): what absorbing a document
    longer than the context window takes, window after window, instead of keeping its end alone."""
    if max_tokens < 1:
        raise ValueError(f"`max_tokens` must be positive, got {max_tokens}.")

    def fits(piece: str) -> bool:
        return len(encode(tokenizer, [piece])[0]) <= max_tokens

    windows: list[str] = []
    for window in _pack(_SENTENCE_END.split(text.strip()), fits):
        if fits(window):
            windows.append(window)
            continue
        for piece in _pack(window.split(), fits):  # a sentence longer than a window
            if fits(piece):
                windows.append(piece)
                continue
            ids = encode(tokenizer, [piece])[0]  # a word longer than a window
            windows.extend(tokenizer.decode(ids[i : i + max_tokens]) for i in range(0, len(ids), max_tokens))
    return windows


def _pack(units: Sequence[str], fits) -> list[str]:
    """Consecutive `units` joined by spaces, greedily, while the join `fits`; a unit too long alone stands alone."""
    packed: list[str] = []
    current = ""
    for unit in units:
        joined = f"{current} {unit}" if current else unit
        if fits(joined):
            current = joined
            continue
        if current:
            packed.append(current)
        current = unit
    if current:
        packed.append(current)
    return packed


class AnswerEnd:
    """A `generate` stopping criterion: a row is done once its continuation holds a line break after some text (the
    answer `first_answer_line` reads is complete), so no time goes into the next question a model goes on with."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_width: int, stop: str = ANSWER_STOP) -> None:
        self.tokenizer, self.prompt_width, self.stop = tokenizer, prompt_width, stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        done = [self.stop in text.lstrip() for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def answer_stopping(tokenizer: PreTrainedTokenizerBase, prompt_width: int, stop: str | None = ANSWER_STOP) -> list:
    """`stopping_criteria=` for a greedy answer after a left-padded prompt of `prompt_width` tokens (none without a
    `stop`)."""
    from transformers import StoppingCriteriaList

    return StoppingCriteriaList([AnswerEnd(tokenizer, prompt_width, stop)] if stop else [])


def decode_answers(
    tokenizer: PreTrainedTokenizerBase, generated: torch.Tensor, prompt_width: int, stop: str | None = ANSWER_STOP
) -> list[str]:
    """The generated continuations after a (left-padded) prompt of `prompt_width` tokens, each cut by
    `first_answer_line`."""
    answers = tokenizer.batch_decode(generated[:, prompt_width:], skip_special_tokens=True)
    return [first_answer_line(answer, stop) for answer in answers]


def pad_rows(rows: Sequence[Sequence[int]], value: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows → `(ids, attention_mask)`; `left=True` right-aligns the rows (padding in front)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def special_prefix_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts before a text (Llama: `[bos]`; GPT-2, Qwen2: none)."""
    probe = "hello"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id to pad with: the pad token, else EOS, else UNK (padding is always masked out)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return candidate
    raise ValueError("The tokenizer has no pad, eos or unk token to pad with; set `tokenizer.pad_token`.")


def target_window(labels: torch.Tensor) -> int:
    """Columns from the first target to the end, plus the position that predicts the first target."""
    has_target = (labels != IGNORE_INDEX).any(0)
    if not bool(has_target.any()):
        raise ValueError("The batch has no target token: every example needs a non-empty answer (or query target).")
    first = int(has_target.nonzero()[0])
    if first == 0:
        raise ValueError("A target token sits at position 0, where nothing predicts it.")
    return labels.shape[1] - first + 1


# Bits of `word_classes`: the token opens a word (a leading space, punctuation, or a line break); it starts with a
# capital letter (what counts where it opens a word, or the text).
OPENS_WORD, CAPITALISED = 1, 2
# How tokenizers mark a leading space in their pieces: byte-level BPE, SentencePiece.
_SPACE_MARKS = ("\u0120", "\u2581", " ")


def word_classes(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """`OPENS_WORD | CAPITALISED` bits of every vocabulary id: what the entity-preserving reversal
    (`inner.reversed_tokens`) needs to cut a text into words and keep a name's words together.

    A piece continues the previous word when it has no leading space and starts with a letter or digit (a word
    split into several tokens); punctuation is a word of its own.
    """
    classes = []
    for piece in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))):
        text = tokenizer.convert_tokens_to_string([piece]) if piece else ""  # ids without a piece open a word
        visible = text.lstrip()
        opens = (piece or "").startswith(_SPACE_MARKS) or text[:1].isspace() or not visible[:1].isalnum()
        classes.append(OPENS_WORD * opens + CAPITALISED * visible[:1].isupper())
    return torch.tensor(classes, dtype=torch.long)


def reversal_word_classes(tokenizer: PreTrainedTokenizerBase, unit: str) -> torch.Tensor | None:
    """What a `MetaDistillModel` with `reversed_context_unit=unit` needs of its tokenizer (nothing for 'token')."""
    return word_classes(tokenizer) if unit == "entity" else None
