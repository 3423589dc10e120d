"""Warnings from our dependencies' calls into each other, which users of hf_metaprompt can do nothing about."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_peft_wrapping() -> Iterator[None]:
    """`PeftModel.__init__` reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning per call)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
