"""The embedded default, shortened: meta-training makes one step act like prompting on held-out people."""

from __future__ import annotations

import json
import shlex

import pytest
import torch
from safetensors.torch import load_file

from hf_metaprompt.hub import recorded_card_inputs
from hf_metaprompt.pipeline import main


def overall(rows: list[dict], condition: str, direction: str | None = None) -> float:
    """Exact match of a condition with one text per update, averaged over directions (or in one direction)."""
    values = [
        r["exact_match"]
        for r in rows
        if r["condition"] == condition
        and direction in (None, r["direction"])
        and (r["texts"], r["questions"]) == (1, "all")
    ]
    return sum(values) / len(values)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="the shipped base reads only part of its prompt (issue 13), and 250 meta-steps take the student to about "
    "0.3x of that teacher; remove once a base at issue 13's levels ships",
)
def test_shortened_default_pipeline(tmp_path):
    output_dir = tmp_path / "tiny-world"
    rows = main(
        [
            "--task", "tiny_world",
            "--output_dir", str(output_dir),
            "--max_steps", "250",
            "--max_eval_samples", "96",
            "--max_validation_samples", "48",
            "--plain_ft_lrs", "0.01", "0.1", "1.0",
        ]
    )  # fmt: skip
    plain_ft = max(overall(rows, "plain_ft_1step"), overall(rows, "plain_ft_5step"))
    floor = overall(rows, "no_context")
    # One step does what prompting does, plain fine-tuning does not. Not `prompted > ours`: in the reversed direction
    # the meta-trained student measurably beats its prompted teacher (README), so closeness is what is asserted.
    for direction in ("forward", "reversed"):
        prompted, ours = overall(rows, "prompted", direction), overall(rows, "meta_1step", direction)
        assert ours >= 0.75 * prompted, (direction, prompted, ours)
    assert overall(rows, "meta_1step") >= 0.9 * overall(rows, "prompted")
    assert overall(rows, "meta_1step") > plain_ft + 0.5, plain_ft
    assert overall(rows, "meta_no_step") <= floor + 0.05
    # The default also absorbs 16 texts one after another and reports retention.
    assert {(r["texts"], r["questions"]) for r in rows} == {(1, "all"), (16, "all"), (16, "first_text")}
    for name in ("adapter_model.safetensors", "metaprompt_config.json", "eval_results.json", "eval_results.png"):
        assert (output_dir / name).is_file(), name
    assert json.loads((output_dir / "eval_results.json").read_text()) == rows
    # The base is recorded for loading, and the card does not link a Hub repo that does not exist.
    assert json.loads((output_dir / "metaprompt_config.json").read_text())["base_model"] == "hf_metaprompt/tiny-base"
    assert "huggingface.co/hf_metaprompt/tiny-base" not in (output_dir / "README.md").read_text()


def test_init_from_starts_where_a_saved_run_ended(tmp_path):
    """A second stage (`--init_from`) starts from the first stage's adapter and learned inner LRs, or refuses."""
    quick = [
        "--task", "tiny_world", "--max_steps", "2", "--max_eval_samples", "4", "--max_validation_samples", "4",
        "--conditions", "meta_1step", "--texts_absorbed", "1", "--logging_steps", "1",
    ]  # fmt: skip
    first_args = ["--output_dir", str(tmp_path / "first"), *quick]
    second_args = ["--output_dir", str(tmp_path / "second"), "--init_from", str(tmp_path / "first"), "--skip_training"]
    main(first_args)
    main([*second_args, *quick])
    main(["--output_dir", str(tmp_path / "fresh"), "--skip_training", *quick])

    def saved(name):
        weights = load_file(tmp_path / name / "adapter_model.safetensors")
        return weights, json.loads((tmp_path / name / "metaprompt_config.json").read_text())["inner_lrs"]

    (first, first_lrs), (second, second_lrs), (fresh, fresh_lrs) = saved("first"), saved("second"), saved("fresh")
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
    assert second_lrs == first_lrs != fresh_lrs
    assert not all(torch.equal(first[key], fresh[key]) for key in first)
    # The second stage's card lists both commands, so the two-stage recipe reruns from the card alone.
    command = recorded_card_inputs(tmp_path / "second" / "README.md")["command"]
    launch = ["accelerate", "launch", "examples/run_meta.py"]
    assert [shlex.split(line) for line in command.splitlines()] == [launch + first_args, launch + second_args + quick]
    with pytest.raises(ValueError, match="another lora_r"):
        main(["--output_dir", str(tmp_path / "bad"), "--init_from", str(tmp_path / "first"), "--lora_r", "4", *quick])
