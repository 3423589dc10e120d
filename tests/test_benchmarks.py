"""The benchmark scripts run on the shipped checkpoint (figures are theirs to print; here they only have to run)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def run_benchmark(monkeypatch, script: str, *args: str, out: Path, after: tuple[str, ...] = ()):
    """`python benchmarks/SCRIPT ARGS --json OUT AFTER`, as from a shell (its own folder first on the path)."""
    monkeypatch.setattr(sys, "argv", [script, *args, "--json", str(out), *after])
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    return json.loads(out.read_text())


def test_bench_absorb_times_both_sides_on_the_shipped_checkpoint(tmp_path, monkeypatch):
    """The prompted side needs the base, which a full-weight checkpoint loads apart: the script must ask for it."""
    figures = run_benchmark(
        monkeypatch, "bench_absorb.py", "--questions", "1", "2", "--repeats", "1", out=tmp_path / "absorb.json"
    )
    assert [row["questions"] for row in figures["rows"]] == [1, 2]
    assert all(row["absorb_then_ask_s"] > figures["absorb_s"] > 0 and row["prompted_s"] > 0 for row in figures["rows"])


def test_bench_recipe_step_times_the_recipe_it_is_given(tmp_path, monkeypatch):
    flags = ["--task", "tiny_world", "--per_device_train_batch_size", "2", "--texts_per_episode", "2"]
    figures = run_benchmark(
        monkeypatch, "bench_recipe_step.py", "--steps", "2", out=tmp_path / "step.json", after=("--", *flags)
    )
    assert figures["flags"] == flags and figures["batch_size"] == 2
    assert len(figures["steps_s"]) == 2 and all(s > 0 for s in figures["steps_s"]) and figures["peak_rss_gib"] > 0


def test_bench_text_memory_times_both_memories(tmp_path, monkeypatch):
    rows = run_benchmark(
        monkeypatch, "bench_text_memory.py", "--texts", "1", "2", "--repeats", "1", out=tmp_path / "memory.json"
    )
    expected = [("shared", 1), ("shared", 2), ("per_text", 1), ("per_text", 2)]
    assert [(r["memory"], r["texts"]) for r in rows] == expected
    assert all(r["absorb_s"] > 0 and r["ask_s"] > 0 for r in rows)
    size = {(r["memory"], r["texts"]): r["state_mb"] for r in rows}
    # One state whatever the number of texts, against one per text.
    assert size["shared", 2] == size["shared", 1] == size["per_text", 1] > 0
    assert size["per_text", 2] == 2 * size["per_text", 1]
