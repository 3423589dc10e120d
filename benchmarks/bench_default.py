"""Time, peak memory and scores of the main job, the Quickstart's `accelerate launch examples/run_meta.py`, per seed.

    python benchmarks/bench_default.py --seeds 0 1 2                 # the Quickstart's command, three seeds
    python benchmarks/bench_default.py --launcher python --seeds 0   # `python examples/run_meta.py` instead

Each run is a fresh process (the first run of a machine also converts the model: pass --cold to count it, by pointing
HF_METAPROMPT_CACHE at an empty folder). Prints one row per seed, then the median and the spread (min-max) of each
column: wall time, peak RSS of the job's processes, and the share of answers naming the person asked about in
reverse (`reversed -> name`, match) for the conditions the default scores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDITIONS = ("no_context", "prompted", "plain_ft_1step", "meta_no_step", "meta_1step")


def run_once(seed: int, launcher: str, output_dir: Path, extra: list[str], cache: str | None) -> dict:
    command = ["accelerate", "launch"] if launcher == "accelerate" else [sys.executable]
    command += ["examples/run_meta.py", "--seed", str(seed), "--output_dir", str(output_dir), *extra]
    env = dict(os.environ)
    if cache:
        env["HF_METAPROMPT_CACHE"] = cache
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    with (output_dir.parent / f"{output_dir.name}.log").open("w") as log:
        subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    # ru_maxrss of the children is the largest of them (KiB on Linux): the training process.
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 2**20
    rows = json.loads((output_dir / "eval_results.json").read_text())
    scores = {
        r["condition"]: r["answer_match"]
        for r in rows
        if r["direction"] == "reversed -> name" and r.get("texts", 1) == 1 and r.get("questions", "all") == "all"
    }
    n = next(r["n"] for r in rows if r["direction"] == "reversed -> name")
    return {"seed": seed, "wall_s": wall, "peak_gib": peak, "n": n, **{c: scores.get(c) for c in CONDITIONS}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--launcher", choices=["accelerate", "python"], default="accelerate")
    parser.add_argument("--cold", action="store_true", help="convert the model again (an empty cache) in each run")
    parser.add_argument("--keep", help="a folder to keep each run's output and log in (default: a temporary one)")
    parser.add_argument("extra", nargs="*", help="more run_meta.py flags, after --")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    results = []
    with tempfile.TemporaryDirectory() as temporary:
        scratch = args.keep or temporary
        Path(scratch).mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            cache = tempfile.mkdtemp(dir=scratch) if args.cold else None
            results.append(run_once(seed, args.launcher, Path(scratch) / f"seed{seed}", args.extra, cache))
            print(json.dumps(results[-1]), flush=True)
    columns = ["wall_s", "peak_gib", *CONDITIONS]
    print("\n| seed | wall (s) | peak RSS (GiB) | n | " + " | ".join(CONDITIONS) + " |")
    print("|---:|---:|---:|---:|" + "---:|" * len(CONDITIONS))
    for r in results:
        cells = [f"{r['wall_s']:.0f}", f"{r['peak_gib']:.2f}", str(r["n"])]
        cells += ["" if r[c] is None else f"{r[c]:.3f}" for c in CONDITIONS]
        print(f"| {r['seed']} | " + " | ".join(cells) + " |")
    summary = []
    for column in columns:
        values = [r[column] for r in results if r[column] is not None]
        if values:
            summary.append(
                f"{column}: median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"
            )
    print("\n" + "\n".join(summary))


if __name__ == "__main__":
    main()
