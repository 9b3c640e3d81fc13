"""Self-test passes per cell-minute: the stock 30 s period against the fast
self-test (guest/patches/cpa-test-period.patch), side by side in one run.

    python bench/passes.py [--periods 3] [--passes 40] [--period-ms 1000] [--arch x86_64]

One run of two cells on the same arch, one after the other (--jobs 1, so
neither slows the other): a stock cell that watches --periods periods after
its first pass, and a fast one that counts --passes printed passes after its
first. A pass counts when it is proven (printed, or a silent one its
period's counters show); a cell-minute is a minute of the cell's wall time,
from QEMU's start to its end. Not a test: it prints the figures and their
ratio. Builds come from the cache when they are there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.cli import main as harness  # noqa: E402

MATRIX = """
[[cell]]
name = "stock"
arch = "{arch}"
periods = {periods}

[[cell]]
name = "fast"
arch = "{arch}"
selftest_period_ms = {period_ms}
passes = {passes}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--periods", type=int, default=3)
    ap.add_argument("--passes", type=int, default=40)
    ap.add_argument("--period-ms", type=int, default=1000)
    ap.add_argument("--arch", default="x86_64")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        m = Path(d) / "m.toml"
        m.write_text(MATRIX.format(**vars(args)))
        code = harness(["run", "--matrix", str(m), "--jobs", "1", "--out", f"{d}/run"])
        cells = {p.parent.name: json.loads(p.read_text())
                 for p in Path(d, "run", "cells").glob("*/result.json")}
    if code != 0:
        sys.exit(f"the run did not pass (exit {code}): "
                 + ", ".join(f"{n} {c['verdict']} {c['reason']}" for n, c in cells.items()))
    rate = {}
    for name in ("stock", "fast"):
        c = cells[name]
        minutes = c["durations"]["total"] / 60
        rate[name] = c["passes_proven"] / minutes
        took = c["durations"]["to_verdict"] - c["durations"]["to_first_pass"]
        print(f"{name:>5}: {c['passes_proven']:3d} passes proven in {minutes:4.1f} cell-minutes "
              f"= {rate[name]:5.1f} a cell-minute (first pass after "
              f"{c['durations']['to_first_pass']:.0f} s, then {took:.0f} s)")
    f = cells["fast"]["fast_selftest"]
    print(f"fast self-test alone: {f['passes_seen']} passes after the first in "
          f"{f['seconds']:.0f} s = {f['per_minute']} a minute (period {f['period_ms']} ms)")
    print(f"ratio fast/stock: {rate['fast'] / rate['stock']:.1f}x")


if __name__ == "__main__":
    main()
