"""A label-free meta-step against a gold-answer one, same tasks, same batch, same run (issue 36).

    python benchmarks/bench_label_free.py                       # SmolLM2-135M-Instruct, people tasks
    python benchmarks/bench_label_free.py --model tiny          # the tiny base (seconds)

Label-free rows get the prompted base's answers once, before training (`teacher_answers.add_teacher_answers`); every
step is then a gold-answer step. Prints the one-time generation, the median step time of each mode (the first step
of each run left out: warm-up) and their ratio, with the outer loss the paper uses (KL to the prompted base).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import TrainerCallback

from hf_metaprompt import MetaDistillConfig, MetaDistillTrainer
from hf_metaprompt.assets import SMOLLM2_ID, TINY_BASE_ID
from hf_metaprompt.data.people import load_people_tasks


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def run(model: str, tasks, steps: int, batch: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory() as output_dir:
        config = MetaDistillConfig(
            output_dir=output_dir,
            max_steps=steps,
            per_device_train_batch_size=batch,
            per_device_eval_batch_size=batch,
            lora_r=16,
            max_answer_length=32,
            max_context_length=128,
            max_query_length=64,
            report_to="none",
            save_strategy="no",
            logging_steps=1000,
            seed=0,
        )
        start = time.perf_counter()
        timer = StepTimer()
        trainer = MetaDistillTrainer(model=model, args=config, train_dataset=tasks, callbacks=[timer])
        setup = time.perf_counter() - start
        trainer.train()
    return setup, timer.times[1:]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(args.threads)
    model = SMOLLM2_ID if args.model == "smollm2" else TINY_BASE_ID
    tasks = load_people_tasks(num_train=args.steps * args.batch, num_validation=0, num_test=0)["train"]
    results = {}
    for mode, data in (("gold", tasks), ("label-free", tasks.remove_columns("answer"))):
        setup, times = run(model, data, args.steps, args.batch)
        results[mode] = (setup, statistics.median(times))
        print(f"{mode}: set-up {setup:.1f} s (model, checks, teacher answers), median step {results[mode][1]:.2f} s")
    gold, free = results["gold"][1], results["label-free"][1]
    made_once = results["label-free"][0] - results["gold"][0]
    print(f"label-free / gold step time: {free / gold:.2f}; teacher answers made once: {made_once:.1f} s")


if __name__ == "__main__":
    main()
