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
TEXT_MEMORIES = ("shared", "per_text")
REVERSAL_UNITS = ("token", "entity")


def episode_lengths(texts_per_episode: int, vary: bool) -> list[int]:
    """The episode lengths meta-training draws from: `texts_per_episode` alone, or with `vary` the powers of two
    dividing it (so that each divides the batch); the model card describes a checkpoint by the same list."""
    if not vary:
        return [texts_per_episode]
    return [2**k for k in range(texts_per_episode.bit_length()) if texts_per_episode % 2**k == 0]


@dataclass
class MetaPromptFields:
    """The inner-loop, distillation and length fields, declared once.

    `MetaPromptSettings` saves them with a checkpoint (`metaprompt_config.json`), `MetaDistillConfig` takes them as
    training arguments (`to_settings()` copies every one of them) and `PromptTargetCollator.from_settings` reads the
    ones that shape its views. A new field added here reaches all three.
    """

    inner_params: str = field(
        default="lora", metadata={"help": "Parameters the inner step updates.", "choices": list(INNER_PARAMS)}
    )
    inner_lr: float = field(default=1e-2, metadata={"help": "Initial learning rate of the inner (absorbing) step."})
    learn_inner_lr: bool = field(
        default=True, metadata={"help": "Meta-learn one inner learning rate per adapted module (log space)."}
    )
    min_inner_lr: float = field(default=1e-4, metadata={"help": "Lower bound of learned inner LRs."})
    max_inner_lr: float = field(default=1e-1, metadata={"help": "Upper bound of learned inner LRs."})
    inner_steps: int = field(default=1, metadata={"help": "Number of inner gradient steps on the context."})
    texts_per_episode: int = field(
        default=1,
        metadata={
            "help": "Texts absorbed one after another per episode (consecutive tasks of a batch); the questions of "
            "all of them are asked after the last. The batch size must be a multiple of it."
        },
    )
    vary_texts_per_episode: bool = field(
        default=False,
        metadata={"help": "Draw each batch's episode length from the powers of two dividing texts_per_episode."},
    )
    text_composition: str = field(
        default="sequential",
        metadata={
            "help": "How several texts combine: 'sequential' (each step starts where the previous text left the "
            "weights) or 'additive' (updates computed from the meta-trained weights add up; needs inner_steps=1).",
            "choices": list(TEXT_COMPOSITIONS),
        },
    )
    text_memory: str = field(
        default="shared",
        metadata={
            "help": "How `absorb` and evaluation hold several texts: 'shared' (one state; texts combine as "
            "text_composition says) or 'per_text' (each text's update kept apart; each query answered with the "
            "update that raises its tokens most). Read when absorbing, never by meta-training.",
            "choices": list(TEXT_MEMORIES),
        },
    )
    reversed_context_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of a second inner loss: next-token loss on each context read backwards (tokens reversed, "
            "a leading BOS kept first), which predicts each token from what follows it. 0 = the paper's loss alone."
        },
    )
    reversed_context_unit: str = field(
        default="token",
        metadata={
            "help": "What reversed_context_weight reads backwards: 'token' (every token) or 'entity' (the words, each "
            "run of capitalised words such as a name kept in reading order, so a name follows its description).",
            "choices": list(REVERSAL_UNITS),
        },
    )
    first_order: bool = field(
        default=False, metadata={"help": "Detach the inner gradient (first-order MAML): cheaper, usually worse."}
    )
    second_order_texts: int | None = field(
        default=None,
        metadata={
            "help": "Truncated meta-gradient for sequential episodes: second order through the steps of the last K "
            "texts only, first order through the earlier ones (cheaper as episodes grow). None: every step."
        },
    )
    memory_efficient_inner: bool = field(
        default=True,
        metadata={
            "help": "Inner pass with block-recomputed attention and a chunked vocabulary loss (same meta-gradient, "
            "memory linear in the context length); False: math-kernel attention and full logits (reference)."
        },
    )
    distill_loss: str = field(
        default="forward_kl", metadata={"help": "Divergence teacher→student.", "choices": list(DISTILL_LOSSES)}
    )
    jsd_beta: float = field(default=0.5, metadata={"help": "Weight of the generalized JSD (distill_loss=jsd)."})
    distill_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the distillation."})
    answer_loss_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight w of cross-entropy on the answer tokens in the outer loss: (1 - w) * divergence + w * "
            "cross-entropy. The answer is the dataset's (or, label-free, the teacher's greedy one). 0 = the paper's "
            "loss; > 0 lets a student outgrow a weak prompted teacher where gold answers exist."
        },
    )
    distill_on: str = field(
        default="answer", metadata={"help": "Positions where the divergence is taken.", "choices": list(DISTILL_ON)}
    )
    max_context_length: int = field(default=512, metadata={"help": "Maximum context tokens."})
    max_query_length: int = field(default=128, metadata={"help": "Maximum query tokens (longer raises)."})
    max_answer_length: int = field(
        default=64, metadata={"help": "Maximum answer tokens (longer raises); teacher generation budget."}
    )
    context_separator: str = field(default="\n", metadata={"help": "Text between context and query."})


@dataclass
class MetaPromptSettings(MetaPromptFields):
    """How to absorb a text: the same inner step(s) the checkpoint was meta-trained with.

    `inner_lrs` maps each adapted module to its (learned) inner learning rate; it is filled when saving, together
    with `log_inner_lrs`, the exact parameter values (what a reload uses, so that it reproduces outputs bit for bit).
    `memory_efficient_inner` picks how the inner pass is computed (see `MetaDistillConfig`), not what it computes.
    """

    base_model: str | None = None
    inner_lrs: dict[str, float] = field(default_factory=dict)
    log_inner_lrs: dict[str, float] = field(default_factory=dict)

    @property
    def uses_adapter(self) -> bool:
        """A PEFT adapter is the meta-learned part (`lora`, `base`); with `all` the model's own weights are."""
        return self.inner_params != "all"

    def __post_init__(self) -> None:
        """A wrong value here would change what `absorb` does without any error: refuse it."""
        check_choices(self)
        for name in (
            "inner_steps",
            "texts_per_episode",
            "max_context_length",
            "max_query_length",
            "max_answer_length",
        ):
            value = getattr(self, name)
            if not _is_positive_int(value):
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        rates = {name: getattr(self, name) for name in ("inner_lr", "min_inner_lr", "max_inner_lr")}
        rates.update({f"inner_lrs[{key!r}]": value for key, value in self.inner_lrs.items()})
        for name, value in rates.items():
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"`{name}` must be a finite positive number, got {value!r}.")
        for key, value in self.log_inner_lrs.items():
            if not _is_number(value) or not math.isfinite(value):
                raise ValueError(f"`log_inner_lrs[{key!r}]` must be a finite number, got {value!r}.")
        truncation = self.second_order_texts
        if truncation is not None and not _is_positive_int(truncation):
            raise ValueError(
                f"`second_order_texts` must be a positive integer or None, got {truncation!r} (for no second-order "
                "step at all, set first_order=True)."
            )
        if truncation is not None and self.text_composition != "sequential":
            raise ValueError(
                f"`second_order_texts` truncates sequential episodes; text_composition={self.text_composition!r} "
                "takes one step on all texts at once. Leave second_order_texts=None."
            )
        weight = self.reversed_context_weight
        if not _is_number(weight) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"`reversed_context_weight` must be a finite number >= 0, got {weight!r}.")
        if self.reversed_context_unit != "token" and not weight:
            raise ValueError(
                f"`reversed_context_unit={self.reversed_context_unit!r}` acts only on the backwards loss: set "
                "`reversed_context_weight` > 0, or leave the unit at 'token'."
            )
        mix = self.answer_loss_weight
        if not _is_number(mix) or not 0 <= mix <= 1:
            raise ValueError(f"`answer_loss_weight` must be a number in [0, 1], got {mix!r}.")
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


def check_choices(values: MetaPromptFields) -> None:
    """Every field declared with `choices` holds one of them."""
    for spec in fields(MetaPromptFields):
        choices = spec.metadata.get("choices")
        value = getattr(values, spec.name)
        if choices is not None and value not in choices:
            raise ValueError(f"`{spec.name}` must be one of {', '.join(map(repr, choices))}; got {value!r}.")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
