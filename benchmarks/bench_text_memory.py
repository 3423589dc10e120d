"""What holding N texts costs: one shared state against one state per text (`text_memory`).

For N texts (one per task of the checkpoint's test split) absorbed together and their N questions asked, prints per
memory the median seconds to absorb, the median seconds to ask, and the megabytes the absorbed state holds. Kept apart,
a question first runs once under each text's update to choose one, and every text keeps a copy of the adapted weights.

    python benchmarks/bench_text_memory.py                                   # the tiny-world checkpoint, CPU
    python benchmarks/bench_text_memory.py --checkpoint smollm2 --task people --texts 1 4 8 --threads 1
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_absorb import median_seconds  # the scripts' folder is first on the path

from hf_metaprompt import MetaPromptModel
from hf_metaprompt.assets import smollm2_metaprompt_path, tiny_metaprompt_path
from hf_metaprompt.settings import TEXT_MEMORIES

SHIPPED = {"tiny_world": tiny_metaprompt_path, "smollm2": smollm2_metaprompt_path}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="tiny_world", help="'tiny_world', 'smollm2' or a checkpoint path")
    parser.add_argument("--task", default="tiny_world", choices=["tiny_world", "people"], help="where texts come from")
    parser.add_argument("--texts", type=int, nargs="+", default=[1, 4, 16], help="numbers of texts held (N)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", help="also write the rows here")
    return parser


def load_tasks(task: str, count: int):
    if task == "people":
        from hf_metaprompt.data.people import load_people_tasks

        return load_people_tasks()["test"].select(range(count))
    from hf_metaprompt.data.tiny_world import load_tiny_world

    return load_tiny_world()["test"].select(range(count))


def state_megabytes(model: MetaPromptModel) -> float:
    state = model.text_states if model.text_states is not None else model.fast_weights
    return 0.0 if state is None else sum(t.numel() * t.element_size() for t in state.tensors) / 2**20


def measure(model: MetaPromptModel, tasks, repeats: int) -> dict[str, float]:
    """Seconds to absorb the tasks' texts together and to ask their questions; the state's size."""
    texts, questions = list(tasks["context"]), list(tasks["query"])
    absorb_s = median_seconds(lambda: model.reset().absorb(texts), repeats)
    return {
        "absorb_s": absorb_s,
        "ask_s": median_seconds(lambda: model.ask(questions), repeats),
        "state_mb": state_megabytes(model),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = SHIPPED[args.checkpoint]() if args.checkpoint in SHIPPED else args.checkpoint
    tasks = load_tasks(args.task, max(args.texts))
    rows = []
    for memory in TEXT_MEMORIES:
        model = MetaPromptModel.from_pretrained(path, text_memory=memory)
        for count in args.texts:
            rows.append({"memory": memory, "texts": count, **measure(model, tasks.select(range(count)), args.repeats)})
        model.reset()
    print("| memory | texts | absorb (s) | ask all N (s) | state (MB) |\n|---|---:|---:|---:|---:|")
    for row in rows:
        figures = f"{row['absorb_s']:.3f} | {row['ask_s']:.3f} | {row['state_mb']:.1f}"
        print(f"| {row['memory']} | {row['texts']} | {figures} |")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=2)
    return rows


if __name__ == "__main__":
    main()
