"""Seconds and peak memory of one meta-step of a `run_meta.py` recipe, on the recipe's own batches.

Builds the job's `MetaDistillTrainer` from the same flags (the default job when none are given), draws batches from its
training dataloader, and times `forward` + `backward` of the meta-step on each (no optimizer step: it is the same for
every recipe and cheap for an adapter). The first step is a warm-up. Prints the median and every step, and the
process's peak RSS. Compare recipes in one session: this machine's speed varies from hour to hour.

    python benchmarks/bench_recipe_step.py                                   # the main job's step
    python benchmarks/bench_recipe_step.py -- --lora_last_layers 15          # a variant (run_meta.py flags)
    python benchmarks/bench_recipe_step.py --steps 5 -- --texts_per_episode 4
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_metaprompt import MetaDistillTrainer
from hf_metaprompt.assets import base_location
from hf_metaprompt.pipeline import base_model, load_task, parse_args, take_subset

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps, after one warm-up step")
    parser.add_argument("--num_threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("flags", nargs="*", help="run_meta.py flags, after --")
    return parser


def time_steps(flags: list[str], steps: int) -> dict:
    script_args, config = parse_args(["--output_dir", "bench-recipe-step", "--report_to", "none", *flags])
    torch.manual_seed(config.seed)
    per_step = config.per_device_train_batch_size
    train = take_subset(load_task(script_args, config.seed)["train"], per_step * (steps + 1), config.seed)
    path = base_location(base_model(script_args))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, **(config.model_init_kwargs or {}))
    trainer = MetaDistillTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer)
    meta = trainer.meta_model.train()
    seconds = []
    for batch in trainer.get_train_dataloader():
        start = time.perf_counter()
        meta(**batch).loss.backward()
        seconds.append(time.perf_counter() - start)
        meta.zero_grad(set_to_none=True)
    timed = seconds[1:]  # the first step warms up the allocator and the kernels
    return {
        "flags": flags,
        "batch_size": per_step,
        "median_s": statistics.median(timed),
        "steps_s": timed,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    figures = time_steps(args.flags, args.steps)
    logger.info(
        "Meta-step at batch %d: median %.2f s (%s); peak RSS %.2f GiB",
        figures["batch_size"],
        figures["median_s"],
        ", ".join(f"{s:.2f}" for s in figures["steps_s"]),
        figures["peak_rss_gib"],
    )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(figures, file, indent=2)


if __name__ == "__main__":
    main()
