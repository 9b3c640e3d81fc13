"""Benchmark of a matrix run: how well cells were packed, and builds against kernels.

Reads a finished run directory (e.g. of `cpa-harness run --matrix
ci/nightly.toml --jobs 2`) and prints:
- the wall time beside the sum of the cells' times divided by --jobs: their
  ratio is the packing efficiency (1.0: the jobs were never idle; below 1: the
  run waited on builds, on the slowest cell, or on the accelerator probe);
- the kernels built in the run (build logs in builds/) beside the distinct
  kernels the cells needed (distinct config hashes): more builds than kernels
  would be wasted work, fewer means the build cache served the rest.

Usage: python bench/matrix.py RUN_DIR --jobs N
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.results.rundir import read_run  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--jobs", type=int, required=True, help="the --jobs the run used")
    args = ap.parse_args()
    summary, cells = read_run(args.run)
    wall = float(summary["finished"]) - float(summary["started"])
    busy = sum(c.durations.get("total", 0.0) for c in cells)
    ideal = busy / args.jobs
    kernels = {(c.arch, c.config_hash) for c in cells if c.config_hash}
    built = len(list((args.run / "builds").glob("build-*.log")))
    print(f"cells: {len(cells)}  verdicts: "
          + ", ".join(f"{v}={sum(1 for c in cells if c.verdict.value == v)}"
                      for v in sorted({c.verdict.value for c in cells})))
    print(f"wall time: {wall:.0f} s; sum of cell times / jobs: {ideal:.0f} s "
          f"(sum {busy:.0f} s, jobs {args.jobs})")
    print(f"packing efficiency (ideal / wall): {ideal / wall:.2f}" if wall > 0 else
          "packing efficiency: n/a (no wall time)")
    print(f"kernels needed: {len(kernels)}; builds run in this run: {built} "
          f"(the rest came from the build cache)")
    slow = sorted(cells, key=lambda c: -c.durations.get("total", 0.0))[:5]
    print("slowest cells: " + ", ".join(f"{c.name} {c.durations.get('total', 0):.0f}s"
                                        for c in slow))
    return 0


if __name__ == "__main__":
    sys.exit(main())
