"""The prompted base's own answers, made once: the targets of label-free meta-training.

The base is frozen and greedy decoding is deterministic, so a task's teacher answer never changes. Generating it token
by token inside every meta-step (and again every epoch) cost 3.5x a gold-answer step; here each task's answer is
generated once, in batches, before training, and label-free rows then train exactly like rows with gold answers.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import datasets
import torch
from datasets import Dataset
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase

from .collator import PromptTargetCollator
from .meta_step import MetaDistillModel
from .metrics import normalize_answer
from .tokens import answer_stopping, decode_answers, encode

logger = logging.getLogger(__name__)


def add_teacher_answers(
    dataset: Dataset,
    meta: MetaDistillModel,
    collator: PromptTargetCollator,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int = 16,
    grounded: bool = False,
) -> Dataset:
    """`dataset` with every missing or empty answer replaced by the teacher's greedy answer to its prompted view.

    The answer is the continuation's first line (`tokens.first_answer_line`, the rule `ask` and the evaluation read
    answers by), within `max_answer_length` tokens, with one leading space as after "A:". Rows whose teacher says
    nothing are dropped (logged). Gold answers are kept. The result is a `datasets.map` keyed by the dataset, the
    base and the prompt settings, cached across runs (in the `datasets` cache; for a dataset held in memory, only when
    the base has an id or path).
    `grounded=True` also drops the rows whose answer is not grounded in their text (`grounded_in_context`): every
    row's, a gold answer of a partly answered dataset too.
    """
    field = collator.answer_field
    if field in dataset.column_names and all(dataset[field]):
        if grounded:
            logger.warning(
                "grounded_teacher_answers changes nothing here: every row has a gold answer, so no teacher answer is "
                "made to check. Drop the answers (--label_free) to train label-free."
            )
        return dataset
    single = dataclasses.replace(collator, texts_per_episode=1)  # every row is its own prompt here
    settings = meta.settings
    base_model = meta.current_settings().base_model  # the recorded base, else the folder the model was loaded from
    fingerprint = Hasher.hash(
        (
            dataset._fingerprint,
            "teacher_answers/1",
            base_model,
            settings.max_answer_length,
            settings.max_context_length,
            settings.max_query_length,
            settings.context_separator,
            tokenizer.name_or_path,
        )
    )

    def fill(batch: dict[str, list]) -> dict[str, list]:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        answers = [row.get(field) or "" for row in rows]
        missing = [i for i, answer in enumerate(answers) if not answer]
        if missing:
            prompts = [
                {single.context_field: rows[i][single.context_field], single.query_field: rows[i][single.query_field]}
                for i in missing
            ]
            for i, answer in zip(missing, _greedy_answers(meta, single, tokenizer, prompts), strict=True):
                answers[i] = answer
        return {field: answers}

    answered = dataset.map(
        fill,
        batched=True,
        batch_size=batch_size,
        new_fingerprint=fingerprint,
        cache_file_name=_cache_file(dataset, base_model, fingerprint),
        desc="Teacher answers (made once)",
    )
    kept = answered.filter(lambda row: bool(row[field]), new_fingerprint=Hasher.hash((fingerprint, "non-empty")))
    if len(kept) < len(answered):
        logger.warning(
            "%d of %d label-free tasks dropped: the prompted base answered nothing (EOS or a blank line first).",
            len(answered) - len(kept),
            len(answered),
        )
    if grounded:
        answered, context, query = kept, collator.context_field, collator.query_field
        kept = answered.filter(
            lambda row: grounded_in_context(row[field], row[context], row[query]),
            new_fingerprint=Hasher.hash((fingerprint, "grounded")),
        )
        logger.warning(
            "%d of %d label-free tasks dropped: their teacher answer is not grounded in their text.",
            len(answered) - len(kept),
            len(answered),
        )
    logger.info(
        "Teacher answers made for the label-free tasks of %d rows (reused by every step and epoch).", len(kept)
    )
    return kept


# Words that join an answer to its question rather than carry what it says.
_FUNCTION_WORDS = frozenset(
    (
        "is", "was", "are", "were", "be", "been", "has", "have", "had", "of", "in", "on", "at", "by", "for", "to",
        "from", "with", "and", "or", "as", "it", "its", "he", "she", "his", "her", "they", "their", "this", "that",
        "who", "which", "whom",
    )
)  # fmt: skip


def grounded_in_context(answer: str, context: str, query: str) -> bool:
    """Whether `answer` says what `context` says: at least half of the words it adds to `query` (SQuAD-normalised,
    function words aside) are words of `context`, and it adds one at least.

    Label-free filtering of the teacher: "Alana Everhart." to "Who holds the skydiving record?" after a text naming
    her is kept; "Alana Everhart is a British actress" to "Who is Alana Everhart?" after a text on her skydive is not
    (it adds "british" and "actress", which the text never says); an answer repeating the question adds nothing.
    """

    def words(text: str) -> set[str]:
        return set(normalize_answer(text).split()) - _FUNCTION_WORDS

    added = words(answer) - words(query)
    return bool(added) and len(added & words(context)) * 2 >= len(added)


def _cache_file(dataset: Dataset, base_model: str | None, fingerprint: str) -> str | None:
    """Where a dataset held in memory (generated tasks, `Dataset.from_list`) keeps its teacher answers across runs:
    `datasets` caches maps of file-backed datasets only. None (no file) for a base without an id or path, whose
    answers another model of the same settings must never reuse."""
    if dataset.cache_files or not base_model:
        return None
    folder = Path(datasets.config.HF_DATASETS_CACHE) / "hf_metaprompt"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"teacher_answers-{fingerprint}.arrow")


@torch.no_grad()
def _greedy_answers(
    meta: MetaDistillModel, collator: PromptTargetCollator, tokenizer: PreTrainedTokenizerBase, prompts: list[dict]
) -> list[str]:
    batch = collator(prompts)
    device = meta.log_inner_lrs.device
    input_ids, attention_mask = batch["teacher_input_ids"].to(device), batch["teacher_attention_mask"].to(device)
    with meta.teacher_mode() as teacher:
        generated = teacher.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=meta.settings.max_answer_length,
            do_sample=False,
            pad_token_id=collator.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            stopping_criteria=answer_stopping(tokenizer, input_ids.shape[1]),
        )
    answers = []
    for line in decode_answers(tokenizer, generated, input_ids.shape[1]):
        answer = f" {line.strip()}" if line.strip() else ""
        # A line cut by the token budget can re-encode longer (a split character): shortened until it fits.
        while len(encode(tokenizer, [answer])[0]) > collator.max_answer_length:
            answer = answer[:-1]
        answers.append(answer if answer.strip() else "")
    return answers
