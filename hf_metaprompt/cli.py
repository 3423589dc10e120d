"""`hf-metaprompt`: train, evaluate, absorb-and-ask, push.

hf-metaprompt train [run_meta.py flags]
hf-metaprompt eval CHECKPOINT --task tiny_world [--texts_absorbed 1 2 4 8 16]
hf-metaprompt absorb CHECKPOINT --text notes.txt --ask "Q: Who is the baker from Lisbon?\\nA:"
hf-metaprompt push CHECKPOINT user/my-metaprompt-model
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

# The Hub client's base HTTP error: error statuses (`HfHubHTTPError`) and no connection at all.
from huggingface_hub.errors import HTTPError as HubHTTPError

logger = logging.getLogger("hf_metaprompt")

# Bad input and unreachable or missing repositories: one line and exit code 2, not a traceback.
USER_ERRORS = (ValueError, TypeError, KeyError, OSError, HubHTTPError)


def _build_parser() -> argparse.ArgumentParser:
    from .evaluation import CONDITIONS
    from .pipeline import TASKS

    parser = argparse.ArgumentParser(
        prog="hf-metaprompt",
        description="Meta-trained models that learn a text from one gradient step.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser(
        "train",
        help="meta-train, evaluate and save (same flags as examples/run_meta.py; `train --help` lists them)",
        add_help=False,
    )

    evaluate = commands.add_parser("eval", help="evaluate a saved checkpoint under every condition")
    evaluate.add_argument("checkpoint", help="output directory of `train`, or a Hub repo id")
    evaluate.add_argument("--task", default="tiny_world", choices=TASKS)
    evaluate.add_argument("--dataset_name", help="dataset id or path (all tasks but tiny_world)")
    evaluate.add_argument("--dataset_config")
    evaluate.add_argument("--eval_split", default="validation", help="held-out split (squad/text)")
    evaluate.add_argument("--max_eval_samples", type=int, default=200)
    evaluate.add_argument("--max_validation_samples", type=int, default=100)
    evaluate.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    evaluate.add_argument(
        "--texts_absorbed", type=int, nargs="+", default=[1], help="texts absorbed one after another before asking"
    )
    evaluate.add_argument("--batch_size", type=int, default=32)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--output_dir", help="where to write eval_results.json and the plot")

    absorb = commands.add_parser("absorb", help="absorb a text with one gradient step, then ask questions")
    absorb.add_argument("checkpoint", help="output directory of `train`, or a Hub repo id")
    absorb.add_argument("--text", required=True, type=Path, help="file holding the text to absorb")
    absorb.add_argument("--ask", required=True, action="append", help="a question (repeatable)")
    absorb.add_argument("--max_new_tokens", type=int)

    push = commands.add_parser("push", help="upload a checkpoint (adapter, settings, card, results) to the Hub")
    push.add_argument("checkpoint", type=Path, help="output directory of `train`")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token")
    return parser


def _train(argv: list[str]) -> None:
    from .pipeline import main

    main(argv)


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluation import format_curve, format_table, save_results
    from .model import MetaPromptModel
    from .pipeline import ScriptArguments, evaluate_all, load_task, take_subset

    model = MetaPromptModel.from_pretrained(args.checkpoint)
    script_args = ScriptArguments(
        task=args.task, dataset_name=args.dataset_name, dataset_config=args.dataset_config, eval_split=args.eval_split
    )
    splits = load_task(script_args, args.seed)
    rows = evaluate_all(
        model.meta,
        model.tokenizer,
        take_subset(splits["validation"], args.max_validation_samples, args.seed),
        take_subset(splits["test"], args.max_eval_samples, args.seed),
        task=args.task,
        conditions=args.conditions,
        texts_absorbed=args.texts_absorbed,
        batch_size=args.batch_size,
    )
    logger.info("Results:\n%s", format_table(rows))
    if len(args.texts_absorbed) > 1:
        logger.info("Exact match against texts absorbed:\n%s", format_curve(rows))
    if args.output_dir:
        save_results(rows, args.output_dir)
    print(json.dumps(rows, indent=2))


def _absorb(args: argparse.Namespace) -> None:
    from .model import MetaPromptModel

    if not args.text.is_file():
        raise FileNotFoundError(f"--text {args.text}: no such file")
    model = MetaPromptModel.from_pretrained(args.checkpoint)
    model.absorb(args.text.read_text())
    for question, answer in zip(args.ask, model.ask(args.ask, max_new_tokens=args.max_new_tokens), strict=True):
        print(f"{question.strip()} {answer.strip()}")


def _push(args: argparse.Namespace) -> None:
    from .hub import push_checkpoint

    print(push_checkpoint(args.checkpoint, args.repo_id, private=args.private, token=args.token))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    if argv[:1] == ["train"]:
        handler, payload = _train, argv[1:]
    else:
        args = parser.parse_args(argv)
        handler, payload = {"eval": _evaluate, "absorb": _absorb, "push": _push}[args.command], args
    from .pipeline import setup_logging

    setup_logging()
    try:
        handler(payload)
    except USER_ERRORS as error:
        print(f"hf-metaprompt: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
