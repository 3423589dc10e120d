"""Meta-train the tiny Llama of the tests; `test_distributed.py` runs it under `torchrun` (DDP), `accelerate launch`
(DeepSpeed) and in process (the one-process reference).

Every process writes `rank{N}.json` (its world size, the example ids of each step it ran and the `hf_metaprompt` it
imported), so the test can check that all ranks ran the code under test and together saw exactly the batches of the
reference; rank 0 also writes what was learned: `adapter.safetensors` (adapter weights and log inner LRs) and
`result.json` (per-step losses, ZeRO stage).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from conftest import _tokenizer
from safetensors.torch import save_file
from test_trainer import config, peaky_model, toy_dataset

import hf_metaprompt
from hf_metaprompt import MetaDistillTrainer, PromptTargetCollator

NUM_EXAMPLES = 32


@dataclass
class RecordingCollator:
    """Remembers the ids of the examples of every batch it builds (the ids say which process saw which task)."""

    collator: PromptTargetCollator
    batches: list[list[int]] = field(default_factory=list)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        self.batches.append([example["id"] for example in examples])
        return self.collator(examples)


def train(output_dir: Path, **overrides: Any) -> MetaDistillTrainer:
    """Train on the toy tasks with `test_trainer.config(**overrides)`; write the files the module docstring lists."""
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(bos=True)
    args = config(output_dir, **overrides)
    dataset = toy_dataset(NUM_EXAMPLES, seed=0)
    collator = RecordingCollator(PromptTargetCollator.from_config(tokenizer, args))
    trainer = MetaDistillTrainer(
        model=peaky_model(),
        args=args,
        data_collator=collator,
        train_dataset=dataset.add_column("id", list(range(len(dataset)))),
        processing_class=tokenizer,
    )
    trainer.train()

    world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    module_file = hf_metaprompt.__file__  # which checkout ran: the test compares it with the one under test
    # The dataloader may build one batch ahead of the last step: keep the batches of the steps that ran.
    seen = collator.batches[: trainer.state.global_step * args.gradient_accumulation_steps]
    rank_info = {"rank": args.process_index, "world_size": world_size, "batches": seen, "hf_metaprompt": module_file}
    (output_dir / f"rank{args.process_index}.json").write_text(json.dumps(rank_info))
    if trainer.is_world_process_zero():
        learned = {
            n: p.detach().cpu().contiguous() for n, p in trainer.meta_model.named_parameters() if p.requires_grad
        }
        save_file(learned, output_dir / "adapter.safetensors")
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        plugin = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
        result = {"losses": losses, "zero_stage": plugin.zero_stage if plugin else None}
        (output_dir / "result.json").write_text(json.dumps(result))
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--args", default="{}", help="JSON dict of `MetaDistillConfig` overrides.")
    cli = parser.parse_args()
    # The launcher picks the device: `ACCELERATE_USE_CPU=true` for DDP on CPU; DeepSpeed finds its CPU accelerator
    # itself, and `use_cpu=True` would switch it off.
    train(cli.output_dir, **{"use_cpu": False, **json.loads(cli.args)})


if __name__ == "__main__":
    main()
