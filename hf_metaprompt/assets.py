"""Locations of the files shipped inside the package (the ``assets/`` folder next to this module)."""

from __future__ import annotations

from pathlib import Path

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
