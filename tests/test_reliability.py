"""Faults a meta-training run must survive or report clearly: non-finite steps, interrupted saves, lost resumes, bad
rows, secrets in saved files. Each test reproduces one case of the README's fault matrix."""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch
from datasets import Dataset
from test_trainer import adapter_state, config, make_trainer, peaky_model, toy_dataset
from transformers import TrainerCallback

from hf_metaprompt import MetaDistillTrainer
from hf_metaprompt.cli import main as cli_main
from hf_metaprompt.settings import METAPROMPT_CONFIG_NAME


# ----- non-finite gradients
class Snapshots(TrainerCallback):
    """Adapter weights and optimizer state after every optimizer step."""

    def __init__(self) -> None:
        self.trainer = None
        self.steps: list[tuple[dict, dict]] = []

    def on_step_end(self, args, state, control, **kwargs):
        optimizer_state = copy.deepcopy(self.trainer.optimizer.state_dict()["state"])
        self.steps.append((adapter_state(self.trainer), optimizer_state))


def poison_inner_lr_gradient(trainer, calls: set[int] | None = None) -> None:
    """A NaN gradient on the learned inner LRs of the given backward calls (all if None); the loss stays finite."""
    count = {"n": 0}

    def hook(grad):
        count["n"] += 1
        return grad * math.nan if calls is None or count["n"] in calls else grad

    trainer.meta_model.log_inner_lrs.register_hook(hook)


def test_non_finite_gradient_skips_the_step_without_touching_weights_or_adamw_state(tmp_path, llama_tokenizer):
    trainer = make_trainer(tmp_path, llama_tokenizer, max_steps=3, max_grad_norm=1.0, weight_decay=0.1)
    snapshots = Snapshots()
    snapshots.trainer = trainer
    trainer.add_callback(snapshots)
    poison_inner_lr_gradient(trainer, calls={2})
    trainer.train()

    (after_1, optim_1), (after_2, optim_2), (after_3, _) = snapshots.steps
    for name in after_1:  # the skipped step 2 moved nothing: no momentum, no weight decay, no step count
        torch.testing.assert_close(after_2[name], after_1[name], rtol=0, atol=0, msg=name)
        assert torch.isfinite(after_3[name]).all(), name
    assert optim_2.keys() == optim_1.keys()
    for index, state in optim_1.items():
        for key, value in state.items():
            torch.testing.assert_close(optim_2[index][key], value, rtol=0, atol=0)
    assert any(not torch.equal(after_3[name], after_2[name]) for name in after_1)  # step 3 learned again
    assert sum(entry.get("skipped_steps", 0) for entry in trainer.state.log_history) == 1


def test_consecutive_non_finite_steps_stop_training(tmp_path, llama_tokenizer):
    trainer = make_trainer(tmp_path, llama_tokenizer, max_steps=10, max_consecutive_skipped_steps=3)
    poison_inner_lr_gradient(trainer)
    before = adapter_state(trainer)
    with pytest.raises(RuntimeError, match=r"3 optimizer steps in a row.*max_consecutive_skipped_steps=3"):
        trainer.train()
    assert trainer.state.global_step == 2  # the third skip raised before its step was counted
    for name, value in adapter_state(trainer).items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


def test_non_finite_weights_are_never_saved_or_loaded(tmp_path, llama_tokenizer):
    trainer = make_trainer(tmp_path, llama_tokenizer, max_steps=1)
    trainer.train()
    good = tmp_path / "good"
    trainer.save_model(str(good))
    with torch.no_grad():
        trainer.meta_model.log_inner_lrs[0] = math.nan
    with pytest.raises(ValueError, match="log_inner_lrs holds non-finite values"):
        trainer.save_model(str(tmp_path / "bad"))
    assert not (tmp_path / "bad" / METAPROMPT_CONFIG_NAME).exists()

    # A file edited (or written by an older version) with NaN rates is refused on load, naming the file.
    settings = json.loads((good / METAPROMPT_CONFIG_NAME).read_text())
    first = next(iter(settings["inner_lrs"]))
    settings["inner_lrs"][first] = math.nan
    (good / METAPROMPT_CONFIG_NAME).write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=rf"{METAPROMPT_CONFIG_NAME}.*inner_lrs\['{first}'\].*finite"):
        trainer.meta_model.load_meta_state(good)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lora_r": 8, "lora_alpha": 16}, r"does not fit this model \(another lora_r\?\).*size mismatch"),
        ({"lora_target_modules": ["q_proj", "v_proj"]}, r"other modules.*lora_target_modules.*not in this model"),
        ({"inner_params": "all"}, r"inner_params='lora'.*pass inner_params='lora'"),
    ],
)
def test_meta_state_of_another_shape_is_refused_not_loaded_in_part(tmp_path, llama_tokenizer, overrides, message):
    saved = tmp_path / "saved"
    make_trainer(tmp_path, llama_tokenizer, max_steps=1).save_model(str(saved))
    other = make_trainer(tmp_path / "other", llama_tokenizer, max_steps=1, **overrides)
    before = adapter_state(other)
    with pytest.raises(ValueError, match=message):
        other.meta_model.load_meta_state(saved)
    for name, value in adapter_state(other).items():  # a refused load leaves the model as it was
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


# ----- resuming and interrupted saves
def test_resume_falls_back_to_the_last_complete_checkpoint(tmp_path, llama_tokenizer):
    first = make_trainer(tmp_path, llama_tokenizer, max_steps=2, save_strategy="steps", save_steps=1)
    first.train()
    output = tmp_path / "out"
    (output / "checkpoint-2" / "trainer_state.json").unlink()  # killed while saving checkpoint-2

    again = make_trainer(tmp_path, llama_tokenizer, max_steps=2, save_strategy="steps", save_steps=1)
    with pytest.raises(FileNotFoundError, match=r"checkpoint-2.*trainer_state.json missing"):
        again.train(resume_from_checkpoint=str(output / "checkpoint-2"))
    again.train(resume_from_checkpoint=True)
    assert again.state.global_step == 2
    assert [entry["step"] for entry in again.state.log_history if "loss" in entry] == [1, 2]  # step 1 came from disk
    assert (output / "checkpoint-2" / "trainer_state.json").is_file()


def test_cli_train_resumes_instead_of_starting_over(tmp_path, monkeypatch):
    import hf_metaprompt.pipeline as pipeline

    monkeypatch.setattr(pipeline, "evaluate_all", lambda *args, **kwargs: [])
    output = tmp_path / "run"
    flags = [
        "train", "--task", "tiny_world", "--output_dir", str(output), "--per_device_train_batch_size", "2",
        "--max_train_samples", "8",
        "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1", "--use_cpu", "--disable_tqdm", "true",
    ]  # fmt: skip
    assert cli_main([*flags, "--max_steps", "2"]) == 0
    written = {path: path.stat().st_mtime_ns for path in output.glob("checkpoint-*/*.safetensors")}
    assert len(written) == 2
    assert cli_main([*flags, "--max_steps", "3", "--resume_from_checkpoint", "last"]) == 0
    state = json.loads((output / "checkpoint-3" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3]
    assert {path: path.stat().st_mtime_ns for path in written} == written  # nothing overwritten
    assert cli_main([*flags, "--max_steps", "4", "--resume_from_checkpoint", str(output / "checkpoint-3")]) == 0
    assert (output / "checkpoint-4").is_dir()


# ----- bad rows, found before training starts
def rows_with(index: int, **fields) -> Dataset:
    rows = toy_dataset(40, seed=0).to_list()
    rows[index].update(fields)
    return Dataset.from_list(rows)


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"query": "  "}, ValueError, r"train_dataset row 37: field 'query' is empty"),
        ({"answer": ""}, ValueError, r"rows \[37\] have none .* rows \[0, 1, 2, 3, 4\] have one"),
        ({"answer": " x" * 80}, ValueError, r"train_dataset row 37: the answer has \d+ tokens > max_answer_length"),
        ({"context": None}, TypeError, r"train_dataset row 37: field 'context' must be a string"),
    ],
)
def test_bad_row_fails_at_start_up_naming_the_row(tmp_path, llama_tokenizer, fields, error, message):
    with pytest.raises(error, match=message):
        MetaDistillTrainer(
            model=peaky_model(),
            args=config(tmp_path),
            train_dataset=rows_with(37, **fields),
            processing_class=llama_tokenizer,
        )


def test_views_longer_than_the_position_limit_are_refused_with_the_fix(tmp_path, llama_tokenizer):
    long_context = "Alice Moreau is a baker from Lisbon. " * 40  # > 256 positions of the tiny model
    with pytest.raises(ValueError, match=r"row 3: .* max_position_embeddings=256: lower max_context_length to \d+"):
        MetaDistillTrainer(
            model=peaky_model(),
            args=config(tmp_path, max_context_length=512),
            train_dataset=rows_with(3, context=long_context),
            processing_class=llama_tokenizer,
        )
    # Within the limit once contexts are truncated to fit.
    MetaDistillTrainer(
        model=peaky_model(),
        args=config(tmp_path, max_context_length=200),
        train_dataset=rows_with(3, context=long_context),
        processing_class=llama_tokenizer,
    )


def test_empty_dataset_is_refused(tmp_path, llama_tokenizer):
    empty = toy_dataset(1, seed=0).select([])
    with pytest.raises(ValueError, match="train_dataset is empty"):
        MetaDistillTrainer(
            model=peaky_model(), args=config(tmp_path), train_dataset=empty, processing_class=llama_tokenizer
        )


# ----- configuration
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"torch_compile": True}, "torch_compile=True is not supported: .*double backward"),
        ({"inner_lr": "0.1"}, r"`inner_lr` must be a positive number, got '0.1'"),
        ({"max_inner_lr": math.inf}, "`max_inner_lr` must be a positive number, got inf"),
        ({"min_inner_lr": math.nan}, "`min_inner_lr` must be a positive number, got nan"),
        ({"max_consecutive_skipped_steps": 0}, "`max_consecutive_skipped_steps` must be a positive number"),
        ({"reversed_context_weight": -0.5}, r"`reversed_context_weight` must be a finite number >= 0, got -0.5"),
        ({"reversed_context_weight": math.nan}, r"`reversed_context_weight` must be a finite number >= 0, got nan"),
        ({"answer_loss_weight": 1.5}, r"`answer_loss_weight` must be a number in \[0, 1\], got 1.5"),
        ({"answer_loss_weight": math.nan}, r"`answer_loss_weight` must be a number in \[0, 1\], got nan"),
    ],
)
def test_config_refuses_what_would_fail_later(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **overrides)


def test_a_training_run_warns_nothing_a_user_cannot_act_on(tmp_path, llama_tokenizer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(tmp_path, llama_tokenizer, max_steps=1)
        trainer.train()
    messages = [str(warning.message) for warning in caught]
    assert not [m for m in messages if "is_gradient_checkpointing" in m or "pin_memory" in m], messages
    assert trainer.args.dataloader_pin_memory is False  # nothing to pin for without an accelerator


# ----- secrets
def test_hub_token_is_not_written_to_training_args(tmp_path, llama_tokenizer):
    secret = "hf_DoNotStoreMe1234567890"
    trainer = make_trainer(tmp_path, llama_tokenizer, max_steps=1, hub_token=secret)
    trainer.save_model(str(tmp_path / "saved"))
    assert secret.encode() not in (tmp_path / "saved" / "training_args.bin").read_bytes()
    assert trainer.args.hub_token == secret  # the running trainer keeps it for its own uploads
