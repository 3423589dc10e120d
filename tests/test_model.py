"""MetaPromptModel: load what the trainer saved, absorb, ask, reset, save; push to and load from a (local) Hub."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import _tokenizer
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError
from test_trainer import config, peaky_model, toy_dataset

from hf_metaprompt import MetaDistillTrainer, MetaPromptModel
from hf_metaprompt.cli import main as cli_main
from hf_metaprompt.hub import push_checkpoint

QUERIES = ["Q: Who is Alice Moreau?\nA:", "Q: Who is Bob Tanaka?\nA:"]
TEXTS = ["Alice Moreau is a pilot from Oslo.", "Bob Tanaka is a nurse from Quito."]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A briefly meta-trained toy checkpoint whose base lives in a local folder (as from_pretrained expects)."""
    tokenizer = _tokenizer(bos=True)
    root = tmp_path_factory.mktemp("ckpt")
    base_dir = root / "base"
    peaky_model().save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    from transformers import AutoModelForCausalLM

    trainer = MetaDistillTrainer(
        model=AutoModelForCausalLM.from_pretrained(base_dir),
        args=config(root, max_steps=4),
        train_dataset=toy_dataset(16, seed=0),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(str(root / "meta"))
    return root / "meta", base_dir


def student_logits(model: MetaPromptModel, queries=QUERIES) -> torch.Tensor:
    batch = model.tokenizer(queries, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_from_pretrained_records_base_and_learned_rates(checkpoint):
    directory, base_dir = checkpoint
    saved = json.loads((directory / "metaprompt_config.json").read_text())
    assert saved["base_model"] == str(base_dir)
    model = MetaPromptModel.from_pretrained(directory)
    assert model.meta.inner_lr_dict() == pytest.approx(saved["inner_lrs"])


def test_absorb_changes_answers_and_reset_restores_them_exactly(checkpoint):
    model = MetaPromptModel.from_pretrained(checkpoint[0])
    before = student_logits(model)
    model.absorb(TEXTS[0])
    after = student_logits(model)
    assert not torch.allclose(before, after)
    model.reset()
    assert torch.equal(student_logits(model), before)


def test_absorb_per_row_equals_absorbing_each_text_alone(checkpoint):
    model = MetaPromptModel.from_pretrained(checkpoint[0])
    model.absorb(TEXTS, per_row=True)
    batched = student_logits(model)
    for row, text in enumerate(TEXTS):
        model.reset().absorb(text)
        alone = student_logits(model, [QUERIES[row]])
        # Same tokens (the two queries have equal length here, so no padding differs).
        torch.testing.assert_close(batched[row : row + 1], alone, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="absorb one text per row"):
        model.reset().absorb(TEXTS, per_row=True)
        student_logits(model, QUERIES + QUERIES[:1])


def test_sequential_absorb_is_two_steps(checkpoint):
    model = MetaPromptModel.from_pretrained(checkpoint[0])
    one = student_logits(model.absorb(TEXTS[0]))
    two = student_logits(model.absorb(TEXTS[1]))
    assert not torch.allclose(one, two)
    assert torch.equal(student_logits(model.reset().absorb(TEXTS)), two)


def test_ask_and_bad_input(checkpoint):
    model = MetaPromptModel.from_pretrained(checkpoint[0])
    answers = model.absorb(TEXTS[0]).ask(QUERIES, max_new_tokens=4)
    assert isinstance(answers, list) and len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert isinstance(model.ask(QUERIES[0], max_new_tokens=2), str)
    with pytest.raises(ValueError, match="non-empty text"):
        model.absorb("   ")


def test_save_pretrained_round_trip(checkpoint, tmp_path):
    model = MetaPromptModel.from_pretrained(checkpoint[0])
    model.save_pretrained(tmp_path / "copy")
    copy = MetaPromptModel.from_pretrained(tmp_path / "copy")
    assert torch.equal(student_logits(copy), student_logits(model))
    assert torch.equal(student_logits(copy.absorb(TEXTS[0])), student_logits(model.absorb(TEXTS[0])))


def test_push_download_identical_logits_and_card(checkpoint, hub_server, tmp_path):
    directory, base_dir = checkpoint
    api = HfApi()
    api.create_repo("test-user/tiny-base")
    api.upload_folder(repo_id="test-user/tiny-base", folder_path=base_dir)
    local = MetaPromptModel.from_pretrained(directory)
    local.meta.settings.base_model = "test-user/tiny-base"
    local.push_to_hub("test-user/tiny-metaprompt")

    hub_server.use_cache_dir(tmp_path / "fresh-cache")
    remote = MetaPromptModel.from_pretrained("test-user/tiny-metaprompt")
    assert torch.equal(student_logits(remote), student_logits(local))
    assert torch.equal(student_logits(remote.absorb(TEXTS[0])), student_logits(local.absorb(TEXTS[0])))

    card = ModelCard.load("test-user/tiny-metaprompt")
    assert card.data.base_model == "test-user/tiny-base"
    assert card.data.library_name == "peft"
    assert "hf_metaprompt" in card.data.tags
    card.validate()  # against the local server's metadata check


def test_failed_push_leaves_local_save_intact(checkpoint, hub_server, tmp_path):
    directory, base_dir = checkpoint
    model = MetaPromptModel.from_pretrained(directory)
    model.meta.settings.base_model = "test-user/tiny-base"
    folder = tmp_path / "save"
    model.save_pretrained(folder)
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "README.md"}
    hub_server.fail_next("commit", status=500)
    with pytest.raises(HfHubHTTPError) as error:
        push_checkpoint(folder, "test-user/broken")
    assert error.value.response.status_code == 500
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "README.md"} == files
    assert torch.equal(
        student_logits(MetaPromptModel.from_pretrained(folder, base_model=base_dir)), student_logits(model)
    )
    # The CLI reports the same failure in one line with a non-zero exit code.
    hub_server.fail_next("commit", status=500)
    assert cli_main(["push", str(folder), "test-user/broken"]) == 2


def test_cli_absorb(checkpoint, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text(TEXTS[0])
    assert (
        cli_main(["absorb", str(checkpoint[0]), "--text", str(text), "--ask", QUERIES[0], "--max_new_tokens", "3"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("Q: Who is Alice Moreau?")
    assert cli_main(["absorb", str(checkpoint[0]), "--text", str(tmp_path / "missing.txt"), "--ask", "x"]) == 2
    assert "no such file" in capsys.readouterr().err
