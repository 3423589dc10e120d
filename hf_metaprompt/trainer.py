"""`MetaDistillTrainer`: meta-train a model so that one gradient step on a text acts like prompting with it."""

from __future__ import annotations

import copy
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollator,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
)
from transformers.pytorch_utils import Conv1D
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalPrediction

from .assets import base_location
from .collator import PromptTargetCollator
from .compat import quiet_peft_wrapping
from .config import MetaDistillConfig
from .fast_weights import AdaptedModules
from .hub import DEFAULT_TAGS, PAPER, TRAINER_NAME, local_path_or_repo_id, write_checkpoint_card
from .meta_step import MetaDistillModel
from .settings import METAPROMPT_CONFIG_NAME
from .teacher_answers import add_teacher_answers
from .tokens import reversal_word_classes
from .validation import position_limit, validate_dataset

logger = logging.getLogger(__name__)


class MetaDistillTrainer(Trainer):
    """Trainer for meta-distillation (Zhang, Choshen & Andreas, 2025, "Can Gradient Descent Simulate Prompting?").

    Each training step, for every task of the batch: teacher targets from the prompted frozen model, one (or
    `inner_steps`) differentiable SGD step(s) of the meta-learned adapter on the context, and the KL between the
    teacher and the updated model given only the query; the gradient flows back through the inner step.

    Args:
        model: a model id/path, a `PreTrainedModel` (a LoRA adapter is added from `peft_config` or the config's
            LoRA fields) or a `PeftModel` (its active adapter is the meta-learned one).
        args: a `MetaDistillConfig`.
        data_collator: defaults to `PromptTargetCollator` built from the tokenizer and `args`.
        processing_class: the tokenizer; loaded from `model` when it is a string.
        peft_config: a `peft.LoraConfig` overriding the config's LoRA fields.
    """

    _tag_names = ["hf_metaprompt", "meta-learning", "meta-distillation"]
    _name = TRAINER_NAME
    _paper = PAPER

    def __init__(
        self,
        model: str | PreTrainedModel | nn.Module,
        args: MetaDistillConfig | None = None,
        data_collator: DataCollator | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        peft_config: Any | None = None,
    ) -> None:
        if args is None:
            name = model if isinstance(model, str) else type(model).__name__
            args = MetaDistillConfig(f"{str(name).split('/')[-1]}-metaprompt")
        if not isinstance(args, MetaDistillConfig):
            raise TypeError(f"`args` must be a MetaDistillConfig, got {type(args).__name__}.")
        _check_distributed_support(args)  # before loading weights a ZeRO-3 launch would partition
        if isinstance(model, str):
            # The ids of the bases this package provides offline (the tiny base, SmolLM2) load their local copies.
            model = base_location(local_path_or_repo_id(model, "model"))
            processing_class = processing_class or AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model, **_init_kwargs(args))
        if processing_class is None:
            raise ValueError("Pass the tokenizer as `processing_class` (it builds the default collator).")

        model = _prepare_meta_model(model, args, peft_config)
        teacher = _load_teacher(model, args)
        meta_model = MetaDistillModel(
            model,
            args.to_settings(),
            teacher=teacher,
            word_classes=reversal_word_classes(processing_class, args.reversed_context_unit),
        )
        if data_collator is None:
            data_collator = PromptTargetCollator.from_settings(processing_class, args)
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._non_finite_loss = False
        self._consecutive_skipped_steps = 0
        super().__init__(
            model=meta_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        if isinstance(self.data_collator, PromptTargetCollator):
            # Bad rows fail now, named by their row, not at step N in the middle of the run.
            evals = eval_dataset if isinstance(eval_dataset, dict) else {"eval_dataset": eval_dataset}
            for name, dataset in {"train_dataset": train_dataset, **evals}.items():
                if dataset is not None:
                    validate_dataset(dataset, self.data_collator, position_limit(model), name)
            if isinstance(self.train_dataset, Dataset):
                # Label-free rows: the prompted base's answers, generated once here rather than in every step.
                self.train_dataset = add_teacher_answers(
                    self.train_dataset,
                    self.meta_model,
                    self.data_collator,
                    processing_class,
                    batch_size=args.per_device_eval_batch_size,
                    grounded=args.grounded_teacher_answers,
                )

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """`Trainer.train`; `resume_from_checkpoint=True` takes the last *complete* checkpoint of `output_dir` (one a
        kill interrupted while saving is skipped), and an explicit incomplete one is refused with what it lacks."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint in {self.args.output_dir} to resume from.")
        elif resume_from_checkpoint:
            missing = missing_checkpoint_files(resume_from_checkpoint)
            if missing:
                raise FileNotFoundError(
                    f"Cannot resume from {resume_from_checkpoint}: {', '.join(missing)} missing or unreadable (a save "
                    "was interrupted?). Pass resume_from_checkpoint=True to take the last complete checkpoint."
                )
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        # Checked again once the accelerator exists: an `accelerate launch` FSDP config sets no training argument.
        _check_distributed_support(self.args, fsdp_enabled=self.is_fsdp_enabled)

    @property
    def meta_model(self) -> MetaDistillModel:
        return self.accelerator.unwrap_model(self.model)

    # ----- loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        outputs = model(**inputs, num_items_in_batch=num_items_in_batch)
        loss = outputs.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # `num_items_in_batch` counts the targets of all processes, and DDP/DeepSpeed average the gradients over
            # them: scale back, as `Trainer.compute_loss` does, so N processes step like one with N times the batch.
            loss = loss * self.accelerator.num_processes
        if self.model.training and not bool(torch.isfinite(loss.detach())):
            # The optimizer step of this batch is skipped (see `_gradients_are_finite`); backward still runs so that
            # DDP's collective calls stay in step across processes.
            self._non_finite_loss = True
        self._record(outputs)
        return (loss, outputs) if return_outputs else loss

    def _record(self, outputs) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        metrics["distill_loss"].append(outputs.distill_loss.item())
        metrics["inner_loss"].append(outputs.inner_loss.item())
        metrics["teacher_agreement"].append(outputs.agreement.item())
        metrics["inner_lr"].append(self.meta_model.inner_lrs().mean().item())

    # ----- non-finite guard
    def _clip_grad_norm(self, model: nn.Module):
        if not self._gradients_are_finite(model):
            return self._skip_optimizer_step(model)
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model: nn.Module, grad_norm=None):
        # Called after `_clip_grad_norm`, or alone when `max_grad_norm=0`: then this is the first look at the step.
        if grad_norm is None and not self._gradients_are_finite(model):
            grad_norm = self._skip_optimizer_step(model)
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def _gradients_are_finite(self, model: nn.Module) -> bool:
        """Whether every process's accumulated gradients (and losses) are finite: one decision for all ranks."""
        non_finite_loss, self._non_finite_loss = self._non_finite_loss, False
        if self.accelerator.scaler is not None:
            return True  # fp16: the GradScaler skips non-finite steps itself, and must see them to lower its scale
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else torch.tensor(True)
        flag = (~finite).float().to(self.args.device) + float(non_finite_loss)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        if bool(flag > 0):
            return False
        self._metrics["train"]["skipped_steps"].append(0.0)
        self._consecutive_skipped_steps = 0
        return True

    def _skip_optimizer_step(self, model: nn.Module) -> torch.Tensor:
        """Drop the gradients: `optimizer.step()` leaves parameters without a gradient untouched, optimizer state
        (momentum, step count, weight decay) included. Raises after `max_consecutive_skipped_steps` in a row."""
        for param in model.parameters():
            param.grad = None
        self._consecutive_skipped_steps += 1
        self._metrics["train"]["skipped_steps"].append(1.0)
        logger.warning(
            "Non-finite loss or gradient at step %d: optimizer step skipped (%d in a row).",
            self.state.global_step,
            self._consecutive_skipped_steps,
        )
        limit = self.args.max_consecutive_skipped_steps
        if self._consecutive_skipped_steps >= limit:
            raise RuntimeError(
                f"{self._consecutive_skipped_steps} optimizer steps in a row had a non-finite loss or gradient "
                f"(max_consecutive_skipped_steps={limit}): training diverged. The weights are those of the last good "
                "step. Lower `learning_rate`, `inner_lr` or `max_inner_lr`, or set `max_grad_norm`."
            )
        return torch.tensor(float("nan"))

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, None, None]:
        """Evaluation loss = distillation loss after the (non-differentiated) inner step."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self._metrics[mode].items():
            if values:
                logs[f"{prefix}{key}"] = sum(values) / len(values) if key != "skipped_steps" else sum(values)
        self._metrics[mode].clear()
        super().log(logs, start_time)

    # ----- optimizer
    def create_optimizer(self, model: nn.Module | None = None):
        """The log inner LRs get their own group: no weight decay, `inner_lr_learning_rate`."""
        if self.optimizer is None and self.args.inner_lr_learning_rate is not None:
            self.optimizer = _with_inner_lr_group(self, model)
            return self.optimizer
        return super().create_optimizer(model) if model is not None else super().create_optimizer()

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        return [name for name in super().get_decay_parameter_names(model) if "log_inner_lrs" not in name]

    # ----- saving & loading
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Adapter (PEFT format) + `metaprompt_config.json` + tokenizer + training args."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        logger.info("Saving meta-trained checkpoint to %s", output_dir)
        self.meta_model.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        # Never the Hub token: `training_args.bin` is a plain pickle and `Trainer.push_to_hub` uploads it.
        args = copy.copy(self.args)
        args.hub_token = None
        torch.save(args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if not os.path.isfile(os.path.join(resume_from_checkpoint, METAPROMPT_CONFIG_NAME)):
            raise ValueError(
                f"{resume_from_checkpoint} has no {METAPROMPT_CONFIG_NAME}: it was not written by MetaDistillTrainer."
            )
        target = self.accelerator.unwrap_model(model) if model is not None else self.meta_model
        target.load_meta_state(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        command: str | None = None,
        eval_results: list[dict] | None = None,
        example_context: str | None = None,
        example_question: str | None = None,
        **kwargs: Any,
    ) -> None:
        """`README.md` in `output_dir`: inner-loop settings, evaluation results (from `eval_results.json` unless
        given), usage code and the command. `Trainer.push_to_hub` calls it before uploading."""
        if not self.is_world_process_zero():
            return
        output_dir = Path(self.args.output_dir)
        examples = {"example_context": example_context, "example_question": example_question}
        hub_id = self.hub_model_id or self.args.hub_model_id
        write_checkpoint_card(
            output_dir,
            self.meta_model.current_settings(),
            repo_id=hub_id or model_name or output_dir.name,
            load_path=None if hub_id else str(output_dir),  # not on the Hub: the usage code loads the folder
            eval_results=eval_results,
            datasets=[dataset_name] if dataset_name else None,
            command=command,
            tags=[tag for tag in (*self._tag_names, *_as_list(tags)) if tag not in DEFAULT_TAGS],
            trainer_name=self._name,
            paper=self._paper,
            **{k: v for k, v in examples.items() if v},
        )


def missing_checkpoint_files(checkpoint: str | os.PathLike) -> list[str]:
    """What a checkpoint lacks to resume from. `trainer_state.json` is written last, so a readable one means the
    save finished."""
    checkpoint = Path(checkpoint)
    missing = [name for name in (METAPROMPT_CONFIG_NAME,) if not (checkpoint / name).is_file()]
    try:
        json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    except (OSError, ValueError):
        missing.append(TRAINER_STATE_NAME)
    return missing


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The highest-step `checkpoint-N` of `output_dir` that a save finished writing."""
    folder = Path(output_dir)
    steps = sorted(
        (int(path.name.split("-")[1]), path)
        for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.is_dir() and path.name.split("-")[1].isdigit()
    )
    for _, path in reversed(steps):
        missing = missing_checkpoint_files(path)
        if not missing:
            return str(path)
        logger.warning("Skipping incomplete checkpoint %s (no readable %s).", path, ", ".join(missing))
    return None


def _init_kwargs(args: MetaDistillConfig) -> dict[str, Any]:
    kwargs = dict(args.model_init_kwargs or {})
    kwargs.setdefault("attn_implementation", "sdpa")
    return kwargs


def _prepare_meta_model(model: nn.Module, args: MetaDistillConfig, peft_config: Any | None) -> nn.Module:
    from peft import LoraConfig, PeftModel, get_peft_model

    if args.inner_params == "all":
        if isinstance(model, PeftModel) or peft_config is not None:
            raise ValueError("inner_params='all' adapts the model's own weights: pass a plain model, no peft_config.")
        return model
    if isinstance(model, PeftModel):
        if peft_config is not None:
            raise ValueError("`model` is already a PeftModel: its adapter is the meta-learned one; drop peft_config.")
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(
                "The PeftModel's adapter is frozen; load it with `PeftModel.from_pretrained(..., is_trainable=True)`."
            )
        return model
    if peft_config is None:
        peft_config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=args.lora_target_modules or _all_linear(model, args.lora_last_layers),
            layers_to_transform=_last_layers(model, args.lora_last_layers),
            task_type="CAUSAL_LM",
            # GPT-2-style Conv1D layers store the weight transposed (PEFT would otherwise warn and switch it on).
            fan_in_fan_out=any(isinstance(module, Conv1D) for module in model.modules()),
        )
    with quiet_peft_wrapping():
        return get_peft_model(model, peft_config)


def _all_linear(model: nn.Module, last_layers: int | None) -> str | list[str]:
    """PEFT's "all-linear", or with `lora_last_layers` (which PEFT takes only with named modules) the names of the
    linear layers it stands for: every linear layer but the output head, as the inner step finds them."""
    if last_layers is None:
        return "all-linear"
    return sorted({linear.name.rsplit(".", 1)[-1] for linear in AdaptedModules.from_linear_layers(model).linears})


def _last_layers(model: nn.Module, count: int | None) -> list[int] | None:
    """The indices of the last `count` decoder layers (PEFT's `layers_to_transform`), or None for every layer."""
    if count is None:
        return None
    total = getattr(model.config, "num_hidden_layers", None)
    if total is None:
        raise ValueError("lora_last_layers needs a model whose config has num_hidden_layers; use lora_target_modules.")
    if not isinstance(count, int) or not 0 < count <= total:
        raise ValueError(f"lora_last_layers must be a whole number from 1 to the model's {total} layers, got {count}.")
    return list(range(total - count, total))


def _load_teacher(model: nn.Module, args: MetaDistillConfig) -> nn.Module | None:
    """`None` means: the model itself with its adapter disabled."""
    if args.teacher != "base":
        location = base_location(local_path_or_repo_id(args.teacher, "teacher"))
        teacher = AutoModelForCausalLM.from_pretrained(location, **_init_kwargs(args))
        if teacher.config.vocab_size != model.config.vocab_size:
            raise ValueError(
                f"The teacher {args.teacher!r} has vocab_size {teacher.config.vocab_size}, the model "
                f"{model.config.vocab_size}: teacher and student must share a tokenizer."
            )
        return teacher.eval()
    if args.inner_params == "all":
        # The meta-trained weights are the base weights themselves: keep a frozen copy of the starting point.
        return copy.deepcopy(model).eval()
    return None


def _check_distributed_support(args: MetaDistillConfig, fsdp_enabled: bool = False) -> None:
    """ZeRO-3 and FSDP shard the parameters the inner step substitutes; not proven correct yet."""
    if args.fsdp or fsdp_enabled:
        raise ValueError(
            "FSDP is not supported: sharded parameters break the per-task fast weights of the inner step (meta-"
            "gradients unverified). Use DDP or DeepSpeed ZeRO-1/2."
        )
    if _deepspeed_stage(args) == 3:
        raise ValueError(
            "DeepSpeed ZeRO-3 is not supported: partitioned parameters break the inner step's fast weights. "
            "Use ZeRO stage 1 or 2."
        )


def _deepspeed_stage(args: MetaDistillConfig) -> int | None:
    """The ZeRO stage of `--deepspeed` or of an `accelerate launch` DeepSpeed config (both end in the plugin)."""
    if args.deepspeed_plugin is not None:
        return args.deepspeed_plugin.zero_stage
    config = args.deepspeed  # assigned after the arguments were built: not parsed into a plugin
    if isinstance(config, str):
        with open(config) as handle:
            config = json.load(handle)
    return (config or {}).get("zero_optimization", {}).get("stage")


def _with_inner_lr_group(trainer: MetaDistillTrainer, model: nn.Module | None) -> torch.optim.Optimizer:
    model = model if model is not None else trainer.model
    decay = set(trainer.get_decay_parameter_names(model))
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "inner_lr": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = "inner_lr" if "log_inner_lrs" in name else ("decay" if name in decay else "no_decay")
        groups[key].append(param)
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    param_groups = [
        {"params": groups["decay"], "weight_decay": trainer.args.weight_decay},
        {"params": groups["no_decay"], "weight_decay": 0.0},
        {"params": groups["inner_lr"], "weight_decay": 0.0, "lr": trainer.args.inner_lr_learning_rate},
    ]
    return optimizer_cls([g for g in param_groups if g["params"]], **optimizer_kwargs)


def _as_list(tags: str | list[str] | None) -> list[str]:
    if tags is None:
        return []
    return [tags] if isinstance(tags, str) else list(tags)
