"""MetaDistillTrainer end to end on a toy task: learning, saving, reloading, resuming, accumulation, guards."""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch
from conftest import tiny_model
from datasets import Dataset
from peft import PeftModel

from hf_metaprompt import MetaDistillConfig, MetaDistillTrainer
from hf_metaprompt.meta_step import MetaDistillModel

NAMES = ["Alice Moreau", "Bob Tanaka", "Carla Diaz"]
JOBS = ["baker", "pilot", "nurse"]
CITIES = ["Lisbon", "Oslo", "Quito"]


def toy_dataset(n: int, seed: int) -> Dataset:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, job, city = rng.choice(NAMES), rng.choice(JOBS), rng.choice(CITIES)
        rows.append(
            {
                "context": f"{name} is a {job} from {city}.",
                "query": f"Q: Who is {name}?\nA:",
                "answer": f" a {job} from {city}",
            }
        )
    return Dataset.from_list(rows)


def config(tmp_path, **overrides) -> MetaDistillConfig:
    options = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        inner_lr=0.5,
        max_steps=6,
        lora_r=4,
        lora_alpha=8,
        report_to="none",
        use_cpu=True,
        seed=0,
        data_seed=0,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )
    options.update(overrides)
    return MetaDistillConfig(**options)


def peaky_model(seed: int = 0):
    """Random init with large weights, so predictions depend on the context (a uniform model has nothing to learn)."""
    model = tiny_model("llama", seed=seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(8.0)
    return model


def make_trainer(tmp_path, tokenizer, **overrides) -> MetaDistillTrainer:
    return MetaDistillTrainer(
        model=peaky_model(),
        args=config(tmp_path, **overrides),
        train_dataset=toy_dataset(32, seed=0),
        eval_dataset=toy_dataset(8, seed=1),
        processing_class=tokenizer,
    )


def adapter_state(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.meta_model.named_parameters() if p.requires_grad}


def test_training_lowers_distillation_loss(tmp_path, llama_tokenizer):
    trainer = make_trainer(tmp_path, llama_tokenizer, max_steps=25)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < 0.7 * before, (before, after)
    logged = [entry for entry in trainer.state.log_history if "distill_loss" in entry]
    assert {"inner_loss", "teacher_agreement", "inner_lr", "skipped_steps"} <= set(logged[0])
    assert logged[0]["skipped_steps"] == 0


def test_save_and_reload_reproduce_outputs(tmp_path, llama_tokenizer):
    trainer = make_trainer(tmp_path, llama_tokenizer)
    trainer.train()
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    for name in ("adapter_config.json", "adapter_model.safetensors", "metaprompt_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metaprompt_config.json").read_text())
    assert saved["inner_lrs"] == pytest.approx(trainer.meta_model.inner_lr_dict())
    assert saved["inner_lrs"] != pytest.approx({k: 0.5 for k in saved["inner_lrs"]})  # they were learned

    reloaded = MetaDistillTrainer(
        model=PeftModel.from_pretrained(peaky_model(), str(out), is_trainable=True),
        args=config(tmp_path),
        eval_dataset=toy_dataset(8, seed=1),
        processing_class=llama_tokenizer,
    )
    reloaded.meta_model.load_meta_state(out)
    assert reloaded.evaluate()["eval_loss"] == pytest.approx(trainer.evaluate()["eval_loss"], rel=1e-6)


def test_resume_continues_with_learned_inner_lrs(tmp_path, llama_tokenizer):
    full = make_trainer(tmp_path / "full", llama_tokenizer, max_steps=6)
    full.train()

    first = make_trainer(tmp_path / "resumed", llama_tokenizer, max_steps=6, save_strategy="steps", save_steps=3)
    first.train()
    checkpoint = tmp_path / "resumed" / "out" / "checkpoint-3"
    saved_lrs = json.loads((checkpoint / "metaprompt_config.json").read_text())["inner_lrs"]

    resumed = make_trainer(tmp_path / "resumed", llama_tokenizer, max_steps=6)
    resumed._load_from_checkpoint(str(checkpoint))
    assert resumed.meta_model.inner_lr_dict() == pytest.approx(saved_lrs, rel=1e-6)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    final, reference = adapter_state(resumed), adapter_state(full)
    for name in reference:
        torch.testing.assert_close(final[name], reference[name], rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_normalises_by_target_tokens(tmp_path, llama_tokenizer):
    common = dict(max_steps=1, optim="sgd", max_grad_norm=0.0, learning_rate=0.1, lr_scheduler_type="constant")
    one = make_trainer(tmp_path / "a", llama_tokenizer, per_device_train_batch_size=4, **common)
    one.train()
    accumulated = make_trainer(
        tmp_path / "b", llama_tokenizer, per_device_train_batch_size=2, gradient_accumulation_steps=2, **common
    )
    accumulated.train()
    a, b = adapter_state(one), adapter_state(accumulated)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)


def test_activation_checkpointing_flag_trains_identically(tmp_path, llama_tokenizer):
    plain = make_trainer(tmp_path / "plain", llama_tokenizer, max_steps=2)
    plain.train()
    checkpointed = make_trainer(tmp_path / "ckpt", llama_tokenizer, max_steps=2, activation_checkpointing=True)
    checkpointed.train()
    a, b = adapter_state(plain), adapter_state(checkpointed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_frozen_adapter_is_refused(tmp_path, llama_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(peaky_model(), LoraConfig(r=4, target_modules="all-linear"))
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="is_trainable=True"):
        MetaDistillTrainer(model=model, args=config(tmp_path), processing_class=llama_tokenizer)


def test_non_finite_step_is_skipped(tmp_path, llama_tokenizer, monkeypatch):
    original = MetaDistillModel.forward

    def poisoned(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(MetaDistillModel, "forward", poisoned)
    trainer = make_trainer(tmp_path, llama_tokenizer, max_steps=1)
    before = adapter_state(trainer)
    trainer.train()
    after = adapter_state(trainer)
    for name in before:
        assert torch.isfinite(after[name]).all()
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    assert any(entry.get("skipped_steps") == 1 for entry in trainer.state.log_history)


def test_label_free_training_runs(tmp_path, llama_tokenizer):
    dataset = toy_dataset(8, seed=0).remove_columns("answer")
    trainer = MetaDistillTrainer(
        model=peaky_model(),
        args=config(tmp_path, max_steps=2, max_answer_length=5),
        train_dataset=dataset,
        processing_class=llama_tokenizer,
    )
    trainer.train()
    assert all(torch.isfinite(p).all() for p in adapter_state(trainer).values())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"inner_lr": -1.0}, "`inner_lr` must be a positive number"),
        ({"inner_steps": 0}, "`inner_steps` must be a positive number"),
        ({"inner_params": "bias"}, "`inner_params` must be one of 'lora', 'base', 'all'"),
        ({"distill_loss": "mse"}, "`distill_loss` must be one of"),
        ({"distill_on": "context"}, "`distill_on` must be one of"),
        ({"context_truncation": "right"}, "`context_truncation` must be one of"),
        ({"min_inner_lr": 1.0}, "min_inner_lr <= inner_lr <= max_inner_lr"),
        ({"jsd_beta": 1.0}, "`jsd_beta` must be in"),
        ({"remove_unused_columns": True}, "remove_unused_columns"),
        ({"query_field": "context"}, "three different columns"),
    ],
)
def test_config_validation(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **overrides)


def test_zero3_is_refused(tmp_path, llama_tokenizer):
    args = config(tmp_path)
    args.deepspeed = {"zero_optimization": {"stage": 3}}
    with pytest.raises(ValueError, match="ZeRO-3 is not supported"):
        MetaDistillTrainer(model=peaky_model(), args=args, processing_class=llama_tokenizer)


def test_separate_teacher_model(tmp_path, llama_tokenizer):
    teacher_dir = tmp_path / "teacher"
    peaky_model(seed=1).save_pretrained(teacher_dir)
    trainer = make_trainer(tmp_path, llama_tokenizer, max_steps=1, teacher=str(teacher_dir))
    assert trainer.meta_model.teacher is not None and not any(
        p.requires_grad for p in trainer.meta_model.teacher.parameters()
    )
    own_teacher = make_trainer(tmp_path / "own", llama_tokenizer, max_steps=1)
    # A different teacher gives different targets, hence a different loss on the same tasks.
    assert trainer.evaluate()["eval_loss"] != pytest.approx(own_teacher.evaluate()["eval_loss"], rel=1e-3)
    trainer.train()

    other_vocab = tiny_model("llama")
    other_vocab.resize_token_embeddings(301)
    other_vocab.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="share a tokenizer"):
        make_trainer(tmp_path, llama_tokenizer, teacher=str(tmp_path / "other"))


def test_gpt2_conv1d_layers_get_a_transposed_adapter_without_warnings(tmp_path, gpt2_tokenizer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = MetaDistillTrainer(
            model=tiny_model("gpt2"),
            args=config(tmp_path),
            train_dataset=toy_dataset(8, seed=0),
            processing_class=gpt2_tokenizer,
        )
    assert trainer.meta_model.model.peft_config["default"].fan_in_fan_out
    assert not [w for w in caught if "fan_in_fan_out" in str(w.message)]


def test_lora_on_the_last_layers_only_adapts_and_steps_those(tmp_path, llama_tokenizer):
    """`lora_last_layers=1` of 2: the adapter, the inner step's modules and the learned inner LRs are the top layer's
    alone, and a meta-step trains them (the lower layer needs no gradient, so backward stops above it)."""
    trainer = make_trainer(tmp_path, llama_tokenizer, lora_last_layers=1, max_steps=2)
    adapted = trainer.meta_model.adapted.group_names
    assert adapted and all(".layers.1." in name for name in adapted)
    lora = [n for n, p in trainer.meta_model.named_parameters() if p.requires_grad and "lora_" in n]
    assert lora and all(".layers.1." in name for name in lora)
    before = adapter_state(trainer)
    trainer.train()
    after = adapter_state(trainer)
    assert any(not torch.equal(before[name], after[name]) for name in before)
    with pytest.raises(ValueError, match="lora_last_layers must be a whole number from 1 to the model's 2 layers"):
        make_trainer(tmp_path, llama_tokenizer, lora_last_layers=3)
    with pytest.raises(ValueError, match="`lora_last_layers` must be a positive number"):
        make_trainer(tmp_path, llama_tokenizer, lora_last_layers=0)
