"""Pretrain the tiny base LM shipped in ``hf_metaprompt/assets/tiny_base/``.

The base must read facts from its prompt (prompted, it answers questions about people it never saw) and must not
know the held-out people (unprompted, it cannot answer): the gap between the two is what meta-training then closes
with one gradient step on the context. It is trained on the TRAIN people of the tiny world only, on documents
``context + "\\n" + question + answer (+ "\\n" + question + answer ...)`` and on the facts alone, tokenized segment
by segment exactly as the library's collator does (``bos + tok(context + "\\n") + tok(query) + tok(answer)``).

Run from the repository root with the package installed (``pip install -e .``); the commands that made the
shipped model, and what it measures, are in its README.md:

    python examples/pretrain_tiny.py --output_dir /tmp/tiny_base --num_threads 2
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import random
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, get_cosine_schedule_with_warmup

from hf_metaprompt.data.tiny_world import PretrainingDocument, iter_pretraining_documents, load_tiny_world
from hf_metaprompt.tokens import pad_rows

logger = logging.getLogger("pretrain_tiny")

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent.parent / "hf_metaprompt" / "assets" / "tiny_base"
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
# Models whose float32 weights exceed this are stored in bfloat16, to keep the package small.
MAX_FLOAT32_BYTES = 8 * 2**20
POOL_BATCHES = 8  # batches per pool of length-sorted documents


def build_parser() -> argparse.ArgumentParser:
    """The script's flags (the documentation test reads them from here)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument(
        "--init_from",
        type=Path,
        default=None,
        help="Continue training a model saved by this script, with its tokenizer; the size arguments are then unused.",
    )
    parser.add_argument(
        "--measure_only",
        action="store_true",
        help="Only re-measure the model of --init_from and rewrite its card's table (no training, weights untouched).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the world (load_tiny_world) and of training.")
    parser.add_argument(
        "--data_stream",
        type=int,
        default=0,
        help="Which stream of training documents to draw (same people; give a stage that continues another "
        "a new stream so that it sees new documents).",
    )
    parser.add_argument("--facts_per_context", type=int, default=8, help="Most facts in one pretraining context.")
    parser.add_argument(
        "--min_facts_per_context",
        type=int,
        default=1,
        help="Fewest facts in one pretraining context once the curriculum has ramped up.",
    )
    parser.add_argument(
        "--eval_facts",
        type=int,
        nargs="+",
        default=[8, 16],
        help="Facts per context of the final measurement table (8 = one text of the tiny world, 16 = two).",
    )
    parser.add_argument(
        "--curriculum_steps",
        type=int,
        default=600,
        help="Each context holds U[1, k_max] facts, k_max growing from 1 to --facts_per_context over these steps.",
    )
    parser.add_argument("--questions_per_context", type=int, default=4, help="Questions appended to each context.")
    parser.add_argument(
        "--fresh_descriptions",
        action="store_true",
        help="New random descriptions for the people of every document, so that none can be memorised (long runs "
        "otherwise learn the train people by heart and stop reading forward answers from the context).",
    )
    parser.add_argument("--facts_only_fraction", type=float, default=0.1, help="Share of documents without questions.")
    parser.add_argument(
        "--answer_loss_weight", type=float, default=8.0, help="Loss weight of answer tokens (others 1)."
    )
    parser.add_argument("--vocab_size", type=int, default=1024, help="Upper bound; the world needs fewer tokens.")
    parser.add_argument("--tokenizer_documents", type=int, default=2000, help="Documents the tokenizer learns from.")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--intermediate_size", type=int, default=384)
    parser.add_argument("--num_hidden_layers", type=int, default=4)
    parser.add_argument("--num_attention_heads", type=int, default=4)
    parser.add_argument("--max_position_embeddings", type=int, default=512)
    parser.add_argument("--max_steps", type=int, default=4500)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--weight_decay", type=float, default=0.1)
    parser.add_argument("--eval_steps", type=int, default=500, help="Log validation exact match every N steps.")
    parser.add_argument("--num_eval_tasks", type=int, default=128, help="Validation tasks for the periodic check.")
    parser.add_argument("--num_threads", type=int, default=2)
    parser.add_argument(
        "--num_workers",
        type=int,
        default=0,
        help="Background processes that encode batches (the same batches for any number; worth it on a GPU).",
    )
    parser.add_argument("--device", default=None, help="Where to train (default: cuda when available, else cpu).")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.facts_only_fraction < 1.0:
        parser.error("--facts_only_fraction must be in [0, 1)")
    if args.measure_only and args.init_from is None:
        parser.error("--measure_only needs --init_from")
    if not 1 <= args.min_facts_per_context <= args.facts_per_context:
        parser.error("--min_facts_per_context must be in [1, --facts_per_context]")
    if args.data_stream < 0:
        parser.error("--data_stream must be 0 or more")
    if args.hidden_size % args.num_attention_heads:
        parser.error("--hidden_size must be a multiple of --num_attention_heads")
    return args


def train_tokenizer(documents: list[PretrainingDocument], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE learned on the world's text, segment by segment as the collator tokenizes.

    Byte level keeps any text encodable; the prefix space makes a segment's first word the same token as anywhere
    else (as Llama's tokenizer does), so a name at the start of a context is the same token the answer uses.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    segments = (
        segment
        for document in documents
        for segment in (document.context + "\n", *itertools.chain.from_iterable(document.questions))
    )
    tokenizer.train_from_iterator(segments, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def encode_documents(
    tokenizer: PreTrainedTokenizerFast, documents: list[PretrainingDocument], answer_loss_weight: float
) -> list[tuple[list[int], list[float]]]:
    """Token ids and per-token loss weights of each document; without questions it is ``bos + tok(context) + eos``.

    All segments of all documents go through the Rust tokenizer in one call: the same ids as one call per segment,
    without the Python wrapper's per-call cost (on a GPU the data, not the model, bounds a step).
    """
    segments = []
    for document in documents:
        if not document.questions:
            segments.append(document.context)
            continue
        segments.append(document.context + "\n")
        for index, (query, answer) in enumerate(document.questions):
            # tok(answer + "\n") == tok(answer) + tok-of-newline: the newline is its own pre-token.
            last = index == len(document.questions) - 1
            segments += [query, answer if last else answer + "\n"]
    tokens = (
        encoding.ids for encoding in tokenizer.backend_tokenizer.encode_batch(segments, add_special_tokens=False)
    )
    encoded = []
    for document in documents:
        if not document.questions:
            ids = [tokenizer.bos_token_id, *next(tokens), tokenizer.eos_token_id]
            encoded.append((ids, [1.0] * len(ids)))
            continue
        ids = [tokenizer.bos_token_id, *next(tokens)]
        weights = [1.0] * len(ids)
        for index in range(len(document.questions)):
            query_ids, answer_ids = next(tokens), next(tokens)
            if index == len(document.questions) - 1:
                answer_ids = [*answer_ids, tokenizer.eos_token_id]
            ids += query_ids + answer_ids
            weights += [1.0] * len(query_ids) + [answer_loss_weight] * len(answer_ids)
        encoded.append((ids, weights))
    return encoded


class PretrainingBatches(torch.utils.data.IterableDataset):
    """Endless pools of right-padded batches ``(input_ids, loss_weights)`` from the train people.

    With the curriculum, contexts start with a single fact and grow: copying from the context is found fast with one
    fact. Picking the fact the question asks about among distractors is a long plateau (answers blend the facts, at
    chance): two of five GPU runs of 128 documents of 2-4 facts per step left it, after 7,000 and 10,000 steps; no
    CPU run did (the base's card has the curves). Documents are grouped by length (within a pool of several batches,
    batch order shuffled) so that little compute goes to padding. No attention mask is needed: with causal attention
    and padding on the right, real tokens never see padding, and padding carries zero loss weight.

    Under a `DataLoader` with W workers, worker w encodes pools w, w + W, ... and only draws the others (drawing is
    cheap, encoding is not), so the stream of batches is the same for any number of workers.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, args: argparse.Namespace) -> None:
        self.tokenizer = tokenizer
        self.args = args

    def __iter__(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        args = self.args
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        rng = random.Random(
            f"pretrain_tiny/{args.seed}/batches" + (f"/{args.data_stream}" if args.data_stream else "")
        )
        streams = {
            k: iter_pretraining_documents(
                args.seed, k, args.questions_per_context, args.fresh_descriptions, args.data_stream
            )
            for k in range(1, args.facts_per_context + 1)
        }
        for pool_index in itertools.count():
            ramp = min(1.0, pool_index * POOL_BATCHES / args.curriculum_steps) if args.curriculum_steps else 1.0
            k_max = 1 + round(ramp * (args.facts_per_context - 1))
            k_min = min(args.min_facts_per_context, k_max)
            documents = []
            for _ in range(POOL_BATCHES * args.batch_size):
                document = next(streams[rng.randint(k_min, k_max)])
                if rng.random() < args.facts_only_fraction:
                    document = PretrainingDocument(context=document.context, questions=[])
                documents.append(document)
            order = list(range(POOL_BATCHES))
            rng.shuffle(order)
            if pool_index % num_workers != worker_id:
                continue
            encoded = encode_documents(self.tokenizer, documents, args.answer_loss_weight)
            encoded.sort(key=lambda pair: len(pair[0]))
            yield [self._pad(encoded[index * args.batch_size : (index + 1) * args.batch_size]) for index in order]

    def _pad(self, batch: list[tuple[list[int], list[float]]]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, _ = pad_rows([ids for ids, _ in batch], self.tokenizer.pad_token_id, left=False)
        weights = torch.zeros(input_ids.shape)
        for row, (ids, token_weights) in enumerate(batch):
            weights[row, : len(ids)] = torch.tensor(token_weights)
        return input_ids, weights


def iter_batches(
    tokenizer: PreTrainedTokenizerFast, args: argparse.Namespace
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of `PretrainingBatches`, encoded by ``args.num_workers`` background processes (0: in this one)."""
    pools = torch.utils.data.DataLoader(
        PretrainingBatches(tokenizer, args), batch_size=None, num_workers=args.num_workers
    )
    for pool in pools:
        yield from pool


def weighted_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged with per-target-token weights (0 on padding)."""
    token_loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten(), reduction="none")
    target_weights = weights[:, 1:].flatten()
    return (token_loss * target_weights).sum() / target_weights.sum()


@torch.no_grad()
def exact_match(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    tasks: datasets.Dataset,
    prompted: bool,
    batch_size: int = 64,
    max_new_tokens: int = 8,
) -> dict[str, float]:
    """Greedy exact match per direction; the prediction ends at eos or at the first newline.

    Strict (whitespace-stripped string equality), unlike the SQuAD-normalised `hf_metaprompt.metrics.exact_match`:
    the numbers recorded for the shipped base were measured this way.
    """
    newline_id = tokenizer(" \n", add_special_tokens=False)["input_ids"][-1]
    stop_ids = {tokenizer.eos_token_id, newline_id}
    model.eval()
    hits: dict[str, list[bool]] = {}
    for start in range(0, len(tasks), batch_size):
        batch = tasks[start : start + batch_size]
        prompts = [
            [tokenizer.bos_token_id]
            + (tokenizer(context + "\n", add_special_tokens=False)["input_ids"] if prompted else [])
            + tokenizer(query, add_special_tokens=False)["input_ids"]
            for context, query in zip(batch["context"], batch["query"], strict=True)
        ]
        # Left padding, so that every prompt ends where generation starts.
        input_ids, attention_mask = (t.to(model.device) for t in pad_rows(prompts, tokenizer.pad_token_id, left=True))
        length = input_ids.shape[1]
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(stop_ids),
        )[:, length:]
        for row, answer, direction in zip(generated.tolist(), batch["answer"], batch["direction"], strict=True):
            stop = next((i for i, token in enumerate(row) if token in stop_ids), len(row))
            prediction = tokenizer.decode(row[:stop])
            hits.setdefault(direction, []).append(prediction.strip() == answer.strip())
    model.train()
    return {direction: sum(values) / len(values) for direction, values in sorted(hits.items())}


def build_model(tokenizer: PreTrainedTokenizerFast, args: argparse.Namespace) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_attention_heads,
        max_position_embeddings=args.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def train(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, args: argparse.Namespace) -> None:
    """AdamW with warmup and cosine decay; logs validation exact match (prompted) every ``eval_steps``.

    At each evaluation the model is also saved to ``output_dir/latest`` (no card), so a run that must stop early
    leaves a usable model.
    """
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embed" not in name]
    no_decay = [p for name, p in model.named_parameters() if p.ndim < 2 or "embed" in name]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
        betas=(0.9, 0.95),
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)
    validation = {
        facts: load_tiny_world(args.seed, num_train=0, num_test=0, facts_per_context=facts)["validation"].select(
            range(args.num_eval_tasks)
        )
        for facts in args.eval_facts
    }
    model.train()
    progress = tqdm(iter_batches(tokenizer, args), total=args.max_steps, desc="pretraining")
    for step, (input_ids, weights) in enumerate(progress, start=1):
        input_ids, weights = input_ids.to(model.device), weights.to(model.device)
        logits = model(input_ids=input_ids).logits
        loss = weighted_lm_loss(logits, input_ids, weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.set_postfix(loss=f"{loss.item():.3f}")
        if step % args.eval_steps == 0 or step == args.max_steps:
            for facts, tasks in validation.items():
                scores = exact_match(model, tokenizer, tasks, prompted=True)
                logger.info(
                    "step %d loss %.4f validation prompted exact match, %d facts: %s", step, loss.item(), facts, scores
                )
            model.save_pretrained(args.output_dir / "latest")
            tokenizer.save_pretrained(args.output_dir / "latest")
        if step == args.max_steps:
            break


def write_model_card(
    output_dir: Path, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, commands: list[str], results: dict
) -> None:
    """README.md with how the model was made and what it measures, so the shipped numbers can be re-checked."""
    config = model.config
    dtype = str(model.dtype).removeprefix("torch.")
    rows = "\n".join(
        f"| {facts} | {split} | {condition} | {scores['forward']:.3f} | {scores['reversed']:.3f} |"
        for (facts, split, condition), scores in results.items()
    )
    command_lines = "\n".join(commands)
    text = f"""---
library_name: transformers
tags: [hf_metaprompt, tiny-world, synthetic]
---
# tiny_base: the embedded base model of hf_metaprompt

A {model.num_parameters() / 1e6:.2f}M-parameter `LlamaForCausalLM` ({config.num_hidden_layers} layers, hidden size
{config.hidden_size}, {config.num_attention_heads} heads, tied embeddings) with a {len(tokenizer)}-token byte-level BPE
tokenizer (`<s>` added in front by the post-processor, `</s>`, `<pad>`), stored in {dtype}.

It was trained from random init by `examples/pretrain_tiny.py` on documents about the TRAIN people of
`hf_metaprompt.data.tiny_world.load_tiny_world(seed=0)` only: a context of 1 to `--facts_per_context` facts (the
maximum growing over the first `--curriculum_steps`) followed by up to `--questions_per_context` questions of both
directions (answer tokens weighted `--answer_loss_weight` times in the loss), or the facts alone. With
`--fresh_descriptions` (see the commands below) every document gives those names new random descriptions, so that
nothing can be learned by heart and reading the context is the only way to answer. Validation and test people were
never seen, so it can answer them only when their facts are in its prompt.

## How it was made
Each command ends with its wall-clock time and where it ran (floating-point results differ between devices and
thread counts).
```
{command_lines}
```

## Greedy exact match (`load_tiny_world(seed=0, facts_per_context=F)`, first 400 tasks of each split)
Prompted = `bos + tok(context + "\\n") + tok(query)`; unprompted = `bos + tok(query)`. 8 facts are one text of the
tiny world, 16 facts two texts' worth.

| facts F | split | condition | forward | reversed |
|---|---|---|---|---|
{rows}

The unprompted numbers on `train` show how much the model memorised the people it was trained on.
"""
    (output_dir / "README.md").write_text(text)


def previous_commands(init_from: Path | None) -> list[str]:
    """The commands that made the model a run starts from, read back from its card."""
    if init_from is None:
        return []
    card = (init_from / "README.md").read_text()
    return card.split("```\n", 2)[1].split("```")[0].strip().splitlines()


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces ``args`` (`parse_args` reads it back to the same values), for the card."""
    words = ["python", "examples/pretrain_tiny.py"]
    for name, value in sorted(vars(args).items()):
        if value is None or value is False:
            continue
        words.append(f"--{name}")
        if value is not True:
            words += [str(item) for item in value] if isinstance(value, list) else [str(value)]
    return shlex.join(words)


def describe(device: torch.device, num_threads: int) -> str:
    if device.type == "cuda":
        return f"one {torch.cuda.get_device_name(device)}"
    return f"{num_threads} CPU thread{'s' if num_threads > 1 else ''}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.num_threads)
    if args.num_workers:
        # The workers are forked after the tokenizer has run here; they encode their pools on one thread each.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.monotonic()

    if args.init_from is None:
        documents = iter_pretraining_documents(args.seed, args.facts_per_context, args.questions_per_context)
        tokenizer = train_tokenizer(list(itertools.islice(documents, args.tokenizer_documents)), args.vocab_size)
        tokenizer.model_max_length = args.max_position_embeddings
        model = build_model(tokenizer, args)
    else:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(args.init_from)
        model = LlamaForCausalLM.from_pretrained(args.init_from, dtype=torch.float32)
    model.to(device)
    num_parameters = model.num_parameters()
    logger.info("tokenizer: %d tokens; model: %.2fM parameters", len(tokenizer), num_parameters / 1e6)

    if not args.measure_only:
        train(model, tokenizer, args)
    minutes = (time.monotonic() - started) / 60
    logger.info("training took %.1f minutes", minutes)

    # Measure what is shipped: cast first when the float32 weights would be too big.
    if num_parameters * 4 > MAX_FLOAT32_BYTES:
        model = model.to(torch.bfloat16)
    results = {}
    for facts in args.eval_facts:
        splits = load_tiny_world(args.seed, num_train=400, facts_per_context=facts)
        for split in ("test", "validation", "train"):
            for condition, prompted in (("prompted", True), ("unprompted", False)):
                scores = exact_match(model, tokenizer, splits[split], prompted=prompted)
                results[(facts, split, condition)] = scores
                logger.info("%d facts, %s %s exact match: %s", facts, split, condition, scores)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    commands = previous_commands(args.init_from)
    if not args.measure_only:
        model.save_pretrained(args.output_dir)
        tokenizer.save_pretrained(args.output_dir)
        commands.append(f"{command_line(args)}  # {minutes:.0f} min on {describe(device, args.num_threads)}")
    write_model_card(args.output_dir, model, tokenizer, commands, results)
    logger.info("saved to %s", args.output_dir)


if __name__ == "__main__":
    main()
