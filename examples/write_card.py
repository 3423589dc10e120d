"""Write the model card of a saved checkpoint from the evaluations run on it (`hf-metaprompt eval --output_dir`).

A checkpoint picked among a run's `checkpoint-N` folders, and scored afterwards on several task sets, has no card that
says so: this writes one, with the rows of every `eval_results.json` given, the command that made the checkpoint and a
usage example.

    python examples/write_card.py CHECKPOINT --repo_id you/name --results outputs/eval/a outputs/eval/b \
        --command "$(cat command.txt)" --example_context "..." --example_question "Q: ...?\nA:"
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from hf_metaprompt.hub import DEFAULT_TAGS, RESULTS_FILE_NAME, write_checkpoint_card
from hf_metaprompt.settings import MetaPromptSettings
from hf_metaprompt.trainer import MetaDistillTrainer

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="the checkpoint folder (its README.md is replaced)")
    parser.add_argument("--repo_id", required=True, help="the name the card gives the checkpoint (a Hub repo id)")
    parser.add_argument("--load_path", help="what the card's usage code loads (default: the repo id)")
    parser.add_argument("--results", type=Path, nargs="+", default=[], help=f"folders holding {RESULTS_FILE_NAME}")
    parser.add_argument("--command", help="the commands that made the checkpoint")
    parser.add_argument("--example_context", required=True, help="the usage example's text to absorb")
    parser.add_argument("--example_question", required=True, help="the usage example's question")
    return parser


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = build_parser().parse_args(argv)
    rows = []
    for folder in args.results:
        rows += json.loads((folder / RESULTS_FILE_NAME).read_text())
    card = write_checkpoint_card(
        args.checkpoint,
        MetaPromptSettings.load(args.checkpoint),
        repo_id=args.repo_id,
        load_path=args.load_path,
        eval_results=rows,
        command=args.command,
        tags=[tag for tag in MetaDistillTrainer._tag_names if tag not in DEFAULT_TAGS],
        trainer_name=MetaDistillTrainer._name,
        paper=MetaDistillTrainer._paper,
        example_context=args.example_context,
        example_question=args.example_question.replace("\\n", "\n"),
    )
    logger.info("Wrote %s (%d result rows)", card, len(rows))
    return card


if __name__ == "__main__":
    main()
