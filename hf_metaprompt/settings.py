"""The inner-loop settings a meta-trained checkpoint cannot be used without (`metaprompt_config.json`)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

METAPROMPT_CONFIG_NAME = "metaprompt_config.json"
FORMAT_VERSION = 1

INNER_PARAMS = ("lora", "all")
DISTILL_LOSSES = ("forward_kl", "reverse_kl", "jsd")
DISTILL_ON = ("answer", "query_and_answer")


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
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetaPromptSettings:
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
