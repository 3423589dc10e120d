"""Configuration of meta-distillation training."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import TrainingArguments

from .collator import CONTEXT_TRUNCATION
from .settings import MetaPromptFields, MetaPromptSettings, check_choices


@dataclass
class MetaDistillConfig(MetaPromptFields, TrainingArguments):
    r"""
    Configuration class for [`MetaDistillTrainer`].

    Only the parameters specific to meta-distillation are listed here; see [`~transformers.TrainingArguments`] for the
    rest. The method (Zhang, Choshen & Andreas, 2025): per task, take `inner_steps` gradient step(s) on the plain
    next-token loss of the context, then distil the *prompted* base model (context + query) into the *updated*
    model given the query alone, and back-propagate through the inner step.

    Parameters:
        inner_lr (`float`, *optional*, defaults to `1e-2`):
            Initial learning rate of the inner (absorbing) step.
        learn_inner_lr (`bool`, *optional*, defaults to `True`):
            Meta-learn one inner learning rate per adapted module (in log space, bounded by `min_inner_lr` and
            `max_inner_lr`).
        min_inner_lr (`float` or `None`, *optional*, defaults to `None`):
            Lower bound of the learned inner learning rates. `None` means `inner_lr / 100`.
        max_inner_lr (`float` or `None`, *optional*, defaults to `None`):
            Upper bound of the learned inner learning rates. `None` means `inner_lr * 10`.
        inner_lr_learning_rate (`float` or `None`, *optional*, defaults to `None`):
            Outer-optimizer learning rate of the log inner learning rates. `None` means `learning_rate`.
        inner_steps (`int`, *optional*, defaults to `1`):
            Number of inner gradient steps on the context.
        texts_per_episode (`int`, *optional*, defaults to `1`):
            Texts absorbed one after another per meta-training episode: each run of `texts_per_episode` consecutive
            tasks of a batch is an episode (their contexts absorbed in order, each continuing from the previous fast
            weights), then the questions of all its tasks are asked, each distilled from the base prompted with its
            own text. The batch size must be a multiple of it. A checkpoint meta-trained with 1 holds one text.
        vary_texts_per_episode (`bool`, *optional*, defaults to `False`):
            Draw each batch's episode length uniformly from the powers of two dividing `texts_per_episode` (1, 2,
            4, ...) instead of always using `texts_per_episode`, so that one checkpoint is trained for every number
            of texts up to its most (with `"additive"`, the size of an update grows with the number of texts).
        text_composition (`str`, *optional*, defaults to `"sequential"`):
            How several texts combine, in meta-training episodes and when absorbing: `"sequential"` (each text's step
            starts from the weights the previous text left) or `"additive"` (each text's update is computed from the
            meta-trained weights and the updates add up: absorbing N texts is one gradient step on the sum of their
            losses, whatever their order; needs `inner_steps=1`).
        text_memory (`str`, *optional*, defaults to `"shared"`):
            How the checkpoint holds several texts when it absorbs them (and when its evaluation does): `"shared"`
            (one state, the texts combined as `text_composition` says) or `"per_text"` (each text's update kept
            apart, and each query answered with the update that raises the query's own tokens most, see
            `hf_metaprompt.routing`). Recorded in the checkpoint; meta-training never reads it.
        reversed_context_weight (`float`, *optional*, defaults to `0.0`):
            Weight of a second term of the inner loss: next-token loss on each context read backwards (its tokens
            reversed, a leading BOS kept first), which predicts each token from the ones after it, as reverse
            training does against the reversal curse. `0` keeps the paper's next-token loss alone; the checkpoint
            records it, so absorbing uses the objective it was meta-trained with (see the README's results).
        reversed_context_unit (`str`, *optional*, defaults to `"token"`):
            What the backwards term reverses: `"token"` (every token) or `"entity"` (the order of the words, each run
            of capitalised words kept in reading order: the entity-preserving reversal of reverse training, which
            reads "Hana Santos is a sculptor." as ". sculptor a is Hana Santos", a name after its description).
            Words and capitals come from the tokenizer (`tokens.word_classes`).
        first_order (`bool`, *optional*, defaults to `False`):
            Treat the inner gradient as a constant (first-order MAML): cheaper, measured clearly worse.
        second_order_texts (`int` or `None`, *optional*, defaults to `None`):
            Truncated back-propagation through a sequential episode: second order through the steps on its last K
            texts, first order through the earlier ones, so the cost of the double backward stops growing with the
            episode. `None`: second order through every step.
        memory_efficient_inner (`bool`, *optional*, defaults to `True`):
            Compute the second-order inner pass with attention whose backward is recomputed block by block
            (`"sdpa"` models) and the context loss in chunks of tokens through the output head: the same
            meta-gradient in memory linear in the context length, and faster on long contexts. `False` falls back to
            the math SDPA kernel and full `[tokens, vocabulary]` logits (the reference path).
        inner_params (`str`, *optional*, defaults to `"lora"`):
            Which parameters the inner step updates: `"lora"` (the meta-learned LoRA adapter), `"base"` (the frozen
            base model's linear layers, full rank, while the meta-learned LoRA adapter shapes how texts are written
            and read: more room to hold several texts, more memory per task) or `"all"` (every
            linear layer of the model; only sensible for small models).
        lora_r (`int`, *optional*, defaults to `8`):
            LoRA rank of the meta-learned adapter (when `inner_params="lora"` and no `peft_config` is given).
        lora_alpha (`int`, *optional*, defaults to `16`):
            LoRA alpha.
        lora_dropout (`float`, *optional*, defaults to `0.0`):
            LoRA dropout.
        lora_last_layers (`int` or `None`, *optional*, defaults to `None`):
            Adapt only the last N decoder layers. Nothing below them needs a gradient, so the inner backward and its
            second derivative stop there: about half the meta-step's backward work with half the layers. `None`:
            every layer.
        lora_target_modules (`list[str]` or `None`, *optional*, defaults to `None`):
            Modules to adapt; `None` means every linear layer except the output head (`"all-linear"`).
        distill_loss (`str`, *optional*, defaults to `"forward_kl"`):
            Divergence between the prompted teacher and the updated student: `"forward_kl"` (KL(teacher‖student)),
            `"reverse_kl"` or `"jsd"`.
        jsd_beta (`float`, *optional*, defaults to `0.5`):
            Interpolation weight of the generalized Jensen-Shannon divergence (only with `distill_loss="jsd"`).
        distill_temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature applied to both teacher and student logits.
        answer_loss_weight (`float`, *optional*, defaults to `0.0`):
            Mix cross-entropy on the answer tokens into the outer loss, `(1 - w) * divergence + w * cross-entropy`
            (the classic soft/hard distillation mix). The answer is the dataset's, or in label-free mode the
            teacher's greedy answer. `0` is the paper's loss; a weight > 0 lets the student learn past a weak
            prompted teacher where gold answers exist. Recorded with the checkpoint.
        distill_on (`str`, *optional*, defaults to `"answer"`):
            Positions where the divergence is taken: `"answer"` or `"query_and_answer"`.
        max_context_length (`int`, *optional*, defaults to `512`):
            Maximum number of context tokens (special tokens excluded).
        max_query_length (`int`, *optional*, defaults to `128`):
            Maximum number of query tokens; a longer query raises an error.
        max_answer_length (`int`, *optional*, defaults to `64`):
            Maximum number of answer tokens; a longer answer raises an error. Also the generation budget of the
            teacher when examples carry no answer (label-free mode).
        append_eos_to_answer (`bool`, *optional*, defaults to `True`):
            End each answer with EOS so that the teacher's prediction after the answer is distilled too: the updated
            model then learns where an answer stops, not only the answer.
        context_truncation (`str`, *optional*, defaults to `"left"`):
            What to do with a context longer than `max_context_length`: `"left"` drops its oldest tokens (and counts
            them), `"error"` raises.
        context_separator (`str`, *optional*, defaults to `"\n"`):
            Text placed between context and query in the prompted (teacher) view.
        context_field (`str`, *optional*, defaults to `"context"`):
            Dataset column holding the context.
        query_field (`str`, *optional*, defaults to `"query"`):
            Dataset column holding the query.
        answer_field (`str`, *optional*, defaults to `"answer"`):
            Dataset column holding the answer; missing or empty answers switch to the teacher's greedy continuation.
        grounded_teacher_answers (`bool`, *optional*, defaults to `False`):
            Label-free mode: keep only the tasks whose teacher answer says what its text says (at least half of the
            words it adds to the question are the text's; `teacher_answers.grounded_in_context`). A small prompted
            base answers many questions with invented biographies, which the divergence would otherwise copy. Still
            label-free: it reads the text and the question, never a gold answer.
        teacher (`str`, *optional*, defaults to `"base"`):
            `"base"`: the model itself without the adapter (no second copy); otherwise a path or Hub id of a
            separate frozen model sharing the tokenizer.
        max_consecutive_skipped_steps (`int`, *optional*, defaults to `10`):
            A step whose loss or gradient is not finite is skipped (weights and optimizer state untouched); this many
            skipped steps in a row stop training with an error instead of running on without learning.
        model_init_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            Keyword arguments for `AutoModelForCausalLM.from_pretrained` when the model (or teacher) is given as a
            string.
    """

    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "model_init_kwargs"]

    # Overridden defaults: the collator consumes raw text columns, so they must reach it.
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep the raw text columns: `PromptTargetCollator` tokenizes them itself."},
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Outer (meta) learning rate."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "Every trainable parameter takes part in each meta-step: no need to search the graph."},
    )

    # The inner-loop, distillation and length fields are `MetaPromptFields`'; these two default to inner_lr's.
    min_inner_lr: float | None = field(
        default=None, metadata={"help": "Lower bound of learned inner LRs. Default: inner_lr / 100."}
    )
    max_inner_lr: float | None = field(
        default=None, metadata={"help": "Upper bound of learned inner LRs. Default: inner_lr * 10."}
    )
    inner_lr_learning_rate: float | None = field(
        default=None, metadata={"help": "Outer learning rate of the log inner LRs. Default: learning_rate."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank of the meta-learned adapter."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_last_layers: int | None = field(
        default=None,
        metadata={
            "help": "Adapt only the last N decoder layers (the inner backward and its second derivative stop there). "
            "Default: every layer."
        },
    )
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules to adapt. Default: every linear layer but the output head."}
    )
    append_eos_to_answer: bool = field(
        default=True, metadata={"help": "Distil the position after the answer too, so the model learns to stop."}
    )
    context_truncation: str = field(
        default="left",
        metadata={"help": "Too-long contexts: drop oldest tokens or raise.", "choices": list(CONTEXT_TRUNCATION)},
    )
    context_field: str = field(default="context", metadata={"help": "Dataset column holding the context."})
    query_field: str = field(default="query", metadata={"help": "Dataset column holding the query."})
    answer_field: str = field(default="answer", metadata={"help": "Dataset column holding the (optional) answer."})
    grounded_teacher_answers: bool = field(
        default=False,
        metadata={
            "help": "Label-free: keep only tasks whose teacher answer is grounded in its text (half the words it "
            "adds to the question are the text's). Drops invented answers; reads no gold answer."
        },
    )
    teacher: str = field(
        default="base",
        metadata={"help": "'base' (the model without adapter) or a path/Hub id of a separate frozen model."},
    )
    max_consecutive_skipped_steps: int = field(
        default=10, metadata={"help": "Non-finite steps in a row (each skipped) after which training stops."}
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Kwargs for AutoModelForCausalLM.from_pretrained when loading by name."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.torch_compile:
            raise ValueError(
                "torch_compile=True is not supported: the meta-gradient differentiates through the inner step "
                "(double backward), which compiled graphs (aot_autograd) do not support. Set torch_compile=False."
            )
        _check_positive(self, "inner_lr", "inner_steps", "lora_r", "lora_alpha", "distill_temperature")
        _check_positive(self, "max_context_length", "max_query_length", "max_answer_length")
        _check_positive(self, "max_consecutive_skipped_steps")
        for name in ("min_inner_lr", "max_inner_lr", "inner_lr_learning_rate", "lora_last_layers"):
            if getattr(self, name) is not None:
                _check_positive(self, name)
        for name in ("inner_steps", "max_consecutive_skipped_steps"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"`{name}` must be an integer, got {getattr(self, name)!r}.")
        if self.min_inner_lr is None:
            self.min_inner_lr = self.inner_lr / 100
        if self.max_inner_lr is None:
            self.max_inner_lr = self.inner_lr * 10
        _check_positive(self, "texts_per_episode")
        if not isinstance(self.texts_per_episode, int):
            raise ValueError(f"`texts_per_episode` must be an integer, got {self.texts_per_episode!r}.")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(self, name) % self.texts_per_episode:
                raise ValueError(
                    f"`{name}`={getattr(self, name)} is not a multiple of texts_per_episode={self.texts_per_episode}: "
                    "a batch holds whole episodes."
                )
        if self.dataloader_pin_memory and (self.use_cpu or not torch.accelerator.is_available()):
            self.dataloader_pin_memory = False  # nothing to pin for: avoids torch's warning on every run
        if not 0 < self.min_inner_lr <= self.inner_lr <= self.max_inner_lr:
            raise ValueError(
                "Inner learning rates must satisfy 0 < min_inner_lr <= inner_lr <= max_inner_lr, got "
                f"min_inner_lr={self.min_inner_lr}, inner_lr={self.inner_lr}, max_inner_lr={self.max_inner_lr}."
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"`lora_dropout` must be in [0, 1), got {self.lora_dropout}.")
        if not 0.0 < self.jsd_beta < 1.0:
            raise ValueError(f"`jsd_beta` must be in (0, 1), got {self.jsd_beta}.")
        check_choices(self)
        if self.text_composition == "additive" and self.inner_steps != 1:
            raise ValueError(
                f"text_composition='additive' adds one gradient step per text; got inner_steps={self.inner_steps}. "
                "Set inner_steps=1 or text_composition='sequential'."
            )
        if self.context_truncation not in CONTEXT_TRUNCATION:
            raise ValueError(
                f"`context_truncation` must be one of {', '.join(map(repr, CONTEXT_TRUNCATION))}; got "
                f"{self.context_truncation!r}."
            )
        for name in ("context_field", "query_field", "answer_field"):
            if not getattr(self, name):
                raise ValueError(f"`{name}` must be a non-empty column name.")
        if len({self.context_field, self.query_field, self.answer_field}) != 3:
            raise ValueError("`context_field`, `query_field` and `answer_field` must name three different columns.")
        if not self.teacher:
            raise ValueError("`teacher` must be 'base' or the path/Hub id of a frozen teacher model.")
        if self.remove_unused_columns:
            raise ValueError(
                "`remove_unused_columns=True` would drop the text columns the collator needs; set it to False."
            )
        self.to_settings()  # what a checkpoint would refuse to load, refused now

    def to_settings(self) -> MetaPromptSettings:
        """The inner-loop and distillation settings that travel with a saved checkpoint: every `MetaPromptFields`."""
        return MetaPromptSettings(**{spec.name: getattr(self, spec.name) for spec in fields(MetaPromptFields)})


def _check_positive(config: MetaDistillConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
