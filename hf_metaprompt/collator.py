"""`PromptTargetCollator`: one example `{context, query, answer?}` → the three aligned views of a meta-step.

- inner view   `bos + context`                       (right-padded): what the inner step takes its loss on;
- teacher view `bos + context + sep + query + answer` (left-padded): the prompted model, source of the targets;
- student view `bos + query + answer`                 (left-padded): the updated model, asked without the context.

Each segment is tokenized on its own and concatenated, so the query and answer tokens are identical in both views,
and left padding right-aligns the answers: one `logits_to_keep` window then lines targets up across the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .settings import DISTILL_ON, MetaPromptFields
from .tokens import IGNORE_INDEX, context_rows, encode, pad_rows, pad_token_id, special_prefix_ids

logger = logging.getLogger(__name__)

CONTEXT_TRUNCATION = ("left", "error")


@dataclass
class _Tokenized:
    inner: list[int]  # the special prefix and the (possibly truncated) context
    query: list[int]
    answer: list[int]


@dataclass
class PromptTargetCollator:
    """Builds meta-distillation batches from raw text examples.

    A batch in which no example carries an answer is *label-free*: the teacher's greedy continuation becomes the
    target (the model generates it), and the batch holds `prompt_labels` instead of `labels`. Mixing examples with
    and without answers in one batch is an error.

    Args:
        tokenizer: the model's tokenizer. Tokenizers without a pad token are padded with EOS (masked out).
        max_context_length / max_query_length / max_answer_length: token limits, special tokens excluded. Queries and
            answers over their limit raise (an answer is never cut silently); contexts follow `context_truncation`.
        context_truncation: `"left"` keeps the last `max_context_length` context tokens (counted in
            `num_truncated_contexts`), `"error"` raises.
        distill_on: `"answer"` or `"query_and_answer"`: which student positions are targets.
        context_separator: text between context and query in the teacher view.
        context_field / query_field / answer_field: example keys.
        append_eos_to_answer: end each given answer with EOS, so that the position after the answer is distilled
            too: without it the updated model learns the answer but not where it stops.
        texts_per_episode: group each run of this many consecutive examples into an episode (their contexts are
            absorbed one after another, see `MetaDistillConfig.texts_per_episode`). A dataset maps to episodes in
            order: shuffle it (the Trainer does) and consecutive rows become an episode. A batch whose size is not a
            multiple drops its last, incomplete episode (logged).
    """

    tokenizer: PreTrainedTokenizerBase
    # Defaults of the fields a checkpoint's settings share are the settings' (one declaration).
    max_context_length: int = MetaPromptFields.max_context_length
    max_query_length: int = MetaPromptFields.max_query_length
    max_answer_length: int = MetaPromptFields.max_answer_length
    context_truncation: str = "left"
    distill_on: str = MetaPromptFields.distill_on
    context_separator: str = MetaPromptFields.context_separator
    context_field: str = "context"
    query_field: str = "query"
    answer_field: str = "answer"
    append_eos_to_answer: bool = True
    texts_per_episode: int = MetaPromptFields.texts_per_episode
    num_truncated_contexts: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.context_truncation not in CONTEXT_TRUNCATION:
            raise ValueError(
                f"`context_truncation` must be one of {CONTEXT_TRUNCATION}, got {self.context_truncation!r}."
            )
        if not isinstance(self.texts_per_episode, int) or self.texts_per_episode < 1:
            raise ValueError(f"`texts_per_episode` must be a positive integer, got {self.texts_per_episode!r}.")
        if self.distill_on not in DISTILL_ON:
            raise ValueError(f"`distill_on` must be one of {DISTILL_ON}, got {self.distill_on!r}.")
        self.pad_token_id = pad_token_id(self.tokenizer)
        self.special_prefix = special_prefix_ids(self.tokenizer)
        self.separator_ids = encode(self.tokenizer, [self.context_separator])[0] if self.context_separator else []

    @classmethod
    def from_settings(
        cls, tokenizer: PreTrainedTokenizerBase, settings: Any, **overrides: Any
    ) -> PromptTargetCollator:
        """The collator whose views `settings` describe: every collator field `settings` has, then `overrides`.

        `settings` is a `MetaPromptSettings` (the views a checkpoint was meta-trained on) or a `MetaDistillConfig`
        (which also names the data columns, the truncation and the answer's EOS).
        """
        names = [spec.name for spec in fields(cls) if spec.init and spec.name != "tokenizer"]
        return cls(
            tokenizer, **{name: getattr(settings, name) for name in names if hasattr(settings, name)} | overrides
        )

    @classmethod
    def from_config(cls, tokenizer: PreTrainedTokenizerBase, args: Any) -> PromptTargetCollator:
        """The collator a `MetaDistillConfig` describes."""
        return cls.from_settings(tokenizer, args)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(examples) == 0:
            raise ValueError("PromptTargetCollator got an empty batch.")
        examples = self._whole_episodes(examples)
        labelled = self._check(examples)
        items = self._tokenize(examples)
        prefix, sep = self.special_prefix, self.separator_ids
        inner = [item.inner for item in items]
        teacher = [item.inner + sep + item.query + item.answer for item in items]
        student = [prefix + item.query + item.answer for item in items]
        label_rows = [self._student_labels(len(prefix), item) for item in items]

        batch = {}
        batch["context_input_ids"], batch["context_attention_mask"] = self._pad(inner, left=False)
        batch["teacher_input_ids"], batch["teacher_attention_mask"] = self._pad(teacher, left=True)
        batch["student_input_ids"], batch["student_attention_mask"] = self._pad(student, left=True)
        key = "labels" if labelled else "prompt_labels"
        batch[key], _ = self._pad(label_rows, left=True, value=IGNORE_INDEX)
        return batch

    # ----- validation & tokenization ---------------------------------------------------------------------------------
    def _whole_episodes(self, examples: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
        texts = self.texts_per_episode
        if len(examples) < texts:
            raise ValueError(
                f"A batch of {len(examples)} examples cannot hold one episode of texts_per_episode={texts}: raise "
                "the batch size to a multiple of texts_per_episode."
            )
        whole = len(examples) - len(examples) % texts
        if whole < len(examples):
            logger.warning(
                "Batch of %d examples: dropping the last %d (an incomplete episode of %d texts).",
                len(examples),
                len(examples) - whole,
                texts,
            )
        return examples[:whole]

    def _check(self, examples: Sequence[Mapping[str, Any]]) -> bool:
        has_answer = []
        for index, example in enumerate(examples):
            if not isinstance(example, Mapping):
                raise TypeError(f"Example {index} of the batch is a {type(example).__name__}, expected a mapping.")
            for name in (self.context_field, self.query_field):
                if name not in example:
                    raise ValueError(f"Example {index} of the batch has no {name!r} field (keys: {sorted(example)}).")
                value = example[name]
                if not isinstance(value, str):
                    raise TypeError(f"Example {index}: field {name!r} must be a string, got {type(value).__name__}.")
                if not value.strip():
                    raise ValueError(f"Example {index}: field {name!r} is empty.")
            answer = example.get(self.answer_field)
            if answer is not None and not isinstance(answer, str):
                raise TypeError(
                    f"Example {index}: field {self.answer_field!r} must be a string or None, got "
                    f"{type(answer).__name__}."
                )
            has_answer.append(bool(answer))
        if any(has_answer) and not all(has_answer):
            missing = [i for i, present in enumerate(has_answer) if not present]
            raise ValueError(
                f"Examples {missing} of the batch have no {self.answer_field!r} while others do: a batch must be all "
                "labelled or all label-free (empty answers use the teacher's greedy continuation)."
            )
        return all(has_answer)

    def _tokenize(self, examples: Sequence[Mapping[str, Any]]) -> list[_Tokenized]:
        queries = encode(self.tokenizer, [e[self.query_field] for e in examples])
        answers = encode(self.tokenizer, [e.get(self.answer_field) or "" for e in examples])
        eos = self.tokenizer.eos_token_id if self.append_eos_to_answer else None
        for index, (query, answer) in enumerate(zip(queries, answers, strict=True)):
            if len(query) > self.max_query_length:
                raise ValueError(
                    f"Example {index}: the query has {len(query)} tokens > max_query_length={self.max_query_length}. "
                    "Raise max_query_length or shorten the query."
                )
            if len(answer) > self.max_answer_length:
                raise ValueError(
                    f"Example {index}: the answer has {len(answer)} tokens > max_answer_length="
                    f"{self.max_answer_length}; answers are never truncated. Raise max_answer_length."
                )
        inner, truncated = context_rows(
            self.tokenizer,
            [e[self.context_field] for e in examples],
            self.max_context_length,
            truncation=self.context_truncation,
            prefix=self.special_prefix,
        )
        self.num_truncated_contexts += truncated
        return [
            _Tokenized(row, query, [*answer, eos] if answer and eos is not None else answer)
            for row, query, answer in zip(inner, queries, answers, strict=True)
        ]

    def _student_labels(self, prefix_length: int, item: _Tokenized) -> list[int]:
        """Targets of the student view; position 0 is never a target (nothing predicts it)."""
        query_targets = item.query if self.distill_on == "query_and_answer" else [IGNORE_INDEX] * len(item.query)
        labels = [IGNORE_INDEX] * prefix_length + list(query_targets) + item.answer
        labels[0] = IGNORE_INDEX
        return labels

    def _pad(self, rows: list[list[int]], left: bool, value: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_rows(rows, self.pad_token_id if value is None else value, left=left)
