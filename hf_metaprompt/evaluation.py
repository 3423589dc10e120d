"""Measure what one gradient step buys, beside the baselines that give it meaning.

Conditions (for each task: a context, a query, a gold answer):
- `no_context`: the base model asked without the context (the floor);
- `prompted`: the base model with context + query (the ceiling: the teacher);
- `prompted_all`: the base model prompted with the texts of all tasks absorbed together (their contexts joined, up to
  N times `max_context_length`): what prompting does when several texts must be held;
- `plain_ft_1step` / `plain_ft_5step`: the base model after 1 / 5 SGD steps of next-token loss on the context, over
  every linear layer, learning rate swept on validation data;
- `meta_no_step`: the meta-trained model asked without the context and without an update (must stay at the floor,
  or the adapter leaked answers);
- `meta_1step`: the meta-trained model after its inner step(s) on the context (the method).

Every task gets its own update, computed for the whole batch in one pass (fast weights). With `texts_absorbed=N`,
each run of N consecutive tasks shares one state that absorbs their N contexts one after another before all N
questions are asked (with the checkpoint's `text_memory="per_text"`, N states, one per text, each question run with
the one that raises its tokens most); rows then also report the first text's questions alone (`questions="first_text"`:
retention).
Tasks with a `distractors` column (the answers of the context's other facts, as the tiny world has) add
`distractor_match`: the share of answers that are one of them, found in the text but bound to the wrong fact.
Tasks with an `answer_kind` column (`name` / `description`: the people tasks for a real LM) add `answer_match`
(`metrics.answer_match`, which a small model's own wording does not defeat) and are counted per direction and kind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .collator import PromptTargetCollator
from .fast_weights import AdaptedModules, FastWeights, use_fast_weights
from .hub import RESULTS_FILE_NAME
from .inner import absorb_groups
from .losses import token_logprobs
from .meta_step import MetaDistillModel, causal_logits
from .metrics import answer_match, exact_match, share_of_gap_closed, token_f1
from .routing import route
from .tokens import IGNORE_INDEX, answer_stopping, decode_answers, target_window

logger = logging.getLogger(__name__)

CONDITIONS = (
    "no_context",
    "prompted",
    "prompted_all",
    "plain_ft_1step",
    "plain_ft_5step",
    "meta_no_step",
    "meta_1step",
)
# Conditions whose N tasks share what they were given (one absorbed state, or one prompt holding every text).
SHARED_CONDITIONS = ("prompted_all", "plain_ft_1step", "plain_ft_5step", "meta_1step")
# Conditions of the meta-trained model alone; the others use its base.
META_CONDITIONS = ("meta_no_step", "meta_1step")
TEXT_SEPARATOR = " "
PLAIN_FT_STEPS = {"plain_ft_1step": 1, "plain_ft_5step": 5}
DEFAULT_PLAIN_FT_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
PLOT_NAME = "eval_results.png"
# Row metrics that only some tasks have, with their table headers.
OPTIONAL_COLUMNS = {"answer_match": "match", "distractor_match": "distractor"}


@dataclass
class _TaskScores:
    prediction: str
    exact_match: float
    f1: float
    answer_logprob: float
    distractor_match: float | None = None
    answer_match: float | None = None


class ConditionEvaluator:
    """Evaluates a `MetaDistillModel` (and its base) under every condition on any task set.

    Args:
        meta: the meta-trained model; its base is the model with the adapter disabled (or its frozen teacher).
        tokenizer: the model's tokenizer.
        batch_size: tasks per batched pass.
        texts_absorbed: absorb this many tasks' contexts one after another into one state before asking their
            questions (1 = each task alone), for the meta and plain fine-tuning conditions; `prompted_all` prompts
            with all of them joined.
        max_new_tokens: generation budget; defaults to the checkpoint's `max_answer_length`.
        plain_ft_memory_gib: memory for the plain fine-tuning copies of the base's linear weights in one pass (each
            state holds a full copy and its gradient): bounds the evaluation's peak on a real model.
        absorb_batch_size: texts per inner pass when absorbing (the step's backward holds activations per text);
            answers are still generated `batch_size` tasks at a time.
    """

    def __init__(
        self,
        meta: MetaDistillModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 32,
        texts_absorbed: int = 1,
        max_new_tokens: int | None = None,
        show_progress: bool = True,
        plain_ft_memory_gib: float = 1.0,
        absorb_batch_size: int = 8,
    ) -> None:
        if not isinstance(texts_absorbed, int) or texts_absorbed < 1:
            raise ValueError(f"`texts_absorbed` must be a positive integer, got {texts_absorbed!r}.")
        self.meta = meta
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.texts_absorbed = texts_absorbed
        settings = meta.settings
        self.max_new_tokens = max_new_tokens or settings.max_answer_length
        self.collator = PromptTargetCollator.from_settings(
            tokenizer,
            settings,
            max_answer_length=max(settings.max_answer_length, 256),  # gold answers may be longer than generations
            append_eos_to_answer=False,  # the metric is the answer's own likelihood
            distill_on="answer",  # the labels score the answer alone
            texts_per_episode=1,  # the evaluator groups texts itself (`texts_absorbed`)
        )
        self.show_progress = show_progress
        self.plain_ft_memory_gib = plain_ft_memory_gib
        if absorb_batch_size < 1:
            raise ValueError(f"`absorb_batch_size` must be at least 1, got {absorb_batch_size}.")
        self.absorb_batch_size = absorb_batch_size
        base = meta.teacher if meta.teacher is not None else meta.model.get_base_model()
        # Plain fine-tuning adapts the base's own linear layers (never the adapter's, which is off for the base).
        self.base_linears = AdaptedModules.from_linear_layers(base, skip=lambda name: ".lora_" in name)

    def plain_ft_states_per_pass(self) -> int:
        """Plain fine-tuning holds a full copy of every linear weight (and its gradient) per state: as many states
        per pass as `plain_ft_memory_gib` holds, at least one, at most `batch_size` (SmolLM2: 0.85 GB a state)."""
        per_state = 2 * sum(
            p.numel() * p.element_size() for linear in self.base_linears.linears for p in linear.parameters()
        )
        return max(1, min(self.batch_size, int(self.plain_ft_memory_gib * 2**30 // per_state)))

    # ----- public API
    def evaluate(
        self,
        dataset: Dataset,
        task: str,
        conditions: Sequence[str] = CONDITIONS,
        plain_ft_lrs: dict[str, float] | None = None,
    ) -> list[dict]:
        """One row per (condition, direction[, questions]): exact match, token F1, mean answer log-likelihood, n.

        Every row carries `texts` (texts absorbed per state); with more than one, rows with `questions="first_text"`
        score the questions about the first text absorbed, after all the others (retention).
        """
        unknown = set(conditions) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"Unknown conditions {sorted(unknown)}; choose from {CONDITIONS}.")
        missing = [c for c in conditions if c in PLAIN_FT_STEPS and c not in (plain_ft_lrs or {})]
        if missing:
            raise ValueError(f"Conditions {missing} need a learning rate in `plain_ft_lrs` (see `sweep_plain_ft_lr`).")
        if set(conditions) - set(META_CONDITIONS):
            self.meta.require_base()  # before any condition is scored
        examples = self._whole_groups(_as_examples(dataset))
        self.meta.eval()
        rows = []
        for condition in conditions:
            lr = (plain_ft_lrs or {}).get(condition)
            scores = self._score(examples, condition, lr, desc=f"{task}: {condition}")
            rows.extend(_aggregate(task, condition, examples, scores, self.texts_absorbed))
        return rows

    def sweep_plain_ft_lr(
        self, dataset: Dataset, steps: int, lrs: Iterable[float] = DEFAULT_PLAIN_FT_LRS
    ) -> tuple[float, dict[float, float]]:
        """Best plain fine-tuning LR on `dataset` by mean answer log-likelihood (smooth, no generation needed)."""
        examples = self._whole_groups(_as_examples(dataset))
        self.meta.eval()
        condition = "plain_ft_1step" if steps == 1 else "plain_ft_5step"
        results = {}
        for lr in lrs:
            scores = self._score(examples, condition, lr, desc=f"sweep lr={lr:g}", generate=False)
            logprobs = [s.answer_logprob for s in scores]
            results[lr] = sum(logprobs) / len(logprobs) if all(map(math.isfinite, logprobs)) else -math.inf
        best = max(results, key=results.get)
        logger.info("Plain fine-tuning, %d step(s): best lr %g (mean answer logprob %.3f)", steps, best, results[best])
        return best, results

    def _whole_groups(self, examples: list[dict]) -> list[dict]:
        """The tasks in groups of `texts_absorbed`, one group after another, in absorbing order.

        Of G groups, group g holds tasks g, g + G, g + 2G, ...: each position in the absorbing order (the first
        text's, which the retention rows score, above all) then holds a contiguous block of the dataset, as
        balanced as the dataset's prefixes are. Consecutive groups would put tasks 0, N, 2N, ... first, all of one
        kind in a dataset that alternates kinds (the tiny world alternates directions). Tasks beyond the last whole
        group are left out, and logged.
        """
        texts = self.texts_absorbed
        groups = len(examples) // texts
        if groups == 0:
            raise ValueError(f"{len(examples)} tasks cannot fill one group of texts_absorbed={texts}.")
        if groups * texts < len(examples):
            logger.info("Evaluating %d of %d tasks: whole groups of %d texts.", groups * texts, len(examples), texts)
        return [examples[position * groups + group] for group in range(groups) for position in range(texts)]

    # ----- one condition
    def _score(
        self, examples: list[dict], condition: str, lr: float | None, desc: str, generate: bool = True
    ) -> list[_TaskScores]:
        group = self.texts_absorbed if condition in SHARED_CONDITIONS else 1
        states = self.batch_size if condition not in PLAIN_FT_STEPS else self.plain_ft_states_per_pass()
        # Kept apart, a group holds one state per text (at least one whole group per pass).
        chunk = max(1, states // group) * group if self._kept_apart(condition, group) else states * group
        scores: list[_TaskScores] = []
        progress = tqdm(total=len(examples), desc=desc, disable=not self.show_progress, leave=False)
        for start in range(0, len(examples), chunk):
            batch = examples[start : start + chunk]
            scores.extend(self._score_batch(batch, condition, lr, group, generate))
            progress.update(len(batch))
        progress.close()
        return scores

    @torch.no_grad()
    def _score_batch(
        self, batch: list[dict], condition: str, lr: float | None, group: int, generate: bool
    ) -> list[_TaskScores]:
        device = self.meta.log_inner_lrs.device
        collator = self.collator
        if condition == "prompted_all":
            batch = _with_joined_contexts(batch, group)
            # Room for all N texts: cutting the joined prompt to one text's window would lose the earlier texts.
            collator = dataclasses.replace(collator, max_context_length=collator.max_context_length * group)
        labelled = {k: v.to(device) for k, v in collator(batch).items()}
        prompts = {k: v.to(device) for k, v in collator([_without_answer(e) for e in batch]).items()}
        view = "teacher" if condition in ("prompted", "prompted_all") else "student"
        with self._condition_model(condition, labelled, prompts, lr, group) as model:
            logprobs = _answer_logprobs(
                model, labelled[f"{view}_input_ids"], labelled[f"{view}_attention_mask"], labelled["labels"]
            )
            predictions = (
                self._generate(model, prompts[f"{view}_input_ids"], prompts[f"{view}_attention_mask"])
                if generate
                else [""] * len(batch)
            )
        scored = []
        for example, prediction, logprob in zip(batch, predictions, logprobs.tolist(), strict=True):
            references = example.get("answers") or [example["answer"]]
            distractors = example.get("distractors")
            kind = example.get("answer_kind")
            scored.append(
                _TaskScores(
                    prediction,
                    exact_match(prediction, references),
                    token_f1(prediction, references),
                    logprob,
                    exact_match(prediction, distractors) if distractors else None,
                    answer_match(prediction, example["answer"], kind) if kind else None,
                )
            )
        return scored

    @contextlib.contextmanager
    def _condition_model(
        self, condition: str, batch: dict, prompts: dict, lr: float | None, group: int
    ) -> Iterator[nn.Module]:
        """The model of a condition: the base (adapter off), the meta-trained model, either with fast weights.

        With `text_memory="per_text"` each text of a group keeps its own update, and each row runs with the one that
        raises its question's tokens most (`prompts`: the answer is never read to choose).
        """
        meta = self.meta
        if condition in ("no_context", "prompted", "prompted_all"):
            with meta.teacher_mode() as base:
                yield base
            return
        if condition == "meta_no_step":
            yield meta.model
            return
        ids, mask = batch["context_input_ids"], batch["context_attention_mask"]
        per_text = self._kept_apart(condition, group)
        states = 1 if per_text else group
        with contextlib.ExitStack() as stack:
            if condition == "meta_1step":
                model = meta.model
                options = meta.inner_step_options()
                fast = self._absorb(model, meta.adapted, meta.inner_lrs(), ids, mask, states, **options)
            else:
                model = stack.enter_context(meta.teacher_mode())
                lrs = torch.full((len(self.base_linears.group_names),), float(lr), device=ids.device)
                steps = PLAIN_FT_STEPS[condition]
                fast = self._absorb(model, self.base_linears, lrs, ids, mask, states, steps=steps)
            if per_text:
                fast, _ = route(model, fast, prompts["student_input_ids"], prompts["student_attention_mask"], group)
            stack.enter_context(use_fast_weights(fast))
            yield model

    def _kept_apart(self, condition: str, group: int) -> bool:
        """Whether a condition's group of texts keeps one state per text (`text_memory="per_text"`)."""
        absorbs = condition == "meta_1step" or condition in PLAIN_FT_STEPS
        return absorbs and group > 1 and self.meta.settings.text_memory == "per_text"

    def _absorb(self, model, modules, lrs, ids, mask, group, **step_options) -> FastWeights:
        """Per-task updates; with `group > 1`, each run of `group` tasks shares one state that absorbs their texts
        the way the checkpoint combines texts (`text_composition`); the state then serves the group's rows.
        `step_options` go to `inner_update` (the checkpoint's `inner_step_options()`, or plain fine-tuning's steps).

        At most `absorb_batch_size` texts (whole groups) per inner pass: its backward keeps every adapted layer's
        activations, which for 32 SmolLM2 tasks read both ways peaked at 5.6 GB against 2.2 GB for 8.
        """
        composition = self.meta.settings.text_composition
        rows = group * max(1, self.absorb_batch_size // group)
        parts = [
            absorb_groups(
                model,
                modules,
                lrs,
                ids[start : start + rows],
                mask[start : start + rows],
                group,
                composition,
                create_graph=False,
                **step_options,
            )[0]
            for start in range(0, ids.shape[0], rows)
        ]
        return FastWeights.cat(parts)

    def _generate(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.collator.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            stopping_criteria=answer_stopping(self.tokenizer, input_ids.shape[1]),
        )
        return [answer.strip() for answer in decode_answers(self.tokenizer, output, input_ids.shape[1])]


def _answer_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean log-likelihood of each row's answer tokens (right-aligned), teacher-forced."""
    keep = target_window(labels)
    logits = causal_logits(model, input_ids, attention_mask, keep)
    targets = labels[:, -keep + 1 :]
    valid = targets != IGNORE_INDEX
    logp = token_logprobs(logits, targets.clamp(min=0))
    return (logp * valid).sum(-1) / valid.sum(-1).clamp(min=1)


def _as_examples(dataset: Dataset | Sequence[dict]) -> list[dict]:
    examples = [dict(e) for e in dataset]
    for example in examples:
        if not example.get("answer") and example.get("reference"):
            # Label-free tasks (plain text) are scored against the true continuation.
            example["answer"] = example["reference"]
        if not example.get("answer"):
            raise ValueError("Evaluation needs a gold `answer` (or a `reference`) for every task.")
    return examples


def _without_answer(example: dict) -> dict:
    return {"context": example["context"], "query": example["query"]}


def _with_joined_contexts(batch: list[dict], group: int) -> list[dict]:
    """Each task prompted with the contexts of its whole group (in absorbing order) instead of its own."""
    joined = []
    for start in range(0, len(batch), group):
        members = batch[start : start + group]
        context = TEXT_SEPARATOR.join(example["context"] for example in members)
        joined.extend({**example, "context": context} for example in members)
    return joined


def _aggregate(
    task: str, condition: str, examples: list[dict], scores: list[_TaskScores], texts: int = 1
) -> list[dict]:
    """Rows per direction over all questions and, with several texts, over the first text's questions."""
    subsets = {"all": list(zip(examples, scores, strict=True))}
    if texts > 1:
        subsets["first_text"] = subsets["all"][::texts]
    rows = []
    for questions, pairs in subsets.items():
        by_direction: dict[str, list[_TaskScores]] = {}
        for example, score in pairs:
            by_direction.setdefault(_direction_label(example), []).append(score)
        for direction in sorted(by_direction):
            group = by_direction[direction]
            n = len(group)
            row = {
                "task": task,
                "direction": direction,
                "condition": condition,
                "texts": texts,
                "questions": questions,
                "exact_match": sum(s.exact_match for s in group) / n,
                "f1": sum(s.f1 for s in group) / n,
                "answer_logprob": sum(s.answer_logprob for s in group) / n,
                "n": n,
            }
            if all(s.distractor_match is not None for s in group):
                row["distractor_match"] = sum(s.distractor_match for s in group) / n
            if all(s.answer_match is not None for s in group):
                row["answer_match"] = sum(s.answer_match for s in group) / n
            rows.append(row)
    return rows


def _direction_label(example: dict) -> str:
    """The row a task is counted in: its direction and, for tasks that say what their answer is (a name or a
    description), that too: "reversed -> name" and "reversed -> description" are different skills."""
    direction = example.get("direction") or "all"
    kind = example.get("answer_kind")
    return f"{direction} -> {kind}" if kind else direction


def gap_closed(rows: Sequence[dict], metric: str = "exact_match") -> dict[tuple[str, str], float | None]:
    """Share of the prompted gap the method closes: `(meta_1step - plain_ft_1step) / (prompted - plain_ft_1step)`.

    Over all questions of one-text updates (rows with `texts` > 1 are the many-texts curve, see `format_curve`).
    """
    rows = [r for r in rows if r.get("texts", 1) == 1 and r.get("questions", "all") == "all"]
    table = {(r["task"], r["direction"], r["condition"]): r[metric] for r in rows}
    result = {}
    for task, direction in sorted({(r["task"], r["direction"]) for r in rows}):
        try:
            ours, plain, prompted = (table[(task, direction, c)] for c in ("meta_1step", "plain_ft_1step", "prompted"))
        except KeyError:
            continue
        result[(task, direction)] = share_of_gap_closed(ours, plain, prompted)
    return result


def format_table(rows: Sequence[dict]) -> str:
    """A Markdown table of the rows, then the gap closed per task and direction.

    Columns only some tasks have come last: `match` (tasks that say whether their answer is a name or a
    description: `metrics.answer_match`) and `distractor` (tasks with distractors: the share of answers that are
    another fact of the context, answered instead of the asked one).
    """
    extra = [(key, title) for key, title in OPTIONAL_COLUMNS.items() if any(key in r for r in rows)]
    lines = [
        "| task | texts | questions | direction | condition | exact match | F1 | answer log-lik. | n |"
        + "".join(f" {title} |" for _, title in extra),
        "|---|---:|---|---|---|---:|---:|---:|---:|" + "---:|" * len(extra),
    ]
    for r in rows:
        line = (
            f"| {r['task']} | {r.get('texts', 1)} | {r.get('questions', 'all')} | {r['direction']} | {r['condition']} "
            f"| {r['exact_match']:.3f} | {r['f1']:.3f} | {r['answer_logprob']:.3f} | {r['n']} |"
        )
        line += "".join(f" {r[key]:.3f} |" if key in r else " |" for key, _ in extra)
        lines.append(line)
    metric = headline_metric(rows)
    for (task, direction), share in gap_closed(rows, metric).items():
        shown = "n/a (prompted = plain FT)" if share is None else f"{share:.2f}"
        lines.append(f"\nGap closed ({task}, {direction}, {metric_title(metric)}): {shown}")
    return "\n".join(lines)


def metric_title(metric: str) -> str:
    return "match" if metric == "answer_match" else metric.replace("_", " ")


def headline_metric(rows: Sequence[dict]) -> str:
    """`answer_match` where every row has it (tasks whose answers a small model words its own way), else exact
    match."""
    return "answer_match" if rows and all("answer_match" in r for r in rows) else "exact_match"


def summarize(rows: Sequence[dict], metric: str | None = None) -> str:
    """One line that reads the table: where one meta-learned step rose above plain fine-tuning (the best of its
    1- and 5-step rows), and how far it is from the base prompted with the text (its teacher), per direction.

    Over one-text updates and all questions, like `gap_closed`; empty without a `meta_1step` row. A table of a dozen
    rows does not say by itself which comparison matters; this line does.
    """
    metric = metric or headline_metric(rows)
    rows = [r for r in rows if r.get("texts", 1) == 1 and r.get("questions", "all") == "all"]
    table = {(r["task"], r["direction"], r["condition"]): r[metric] for r in rows}
    groups = sorted({(task, direction) for task, direction, condition in table if condition == "meta_1step"})
    tasks = {task for task, _ in groups}
    above, not_above, of_teacher, zero_teacher = [], [], [], []
    for task, direction in groups:
        label = direction if len(tasks) == 1 else f"{task} {direction}"
        ours = table[(task, direction, "meta_1step")]
        plain = [table[(task, direction, c)] for c in PLAIN_FT_STEPS if (task, direction, c) in table]
        if plain:
            (above if ours > max(plain) else not_above).append(f"{label} ({ours:.3f} vs {max(plain):.3f})")
        prompted = table.get((task, direction, "prompted"))
        if prompted:
            of_teacher.append(f"{ours / prompted:.2f}x in {label} ({ours:.3f} of {prompted:.3f})")
        elif prompted is not None:
            zero_teacher.append(label)
    comparison = []
    if above:
        comparison.append(f"one meta-learned step rose above plain fine-tuning in {_and(above)}")
    if not_above:
        lead = "but not in" if above else "one meta-learned step did not rise above plain fine-tuning in"
        comparison.append(f"{lead} {_and(not_above)}")
    clauses = [" ".join(comparison)] if comparison else []
    if of_teacher:
        clauses.append(f"it is at {_and(of_teacher)} of the base prompted with the text (the teacher)")
    if zero_teacher:
        clauses.append(f"the prompted teacher scores 0 in {_and(zero_teacher)}")
    return f"Reading ({metric_title(metric)}, one text per update): {'; '.join(clauses)}." if clauses else ""


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def format_curve(rows: Sequence[dict], metric: str | None = None) -> str:
    """`metric` (default: `headline_metric`) against the number of texts absorbed: one line per (condition,
    questions, direction)."""
    metric = metric or headline_metric(rows)
    texts = sorted({r.get("texts", 1) for r in rows})
    keys = sorted(
        {(r["condition"], r.get("questions", "all"), r["direction"]) for r in rows},
        key=lambda key: (CONDITIONS.index(key[0]) if key[0] in CONDITIONS else len(CONDITIONS), key[1], key[2]),
    )
    lines = [
        "| condition | questions | direction | " + " | ".join(f"N={n}" for n in texts) + " |",
        "|---|---|---|" + "---:|" * len(texts),
    ]
    for condition, questions, direction in keys:
        cells = []
        for n in texts:
            # With one text, its first text's questions are all of its questions.
            wanted = "all" if n == 1 else questions
            value = _lookup(rows, metric, condition=condition, questions=wanted, direction=direction, texts=n)
            cells.append("" if value is None else f"{value:.3f}")
        lines.append(f"| {condition} | {questions} | {direction} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _lookup(rows: Sequence[dict], metric: str, **key) -> float | None:
    defaults = {"texts": 1, "questions": "all"}
    for row in rows:
        if all(row.get(name, defaults.get(name)) == value for name, value in key.items()):
            return row[metric]
    return None


def format_results(rows: Sequence[dict]) -> str:
    """The table, the reading and, with several numbers of texts absorbed, the curve: what `train` logs and `eval`
    prints."""
    parts = [format_table(rows), summarize(rows)]
    if len({r.get("texts", 1) for r in rows}) > 1:
        parts.append(
            f"{metric_title(headline_metric(rows)).capitalize()} against texts absorbed:\n{format_curve(rows)}"
        )
    return "\n\n".join(parts)


def save_results(rows: Sequence[dict], output_dir: str | os.PathLike, title: str | None = None) -> tuple[Path, Path]:
    """Write `eval_results.json` and a plot: exact match per condition and, with several N, against N texts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / RESULTS_FILE_NAME
    json_path.write_text(json.dumps(list(rows), indent=2) + "\n")

    texts = sorted({r.get("texts", 1) for r in rows})
    single = [r for r in rows if r.get("texts", 1) == texts[0] and r.get("questions", "all") == "all"]
    groups = sorted({(r["task"], r["direction"]) for r in single})
    conditions = [c for c in CONDITIONS if any(r["condition"] == c for r in single)]
    panels = 2 if len(texts) > 1 else 1
    width_in = max(6, 1.6 * len(conditions) * len(groups) ** 0.5)
    figure, axes = plt.subplots(1, panels, figsize=(width_in + 5 * (panels - 1), 4), squeeze=False)
    axis = axes[0][0]
    width = 0.8 / max(len(groups), 1)
    for index, (task, direction) in enumerate(groups):
        values = [_lookup(single, "exact_match", task=task, direction=direction, condition=c) or 0 for c in conditions]
        positions = [i + (index - (len(groups) - 1) / 2) * width for i in range(len(conditions))]
        axis.bar(positions, values, width, label=f"{task} / {direction}")
    axis.set_xticks(range(len(conditions)), conditions, rotation=20)
    axis.set_ylabel("exact match")
    axis.set_ylim(0, 1.05)
    axis.set_title(title or "One gradient step vs prompting")
    _legend(axis, fontsize=8)
    if panels == 2:
        _plot_curve(axes[0][1], rows, texts)
    figure.tight_layout()
    plot_path = output_dir / PLOT_NAME
    figure.savefig(plot_path, dpi=120)
    plt.close(figure)
    return json_path, plot_path


def _plot_curve(axis, rows: Sequence[dict], texts: list[int]) -> None:
    """Exact match (all directions, weighted by n) against the number of texts absorbed, log-scaled N."""
    for condition in (c for c in CONDITIONS if c in SHARED_CONDITIONS or c == "prompted"):
        for questions, style in (("all", "-"), ("first_text", ":")):
            points = []
            for n in texts:
                wanted = "all" if n == 1 else questions
                chosen = [
                    r
                    for r in rows
                    if r["condition"] == condition and r.get("texts", 1) == n and r.get("questions", "all") == wanted
                ]
                if chosen:
                    total = sum(r["n"] for r in chosen)
                    points.append((n, sum(r["exact_match"] * r["n"] for r in chosen) / total))
            if len(points) > 1 and (questions == "all" or condition == "meta_1step"):
                label = condition if questions == "all" else f"{condition} (first text)"
                axis.plot(*zip(*points, strict=True), style, marker="o", label=label)
    axis.set_xscale("log", base=2)
    axis.set_xticks(texts, [str(n) for n in texts])
    axis.set_xlabel("texts absorbed one after another (N)")
    axis.set_ylabel("exact match")
    axis.set_ylim(0, 1.05)
    axis.set_title("Several texts")
    _legend(axis, fontsize=7)


def _legend(axis, fontsize: int) -> None:
    # Only when something was drawn: matplotlib warns about an empty legend (e.g. results without any row).
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=fontsize)
