"""The inner-loop settings a meta-trained checkpoint cannot be used without (`metaprompt_config.json`)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

METAPROMPT_CONFIG_NAME = "metaprompt_config.json"
FORMAT_VERSION = 1

INNER_PARAMS = ("lora", "base", "all")
DISTILL_LOSSES = ("forward_kl", "reverse_kl", "jsd")
DISTILL_ON = ("answer", "query_and_answer")
TEXT_COMPOSITIONS = ("sequential", "additive")


@dataclass
class MetaPromptSettings:
    """How to absorb a text: the same inner step(s) the checkpoint was meta-trained with.

    `inner_lrs` maps each adapted module to its (learned) inner learning rate; it is filled when saving, together
    with `log_inner_lrs`, the exact parameter values (what a reload uses, so that it reproduces outputs bit for bit).
    `memory_efficient_inner` picks how the inner pass is computed (see `MetaDistillConfig`), not what it computes.
    """

    inner_params: str = "lora"
    inner_lr: float = 1e-2
    learn_inner_lr: bool = True
    min_inner_lr: float = 1e-4
    max_inner_lr: float = 1e-1
    inner_steps: int = 1
    texts_per_episode: int = 1
    vary_texts_per_episode: bool = False
    text_composition: str = "sequential"
    first_order: bool = False
    memory_efficient_inner: bool = True
    distill_loss: str = "forward_kl"
    jsd_beta: float = 0.5
    distill_temperature: float = 1.0
    distill_on: str = "answer"
    max_context_length: int = 512
    max_query_length: int = 128
    max_answer_length: int = 64
    context_separator: str = "\n"
    base_model: str | None = None
    inner_lrs: dict[str, float] = field(default_factory=dict)
    log_inner_lrs: dict[str, float] = field(default_factory=dict)

    @property
    def uses_adapter(self) -> bool:
        """A PEFT adapter is the meta-learned part (`lora`, `base`); with `all` the model's own weights are."""
        return self.inner_params != "all"

    def __post_init__(self) -> None:
        """A wrong value here would change what `absorb` does without any error: refuse it."""
        if self.inner_params not in INNER_PARAMS:
            raise ValueError(f"`inner_params` must be one of {INNER_PARAMS}, got {self.inner_params!r}.")
        if self.text_composition not in TEXT_COMPOSITIONS:
            raise ValueError(f"`text_composition` must be one of {TEXT_COMPOSITIONS}, got {self.text_composition!r}.")
        for name in (
            "inner_steps",
            "texts_per_episode",
            "max_context_length",
            "max_query_length",
            "max_answer_length",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        rates = {name: getattr(self, name) for name in ("inner_lr", "min_inner_lr", "max_inner_lr")}
        rates.update({f"inner_lrs[{key!r}]": value for key, value in self.inner_lrs.items()})
        for name, value in rates.items():
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"`{name}` must be a finite positive number, got {value!r}.")
        for key, value in self.log_inner_lrs.items():
            if not _is_number(value) or not math.isfinite(value):
                raise ValueError(f"`log_inner_lrs[{key!r}]` must be a finite number, got {value!r}.")
        if not self.min_inner_lr <= self.max_inner_lr:
            raise ValueError(f"min_inner_lr={self.min_inner_lr} > max_inner_lr={self.max_inner_lr}.")

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / METAPROMPT_CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"format_version": FORMAT_VERSION, **asdict(self)}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> MetaPromptSettings:
        path = Path(directory) / METAPROMPT_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: this directory was not written by MetaDistillTrainer/MetaPromptModel."
            )
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
            raise ValueError(f"{path} is not a valid {METAPROMPT_CONFIG_NAME}: {error}") from error

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetaPromptSettings:
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}.")
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{METAPROMPT_CONFIG_NAME} has format_version {version}; this hf_metaprompt reads up to "
                f"{FORMAT_VERSION}. Upgrade hf_metaprompt."
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown keys in {METAPROMPT_CONFIG_NAME}: {unknown}.")
        return cls(**data)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
