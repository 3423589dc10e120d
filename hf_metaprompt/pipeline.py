"""The meta-train → evaluate → save → (push) pipeline behind `examples/run_meta.py` and `hf-metaprompt train`.

With no arguments it runs the embedded default: the shipped tiny base meta-trained on the tiny world, offline.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from argparse import ArgumentParser
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import datasets
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, PreTrainedTokenizerBase, set_seed

from .assets import TINY_BASE_ID, base_location
from .config import MetaDistillConfig
from .evaluation import (
    CONDITIONS,
    DEFAULT_PLAIN_FT_LRS,
    PLAIN_FT_STEPS,
    ConditionEvaluator,
    format_curve,
    format_table,
    save_results,
    summarize,
)
from .hub import is_repo_id, recorded_card_inputs, resolve_checkpoint
from .meta_step import MetaDistillModel
from .trainer import MetaDistillTrainer

logger = logging.getLogger(__name__)

TASKS = ("tiny_world", "people", "reversal", "reversal_questions", "character_description", "squad", "text")

# The embedded default, as command-line flags: anything given explicitly comes later and wins.
TINY_WORLD_DEFAULTS = [
    "--output_dir", "outputs/tiny-world",
    "--task", "tiny_world",
    "--max_steps", "800",
    "--per_device_train_batch_size", "16",
    "--learning_rate", "3e-3",
    "--lr_scheduler_type", "cosine",
    "--warmup_steps", "30",
    "--inner_lr", "0.3",
    "--max_inner_lr", "3.0",
    "--inner_lr_learning_rate", "3e-2",
    "--lora_r", "16",
    "--lora_alpha", "16",
    "--max_answer_length", "16",
    "--max_context_length", "256",
    "--logging_steps", "50",
    "--save_strategy", "no",
    "--report_to", "none",
    "--seed", "0",
    "--max_eval_samples", "200",
    "--max_validation_samples", "100",
    "--texts_absorbed", "1", "16",
]  # fmt: skip


@dataclass
class ScriptArguments:
    """Model and data arguments of the pipeline (training arguments are `MetaDistillConfig`'s)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base model id or path. Default: the tiny base shipped with the package."}
    )
    task: str = field(
        default="tiny_world",
        metadata={
            "help": "Task family. people: generated fictitious people asked as questions (for a real LM); "
            "reversal_questions: meta-train and validate on those, score on Berglund et al.'s people (--dataset_name, "
            "the reversal-curse folder), asked as questions in both directions.",
            "choices": list(TASKS),
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Dataset id or path: reversal-curse folder, SQuAD-schema dataset, or text dataset."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    facts_per_context: int | None = field(
        default=None,
        metadata={
            "help": "Facts (people) per context of the generated tasks: tiny_world (default 8), people (default 1). "
            "With 2, an answer about the wrong person is a coin flip away from the right one, which makes binding a "
            "fact to its person cheap to measure."
        },
    )
    label_free: bool = field(
        default=False,
        metadata={
            "help": "Meta-train without the gold answers: the prompted base's greedy continuations become the targets "
            "(the paper's label-free setting). Evaluation still scores against the gold answers."
        },
    )
    data_files: str | None = field(default=None, metadata={"help": "Local data file(s) (JSON/Parquet/text)."})
    train_split: str = field(default="train", metadata={"help": "Split to meta-train on (squad/text)."})
    eval_split: str = field(default="validation", metadata={"help": "Split to evaluate on (squad/text)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap on training tasks."})
    max_validation_samples: int | None = field(
        default=None, metadata={"help": "Cap on validation tasks (plain fine-tuning LR sweep)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Cap on the tasks scored (test; validation with `eval --split validation`)."}
    )
    conditions: list[str] = field(
        default_factory=lambda: list(CONDITIONS), metadata={"help": "Evaluation conditions to run."}
    )
    plain_ft_lrs: list[float] = field(
        default_factory=lambda: list(DEFAULT_PLAIN_FT_LRS),
        metadata={"help": "Learning rates swept (on validation) for the plain fine-tuning baselines."},
    )
    texts_absorbed: list[int] = field(
        default_factory=lambda: [1],
        metadata={
            "help": "Numbers of texts absorbed one after another before their questions are asked (the many-texts "
            "curve: one evaluation per value)."
        },
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "Start from a checkpoint this script saved (local folder or Hub id: its adapted weights and "
            "learned inner LRs) instead of a fresh adapter: the next stage of a curriculum, e.g. longer episodes. "
            "Unlike --resume_from_checkpoint, optimizer and schedule start anew with this run's settings; the card "
            "lists the starting checkpoint's commands before this one."
        },
    )
    skip_training: bool = field(default=False, metadata={"help": "Only evaluate (e.g. the base with no meta-step)."})
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id recorded as the base model (model card, metaprompt_config.json) for a local base."},
    )


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, MetaDistillConfig]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ScriptArguments, MetaDistillConfig))
    defaults = TINY_WORLD_DEFAULTS if is_default_task(parser, argv) else ["--output_dir", "outputs/meta"]
    script_args, config = parser.parse_args_into_dataclasses(args=defaults + argv)
    return script_args, config


def is_default_task(parser: ArgumentParser, argv: list[str]) -> bool:
    """The tiny-world defaults apply unless another task or a real model is asked for (as `parser` reads `argv`)."""
    namespace, _ = parser.parse_known_args(argv)
    return namespace.model_name_or_path is None and namespace.task == "tiny_world"


def tiny_world_script_defaults() -> dict:
    """The `ScriptArguments` values of the embedded default, so that `eval` measures what `train` measured."""
    namespace, _ = HfArgumentParser((ScriptArguments, MetaDistillConfig)).parse_known_args(TINY_WORLD_DEFAULTS)
    return {f.name: getattr(namespace, f.name) for f in fields(ScriptArguments)}


def load_task(script_args: ScriptArguments, seed: int) -> datasets.DatasetDict:
    """train / validation / test splits with `context`, `query`, `answer`, `direction` columns."""
    task = script_args.task
    facts = script_args.facts_per_context
    if task == "tiny_world":
        from .data.tiny_world import load_tiny_world

        return load_tiny_world(seed=seed, facts_per_context=8 if facts is None else facts)
    if task in ("people", "reversal_questions"):
        from .data.people import load_people_tasks

        splits = load_people_tasks(seed=seed, facts_per_text=1 if facts is None else facts)
        if task == "people":
            return splits
        # Meta-trained and validated on generated people; scored on Berglund et al.'s, whom nobody here wrote.
        if script_args.dataset_name is None:
            raise ValueError("--task reversal_questions needs --dataset_name: the reversal-curse folder or Hub id.")
        from .data.reversal import load_reversal_questions

        splits["test"] = load_reversal_questions(script_args.dataset_name, seed=seed)
        return splits
    if facts is not None:
        raise ValueError(
            f"--facts_per_context sets the generated tasks' contexts (tiny_world, people); --task {task} has its own: "
            "drop it."
        )
    if script_args.dataset_name is None and script_args.data_files is None:
        raise ValueError(f"--task {task} needs --dataset_name (or --data_files).")
    if task in ("reversal", "character_description"):
        from .data.reversal import load_reversal_tasks

        return load_reversal_tasks(script_args.dataset_name, task=task, seed=seed)
    if task == "squad":
        from .data.squad import load_squad_tasks

        loader = load_squad_tasks
    elif task == "text":
        from .data.text import load_text_tasks

        loader = load_text_tasks
    else:
        raise ValueError(f"Unknown --task {task!r}; choose from {TASKS}.")
    name = script_args.dataset_name or "json"
    train = loader(name, split=script_args.train_split, dataset_config=script_args.dataset_config)
    held_out = loader(name, split=script_args.eval_split, dataset_config=script_args.dataset_config)
    halves = held_out.train_test_split(test_size=0.5, seed=seed)
    return datasets.DatasetDict(train=train, validation=halves["train"], test=halves["test"])


def take_subset(dataset: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    """A seeded random subset of at most `limit` rows (the same rows for the same seed, in every command)."""
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit))


def run(script_args: ScriptArguments, config: MetaDistillConfig, command: str | None = None) -> list[dict]:
    """Meta-train, evaluate every condition, save adapter + settings + results + plot + card; push if asked."""
    set_seed(config.seed)
    base_id = script_args.base_model_id or script_args.model_name_or_path or TINY_BASE_ID
    model_path = base_location(script_args.model_name_or_path or TINY_BASE_ID)
    has_hub_base = is_repo_id(base_id)
    if config.push_to_hub and not has_hub_base:
        raise ValueError(
            f"--push_to_hub needs the base model's Hub id: {base_id!r} is a local path; pass --base_model_id."
        )
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, **(config.model_init_kwargs or {}))
    splits = load_task(script_args, config.seed)
    train = take_subset(splits["train"], script_args.max_train_samples, config.seed)
    if script_args.label_free and config.answer_field in train.column_names:
        train = train.remove_columns(config.answer_field)
    validation = take_subset(splits["validation"], script_args.max_validation_samples, config.seed)
    test = take_subset(splits["test"], script_args.max_eval_samples, config.seed)
    logger.info("Tasks: %d train, %d validation, %d test", len(train), len(validation), len(test))

    trainer = MetaDistillTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer)
    trainer.meta_model.record_base_model(base_id)
    if script_args.init_from:
        start = resolve_checkpoint(script_args.init_from)
        trainer.meta_model.load_meta_state(start)
        logger.info("Meta-training starts from %s", script_args.init_from)
        command = with_earlier_stages(command, start)
    if not script_args.skip_training:
        trainer.train(resume_from_checkpoint=_resume_argument(config))
    trainer.save_model(config.output_dir)

    rows = evaluate_all(
        trainer.meta_model,
        tokenizer,
        validation,
        test,
        task=script_args.task,
        conditions=script_args.conditions,
        plain_ft_lr_grid=script_args.plain_ft_lrs,
        texts_absorbed=script_args.texts_absorbed,
        batch_size=config.per_device_eval_batch_size * 4,
    )
    logger.info("Results on %d held-out tasks:\n%s\n\n%s", len(test), format_table(rows), summarize(rows))
    if len(script_args.texts_absorbed) > 1:
        logger.info("Exact match against texts absorbed:\n%s", format_curve(rows))

    output_dir = Path(config.output_dir)
    save_results(rows, output_dir, title=f"{script_args.task}: one gradient step vs prompting")
    (output_dir / "script_args.json").write_text(json.dumps(asdict(script_args), indent=2) + "\n")
    if has_hub_base:
        example = test[0]
        trainer.create_model_card(
            command=command, eval_results=rows, example_context=example["context"], example_question=example["query"]
        )
    else:
        logger.warning("No model card written: the base %r is a local path (pass --base_model_id).", base_id)
    if config.push_to_hub:
        trainer.push_to_hub(commit_message="Meta-trained checkpoint with evaluation results")
    return rows


def with_earlier_stages(command: str | None, start: Path) -> str | None:
    """`command` after the commands that made `start` (as its card records them): the card of a stage run
    `--init_from` another checkpoint then lists the whole recipe, which reruns from the card alone."""
    earlier = recorded_card_inputs(start / "README.md").get("command")
    return f"{earlier}\n{command}" if earlier and command else command


def _resume_argument(config: MetaDistillConfig) -> str | bool | None:
    """`--resume_from_checkpoint DIR`, or `last`/`true` for the last complete checkpoint of `--output_dir`."""
    resume = config.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("last", "true"):
        return True
    if not resume and any(Path(config.output_dir).glob("checkpoint-*")):
        logger.warning(
            "%s already holds checkpoints: training starts at step 0 and overwrites them. Pass "
            "--resume_from_checkpoint last to continue from the last one.",
            config.output_dir,
        )
    return resume


def evaluate_all(
    meta: MetaDistillModel,
    tokenizer: PreTrainedTokenizerBase,
    validation: datasets.Dataset,
    test: datasets.Dataset,
    task: str,
    conditions: list[str] = CONDITIONS,
    plain_ft_lr_grid: list[float] | None = None,
    texts_absorbed: Sequence[int] = (1,),
    batch_size: int = 32,
) -> list[dict]:
    """Every condition on `test` for each number of texts absorbed; plain fine-tuning LRs swept on `validation`."""
    rows = []
    for texts in texts_absorbed:
        evaluator = ConditionEvaluator(meta, tokenizer, batch_size=batch_size, texts_absorbed=texts)
        plain_ft_lrs = {}
        for condition, steps in PLAIN_FT_STEPS.items():
            if condition in conditions:
                grid = plain_ft_lr_grid or DEFAULT_PLAIN_FT_LRS
                plain_ft_lrs[condition], _ = evaluator.sweep_plain_ft_lr(validation, steps, grid)
        for row in evaluator.evaluate(test, task, conditions, plain_ft_lrs):
            if row["condition"] in plain_ft_lrs:
                row["learning_rate"] = plain_ft_lrs[row["condition"]]
            rows.append(row)
    return rows


def setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> list[dict]:
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args, config = parse_args(argv)
    command = shlex.join(["accelerate", "launch", "examples/run_meta.py", *argv])
    return run(script_args, config, command=command)
