"""Benchmark of a matrix run: how well cells were packed, and builds against kernels.

Reads a finished run directory (e.g. of `cpa-harness run --matrix
ci/nightly.toml --jobs 2`) and prints:
- the wall time beside the sum of the cells' times divided by --jobs: their
  ratio is the packing efficiency (1.0: the jobs were never idle; below 1: the
  run waited on builds, on the slowest cell, or on the accelerator probe);
  a run scheduled by demand (--jobs auto) shows the most cells that ran at
  once and the sum of cell times over the wall time (cells run at a time, on
  average) instead;
- the stock self-test cells' time to verdict against its floor: the kernel
  runs its first pass 30 s after the self-test thread starts and then one a
  30 s, so a cell that watches P periods cannot have a verdict before
  30 * (1 + P) s; what is above is boot, the harness and a host too busy;
- the kernels built in the run (build logs in builds/) beside the distinct
  kernels the cells needed (distinct configurations of distinct sources: the
  fast self-test's kernel is its tree patched): more builds than kernels
  would be wasted work, fewer means the build cache served the rest.

Usage: python bench/matrix.py RUN_DIR [--jobs N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.results.rundir import read_run  # noqa: E402
from harness.scenarios.context import SELFTEST_PERIOD  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--jobs", type=int, help="the --jobs the run used (default: as recorded)")
    args = ap.parse_args()
    summary, cells = read_run(args.run)
    wall = float(summary["finished"]) - float(summary["started"])
    busy = sum(c.durations.get("total", 0.0) for c in cells)
    jobs = args.jobs or summary.get("schedule", {}).get("jobs", "auto")
    kernels = {(c.arch, c.config_hash, c.source_id) for c in cells if c.config_hash}
    built = len(list((args.run / "builds").glob("build-*.log")))
    print(f"cells: {len(cells)}  verdicts: "
          + ", ".join(f"{v}={sum(1 for c in cells if c.verdict.value == v)}"
                      for v in sorted({c.verdict.value for c in cells})))
    if jobs == "auto":
        most = summary.get("schedule", {}).get("most_running")
        print(f"wall time: {wall:.0f} s; sum of cell times {busy:.0f} s: "
              f"{busy / wall:.2f} cells at a time on average, {most} at most "
              f"(--jobs auto, {summary.get('schedule', {}).get('cpus')} CPUs)")
    else:
        ideal = busy / int(jobs)
        print(f"wall time: {wall:.0f} s; sum of cell times / jobs: {ideal:.0f} s "
              f"(sum {busy:.0f} s, jobs {jobs})")
        print(f"packing efficiency (ideal / wall): {ideal / wall:.2f}" if wall > 0 else
              "packing efficiency: n/a (no wall time)")
    stock = [c for c in cells if "to_verdict" in c.durations and not c.fast_selftest]
    if stock:
        over = [c.durations["to_verdict"] - SELFTEST_PERIOD * (1 + c.periods_watched)
                for c in stock]
        boot = [c.durations.get("boot_to_ready", 0.0) for c in stock]
        print(f"time to verdict above its floor, {len(stock)} stock cells: mean "
              f"{sum(over) / len(over):.1f} s, max {max(over):.1f} s (boot to a shell: mean "
              f"{sum(boot) / len(boot):.1f} s, max {max(boot):.1f} s)")
    print(f"kernels needed: {len(kernels)}; builds run in this run: {built} "
          f"(the rest came from the build cache)")
    slow = sorted(cells, key=lambda c: -c.durations.get("total", 0.0))[:5]
    print("slowest cells: " + ", ".join(f"{c.name} {c.durations.get('total', 0):.0f}s"
                                        for c in slow))
    return 0


if __name__ == "__main__":
    sys.exit(main())
