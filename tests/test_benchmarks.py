"""The benchmark scripts run on the shipped checkpoint (figures are theirs to print; here they only have to run)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def test_bench_absorb_times_both_sides_on_the_shipped_checkpoint(tmp_path, monkeypatch):
    """The prompted side needs the base, which a full-weight checkpoint loads apart: the script must ask for it."""
    out = tmp_path / "absorb.json"
    argv = ["bench_absorb.py", "--questions", "1", "2", "--repeats", "1", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(BENCHMARKS / "bench_absorb.py"), run_name="__main__")
    figures = json.loads(out.read_text())
    assert [row["questions"] for row in figures["rows"]] == [1, 2]
    assert all(row["absorb_then_ask_s"] > figures["absorb_s"] > 0 and row["prompted_s"] > 0 for row in figures["rows"])


def test_bench_recipe_step_times_the_recipe_it_is_given(tmp_path, monkeypatch):
    out = tmp_path / "step.json"
    flags = ["--task", "tiny_world", "--per_device_train_batch_size", "2", "--texts_per_episode", "2"]
    monkeypatch.setattr(sys, "argv", ["bench_recipe_step.py", "--steps", "2", "--json", str(out), "--", *flags])
    runpy.run_path(str(BENCHMARKS / "bench_recipe_step.py"), run_name="__main__")
    figures = json.loads(out.read_text())
    assert figures["flags"] == flags and figures["batch_size"] == 2
    assert len(figures["steps_s"]) == 2 and all(s > 0 for s in figures["steps_s"]) and figures["peak_rss_gib"] > 0


def test_bench_text_memory_times_both_memories(tmp_path, monkeypatch):
    out = tmp_path / "memory.json"
    argv = ["bench_text_memory.py", "--texts", "1", "2", "--repeats", "1", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(BENCHMARKS / "bench_text_memory.py"), run_name="__main__")
    rows = json.loads(out.read_text())
    expected = [("shared", 1), ("shared", 2), ("per_text", 1), ("per_text", 2)]
    assert [(r["memory"], r["texts"]) for r in rows] == expected
    assert all(r["absorb_s"] > 0 and r["ask_s"] > 0 for r in rows)
    size = {(r["memory"], r["texts"]): r["state_mb"] for r in rows}
    # One state whatever the number of texts, against one per text.
    assert size["shared", 2] == size["shared", 1] == size["per_text", 1] > 0
    assert size["per_text", 2] == 2 * size["per_text", 1]
