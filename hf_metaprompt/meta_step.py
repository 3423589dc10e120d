"""`MetaDistillModel`: one forward = teacher targets + differentiable inner step + outer distillation loss.

Keeping the whole meta-step inside a single `forward` of one module is what makes it work under DDP (which does not
support double backward officially): the inner `autograd.grad` runs out of place, inside the forward, and the
Trainer's one ordinary `backward()` of the outer loss is the only backward DDP sees.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from .fast_weights import AdaptedModules, FastWeights, checkpoint_context_fn, use_fast_weights
from .inner import absorb_groups, check_attention_supports_meta_gradient, position_ids_from_mask
from .losses import distillation_divergence, mix_answer_loss, token_logprobs
from .settings import MetaPromptSettings, episode_lengths
from .tokens import IGNORE_INDEX, target_window


@dataclass
class MetaDistillOutput(ModelOutput):
    """Outer loss plus the detached diagnostics the trainer logs."""

    loss: torch.Tensor | None = None
    distill_loss: torch.Tensor | None = None
    inner_loss: torch.Tensor | None = None
    agreement: torch.Tensor | None = None
    num_targets: torch.Tensor | None = None


class MetaDistillModel(nn.Module):
    """Wraps the meta-learned model (a `PeftModel`, or a plain model with `inner_params="all"`) and its inner LRs.

    The teacher is the same model with its adapter disabled when `teacher is None` (LoRA mode), otherwise the given
    frozen model. `word_classes` (`tokens.word_classes(tokenizer)`) only with `reversed_context_unit="entity"`.
    """

    accepts_loss_kwargs = True

    def __init__(
        self,
        model: nn.Module,
        settings: MetaPromptSettings,
        teacher: nn.Module | None = None,
        word_classes: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.settings = settings
        by_entity = settings.reversed_context_unit == "entity"
        if by_entity and word_classes is None:
            raise ValueError(
                "reversed_context_unit='entity' cuts texts into words with the tokenizer: pass "
                "word_classes=hf_metaprompt.tokens.word_classes(tokenizer)."
            )
        # Follows the model across devices; not saved: it is the tokenizer's, rebuilt from it on loading.
        self.register_buffer("word_classes", word_classes if by_entity else None, persistent=False)
        is_peft = hasattr(model, "disable_adapter")
        if settings.uses_adapter:
            if not is_peft:
                raise ValueError(f"inner_params={settings.inner_params!r} needs a PeftModel with a LoRA adapter.")
            if settings.inner_params == "lora":
                self.adapted = AdaptedModules.from_peft(model)
            else:  # the base model's own linear layers, full rank, read and written through the adapter
                self.adapted = AdaptedModules.from_linear_layers(model.get_base_model(), skip=_is_lora_module)
        else:
            if is_peft:
                raise ValueError("inner_params='all' adapts the model's own linear layers; pass a model without PEFT.")
            if teacher is None:
                raise ValueError("inner_params='all' meta-trains the base weights: pass a frozen `teacher` copy.")
            self.adapted = AdaptedModules.from_linear_layers(model)
        # Not registered as a submodule: the teacher is frozen and is neither saved nor synchronised.
        self.__dict__["teacher"] = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
        check_attention_supports_meta_gradient(model, settings.first_order)
        self.log_inner_lrs = nn.Parameter(
            torch.tensor([settings_log_lr(settings, name) for name in self.adapted.group_names], dtype=torch.float32),
            requires_grad=settings.learn_inner_lr,
        )

    # ----- inner learning rates
    def inner_lrs(self) -> torch.Tensor:
        """Learned inner LRs, clamped to their bounds (the clamp also stops a runaway rate)."""
        low, high = math.log(self.settings.min_inner_lr), math.log(self.settings.max_inner_lr)
        return self.log_inner_lrs.clamp(low, high).exp()

    def inner_lr_dict(self) -> dict[str, float]:
        return dict(zip(self.adapted.group_names, self.inner_lrs().tolist(), strict=True))

    # ----- activation checkpointing
    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Checkpointing that re-applies the fast weights on recompute (see `checkpoint_context_fn`)."""
        kwargs = dict(activation_checkpointing_kwargs or {})
        if kwargs.get("use_reentrant", False):
            raise ValueError(
                "use_reentrant=True checkpointing cannot differentiate through the inner step; use the default "
                "(use_reentrant=False)."
            )
        if "context_fn" in kwargs:
            raise ValueError("`context_fn` is set by hf_metaprompt to re-apply fast weights; do not pass one.")
        kwargs.update(use_reentrant=False, context_fn=checkpoint_context_fn)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(
                activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers, offload=offload
            )
        else:  # transformers < 5.24
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    gradient_checkpointing_enable = activation_checkpointing_enable

    # ----- forward
    def forward(
        self,
        context_input_ids: torch.Tensor,
        context_attention_mask: torch.Tensor,
        teacher_input_ids: torch.Tensor,
        teacher_attention_mask: torch.Tensor,
        student_input_ids: torch.Tensor,
        student_attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        prompt_labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> MetaDistillOutput:
        if labels is None:
            raise ValueError(
                "The batch has no answers (`prompt_labels` only): label-free tasks need the prompted base's answers "
                "first. MetaDistillTrainer makes them once before training; elsewhere call "
                "hf_metaprompt.teacher_answers.add_teacher_answers(dataset, meta, collator, tokenizer)."
            )
        keep = target_window(labels)
        target_ids = labels[:, -keep + 1 :]
        targets = target_ids != IGNORE_INDEX
        s = self.settings
        # With the whole weight on the answers the divergence is multiplied by 0: the frozen teacher's forward,
        # a fifth of the step, is skipped.
        uses_teacher = s.answer_loss_weight < 1
        if uses_teacher:
            teacher_logits = self.teacher_logits(teacher_input_ids, teacher_attention_mask, keep)

        fast_weights, inner_losses = self.absorb_episodes(context_input_ids, context_attention_mask)
        with use_fast_weights(fast_weights):
            student_logits = causal_logits(self.model, student_input_ids, student_attention_mask, keep)

        if s.answer_loss_weight:
            answer_nll = -token_logprobs(student_logits, target_ids.clamp(min=0))
        if not uses_teacher:
            per_token = answer_nll
        else:
            per_token = distillation_divergence(
                teacher_logits, student_logits, s.distill_loss, s.distill_temperature, s.jsd_beta
            )
            if s.answer_loss_weight:
                per_token = mix_answer_loss(per_token, answer_nll, s.answer_loss_weight)
        total = (per_token * targets).sum()
        num_targets = targets.sum()
        denominator = num_items_in_batch if num_items_in_batch is not None else num_targets.clamp(min=1)
        loss = total / denominator
        # Agreement of the student's top token with the teacher's, or with the answer when no teacher ran.
        reference = teacher_logits.argmax(-1) if uses_teacher else target_ids
        agreement = (reference == student_logits.argmax(-1))[targets].float().mean()
        return MetaDistillOutput(
            loss=loss,
            distill_loss=(total / num_targets.clamp(min=1)).detach(),
            inner_loss=inner_losses.mean(),
            agreement=agreement.detach(),
            num_targets=num_targets.detach(),
        )

    # ----- inner step(s)
    def episode_length(self) -> int:
        """`texts_per_episode`, or during training with `vary_texts_per_episode` a power of two dividing it."""
        most = self.settings.texts_per_episode
        if not (self.settings.vary_texts_per_episode and self.training):
            return most
        choices = episode_lengths(most, vary=True)
        return choices[int(torch.randint(len(choices), ()))]

    def absorb_episodes(
        self, context_input_ids: torch.Tensor, context_attention_mask: torch.Tensor
    ) -> tuple[FastWeights, torch.Tensor]:
        """The contexts of each episode absorbed one after another; fast weights serve the episode's rows.

        Rows come episode by episode (`texts_per_episode` consecutive rows each), as `PromptTargetCollator` groups
        them. Differentiable through every step when gradients are enabled (training).
        """
        texts = self.episode_length()
        rows = context_input_ids.shape[0]
        if rows % texts:
            raise ValueError(
                f"The batch has {rows} tasks, not a multiple of texts_per_episode={texts}: make the batch size a "
                "multiple of texts_per_episode."
            )
        return absorb_groups(
            self.model,
            self.adapted,
            self.inner_lrs(),
            context_input_ids,
            context_attention_mask,
            texts,
            self.settings.text_composition,
            second_order_texts=self.settings.second_order_texts,
            create_graph=torch.is_grad_enabled(),
            first_order=self.settings.first_order,
            **self.inner_step_options(),
        )

    def inner_step_options(self) -> dict[str, Any]:
        """The step this checkpoint takes on a text, as `inner_update` arguments: one place for training, `absorb`
        and the evaluation."""
        s = self.settings
        return {
            "steps": s.inner_steps,
            "memory_efficient": s.memory_efficient_inner,
            "reversed_weight": s.reversed_context_weight,
            "word_classes": self.word_classes,
        }

    # ----- teacher
    def require_base(self) -> None:
        """Refuse to stand in for the base: a loaded `inner_params="all"` checkpoint holds only its own weights."""
        if self.teacher is self.model:
            raise ValueError(
                "This inner_params='all' model was loaded without its base model, which the prompted, no-context "
                "and plain fine-tuning conditions (and meta-training) use: load it with "
                "MetaPromptModel.from_pretrained(..., load_base=True)."
            )

    @contextlib.contextmanager
    def teacher_mode(self):
        """The frozen prompted model: adapter disabled (or the separate teacher), eval mode, no gradients."""
        self.require_base()
        module = self.teacher if self.teacher is not None else self.model
        was_training = module.training
        adapter_off = self.model.disable_adapter() if self.teacher is None else contextlib.nullcontext()
        module.eval()
        try:
            with torch.no_grad(), adapter_off:
                yield module
        finally:
            module.train(was_training)

    def teacher_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int) -> torch.Tensor:
        with self.teacher_mode() as teacher:
            return causal_logits(teacher, input_ids, attention_mask, keep)

    # ----- persistence
    def current_settings(self) -> MetaPromptSettings:
        log_lrs = dict(zip(self.adapted.group_names, self.log_inner_lrs.tolist(), strict=True))
        settings = MetaPromptSettings(
            **{**vars(self.settings), "inner_lrs": self.inner_lr_dict(), "log_inner_lrs": log_lrs}
        )
        config = getattr(self.model, "config", None)
        if settings.base_model is None and config is not None:
            settings.base_model = getattr(config, "_name_or_path", None) or None
        return settings

    def record_base_model(self, base_model: str) -> None:
        """The base id saved with the checkpoint (and in PEFT's adapter config), e.g. a Hub id for a local copy."""
        self.settings.base_model = base_model
        for config in getattr(self.model, "peft_config", {}).values():
            config.base_model_name_or_path = base_model

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """PEFT adapter (or full model with `inner_params="all"`) + `metaprompt_config.json`.

        Refuses non-finite weights or inner LRs: such a checkpoint would load and silently answer nothing.
        """
        self.check_finite(f"Refusing to save to {save_directory}")
        if self.settings.uses_adapter:
            # Vanilla LoRA never touches the embeddings; "auto" would look the base model up on the Hub (offline too).
            kwargs.setdefault("save_embedding_layers", False)
        self.model.save_pretrained(save_directory, **kwargs)
        self.current_settings().save(save_directory)

    def check_finite(self, what: str) -> None:
        """Raise, naming the first offending tensor, if an adapted weight or a learned inner LR is NaN or infinite."""
        named = [(linear.name, p) for linear in self.adapted.linears for p in linear.parameters()]
        for name, tensor in [*named, ("log_inner_lrs", self.log_inner_lrs)]:
            if not bool(torch.isfinite(tensor.detach()).all()):
                raise ValueError(
                    f"{what}: {name} holds non-finite values (NaN/inf): training diverged. Use an earlier checkpoint."
                )

    def load_meta_state(self, directory: str | os.PathLike) -> None:
        """Restore the adapted weights and the learned inner LRs from a directory `save_pretrained` wrote.

        All or nothing: an adapter of another rank or on other modules is refused, not loaded in part.
        """
        directory = Path(directory)
        settings = MetaPromptSettings.load(directory)
        if settings.inner_params != self.settings.inner_params:
            raise ValueError(
                f"{directory} was meta-trained with inner_params={settings.inner_params!r}, this model adapts "
                f"{self.settings.inner_params!r}: pass inner_params={settings.inner_params!r}."
            )
        if self.settings.uses_adapter:
            _load_whole_adapter(self.model, directory)
        else:
            from safetensors.torch import load_file

            state = {}
            for shard in sorted(directory.glob("model*.safetensors")):
                state.update(load_file(shard))
            if not state:
                raise FileNotFoundError(f"No model*.safetensors in {directory}.")
            self.model.load_state_dict(state, strict=False)
        missing = [name for name in self.adapted.group_names if name not in settings.inner_lrs]
        if missing:
            raise ValueError(f"{directory} has no learned inner LR for {missing[:3]}: was it saved by another model?")
        values = [settings_log_lr(settings, name) for name in self.adapted.group_names]
        with torch.no_grad():
            self.log_inner_lrs.copy_(torch.tensor(values))
        self.check_finite(f"Refusing to load {directory}")


def _load_whole_adapter(model: nn.Module, directory: Path) -> None:
    """Load the adapter saved in `directory`, or raise and leave `model` as it was (torch and PEFT load in part)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    state = get_peft_model_state_dict(model, save_embedding_layers=False)  # "auto" would look the base up online
    previous = {name: tensor.clone() for name, tensor in state.items()}
    try:
        result = set_peft_model_state_dict(model, load_peft_weights(str(directory), device="cpu"))
    except RuntimeError as error:  # size mismatches, raised after the matching tensors were copied
        problem = f"does not fit this model (another lora_r?): {str(error).splitlines()[1].strip()}"
    else:
        unexpected = result.unexpected_keys
        missing = [key for key in result.missing_keys if _is_lora_module(key)]
        problem = None
        if unexpected or missing:
            where = f"not in this model: {unexpected[:3]}" if unexpected else f"not in the checkpoint: {missing[:3]}"
            problem = f"covers other modules than this model's (lora_target_modules): {where}"
    if problem:
        set_peft_model_state_dict(model, previous)
        raise ValueError(f"{directory}'s adapter {problem}")


def _is_lora_module(name: str) -> bool:
    return ".lora_" in name


def settings_log_lr(settings: MetaPromptSettings, name: str) -> float:
    """The saved log inner LR of a module (exact), else the log of its saved or initial inner LR."""
    if name in settings.log_inner_lrs:
        return settings.log_inner_lrs[name]
    return math.log(settings.inner_lrs.get(name, settings.inner_lr))


def causal_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits predicting the last `keep - 1` tokens (answers are right-aligned, so one slice serves the batch)."""
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=keep,
        use_cache=False,
    ).logits
    return logits[:, -keep:-1]


def right_align_many(
    tensors: tuple[torch.Tensor, ...], attention_mask: torch.Tensor
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Move each row's valid tokens to the right end (left padding), keeping their order.

    The padding value of each shifted tensor is whatever its masked entries held.
    """
    # Sort key: padding first (0), then the valid tokens in their original order.
    width = attention_mask.shape[1]
    order = torch.argsort(attention_mask * width + torch.arange(width, device=attention_mask.device), dim=1)
    return tuple(t.gather(1, order) for t in tensors), attention_mask.gather(1, order)


def right_align(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    (aligned,), mask = right_align_many((input_ids,), attention_mask)
    return aligned, mask
