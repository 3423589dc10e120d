"""The embedded default, shortened: meta-training makes one step act like prompting on held-out people."""

from __future__ import annotations

import json

import pytest

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
def test_shortened_default_pipeline(tmp_path):
    output_dir = tmp_path / "tiny-world"
    rows = main(
        [
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
