"""The `hf-metaprompt` subcommands parse from the pipeline's dataclasses: one declaration, one set of defaults."""

from pathlib import Path

import pytest

from hf_metaprompt.cli import TRAINING_ONLY, parse_command
from hf_metaprompt.cli import main as cli_main
from hf_metaprompt.pipeline import ScriptArguments, load_task, parse_args

FLAG_SETS = [
    [],
    ["--task=tiny_world"],
    ["--task", "tiny_world", "--max_eval_samples", "7"],
    ["--facts_per_context", "2"],
    ["--task", "squad", "--dataset_name", "some/squad"],
    ["--task=text", "--dataset_name", "some/text", "--texts_absorbed", "1", "4", "--conditions", "prompted"],
]


# (output folder, steps, scored tasks) of each default job; None: the library's own defaults.
REAL_JOB = ("outputs/smollm2-people", 80, 48)
TINY_JOB = ("outputs/tiny-world", 800, 200)


@pytest.mark.parametrize(
    ("flags", "job"),
    [
        ([], REAL_JOB),
        (["--task", "people"], REAL_JOB),
        (["--task=tiny_world"], TINY_JOB),
        (["--task", "tiny_world"], TINY_JOB),
        (["--task", "reversal_questions", "--dataset_name", "x"], ("outputs/smollm2-reversal_questions", 80, 48)),
        (["--task", "passages", "--max_steps", "5"], ("outputs/smollm2-passages", 5, 48)),
        (["--task=reversal", "--dataset_name", "x"], None),
        (["--task", "squad", "--dataset_name", "x"], None),
        (["--model_name_or_path", "some/model"], None),
        (["--model_name_or_path", "some/model", "--task", "tiny_world"], None),
    ],
)
def test_default_job_is_read_from_the_parsed_arguments(flags, job):
    script_args, config = parse_args(flags)
    assert (config.output_dir, config.max_steps, script_args.max_eval_samples) == (job or ("outputs/meta", -1, None))


@pytest.mark.parametrize(("flags", "shown"), [([], "80"), (["--task", "tiny_world"], "800")])
def test_help_shows_the_default_jobs_values(flags, shown, capsys):
    with pytest.raises(SystemExit):
        parse_args([*flags, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--max_steps MAX_STEPS" in help_text
    assert f"(default: {shown})" in help_text.split("--max_steps MAX_STEPS")[-1][:600]  # its entry, not the usage


def test_abbreviated_flags_are_refused(capsys):
    with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \['--max_step', '5'\]"):
        parse_args(["--max_step", "5"])  # argparse alone would take it for --max_steps
    assert cli_main(["eval", "ckpt", "--max_eval_sample", "5"]) == 2
    assert "--max_eval_sample" in capsys.readouterr().err


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_eval_reads_the_same_script_arguments_as_train(flags):
    """`eval` of a `train` output measures the same rows as train's own evaluation, for the same flags."""
    command, (script_args, _, positional) = parse_command(["eval", "ckpt", *flags])
    assert command == "eval"
    assert positional.checkpoint == "ckpt"
    trained = parse_args(flags)[0]
    for name in TRAINING_ONLY:  # `eval` takes the checkpoint as saved
        setattr(trained, name, getattr(ScriptArguments(), name))
    assert script_args == trained


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
    script_args, _ = parse_args(["--task", "tiny_world", "--facts_per_context", "2"])
    test = load_task(script_args, seed=0)["test"]
    assert {len(distractors) for distractors in test["distractors"]} == {1}
    assert {context.count(". ") for context in test["context"]} == {1}  # two sentences
    squad_args, _ = parse_args(["--task", "squad", "--dataset_name", "some/squad", "--facts_per_context", "2"])
    with pytest.raises(ValueError, match=r"--facts_per_context sets the generated tasks' contexts .*; --task squad"):
        load_task(squad_args, seed=0)


def test_eval_scores_the_split_it_is_asked_for(monkeypatch, tmp_path):
    from hf_metaprompt import pipeline
    from hf_metaprompt.assets import tiny_metaprompt_path

    scored = {}

    def fake_evaluate_all(meta, tokenizer, validation, test, **kwargs):
        scored["queries"] = test["query"]
        return []

    monkeypatch.setattr(pipeline, "evaluate_all", fake_evaluate_all)
    splits = pipeline.load_task(pipeline.ScriptArguments(task="tiny_world"), seed=0)  # the checkpoint's task
    monkeypatch.chdir(tmp_path)
    for split in ("test", "validation"):
        assert cli_main(["eval", str(tiny_metaprompt_path()), "--split", split, "--max_eval_samples", "400"]) == 0
        assert scored["queries"] == splits[split]["query"]
    with pytest.raises(SystemExit) as error:
        cli_main(["eval", "ckpt", "--split", "train"])
    assert error.value.code == 2


@pytest.mark.parametrize(
    ("conditions", "load_base"), [(["meta_1step"], False), (["meta_no_step", "prompted", "meta_1step"], True)]
)
def test_eval_loads_the_base_of_a_checkpoint_for_the_conditions_that_use_it(
    monkeypatch, tmp_path, conditions, load_base
):
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
    monkeypatch.chdir(tmp_path)
    assert cli_main(["eval", str(tiny_metaprompt_path()), "--conditions", *conditions]) == 0
    assert loads == [load_base]


def test_ask_reads_a_backslash_n_as_a_line_break():
    from hf_metaprompt.cli import unescape

    assert unescape("Q: Who is Tara?\\nA:") == "Q: Who is Tara?\nA:"
    assert unescape("tab\\there, a backslash \\\\n stays") == "tab\there, a backslash \\n stays"
    assert unescape("no escapes") == "no escapes"


def test_absorb_and_ask_through_a_shell_as_the_readme_writes_it(tmp_path):
    """The README's `--ask "Q: ...?\\nA:"` typed into a shell gives the answer the Python API gives."""
    import shlex
    import subprocess
    import sys

    from hf_metaprompt import MetaPromptModel
    from hf_metaprompt.assets import tiny_metaprompt_path

    text = "Tara Kowalski is a florist from Kyoto. Igor Mercer is a poet from Riga."
    notes = tmp_path / "notes.txt"
    notes.write_text(text + "\n")
    command = (
        f"{shlex.quote(sys.executable)} -m hf_metaprompt.cli absorb {shlex.quote(str(tiny_metaprompt_path()))} "
        f'--text {shlex.quote(str(notes))} --ask "Q: Who is the florist from Kyoto?\\nA:"'
    )
    shown = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout.strip()
    expected = (
        MetaPromptModel.from_pretrained(tiny_metaprompt_path())
        .absorb(text)
        .ask("Q: Who is the florist from Kyoto?\nA:")
    )
    assert shown == f"Q: Who is the florist from Kyoto?\nA: {expected.strip()}"
    assert expected.strip()


def test_eval_writes_its_rows_and_prints_the_table(tmp_path, monkeypatch, capsys):
    from hf_metaprompt.assets import tiny_metaprompt_path

    monkeypatch.chdir(tmp_path)
    flags = ["--conditions", "meta_1step", "--max_eval_samples", "4", "--texts_absorbed", "1"]
    assert cli_main(["eval", str(tiny_metaprompt_path()), *flags]) == 0
    out = capsys.readouterr().out
    written = tmp_path / "eval" / "tiny_world_metaprompt" / "eval_results.json"
    assert (
        written.is_file() and f"Rows written to {Path('eval') / 'tiny_world_metaprompt' / 'eval_results.json'}" in out
    )
    assert "| task | texts | questions | direction | condition |" in out
    assert len(out.splitlines()) < 20  # a table, not a JSON dump
    assert "[\n" not in out


def test_an_evaluation_that_cannot_run_fails_before_anything_is_loaded(tmp_path, monkeypatch):
    from hf_metaprompt import pipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(pipeline, "AutoModelForCausalLM", type("Refuse", (), {"from_pretrained": no_loading}))
    flags = ["--task", "tiny_world", "--output_dir", str(tmp_path), "--max_steps", "2"]
    with pytest.raises(ValueError, match=r"--texts_absorbed 16 needs at least 16 scored tasks.*--max_eval_samples"):
        pipeline.main([*flags, "--max_eval_samples", "10", "--max_validation_samples", "20"])
    with pytest.raises(ValueError, match=r"--texts_absorbed 16 sweeps .* --max_validation_samples leaves 10"):
        pipeline.main([*flags, "--max_eval_samples", "20", "--max_validation_samples", "10"])
    with pytest.raises(ValueError, match=r"--conditions: unknown \['prompt'\]"):
        pipeline.main([*flags, "--conditions", "prompt"])
