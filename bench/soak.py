"""Soak: run the smoke matrix N times in a row; report flakiness and leftovers.

    python bench/soak.py [--runs 10] [--out DIR] [-- extra 'cpa-harness run' arguments]

After each run it looks for what a run must not leave behind: QEMU processes
that were not there before the soak, the QMP socket directories of guests
(/tmp/cpa-harness-qmp.*), temporary files in the run directory, and the run's
keyed initramfs images. At the end it prints, per cell, the verdicts across
runs (a cell whose verdict changed is flaky) and its durations, per run the
wall time and exit status, and every leftover. Exit status: 0 when every run
gave the same verdicts and left nothing behind, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QMP_DIRS = "cpa-harness-qmp.*"


def qemu_processes() -> set[int]:
    pids = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if b"qemu-system" in (p / "cmdline").read_bytes().split(b"\0")[0]:
                    pids.add(int(p.name))
            except OSError:
                pass
    return pids


def leftovers(run_dir: Path, qemu_before: set[int], qmp_before: set[Path]) -> list[str]:
    found = []
    stray = qemu_processes() - qemu_before
    if stray:
        found.append(f"QEMU processes still running: {sorted(stray)}")
    qmp = set(Path("/tmp").glob(QMP_DIRS)) - qmp_before
    if qmp:
        found.append(f"QMP socket directories left: {sorted(map(str, qmp))}")
    tmp = [p for p in run_dir.rglob("*") if ".tmp" in p.name]
    if tmp:
        found.append(f"temporary files left: {sorted(map(str, tmp))}")
    keyed = list((run_dir / "ssh").glob("initrd-*")) if (run_dir / "ssh").is_dir() else []
    if keyed:
        found.append(f"keyed initramfs images left: {sorted(map(str, keyed))}")
    return found


def verdicts(run_dir: Path) -> dict[str, tuple[str, str, float]]:
    out = {}
    for f in sorted((run_dir / "cells").glob("*/result.json")):
        d = json.loads(f.read_text())
        out[d["name"]] = (d["verdict"], d.get("reason", ""),
                          float(d.get("durations", {}).get("total", 0.0)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("/tmp/cpa-harness-soak"))
    ap.add_argument("extra", nargs="*", help="more 'cpa-harness run' arguments (after --)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    qemu_before = qemu_processes()
    qmp_before = set(Path("/tmp").glob(QMP_DIRS))
    runs: list[dict[str, object]] = []
    seen: dict[str, list[tuple[str, str, float]]] = {}
    left: list[str] = []
    for n in range(1, args.runs + 1):
        run_dir = args.out / f"run-{n:02d}"
        argv = [sys.executable, "-m", "harness", "run", "--out", str(run_dir),
                "--db", str(args.out / "history.sqlite"), *args.extra]
        start = time.monotonic()
        with open(args.out / f"run-{n:02d}.log", "w") as log:
            rc = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        wall = time.monotonic() - start
        time.sleep(2)       # what a run leaves is judged after it had time to go
        these = leftovers(run_dir, qemu_before, qmp_before)
        left += [f"run {n}: {x}" for x in these]
        v = verdicts(run_dir)
        for name, got in v.items():
            seen.setdefault(name, []).append(got)
        runs.append({"run": n, "exit": rc, "wall": round(wall, 1),
                     "verdicts": {k: x[0] for k, x in v.items()}, "leftovers": these})
        print(f"run {n:2d}: exit {rc}, {wall:6.0f}s, "
              + ", ".join(f"{k} {x[0]}" for k, x in v.items())
              + (f"; LEFT: {these}" if these else ""), flush=True)

    print(f"\n{args.runs} runs of {' '.join(args.extra) or 'the smoke matrix'}")
    walls = [float(str(r["wall"])) for r in runs]
    print(f"wall per run: mean {statistics.mean(walls):.0f}s, min {min(walls):.0f}s, "
          f"max {max(walls):.0f}s; exits {dict(Counter(r['exit'] for r in runs))}")
    flaky = []
    print(f"\n{'cell':28} {'verdicts':24} {'mean s':>7} {'max s':>7}")
    for name, got in seen.items():
        counts = Counter(g[0] for g in got)
        secs = [g[2] for g in got]
        if len(counts) > 1 or len(got) != args.runs:
            flaky.append(name)
        text = ", ".join(f"{k}x{c}" for k, c in counts.items())
        print(f"{name:28} {text:24} {statistics.mean(secs):7.0f} {max(secs):7.0f}")
        for g in got:
            if g[0] != "pass":
                print(f"    {g[0]}: {g[1][:150]}")
    print(f"\nflaky cells: {', '.join(flaky) or 'none'}")
    print(f"leftovers: {len(left)}")
    for x in left:
        print(f"  {x}")
    (args.out / "soak.json").write_text(json.dumps({"runs": runs, "flaky": flaky,
                                                    "leftovers": left}, indent=1))
    return 1 if flaky or left else 0


if __name__ == "__main__":
    sys.exit(main())
