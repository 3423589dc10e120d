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
