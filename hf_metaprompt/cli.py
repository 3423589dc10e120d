"""`hf-metaprompt`: train, evaluate, absorb-and-ask, push.

hf-metaprompt train [run_meta.py flags]
hf-metaprompt eval CHECKPOINT --task tiny_world [--texts_absorbed 1 2 4 8 16]
hf-metaprompt absorb CHECKPOINT --text notes.txt --ask "Q: Who is the baker from Lisbon?\\nA:"
hf-metaprompt push CHECKPOINT user/my-metaprompt-model
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

# The Hub client's base HTTP error: error statuses (`HfHubHTTPError`) and no connection at all.
from huggingface_hub.errors import HTTPError as HubHTTPError
from transformers import HfArgumentParser

from .settings import TEXT_MEMORIES

if TYPE_CHECKING:
    from .pipeline import ScriptArguments

logger = logging.getLogger("hf_metaprompt")

# Bad input and unreachable or missing repositories: one line and exit code 2, not a traceback.
USER_ERRORS = (ValueError, TypeError, KeyError, OSError, HubHTTPError)


@dataclass
class EvalArguments:
    """`eval` options beyond the pipeline's `ScriptArguments` (which give the task, data and conditions)."""

    batch_size: int = field(default=32, metadata={"help": "Tasks per evaluation batch."})
    seed: int = field(default=0, metadata={"help": "Seed of the subsets drawn (the embedded default's seed)."})
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where to write eval_results.json and the plot. Default: eval/NAME in the working folder, NAME "
            "the checkpoint's folder or repository name."
        },
    )
    split: str = field(
        default="test",
        metadata={
            "help": "Held-out split to score (at most --max_eval_samples tasks): compare recipes on validation, "
            "report test.",
            "choices": ["test", "validation"],
        },
    )
    text_memory: str | None = field(
        default=None,
        metadata={
            "help": "How the checkpoint holds several texts (--texts_absorbed > 1): 'shared' or 'per_text' (see "
            "MetaDistillConfig). Default: as its metaprompt_config.json records.",
            "choices": list(TEXT_MEMORIES),
        },
    )


@dataclass
class AbsorbArguments:
    text: Path = field(metadata={"help": "File holding the text to absorb."})
    ask: list[str] = field(
        metadata={
            "help": 'Question(s) to ask; repeatable. "\\n" is a line break, as in "Q: Who is ...?\\nA:" (a shell '
            "passes the backslash on).",
            "action": "extend",
        }
    )
    max_new_tokens: int | None = field(default=None, metadata={"help": "Cap on generated tokens per answer."})


@dataclass
class PushArguments:
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})


# `ScriptArguments` fields that only `train` reads: `eval` rejects them rather than ignore them.
TRAINING_ONLY = (
    "model_name_or_path",
    "train_split",
    "max_train_samples",
    "init_from",
    "skip_training",
    "base_model_id",
    "label_free",
)


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, HfArgumentParser]]:
    """The top-level parser and one `HfArgumentParser` per subcommand, built from the dataclasses they fill."""
    from .pipeline import ScriptArguments

    parser = argparse.ArgumentParser(
        prog="hf-metaprompt",
        description="Meta-trained models that learn a text from one gradient step.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=HfArgumentParser)
    commands.add_parser(
        "train",
        help="meta-train, evaluate and save (same flags as examples/run_meta.py; `train --help` lists them)",
        add_help=False,
    )
    evaluate = commands.add_parser(
        "eval",
        help="evaluate a saved checkpoint under every condition",
        dataclass_types=(ScriptArguments, EvalArguments),
        allow_abbrev=False,
    )
    evaluate.add_argument("checkpoint", help="output directory of `train`, or a Hub repo id")
    absorb = commands.add_parser(
        "absorb",
        help="absorb a text with one gradient step, then ask questions",
        dataclass_types=AbsorbArguments,
        allow_abbrev=False,
    )
    absorb.add_argument("checkpoint", help="output directory of `train`, or a Hub repo id")
    push = commands.add_parser(
        "push",
        help="upload a checkpoint (adapter, settings, card, results) to the Hub",
        dataclass_types=PushArguments,
        allow_abbrev=False,
    )
    push.add_argument("checkpoint", type=Path, help="output directory of `train`")
    push.add_argument("repo_id")
    return parser, commands.choices


def parse_command(argv: list[str]) -> tuple[str, tuple]:
    """The subcommand and its filled dataclasses, positional arguments last (as a namespace); `train` keeps argv."""
    parser, commands = _build_parser()
    command = argv[0] if argv else None
    if command == "train":
        return command, (argv[1:],)
    if command not in commands:
        parser.parse_args(argv)  # usage, or the error naming the valid commands; exits
    subparser = commands[command]
    if command == "eval":
        from .pipeline import checkpoint_task, script_defaults

        # Without --task, the checkpoint's own task and that task's default job: `eval` scores what `train` scored.
        words = [word for word in argv[1:] if word not in ("-h", "--help")]
        subparser.set_defaults(task=None)  # None: not given
        namespace, _ = subparser.parse_known_args(words)
        task = namespace.task or checkpoint_task(namespace.checkpoint or "")
        defaults = script_defaults(task)
        subparser.set_defaults(**{name: value for name, value in defaults.items() if name not in TRAINING_ONLY})
    return command, tuple(subparser.parse_args_into_dataclasses(args=argv[1:]))


def _train(argv: list[str]) -> None:
    from .pipeline import main

    main(argv)


def _evaluate(script_args: ScriptArguments, args: EvalArguments, positional: argparse.Namespace) -> None:
    from .evaluation import META_CONDITIONS, format_results, save_results
    from .metaprompt_model import MetaPromptModel
    from .pipeline import ScriptArguments, evaluate_all, held_out_splits, load_task, use_cpu_threads

    defaults = ScriptArguments()
    for name in TRAINING_ONLY:
        if getattr(script_args, name) != getattr(defaults, name):
            raise ValueError(f"--{name} is a `train` flag: `eval` evaluates the checkpoint as saved.")
    use_cpu_threads(script_args.num_threads)
    # Checked before the model is loaded.
    validation, test = held_out_splits(script_args, load_task(script_args, args.seed), args.seed, args.split)
    needs_base = bool(set(script_args.conditions) - set(META_CONDITIONS))
    model = MetaPromptModel.from_pretrained(positional.checkpoint, load_base=needs_base, text_memory=args.text_memory)
    rows = evaluate_all(
        model.meta,
        model.tokenizer,
        validation,
        test,
        task=script_args.task,
        conditions=script_args.conditions,
        plain_ft_lr_grid=script_args.plain_ft_lrs,
        texts_absorbed=script_args.texts_absorbed,
        batch_size=args.batch_size,
        max_plain_ft_samples=script_args.max_plain_ft_samples,
    )
    output_dir = Path(args.output_dir or default_eval_dir(positional.checkpoint))
    json_path, _ = save_results(rows, output_dir)
    print(format_results(rows), f"Rows written to {json_path}", sep="\n\n")


def default_eval_dir(checkpoint: str) -> Path:
    """`eval/NAME` in the working folder: never inside the checkpoint (a shipped one lives in the installed
    package)."""
    return Path("eval") / Path(str(checkpoint).rstrip("/")).name


def _absorb(args: AbsorbArguments, positional: argparse.Namespace) -> None:
    from .metaprompt_model import MetaPromptModel

    if not args.text.is_file():
        raise FileNotFoundError(f"--text {args.text}: no such file")
    questions = [unescape(question) for question in args.ask]
    model = MetaPromptModel.from_pretrained(positional.checkpoint)
    model.absorb(args.text.read_text())
    for question, answer in zip(questions, model.ask(questions, max_new_tokens=args.max_new_tokens), strict=True):
        print(f"{question.strip()} {answer.strip()}")


def unescape(text: str) -> str:
    """`\\n`, `\\t` and `\\\\` as written in a shell's quotes: the line break the model was trained to read."""
    escapes = {"n": "\n", "t": "\t", "\\": "\\"}
    return re.sub(r"\\([nt\\])", lambda match: escapes[match.group(1)], text)


def _push(args: PushArguments, positional: argparse.Namespace) -> None:
    from .hub import push_checkpoint

    print(push_checkpoint(positional.checkpoint, positional.repo_id, private=args.private, token=args.token))


HANDLERS = {"train": _train, "eval": _evaluate, "absorb": _absorb, "push": _push}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from .pipeline import setup_logging

    setup_logging()
    try:
        command, arguments = parse_command(argv)
        HANDLERS[command](*arguments)
    except USER_ERRORS as error:
        print(f"hf-metaprompt: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
