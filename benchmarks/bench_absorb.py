"""Absorb latency, and when absorbing a text beats keeping it in the prompt.

For one text and N questions about it, compares
- absorb: one `MetaPromptModel.absorb(text)` (the inner step), then N questions asked *without* the text;
- prompted: the base model asked the same N questions *with* the text in front of each one,
all batched, greedy, same generation budget. Prints medians over repeats and the smallest N from which absorbing is
cheaper (the crossover), or says that none was found.

    python benchmarks/bench_absorb.py                              # the shipped tiny-world checkpoint, CPU
    python benchmarks/bench_absorb.py --checkpoint outputs/tiny-world --facts 16 --json absorb.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from hf_metaprompt import MetaPromptModel
from hf_metaprompt.assets import tiny_metaprompt_path
from hf_metaprompt.data.tiny_world import load_tiny_world
from hf_metaprompt.tokens import pad_rows, pad_token_id, special_prefix_ids


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def answer(model: MetaPromptModel, queries: list[str], max_new_tokens: int, text: str | None = None) -> torch.Tensor:
    """Fixed-length greedy answers: with `text` in every prompt (base model, adapter off), or without it (with
    whatever the model absorbed)."""
    tokenizer = model.tokenizer
    context = [] if text is None else tokenizer(text + model.settings.context_separator, add_special_tokens=False)
    context = context["input_ids"] if text is not None else []
    rows = [
        special_prefix_ids(tokenizer) + context + tokenizer(q, add_special_tokens=False)["input_ids"] for q in queries
    ]
    input_ids, mask = pad_rows(rows, pad_token_id(tokenizer), left=True)
    kwargs = dict(
        input_ids=input_ids.to(model.device),
        attention_mask=mask.to(model.device),
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad_token_id(tokenizer),
    )
    if text is None:
        return model.generate(**kwargs)
    with model.meta.teacher_mode() as base:
        return base.generate(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags (the documentation test reads them from here)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="meta-trained checkpoint (default: shipped tiny world)")
    parser.add_argument("--facts", type=int, default=8, help="facts in the absorbed text (its length)")
    parser.add_argument("--max_new_tokens", type=int, default=8)
    parser.add_argument("--questions", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # The base answers the prompted side: loaded too when the checkpoint replaced its weights (`inner_params="all"`).
    model = MetaPromptModel.from_pretrained(args.checkpoint or tiny_metaprompt_path(), load_base=True)
    tasks = load_tiny_world(num_train=1, num_validation=1, num_test=max(args.questions), facts_per_context=args.facts)
    text = tasks["test"][0]["context"]
    queries = list(tasks["test"]["query"])
    text_tokens = len(model.tokenizer(text, add_special_tokens=False)["input_ids"])

    absorb_s = median_seconds(lambda: model.reset().absorb(text), args.repeats)
    rows = []
    for n in args.questions:
        asked = queries[:n]
        model.reset().absorb(text)
        ask_s = median_seconds(lambda q=asked: answer(model, q, args.max_new_tokens), args.repeats)
        prompted_s = median_seconds(lambda q=asked: answer(model, q, args.max_new_tokens, text), args.repeats)
        rows.append({"questions": n, "absorb_then_ask_s": absorb_s + ask_s, "prompted_s": prompted_s})

    crossover = next((r["questions"] for r in rows if r["absorb_then_ask_s"] <= r["prompted_s"]), None)
    print(
        f"text: {args.facts} facts, {text_tokens} tokens; absorb (one inner step): {absorb_s * 1000:.1f} ms (median)"
    )
    print(f"{'N questions':>12} {'absorb + ask (ms)':>18} {'prompted (ms)':>14} {'ratio':>7}")
    for r in rows:
        absorbed, prompted = r["absorb_then_ask_s"] * 1000, r["prompted_s"] * 1000
        print(f"{r['questions']:>12} {absorbed:>18.1f} {prompted:>14.1f} {absorbed / prompted:>7.2f}")
    print(
        f"crossover: absorbing is cheaper from N = {crossover}"
        if crossover
        else f"crossover: none up to N = {max(args.questions)} (prompting stays cheaper at this size)"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"absorb_s": absorb_s, "text_tokens": text_tokens, "rows": rows, "crossover": crossover}, handle)


if __name__ == "__main__":
    main()
