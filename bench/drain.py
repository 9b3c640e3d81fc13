"""What reading the console in the background costs each command run over ssh.

    python bench/drain.py [--commands 40]

Every ssh command runs inside Console.draining(): a thread reads the serial
line meanwhile, and leaving the block waits for the read slice in progress.
This times entering and leaving the block (the command itself is nothing) on
a local child that prints a kernel-like line every 50 ms, with the drain
thread's slice as shipped (DRAIN_SLICE) and, as the baseline, the 0.5 s slice
it had before, in the same process. Not a test: it prints seconds per command
and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pexpect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.target import console  # noqa: E402
from harness.target.serial import new_nonce  # noqa: E402

PRINTER = "i=0; while :; do i=$((i+1)); echo \"[ $i.000000] tick\"; sleep 0.05; done"


def per_command(slice_s: float, commands: int, work: Path) -> list[float]:
    saved = console.DRAIN_SLICE
    console.DRAIN_SLICE = slice_s
    c = console.Console(work / f"serial-{slice_s}.log", new_nonce())
    c.attach(pexpect.spawn("sh", ["-c", PRINTER], timeout=None, echo=False))
    took = []
    try:
        for _ in range(commands):
            start = time.monotonic()
            with c.draining():
                pass        # the ssh command would run here
            took.append(time.monotonic() - start)
    finally:
        c.close()
        console.DRAIN_SLICE = saved
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commands", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        base = per_command(0.5, args.commands, Path(d))
        now = per_command(console.DRAIN_SLICE, args.commands, Path(d))
    for name, xs in (("baseline slice 0.5 s", base), (f"slice {console.DRAIN_SLICE} s", now)):
        print(f"{name:>22}: {statistics.mean(xs) * 1000:6.1f} ms per command "
              f"(median {statistics.median(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})")
    print(f"{'ratio':>22}: {statistics.mean(base) / statistics.mean(now):.1f}x less waiting")


if __name__ == "__main__":
    main()
