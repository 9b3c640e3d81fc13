"""Benchmark of the scheduler: one matrix run once per variant, side by side.

    python bench/schedule.py [--matrix FILE] [--cold] [--out DIR] [--variant=ARGS]...

Each variant is a string of extra `cpa-harness run` arguments
(`--variant="--jobs 1"`, `--variant=` for the defaults,
`--variant=--builds-first`: with the `=`, since they start with a dash); the
default compares `--jobs 1` with the scheduler's default. Without --matrix,
the cells are `cpa-harness run`'s own (the smoke matrix). The variants run
one after the other in this process, on the same host, so their ratio is the
figure. --cold gives each variant kernels of its own to build (a
CONFIG_LOCALVERSION of its own, so the build cache has none of them): what a
pipeline of builds and cells is measured on.

Per variant it prints the wall time, the cells' verdicts, the most cells
that ran at once, the sum of the cells' times and of their guests' CPU, and
the wall time against the first variant's. Every verdict must be the same in
every variant (a verdict that changed with the schedule is a false alarm or
a missed failure): exit status 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    variant: str
    exit: int
    wall: float
    cells: dict[str, str]
    most_running: int | None
    cell_seconds: float
    guest_cpu: float


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matrix", type=Path, help="a matrix file (default: the smoke matrix)")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra 'cpa-harness run' arguments (repeatable)")
    ap.add_argument("--cold", action="store_true", help="every variant builds its kernels")
    ap.add_argument("--out", type=Path, default=Path("/tmp/cpa-harness-schedule"))
    args = ap.parse_args()
    variants = args.variant or ["--jobs 1", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for n, v in enumerate(variants, 1):
        run_dir = args.out / f"variant-{n}"
        argv = [sys.executable, "-m", "harness", "run", "--out", str(run_dir),
                *(["--matrix", str(args.matrix.resolve())] if args.matrix else []),
                *shlex.split(v)]
        if args.cold:
            argv += ["--set", f'CONFIG_LOCALVERSION="-bench{secrets.token_hex(3)}"']
        start = time.monotonic()
        with open(args.out / f"variant-{n}.log", "w") as log:
            rc = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        wall = time.monotonic() - start
        summary = json.loads((run_dir / "summary.json").read_text())
        cells = {}
        busy = cpu = 0.0
        for f in sorted((run_dir / "cells").glob("*/result.json")):
            d = json.loads(f.read_text())
            cells[d["name"]] = d["verdict"]
            busy += float(d.get("durations", {}).get("total", 0.0))
            cpu += float(d.get("durations", {}).get("guest_cpu", 0.0))
        most = summary.get("schedule", {}).get("most_running")
        rows.append(Row(v or "(defaults)", rc, wall, cells, most, busy, cpu))
        print(f"{v or '(defaults)':24} exit {rc}  wall {wall:6.0f} s  cells {len(cells)}  "
              f"most at once {most}  cell time {busy:6.0f} s  guest CPU {cpu:6.0f} s",
              flush=True)
    print()
    for r in rows:
        print(f"{r.variant:24} {r.wall:6.0f} s  {rows[0].wall / r.wall:.2f}x the first's speed")
    names = sorted(set().union(*(r.cells for r in rows)))
    changed = [c for c in names if len({r.cells.get(c) for r in rows}) > 1]
    for c in changed:
        print(f"verdict changed: {c}: " + ", ".join(f"{r.variant} {r.cells.get(c)}"
                                                     for r in rows))
    print(f"verdicts that changed with the schedule: {len(changed)}")
    (args.out / "schedule.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
