"""MetaPromptModel: load what the trainer saved, absorb, ask, reset, save; push to and load from a (local) Hub."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from conftest import _tokenizer
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError
from test_trainer import config, peaky_model, toy_dataset

from hf_metaprompt import MetaDistillTrainer, MetaPromptModel, PromptTargetCollator
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


def test_absorb_tokenises_a_context_like_the_collators_inner_view(checkpoint, monkeypatch):
    """Inference absorbs exactly the ids meta-training took its inner step on: same prefix and tokens."""
    import hf_metaprompt.metaprompt_model as model_module

    model = MetaPromptModel.from_pretrained(checkpoint[0])
    texts = [TEXTS[0], " ".join(TEXTS * 3)]
    seen = []
    real_inner_update = model_module.inner_update
    monkeypatch.setattr(
        model_module, "inner_update", lambda *a, **kw: seen.append(a[3:5]) or real_inner_update(*a, **kw)
    )
    model.absorb(texts, per_row=True)
    collator = PromptTargetCollator(model.tokenizer, max_context_length=model.settings.max_context_length)
    batch = collator([{"context": text, "query": QUERIES[0], "answer": "x"} for text in texts])
    (ids, mask) = seen[0]
    assert torch.equal(ids, batch["context_input_ids"])
    assert torch.equal(mask, batch["context_attention_mask"])
    assert ids[0, 0].item() == model.tokenizer.bos_token_id


def test_a_text_longer_than_the_window_is_never_cut_to_its_end(checkpoint, monkeypatch):
    """Past `max_context_length`, absorbing takes the text window after window (every token, in order); one state
    per row cannot, and says so instead of keeping the text's end alone."""
    import hf_metaprompt.metaprompt_model as model_module

    model = MetaPromptModel.from_pretrained(checkpoint[0])
    model.meta.settings = dataclasses.replace(model.settings, max_context_length=12)
    long_text = " ".join(TEXTS * 3)
    with pytest.raises(ValueError, match=r"longer than the context window \(12 tokens\): per_row=True"):
        model.absorb([TEXTS[0], long_text], per_row=True)
    assert model.fast_weights is None  # nothing half-absorbed
    seen = []
    real_inner_update = model_module.inner_update
    monkeypatch.setattr(
        model_module, "inner_update", lambda *a, **kw: seen.append(a[3:5]) or real_inner_update(*a, **kw)
    )
    model.absorb(long_text)
    windows = [model.tokenizer.decode(ids[mask.bool()][1:]) for ids, mask in ((i[0], m[0]) for i, m in seen)]
    assert len(windows) > 1 and all(int(m.sum()) <= 1 + 12 for _, m in seen)
    assert " ".join(w.strip() for w in windows) == long_text


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


@pytest.mark.parametrize(
    "options",
    [{"inner_params": "base"}, {"reversed_context_weight": 0.5, "reversed_context_unit": "entity"}],
    ids=["full-rank inner step", "entity-reversed inner loss"],
)
def test_checkpoint_loads_and_absorbs_like_training(checkpoint, tmp_path, options):
    """`inner_params="base"` saves a PEFT adapter (the outer-trained part) like "lora" does, and must load from it;
    an entity-reversed inner loss must find its words again in the saved tokenizer."""
    tokenizer = _tokenizer(bos=True)
    from transformers import AutoModelForCausalLM

    trainer = MetaDistillTrainer(
        model=AutoModelForCausalLM.from_pretrained(checkpoint[1]),
        args=config(tmp_path, max_steps=2, **options),
        train_dataset=toy_dataset(8, seed=0),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "meta"))
    model = MetaPromptModel.from_pretrained(tmp_path / "meta")
    assert {name: getattr(model.settings, name) for name in options} == options
    assert model.meta.inner_lr_dict() == pytest.approx(trainer.meta_model.inner_lr_dict())
    trainer.meta_model.eval()
    reference = MetaPromptModel(trainer.meta_model, tokenizer)
    torch.testing.assert_close(student_logits(model.absorb(TEXTS[0])), student_logits(reference.absorb(TEXTS[0])))


def test_full_weight_checkpoint_is_compared_with_its_base_never_with_itself(checkpoint, tmp_path):
    """`inner_params="all"` replaces the base's weights: the reference conditions must score the base it was
    meta-trained from (loaded with `load_base=True`), and refuse to score the meta-trained weights in its place."""
    from transformers import AutoModelForCausalLM

    from hf_metaprompt.evaluation import ConditionEvaluator

    tokenizer = _tokenizer(bos=True)
    base_dir = checkpoint[1]
    trainer = MetaDistillTrainer(
        model=AutoModelForCausalLM.from_pretrained(base_dir),
        args=config(tmp_path, max_steps=2, inner_params="all", learning_rate=1e-3),
        train_dataset=toy_dataset(8, seed=0),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "all"))
    tasks = toy_dataset(4, seed=1)

    alone = MetaPromptModel.from_pretrained(tmp_path / "all")
    evaluator = ConditionEvaluator(alone.meta, tokenizer, show_progress=False)
    assert evaluator.evaluate(tasks, "toy", conditions=["meta_no_step", "meta_1step"])  # these need no base
    for conditions in (["meta_1step", "prompted"], ["no_context"]):
        with pytest.raises(ValueError, match=r"without its base model.*load_base=True"):
            evaluator.evaluate(tasks, "toy", conditions=conditions)
    with pytest.raises(ValueError, match="load_base=True"):
        evaluator.sweep_plain_ft_lr(tasks, steps=1, lrs=[0.1])

    with_base = MetaPromptModel.from_pretrained(tmp_path / "all", load_base=True)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    with with_base.meta.teacher_mode() as reference:
        pairs = list(zip(reference.state_dict().values(), base.state_dict().values(), strict=True))
    assert all(torch.equal(loaded, original) for loaded, original in pairs)
    trained = zip(with_base.meta.model.state_dict().values(), base.state_dict().values(), strict=True)
    assert not all(torch.equal(weight, original) for weight, original in trained)
    rows = ConditionEvaluator(with_base.meta, tokenizer, show_progress=False).evaluate(
        tasks, "toy", conditions=["prompted"]
    )
    assert rows and all(row["condition"] == "prompted" for row in rows)


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


# ----- reliability (README fault matrix)
def test_threads_each_see_only_their_own_absorbed_text(checkpoint):
    """Several models absorbing different texts, called from parallel threads, give exactly their single-threaded
    logits, and nothing stays patched once the threads are done."""
    import sys
    import threading

    from hf_metaprompt import fast_weights

    models = [MetaPromptModel.from_pretrained(checkpoint[0]) for _ in range(3)]
    models[0].absorb(TEXTS[0])
    models[1].absorb(TEXTS[1])  # models[2] absorbs nothing: the shared weights
    references = [student_logits(model) for model in models]
    assert not torch.allclose(references[0], references[2]) and not torch.allclose(references[1], references[2])
    mismatches, errors = [], []
    start = threading.Barrier(len(models))

    def work(index: int) -> None:
        try:
            start.wait()
            for call in range(25):
                if not torch.equal(student_logits(models[index]), references[index]):
                    mismatches.append((index, call))
        except Exception as error:  # surfaced below: an exception in a thread would otherwise be lost
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(models))]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, as on a busy server: tiny models finish a call in one slice
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert not mismatches, f"{len(mismatches)} of {25 * len(models)} calls saw another thread's weights"
    assert not fast_weights._PATCHED
    assert not any("forward" in module.__dict__ for model in models for module in model.modules())
    assert torch.equal(student_logits(models[2]), references[2])


def test_failed_absorb_leaves_the_state_as_it_was(checkpoint, monkeypatch):
    """All or nothing: a text that fails (here: the second inner step raises) leaves no earlier text absorbed."""
    import hf_metaprompt.metaprompt_model as model_module

    model = MetaPromptModel.from_pretrained(checkpoint[0]).absorb(TEXTS[1])
    before = student_logits(model)
    calls = []
    original = model_module.inner_update

    def second_call_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return original(*args, **kwargs)

    monkeypatch.setattr(model_module, "inner_update", second_call_fails)
    with pytest.raises(RuntimeError, match="out of memory"):
        model.absorb([TEXTS[0], TEXTS[1]])
    assert torch.equal(student_logits(model), before)
    with pytest.raises(ValueError, match="non-empty text"):
        model.absorb([TEXTS[0], "  "])  # checked before any step
    assert torch.equal(student_logits(model), before)


def test_trailing_newline_is_absorbed_like_the_bare_text(checkpoint, tmp_path, capsys):
    model = MetaPromptModel.from_pretrained(checkpoint[0])
    bare = student_logits(model.absorb(TEXTS[0]))
    assert torch.equal(student_logits(model.reset().absorb(TEXTS[0] + "\n")), bare)
    assert torch.equal(student_logits(model.reset().absorb("  " + TEXTS[0] + "\r\n\n")), bare)
    notes = tmp_path / "notes.txt"
    notes.write_text(TEXTS[0] + "\n")
    assert cli_main(["absorb", str(checkpoint[0]), "--text", str(notes), "--ask", QUERIES[0]]) == 0
    expected = model.reset().absorb(TEXTS[0]).ask(QUERIES[0])
    assert capsys.readouterr().out.strip() == f"{QUERIES[0].strip()} {expected.strip()}".strip()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.ask([]), "non-empty list of non-empty questions"),
        (lambda m: m.ask(QUERIES[0], max_new_tokens=0), "`max_new_tokens` must be a positive integer"),
        (lambda m: m.absorb(None), "non-empty text or a non-empty list"),
        (lambda m: m.absorb([]), "non-empty text or a non-empty list"),
        (lambda m: m.absorb([TEXTS[0], None]), "non-empty text or a non-empty list"),
    ],
)
def test_bad_arguments_are_clear_errors(checkpoint, call, message):
    model = MetaPromptModel.from_pretrained(checkpoint[0])
    with pytest.raises(ValueError, match=message):
        call(model)
    assert model.fast_weights is None


def broken_copy(checkpoint, tmp_path, edit) -> str:
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(checkpoint[0], folder)
    edit(folder)
    return str(folder)


def edit_settings(**changes):
    def edit(folder):
        path = folder / "metaprompt_config.json"
        settings = json.loads(path.read_text())
        for key, value in changes.items():
            if value is None:
                settings.pop(key)
            else:
                settings[key] = value
        path.write_text(json.dumps(settings))

    return edit


def truncate(name: str):
    def edit(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return edit


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (lambda f: (f / "adapter_model.safetensors").unlink(), FileNotFoundError, "lacks adapter_model.safetensors"),
        (truncate("adapter_model.safetensors"), ValueError, "adapter_model.safetensors is corrupted or truncated"),
        (truncate("metaprompt_config.json"), ValueError, "metaprompt_config.json is not a valid"),
        (edit_settings(inner_params="bogus"), ValueError, "metaprompt_config.json.*`inner_params` must be one of"),
        (edit_settings(inner_steps=0), ValueError, "metaprompt_config.json.*`inner_steps` must be a positive"),
        (edit_settings(inner_lr=float("nan")), ValueError, "metaprompt_config.json.*`inner_lr` must be a finite"),
        (edit_settings(inner_lrs={}, log_inner_lrs={}), ValueError, "learn_inner_lr=true but no learned inner LR"),
    ],
)
def test_broken_checkpoints_name_the_file(checkpoint, tmp_path, edit, error, message):
    with pytest.raises(error, match=message):
        MetaPromptModel.from_pretrained(broken_copy(checkpoint, tmp_path, edit))


def test_missing_local_paths_are_not_reported_as_hub_problems(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    for path in ("outputs/tiny-wrld", "does/not/exist", "./nowhere", str(tmp_path / "absent")):
        with pytest.raises(FileNotFoundError, match="no such local directory"):
            MetaPromptModel.from_pretrained(path)
    assert cli_main(["absorb", "outputs/tiny-wrld", "--text", __file__, "--ask", "x"]) == 2
    assert "'outputs/tiny-wrld': no such local directory" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="teacher 'outputs/teacher': no such local directory"):
        MetaDistillTrainer(
            model=peaky_model(),
            args=config(tmp_path, teacher="outputs/teacher"),
            processing_class=_tokenizer(bos=True),
        )


def test_a_name_that_is_no_folder_and_not_on_the_hub_says_both(tmp_path, monkeypatch, capsys):
    """In a fresh clone `outputs/` does not exist, so `outputs/tiny-wrld` (a typo of the default's folder) is a valid
    repo id and goes to the Hub: the error must still name the missing folder, not only the Hub's cache."""
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    expected = "checkpoint: no local folder 'outputs/tiny-wrld', and not on the Hub (offline: HF_HUB_OFFLINE is set)."
    with pytest.raises(FileNotFoundError) as raised:
        MetaPromptModel.from_pretrained("outputs/tiny-wrld")
    assert str(raised.value) == expected
    assert cli_main(["absorb", "outputs/tiny-wrld", "--text", __file__, "--ask", "x"]) == 2
    assert capsys.readouterr().err.strip() == f"hf-metaprompt: error: {expected}"


def test_a_name_missing_from_a_reachable_hub_says_both(hub_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = r"no local folder 'test-user/absent', and not on the Hub \(no such repository"
    with pytest.raises(FileNotFoundError, match=expected):
        MetaPromptModel.from_pretrained("test-user/absent")


def test_push_keeps_the_local_card_and_records_its_command(checkpoint, hub_server, tmp_path, monkeypatch, capsys):
    from hf_metaprompt.hub import write_checkpoint_card

    directory, _ = checkpoint
    model = MetaPromptModel.from_pretrained(directory)
    model.meta.settings.base_model = "test-user/tiny-base"
    folder = tmp_path / "save"
    model.save_pretrained(folder)
    command = "accelerate launch examples/run_meta.py --max_steps 4"
    write_checkpoint_card(
        folder, model.meta.current_settings(), "local-run", command=command, example_context=TEXTS[0],
        example_question=QUERIES[0],
    )  # fmt: skip
    local_card = (folder / "README.md").read_bytes()

    # No network: one line, exit code 2, and the local card untouched.
    import httpx2
    from huggingface_hub import HfApi as Api

    def refused(*args, **kwargs):
        raise httpx2.ConnectError("[Errno 111] Connection refused")

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(Api, "create_repo", refused)
        assert cli_main(["push", str(folder), "test-user/offline"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("hf-metaprompt: error: ") and "Connection refused" in error and error.count("\n") == 1
    assert (folder / "README.md").read_bytes() == local_card

    # A failed commit leaves it too; a successful push uploads a card for the repo with the recorded command.
    hub_server.fail_next("commit", status=500)
    assert cli_main(["push", str(folder), "test-user/pushed"]) == 2
    assert (folder / "README.md").read_bytes() == local_card
    assert cli_main(["push", str(folder), "test-user/pushed"]) == 0
    assert (folder / "README.md").read_bytes() == local_card
    card = ModelCard.load("test-user/pushed")
    assert card.text.splitlines()[1] == "# test-user/pushed"
    assert command in card.text and json.dumps(TEXTS[0]) in card.text
    assert 'from_pretrained("test-user/pushed")' in card.text


def test_saving_never_looks_up_the_base_model_online(checkpoint, tmp_path, monkeypatch):
    import peft.utils.save_and_load as peft_save

    lookups = []
    monkeypatch.setattr(peft_save, "check_file_exists_on_hf_hub", lambda *args, **kwargs: lookups.append(args))
    model = MetaPromptModel.from_pretrained(checkpoint[0])
    model.meta.record_base_model("hf_metaprompt/tiny-base")  # no such Hub repo
    model.save_pretrained(tmp_path / "copy")
    assert lookups == []


def test_texts_longer_than_the_position_limit_are_absorbed_in_windows_that_fit(checkpoint, caplog):
    model = MetaPromptModel.from_pretrained(checkpoint[0])
    assert model.settings.max_context_length > model.meta.model.config.max_position_embeddings == 256
    with caplog.at_level("INFO", logger="hf_metaprompt"):
        model.absorb(" ".join(TEXTS * 60))  # ~700 tokens
    assert re.search(r"longer than the context window \(255\): absorbed as [3-9] windows", caplog.text)  # one for <s>
    assert "truncated" not in caplog.text


def test_the_repr_is_one_line_that_says_what_was_absorbed():
    from hf_metaprompt.assets import tiny_metaprompt_path

    model = MetaPromptModel.from_pretrained(tiny_metaprompt_path())
    fresh = repr(model)
    assert "\n" not in fresh and len(fresh) < 200
    assert fresh.startswith("MetaPromptModel(base='hf_metaprompt/tiny-base', adapted=every linear layer")
    assert fresh.endswith("texts_absorbed=0)")
    assert repr(model.absorb("Tara Kowalski is a florist from Kyoto.")).endswith("texts_absorbed=1)")
    assert repr(model.absorb(["Igor Mercer is a poet from Riga.", "Hana Santos is a baker."])).endswith("=3)")
    assert repr(model.reset().absorb(["a b c.", "d e f."], per_row=True)).endswith("texts_absorbed=2 per row)")
    assert repr(model.reset()).endswith("texts_absorbed=0)")
