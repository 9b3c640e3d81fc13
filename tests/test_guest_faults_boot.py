"""Guest faults made to happen for real, and what the harness calls them.

One run of four x86_64 cells; as soon as each guest is up (its guest.json is
written) the test does one thing to it over ssh, from outside the harness:

- wedges it silently: LKDTM HARDLOCKUP on its only CPU (interrupts off, a
  spin; under TCG no NMI watchdog reports it), so the console goes quiet;
- floods the console for ever: stops every other process (the serial shell,
  dropbear) and writes /dev/kmsg in a loop: output never stops, but nothing
  answers, so the harness must not take output for progress;
- resets it: `reboot -f` with reboot=t, a real triple fault;
- powers it off: `poweroff -f`.

QEMU's QMP SHUTDOWN event tells the reset from the power-off. Each cell must
end within the deadline of the wait it was in (plus a little), with kind
hang, hang, reset and shutdown; the figures go in docs/faults.md.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import guest_command, wait_for_file

from harness import paths
from harness.cells import SMOKE
from harness.console import known as known_issues
from harness.results.cell import CellResult, Verdict
from harness.run import RunOptions, run_cells
from harness.target.base import Timeouts

pytestmark = pytest.mark.boot

LKDTM = "/sys/kernel/debug/provoke-crash/DIRECT"
FAULTS = {
    # name: (smp, extra kernel command line, command run in the guest, kind)
    "silent-hang": (1, "", f"echo HARDLOCKUP > {LKDTM}", "hang"),
    "flood": (1, "", "setsid sh -c 'kill -STOP -1; i=0; while :; do i=$((i+1)); "
                     "echo \"flood line $i\" > /dev/kmsg; done' </dev/null >/dev/null 2>&1 &",
              "hang"),
    "reset": (2, "reboot=t", "reboot -f", "reset"),
    "poweroff": (2, "", "poweroff -f", "shutdown"),
}
TCG = Timeouts.for_accel("tcg")
# The longest single wait a cell can be in when its guest stops answering: a
# command over ssh, then the same over the serial console; or the first pass.
LONGEST_WAIT = max(2 * TCG.command, TCG.first_pass)
SLACK = 30.0
KNOWN = known_issues.load(Path(__file__).parent.parent / "ci" / "known-issues.toml")


def test_guest_faults_end_with_the_right_kind(tmp_path: Path) -> None:
    base = next(c for c in SMOKE if c.name == "x86_64-debug-pagealloc")
    cells = [replace(base, name=name, smp=smp, cmdline=cmdline, memory_mb=1024, periods=1,
                     expect=replace(base.expect, debug_pagealloc=None, direct_map_all_4k=False))
             for name, (smp, cmdline, _, _) in FAULTS.items()]
    done_at: dict[str, float] = {}
    injected: dict[str, float] = {}
    said: dict[str, str] = {}

    def inject(name: str) -> None:
        injected[name] = wait_for_file(tmp_path / "cells" / name / "guest.json")
        proc = guest_command(tmp_path, name, FAULTS[name][2])
        try:
            out = proc.communicate(timeout=LONGEST_WAIT + 60)[0].decode(errors="replace")
            said[name] = f"exit {proc.returncode} after {time.time() - injected[name]:.0f}s: {out}"
        except subprocess.TimeoutExpired:
            proc.kill()
            said[name] = f"(no answer within {LONGEST_WAIT + 60:.0f}s)"

    threads = [threading.Thread(target=inject, args=(c.name,), daemon=True) for c in cells]
    for t in threads:
        t.start()
    results = run_cells(cells, RunOptions(jobs=2, accel="tcg", known=KNOWN), tmp_path,
                        paths.cache_dir())
    for r in results:
        done_at[r.name] = r.started + r.durations["total"]
    by_name: dict[str, CellResult] = {r.name: r for r in results}
    report = {n: (by_name[n].verdict.value, by_name[n].reason,
                  round(done_at[n] - injected.get(n, done_at[n]), 1)) for n in FAULTS}
    print("\nfault: verdict, reason, seconds from the fault to the cell's end")
    for n, line in report.items():
        print(f"  {n}: {line}")
        log = tmp_path / "cells" / n / "serial.log"
        print(f"    serial log {log.stat().st_size} bytes; ssh said {said.get(n, '')[-300:]!r}")
    for name, (_, _, _, kind) in FAULTS.items():
        r = by_name[name]
        assert name in injected, f"{name}: the guest never came up: {r.reason}"
        assert r.verdict == Verdict.FAIL, (name, r.verdict, r.reason)
        assert r.failures and r.failures[0].kind == kind, (name, r.reason)
        took = done_at[name] - injected[name]
        bound = LONGEST_WAIT + SLACK if kind == "hang" else SLACK
        assert took <= bound, f"{name} took {took:.0f}s after the fault (bound {bound:.0f}s)"
    assert "guest-reset" in by_name["reset"].reason
    assert by_name["reset"].target["ended"]["kind"] == "reset"
    assert "guest-shutdown" in by_name["poweroff"].reason
    for name in ("reset", "poweroff"):
        events = (tmp_path / "cells" / name / "serial.qmp.jsonl").read_text()
        assert '"SHUTDOWN"' in events
    # The flood printed on while the harness waited, and it still ended on time.
    assert (tmp_path / "cells" / "flood" / "serial.log").read_bytes().count(b"flood line") > 1000
