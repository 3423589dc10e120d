"""Cost of a meta-step against a LoRA SFT step, on a randomly initialised Llama of a real shape.

Times (median after warm-up) and peak memory of, per batch of tasks `context ⊕ query ⊕ answer`:

    (a) a LoRA SFT step on context + query + answer (forward + backward; the loss on the answer),
    (b) the teacher forward (`MetaDistillModel.teacher_logits`: adapter off, no gradients),
    (c) the second-order meta-step (`MetaDistillModel.forward` + backward: teacher, inner step, outer KL),
    (d) the same meta-step, first order,
    (e) with `--reference_inner`: the second-order meta-step with the reference inner pass (math-kernel attention,
        full logits; `memory_efficient_inner=False`), for before/after ratios from the same run.

Optimizer steps are left out: they are the same for all four and cheap for an adapter. Memory is the peak of the
bytes torch allocates during one step above the level before it (weights excluded): on CUDA from
`torch.cuda.max_memory_allocated` (which is also reported absolute, weights included), on CPU from the profiler's
allocation events.

    python benchmarks/bench_meta_step.py --preset tiny --num_threads 1
    python benchmarks/bench_meta_step.py --hidden_size 256 --intermediate_size 688 --num_hidden_layers 4 \
        --num_attention_heads 8 --num_key_value_heads 4 --vocab_size 32000 --num_tasks 4 --num_threads 2 \
        --context_lengths 256 1024 2048 --repeats 3 --warmup 1
    python benchmarks/bench_meta_step.py --preset llama-1b --dtype bfloat16 --json llama-1b.json   # on a GPU
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from peft import LoraConfig, get_peft_model
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM, HfArgumentParser, LlamaConfig

from hf_metaprompt import MetaDistillModel, MetaPromptSettings
from hf_metaprompt.tokens import IGNORE_INDEX, target_window

logger = logging.getLogger(__name__)

PRESETS = {
    "tiny": {
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 4096,
    },
    # meta-llama/Llama-3.2-1B
    "llama-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
    },
}
SHAPE_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)


@dataclass
class BenchmarkArguments:
    preset: str = field(default="tiny", metadata={"help": "Model shape.", "choices": list(PRESETS)})
    hidden_size: int | None = field(default=None, metadata={"help": "Overrides the preset."})
    intermediate_size: int | None = field(default=None, metadata={"help": "Overrides the preset."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Overrides the preset."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Overrides the preset."})
    num_key_value_heads: int | None = field(default=None, metadata={"help": "Overrides the preset."})
    vocab_size: int | None = field(default=None, metadata={"help": "Overrides the preset."})
    num_tasks: int = field(default=8, metadata={"help": "Tasks per batch (each gets its own inner step)."})
    texts_per_episode: int = field(
        default=1,
        metadata={
            "help": "Tasks per episode: their texts are absorbed one after another (or added up) before all their "
            "questions are asked. The SFT step covers the same tasks, so its ratio is to T separate SFT steps."
        },
    )
    text_composition: str = field(
        default="sequential",
        metadata={"help": "How an episode's texts combine.", "choices": ["sequential", "additive"]},
    )
    second_order_texts: int | None = field(
        default=None,
        metadata={"help": "Also time the truncated meta-step: second order through the last K texts of an episode."},
    )
    context_length: int = field(default=512, metadata={"help": "Context tokens per task."})
    context_lengths: list[int] | None = field(
        default=None,
        metadata={"help": "Several context lengths measured in one run (one table); overrides the above."},
    )
    query_length: int = field(default=48, metadata={"help": "Query tokens per task."})
    answer_length: int = field(default=16, metadata={"help": "Answer (target) tokens per task."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (all linear layers but the head)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Base weights' dtype (PEFT keeps the adapter in float32).",
            "choices": ["float32", "bfloat16"],
        },
    )
    bf16_autocast: bool = field(default=False, metadata={"help": "Forward under bf16 autocast, as `--bf16` does."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "`sdpa` or `eager`."})
    activation_checkpointing: bool = field(default=False, metadata={"help": "Checkpoint the decoder layers."})
    memory_efficient_inner: bool = field(
        default=True, metadata={"help": "The library's default inner pass; False: the reference (math kernel) path."}
    )
    reference_inner: bool = field(
        default=False, metadata={"help": "Also measure (e): the 2nd-order step on the reference inner pass."}
    )
    profile: bool = field(
        default=False, metadata={"help": "Print the profiler's top operators of the 2nd-order step (slow)."}
    )
    device: str | None = field(default=None, metadata={"help": "Default: cuda if available, else cpu."})
    num_threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads (`torch.set_num_threads`); 1 gives steadier times on a busy host."},
    )
    timer: str = field(
        default="wall",
        metadata={
            "help": "`wall` seconds, or `process`: CPU seconds of this process, which other processes on a shared "
            "machine do not inflate (CPU only; with --num_threads 1 it equals wall time on an idle machine).",
            "choices": ["wall", "process"],
        },
    )
    warmup: int = field(default=2, metadata={"help": "Untimed runs before timing."})
    repeats: int = field(default=5, metadata={"help": "Timed runs (the median is reported)."})
    seed: int = field(default=0, metadata={"help": "Seed of the weights and tokens."})
    json: str | None = field(default=None, metadata={"help": "Also write the results to this JSON file."})

    def lengths(self) -> list[int]:
        return list(self.context_lengths or [self.context_length])

    def model_config(self) -> LlamaConfig:
        shape = {**PRESETS[self.preset], **{k: getattr(self, k) for k in SHAPE_FIELDS if getattr(self, k)}}
        length = max(self.lengths()) + self.query_length + self.answer_length + 1
        return LlamaConfig(**shape, max_position_embeddings=length, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build_meta_model(args: BenchmarkArguments, device: torch.device) -> MetaDistillModel:
    """The library's `MetaDistillModel` around a random Llama with a LoRA adapter on every linear layer."""
    torch.manual_seed(args.seed)
    with device:
        base = AutoModelForCausalLM.from_config(
            args.model_config(), dtype=getattr(torch, args.dtype), attn_implementation=args.attn_implementation
        )
    peft_model = get_peft_model(
        base, LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    settings = MetaPromptSettings(
        memory_efficient_inner=args.memory_efficient_inner,
        texts_per_episode=args.texts_per_episode,
        text_composition=args.text_composition,
    )
    meta = MetaDistillModel(peft_model, settings).to(device)
    if args.activation_checkpointing:
        meta.activation_checkpointing_enable()
    return meta.train()


def make_batch(
    args: BenchmarkArguments, vocab_size: int, device: torch.device, context_length: int
) -> dict[str, torch.Tensor]:
    """Random tokens laid out like `PromptTargetCollator`'s views (equal lengths, so no padding)."""
    generator = torch.Generator().manual_seed(args.seed)

    def tokens(length: int) -> torch.Tensor:
        return torch.randint(3, vocab_size, (args.num_tasks, length), generator=generator)

    context, query, answer = tokens(context_length), tokens(args.query_length), tokens(args.answer_length)
    bos = torch.ones(args.num_tasks, 1, dtype=torch.long)
    inner = torch.cat([bos, context], 1)
    teacher = torch.cat([bos, context, query, answer], 1)
    student = torch.cat([bos, query, answer], 1)
    labels = torch.cat([torch.full((args.num_tasks, 1 + args.query_length), IGNORE_INDEX), answer], 1)
    batch = {
        "context_input_ids": inner,
        "context_attention_mask": torch.ones_like(inner),
        "teacher_input_ids": teacher,
        "teacher_attention_mask": torch.ones_like(teacher),
        "student_input_ids": student,
        "student_attention_mask": torch.ones_like(student),
        "labels": labels,
    }
    return {name: tensor.to(device) for name, tensor in batch.items()}


def benchmark_steps(
    meta: MetaDistillModel, batch: dict[str, torch.Tensor], args: BenchmarkArguments, device: torch.device
) -> dict[str, Callable[[], None]]:
    """The steps to time, each a closure over the library's real code path."""

    def forward_context() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16_autocast)

    teacher_ids, teacher_mask = batch["teacher_input_ids"], batch["teacher_attention_mask"]
    prompt_length = batch["context_input_ids"].shape[1] + args.query_length
    sft_labels = teacher_ids.masked_fill(
        torch.arange(teacher_ids.shape[1], device=device) < prompt_length, IGNORE_INDEX
    )

    def sft_step() -> None:
        with forward_context():
            loss = meta.model(input_ids=teacher_ids, attention_mask=teacher_mask, labels=sft_labels).loss
        loss.backward()

    def teacher_forward() -> None:
        with forward_context():
            meta.teacher_logits(teacher_ids, teacher_mask, target_window(batch["labels"]))

    def meta_step(
        first_order: bool, memory_efficient: bool = args.memory_efficient_inner, second_order_texts: int | None = None
    ) -> Callable[[], None]:
        def step() -> None:
            meta.settings.first_order = first_order
            meta.settings.memory_efficient_inner = memory_efficient
            meta.settings.second_order_texts = second_order_texts
            with forward_context():
                loss = meta(**batch).loss
            loss.backward()

        return step

    steps = {
        "(a) LoRA SFT step": sft_step,
        "(b) teacher forward": teacher_forward,
        "(c) meta-step, 2nd order": meta_step(first_order=False),
        "(d) meta-step, 1st order": meta_step(first_order=True),
    }
    if args.reference_inner:
        steps["(e) 2nd order, reference"] = meta_step(first_order=False, memory_efficient=False)
    if args.second_order_texts is not None:
        last = args.second_order_texts
        steps[f"(f) 2nd order, last {last} texts"] = meta_step(first_order=False, second_order_texts=last)
    return steps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    steps: dict[str, Callable[[], None]], meta: MetaDistillModel, args: BenchmarkArguments, device: torch.device
) -> dict[str, list[float]]:
    """Per-run seconds of each step, the steps taking turns (round-robin), so that a change of load on a shared
    machine hits them alike; gradients are reset before each run, as after `optimizer.zero_grad()`."""
    clock = time.process_time if args.timer == "process" else time.perf_counter
    times = {name: [] for name in steps}
    for run in range(args.warmup + args.repeats):
        for name, step in steps.items():
            meta.zero_grad(set_to_none=True)
            synchronize(device)
            start = clock()
            step()
            synchronize(device)
            if run >= args.warmup:
                times[name].append(clock() - start)
    return times


def peak_memory(step: Callable[[], None], meta: MetaDistillModel, device: torch.device) -> dict[str, int]:
    """Peak bytes allocated during one run of `step` above the level before it (and, on CUDA, absolute)."""
    meta.zero_grad(set_to_none=True)
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_bytes": peak - before, "peak_total_bytes": peak}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    return {"peak_bytes": _peak_of_allocations(profiler)}


def _peak_of_allocations(profiler: profile) -> int:
    """Largest running sum of the allocation (+) and free (-) events the profiler recorded, in time order."""
    from torch._C._profiler import _EventType  # the profiler's event tree has no public API yet

    sizes, stack = [], list(profiler.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            sizes.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    live = peak = 0
    for _, size in sorted(sizes):
        live += size
        peak = max(peak, live)
    return peak


def run_benchmark(args: BenchmarkArguments) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.timer == "process" and device.type != "cpu":
        raise ValueError("--timer process counts CPU seconds; time GPU runs with --timer wall.")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    meta = build_meta_model(args, device)
    results = {}
    for length in args.lengths():
        batch = make_batch(args, meta.model.config.vocab_size, device, length)
        results[str(length)] = rows = {}
        steps = benchmark_steps(meta, batch, args, device)
        for name, times in time_steps(steps, meta, args, device).items():
            rows[name] = {
                "median_s": statistics.median(times),
                "times_s": times,
                **peak_memory(steps[name], meta, device),
            }
            logger.info(
                "%d context tokens, %s: %.3f s, %.0f MiB",
                length,
                name,
                rows[name]["median_s"],
                rows[name]["peak_bytes"] / 2**20,
            )
        sft = rows["(a) LoRA SFT step"]
        for result in rows.values():
            result["time_ratio"] = result["median_s"] / sft["median_s"]
            result["memory_ratio"] = result["peak_bytes"] / sft["peak_bytes"]
        if args.profile:
            inner = "memory-efficient" if args.memory_efficient_inner else "reference"
            print(f"Second-order meta-step ({inner} inner pass), {length} context tokens:")
            print(profile_table(steps["(c) meta-step, 2nd order"], meta, batch["context_input_ids"].shape[1]))
    return {
        "arguments": asdict(args),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "model": {k: getattr(meta.model.config, k) for k in SHAPE_FIELDS},
        "num_parameters": sum(p.numel() for p in meta.model.parameters()),
        "results": results,
    }


def profile_table(step: Callable[[], None], meta: MetaDistillModel, context_tokens: int, rows: int = 12) -> str:
    """Where one run of `step` spends its operator time and allocates memory: ops on `[.., L, L]` attention
    matrices, ops on `[.., vocab]` logits, the rest; then the top operators by input shapes."""
    meta.zero_grad(set_to_none=True)
    with profile(
        activities=[ProfilerActivity.CPU, *_cuda_activity()], profile_memory=True, record_shapes=True
    ) as prof:
        step()
    vocab, square = meta.model.config.vocab_size, {(context_tokens, context_tokens), (context_tokens + 1,) * 2}
    averages = prof.key_averages(group_by_input_shape=True)
    totals = {"attention [.., L, L]": [0.0, 0], "vocabulary [.., V]": [0.0, 0], "rest": [0.0, 0]}
    for event in averages:
        shapes = [tuple(shape) for shape in event.input_shapes if shape]
        if any(len(shape) >= 2 and shape[-2:] in square for shape in shapes):
            kind = "attention [.., L, L]"
        elif any(shape[-1] == vocab and shape[0] != vocab for shape in shapes):
            kind = "vocabulary [.., V]"
        else:
            kind = "rest"
        totals[kind][0] += event.self_cpu_time_total / 1e6
        totals[kind][1] += max(event.self_cpu_memory_usage, 0)
    time_total, bytes_total = sum(t for t, _ in totals.values()), sum(b for _, b in totals.values())
    lines = [f"{'ops on':<22} {'self time':>10} {'share':>6} {'allocated':>11} {'share':>6}"]
    for kind, (seconds, allocated) in totals.items():
        lines.append(
            f"{kind:<22} {seconds:>9.2f}s {seconds / time_total:>6.0%} {allocated / 2**30:>8.2f}GiB "
            f"{allocated / bytes_total:>6.0%}"
        )
    top = averages.table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=36, max_shapes_column_width=60
    )
    return "\n".join(lines) + "\n" + top


def _cuda_activity() -> list[ProfilerActivity]:
    return [ProfilerActivity.CUDA] if torch.cuda.is_available() else []


def format_table(report: dict) -> str:
    args, results = report["arguments"], report["results"]
    cuda = any("peak_total_bytes" in row for rows in results.values() for row in rows.values())
    inner = "memory-efficient" if args["memory_efficient_inner"] else "reference (math kernel, full logits)"
    header = (
        f"{report['device']} ({report['torch_threads']} threads), {report['num_parameters'] / 1e6:.1f}M parameters "
        f"{report['model']}, {args['dtype']}{' + bf16 autocast' if args['bf16_autocast'] else ''}, LoRA r="
        f"{args['lora_r']}, {args['num_tasks']} tasks x (context + {args['query_length']} query + "
        f"{args['answer_length']} answer) tokens in episodes of {args.get('texts_per_episode', 1)} "
        f"({args.get('text_composition', 'sequential')}), {inner} inner pass; median of {args['repeats']} runs "
        f"({args['timer']} time)"
    )
    columns = f"{'context':>7}  {'step':<26} {'time (s)':>10} {'x SFT':>7} {'peak mem (MiB)':>15} {'x SFT':>7}"
    lines = [header, "", columns + (f" {'total (GiB)':>12}" if cuda else ""), "-" * (len(columns) + 13 * cuda)]
    for length, rows in results.items():
        for name, result in rows.items():
            line = (
                f"{length:>7}  {name:<26} {result['median_s']:>10.4f} {result['time_ratio']:>7.2f} "
                f"{result['peak_bytes'] / 2**20:>15.1f} {result['memory_ratio']:>7.2f}"
            )
            lines.append(line + (f" {result['peak_total_bytes'] / 2**30:>12.2f}" if cuda else ""))
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses()
    report = run_benchmark(args)
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
