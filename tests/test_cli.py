"""The `hf-metaprompt` subcommands parse from the pipeline's dataclasses: one declaration, one set of defaults."""

import pytest

from hf_metaprompt.cli import main as cli_main
from hf_metaprompt.cli import parse_command
from hf_metaprompt.pipeline import load_task, parse_args

FLAG_SETS = [
    [],
    ["--task=tiny_world"],
    ["--task", "tiny_world", "--max_eval_samples", "7"],
    ["--facts_per_context", "2"],
    ["--task", "squad", "--dataset_name", "some/squad"],
    ["--task=text", "--dataset_name", "some/text", "--texts_absorbed", "1", "4", "--conditions", "prompted"],
]


@pytest.mark.parametrize(
    ("flags", "default_task"),
    [
        ([], True),
        (["--task=tiny_world"], True),
        (["--task", "tiny_world"], True),
        (["--task=reversal", "--dataset_name", "x"], False),
        (["--task", "squad", "--dataset_name", "x"], False),
        (["--model_name_or_path", "some/model"], False),
    ],
)
def test_default_task_is_read_from_the_parsed_arguments(flags, default_task):
    script_args, config = parse_args(flags)
    assert (config.output_dir == "outputs/tiny-world") is default_task
    assert (config.max_steps == 800) is default_task
    assert (script_args.max_eval_samples == 200) is default_task


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_eval_reads_the_same_script_arguments_as_train(flags):
    """`eval` of a `train` output measures the same rows as train's own evaluation, for the same flags."""
    command, (script_args, _, positional) = parse_command(["eval", "ckpt", *flags])
    assert command == "eval"
    assert positional.checkpoint == "ckpt"
    assert script_args == parse_args(flags)[0]


def test_eval_rejects_training_only_flags_in_one_line(capsys):
    assert cli_main(["eval", "ckpt", "--model_name_or_path", "some/model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-metaprompt: error: --model_name_or_path is a `train` flag")
    assert "Traceback" not in err


def test_absorb_collects_repeated_questions_and_push_its_positionals():
    _, (args, positional) = parse_command(["absorb", "ckpt", "--text", "notes.txt", "--ask", "Q1", "--ask", "Q2"])
    assert args.ask == ["Q1", "Q2"]
    assert str(args.text) == "notes.txt"
    assert positional.checkpoint == "ckpt"
    _, (args, positional) = parse_command(["push", "ckpt", "user/repo", "--private"])
    assert args.private is True
    assert (str(positional.checkpoint), positional.repo_id) == ("ckpt", "user/repo")


def test_usage_errors_exit_with_code_2():
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["eval"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["absorb", "ckpt", "--text", "notes.txt"])  # no --ask
    assert exit_info.value.code == 2


def test_facts_per_context_shapes_the_tiny_world_and_nothing_else():
    script_args, _ = parse_args(["--facts_per_context", "2"])
    test = load_task(script_args, seed=0)["test"]
    assert {len(distractors) for distractors in test["distractors"]} == {1}
    assert {context.count(". ") for context in test["context"]} == {1}  # two sentences
    squad_args, _ = parse_args(["--task", "squad", "--dataset_name", "some/squad", "--facts_per_context", "2"])
    with pytest.raises(ValueError, match=r"--facts_per_context sets the generated tasks' contexts .*; --task squad"):
        load_task(squad_args, seed=0)


def test_eval_scores_the_split_it_is_asked_for(monkeypatch):
    from hf_metaprompt import pipeline
    from hf_metaprompt.assets import tiny_metaprompt_path

    scored = {}

    def fake_evaluate_all(meta, tokenizer, validation, test, **kwargs):
        scored["queries"] = test["query"]
        return []

    monkeypatch.setattr(pipeline, "evaluate_all", fake_evaluate_all)
    splits = pipeline.load_task(pipeline.ScriptArguments(), seed=0)
    for split in ("test", "validation"):
        assert cli_main(["eval", str(tiny_metaprompt_path()), "--split", split, "--max_eval_samples", "400"]) == 0
        assert scored["queries"] == splits[split]["query"]
    with pytest.raises(SystemExit) as error:
        cli_main(["eval", "ckpt", "--split", "train"])
    assert error.value.code == 2


@pytest.mark.parametrize(
    ("conditions", "load_base"), [(["meta_1step"], False), (["meta_no_step", "prompted", "meta_1step"], True)]
)
def test_eval_loads_the_base_of_a_checkpoint_for_the_conditions_that_use_it(monkeypatch, conditions, load_base):
    """An `inner_params="all"` checkpoint is loaded without its base unless asked: `eval` asks when a condition
    (prompted, plain fine-tuning, no context) is scored on the base."""
    from hf_metaprompt import MetaPromptModel, pipeline
    from hf_metaprompt.assets import tiny_metaprompt_path

    loads = []
    load = MetaPromptModel.from_pretrained.__func__

    def recording_load(cls, *args, **kwargs):
        loads.append(kwargs.get("load_base", False))
        return load(cls, *args, **kwargs)

    monkeypatch.setattr(MetaPromptModel, "from_pretrained", classmethod(recording_load))
    monkeypatch.setattr(pipeline, "evaluate_all", lambda *args, **kwargs: [])
    assert cli_main(["eval", str(tiny_metaprompt_path()), "--conditions", *conditions]) == 0
    assert loads == [load_base]
