"""Grow a meta-trained checkpoint's LoRA rank, keeping what it computes, so that training can go on with more room.

One inner step on a LoRA adapter writes each text through the adapter's rank, so the rank bounds what one step can
hold (several texts compete for it). Training a larger rank from scratch repeats every stage of the recipe; growing
keeps them: the old components stay, the new rows of A start at PEFT's default init and the new columns of B at zero,
so the grown adapter answers exactly as before without a step, and lora_alpha grows with r so that the scaling
alpha / r is unchanged. Continue training it with `run_meta.py --init_from GROWN --lora_r RANK --lora_alpha ALPHA`.

    python examples/grow_lora_rank.py hf_metaprompt/assets/smollm2_metaprompt outputs/grown64 --rank 64
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hf_metaprompt.metaprompt_model import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME

logger = logging.getLogger(__name__)

# A Trainer checkpoint's resume state belongs to the old shapes: copied, it would make the grown folder look resumable.
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "rng_state*.pth", "trainer_state.json", "training_args.bin")


def grow_lora_rank(checkpoint: str | Path, output_dir: str | Path, rank: int, seed: int = 0) -> Path:
    """Write `checkpoint` to `output_dir` with its LoRA rank grown to `rank` (same function without a step)."""
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    config = json.loads((checkpoint / ADAPTER_CONFIG_NAME).read_text())
    old_rank = config["r"]
    if rank <= old_rank:
        raise ValueError(f"--rank {rank}: the checkpoint's rank is already {old_rank}; pass a larger --rank.")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(f"{checkpoint} sets rank_pattern / alpha_pattern: growing it would change its scaling.")
    alpha = config["lora_alpha"] * rank / old_rank
    config.update(r=rank, lora_alpha=int(alpha) if alpha == int(alpha) else alpha)

    generator = torch.Generator().manual_seed(seed)
    grown = {}
    for name, weight in load_file(checkpoint / ADAPTER_WEIGHTS_NAME).items():
        if ".lora_A." in name:  # [r, in]: new rows as PEFT draws them (kaiming_uniform_ with a = sqrt(5))
            bound = 1 / math.sqrt(weight.shape[1])
            new = torch.empty(rank - old_rank, weight.shape[1]).uniform_(-bound, bound, generator=generator)
            grown[name] = torch.cat([weight, new.to(weight.dtype)])
        elif ".lora_B." in name:  # [out, r]: new columns zero, so the product is unchanged
            grown[name] = torch.cat([weight, weight.new_zeros(weight.shape[0], rank - old_rank)], dim=1)
        else:
            grown[name] = weight
    if not any(".lora_A." in name for name in grown):
        raise ValueError(f"{checkpoint / ADAPTER_WEIGHTS_NAME} holds no LoRA weights: is it a LoRA checkpoint?")

    shutil.copytree(checkpoint, output_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*TRAINING_STATE))
    (output_dir / ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_file(grown, output_dir / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
    logger.info(
        "Grew %s from rank %d to %d (lora_alpha %s) into %s",
        checkpoint,
        old_rank,
        rank,
        config["lora_alpha"],
        output_dir,
    )
    return output_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a folder save_pretrained wrote (a LoRA adapter)")
    parser.add_argument("output_dir", type=Path, help="where the grown checkpoint goes")
    parser.add_argument("--rank", type=int, required=True, help="the new LoRA rank (larger than the checkpoint's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new rows of A")
    return parser


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = build_parser().parse_args(argv)
    return grow_lora_rank(args.checkpoint, args.output_dir, args.rank, args.seed)


if __name__ == "__main__":
    main()
