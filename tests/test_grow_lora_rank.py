"""`examples/grow_lora_rank.py`: a grown checkpoint answers as before without a step and trains on at its new rank."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import _tokenizer, load_script
from test_model import TEXTS, student_logits
from test_trainer import config, peaky_model, toy_dataset
from transformers import AutoModelForCausalLM

from hf_metaprompt import MetaDistillTrainer, MetaPromptModel


@pytest.fixture(scope="module")
def grow():
    return load_script("examples/grow_lora_rank.py").main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A toy checkpoint at LoRA rank 4 (alpha 8), briefly meta-trained so that B is not zero."""
    root = tmp_path_factory.mktemp("grow")
    base_dir = root / "base"
    peaky_model().save_pretrained(base_dir)
    _tokenizer(bos=True).save_pretrained(base_dir)
    trainer = MetaDistillTrainer(
        model=AutoModelForCausalLM.from_pretrained(base_dir),
        args=config(root, max_steps=4),
        train_dataset=toy_dataset(16, seed=0),
        processing_class=_tokenizer(bos=True),
    )
    trainer.train()
    trainer.save_model(str(root / "meta"))
    return root / "meta", base_dir


def test_grown_adapter_answers_as_before_without_a_step_and_uses_its_room_in_one(grow, checkpoint, tmp_path):
    grown = grow([str(checkpoint[0]), str(tmp_path / "grown"), "--rank", "12"])
    adapter = json.loads((grown / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (12, 24)  # alpha / r stays 2

    before, after = MetaPromptModel.from_pretrained(checkpoint[0]), MetaPromptModel.from_pretrained(grown)
    assert after.meta.inner_lr_dict() == pytest.approx(before.meta.inner_lr_dict())
    torch.testing.assert_close(student_logits(after), student_logits(before), rtol=1e-5, atol=1e-5)
    # The step writes through the new rows of A too: the same text moves the grown model's answers further.
    moved = {}
    for name, model in (("before", before), ("after", after)):
        start = student_logits(model)
        moved[name] = (student_logits(model.absorb(TEXTS[0])) - start).abs().sum().item()
    assert moved["after"] > moved["before"] * 1.05


def test_grown_checkpoint_continues_training_at_its_rank(grow, checkpoint, tmp_path):
    # From a Trainer checkpoint: its optimizer state fits the old rank and is not carried over.
    source = tmp_path / "checkpoint-4"
    shutil.copytree(checkpoint[0], source)
    (source / "optimizer.pt").write_bytes(b"old shapes")
    (source / "trainer_state.json").write_text("{}")
    grown = grow([str(source), str(tmp_path / "grown"), "--rank", "8"])
    assert not (grown / "optimizer.pt").exists() and not (grown / "trainer_state.json").exists()
    trainer = MetaDistillTrainer(
        model=AutoModelForCausalLM.from_pretrained(checkpoint[1]),
        args=config(tmp_path, max_steps=2, lora_r=8, lora_alpha=16),
        train_dataset=toy_dataset(8, seed=1),
        processing_class=_tokenizer(bos=True),
    )
    trainer.meta_model.load_meta_state(grown)
    trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    # A trainer still at the old rank refuses the grown adapter instead of loading part of it.
    old_rank = MetaDistillTrainer(
        model=AutoModelForCausalLM.from_pretrained(checkpoint[1]),
        args=config(tmp_path / "old"),
        train_dataset=toy_dataset(8, seed=1),
        processing_class=_tokenizer(bos=True),
    )
    with pytest.raises((ValueError, RuntimeError)):
        old_rank.meta_model.load_meta_state(grown)


def test_a_rank_that_does_not_grow_is_refused(grow, checkpoint, tmp_path):
    with pytest.raises(ValueError, match="--rank 4"):
        grow([str(checkpoint[0]), str(tmp_path / "same"), "--rank", "4"])
    assert not (tmp_path / "same").exists()
