"""The selfcheck scenario: provoke each kind of kernel failure, check the harness names it.

A harness that misses a failure calls a broken kernel good. So a nightly run
proves its own eyes work: for each provocation it boots the kernel, triggers
one failure through LKDTM (/sys/kernel/debug/provoke-crash/DIRECT), and checks
that the console analysis reports a failure of the expected kind after the
trigger -- and nothing that was not there before it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from harness.cells import Cell
from harness.errors import HarnessError
from harness.kernel.kconfig import unavailable_line
from harness.results.cell import CellResult, Verdict
from harness.scenarios.context import CellContext, new_result
from harness.scenarios.judge import Outcome, judge
from harness.target.errors import GuestExited, GuestHang

DIRECT = "/sys/kernel/debug/provoke-crash/DIRECT"
# Results that are the harness's own failure (retried once), not the kernel's
INFRA_RESULTS = ("not-delivered", "error")
TRIGGER_RE = re.compile(rb"lkdtm: Performing direct entry (\w+)")


@dataclass(frozen=True)
class Provocation:
    crash: str                  # the LKDTM crash type
    kind: str                   # the failure kind the analysis must report
    setup: tuple[str, ...] = ()  # shell commands before the trigger
    cmdline: str = ""           # added to the cell's kernel command line
    wait: float = 60.0          # seconds after the trigger for the report to complete
    # Wanted kernel features (kernel-configs/options.toml) it cannot do without
    needs: tuple[str, ...] = ("lkdtm",)


PROVOCATIONS: tuple[Provocation, ...] = (
    Provocation("WARNING", "warning"),
    Provocation("BUG", "bug"),
    Provocation("EXCEPTION", "null_deref"),
    Provocation("WRITE_RO", "page_fault"),
    # debug_pagealloc unmaps a freed page from the direct map: a write to it faults.
    Provocation("WRITE_BUDDY_AFTER_FREE", "page_fault", cmdline="debug_pagealloc=on"),
    Provocation("CORRUPT_LIST_ADD", "list_corruption", needs=("lkdtm", "debug-list")),
    # watchdog_thresh 2: a soft lockup is reported after 4 s.
    Provocation("SOFTLOCKUP", "soft_lockup", setup=("echo 2 > /proc/sys/kernel/watchdog_thresh",),
                wait=120, needs=("lkdtm", "lockup-detectors")),
    # HARDLOCKUP is left out: under TCG the buddy detector reported nothing within
    # 95 s (nmi_watchdog 1, watchdog_thresh 10), so it would test QEMU, not us.
    Provocation("HUNG_TASK", "hung_task",
                setup=("echo 3 > /proc/sys/kernel/hung_task_timeout_secs",), wait=120,
                needs=("lkdtm", "lockup-detectors")),
    Provocation("PANIC", "panic"),
)


def provoke(p: Provocation, cell: Cell, ctx: CellContext) -> dict[str, Any]:
    """One boot, one trigger; what the analysis reported after it."""
    t = ctx.targets.timeouts
    serial = ctx.cell_dir / f"{p.crash.lower()}.log"
    target = ctx.targets.new(serial, ssh=False, is_fatal=lambda f, k: False,
                             extra_cmdline=p.cmdline)
    con = target.console
    check: dict[str, Any] = {"crash": p.crash, "expected_kind": p.kind, "serial_log": str(serial),
                             "target": target.describe(), "found": [], "result": "missed"}
    start = time.monotonic()
    delivered = False
    try:
        target.start()
        con.wait_ready(t.boot)
        for cmd in p.setup:
            status, out = con.run(cmd, t.command)
            if status != 0:
                check["result"] = "setup-failed"
                check["reason"] = f"{cmd!r} exited {status}: {out[-200:]}"
                return check
        status, out = con.run(f"test -w {DIRECT}", t.command)
        if status != 0:
            check["result"] = "setup-failed"
            check["reason"] = f"{DIRECT} is missing: the kernel lacks LKDTM or debugfs"
            return check
        # Everything the console prints from here on is the provocation's: its
        # report can arrive in the same read as LKDTM's announcement.
        trigger = con.parser.analysis.lines
        check["trigger_line"] = trigger
        # Its begin marker proves the trigger was typed and started. LKDTM's
        # announcement can overtake the rest of that marker's line (printk
        # writes at once, the shell's newline waits in the tty), so it is
        # looked for from before the trigger was typed.
        typed = con.mark()
        con.type_command(f"echo {p.crash} > {DIRECT}", t.command)
        delivered = True
        con.wait_for(TRIGGER_RE, t.command, f"LKDTM announcing {p.crash}", since=typed)
        try:
            con.wait_until(lambda: any(f.kind == p.kind for f in con.failures_after(trigger)),
                           p.wait, f"a {p.kind} report")
        except (GuestHang, GuestExited, OSError):
            pass    # judged below from what the analysis found
    except (GuestHang, GuestExited, OSError) as e:
        # Never delivered, the provocation tested nothing: the harness failed,
        # not the kernel's reporting.
        check["result"] = "no-trigger" if delivered else "not-delivered"
        check["reason"] = str(e)
    except HarnessError as e:
        check["result"] = "error"
        check["reason"] = e.line()
    finally:
        analysis = target.finish()
        check["seconds"] = round(time.monotonic() - start, 1)
        if con.notes:
            check["notes"] = con.notes
    after = check.get("trigger_line", 1 << 62)
    found = [f for b in analysis.boots for f in b.failures if f.line > after]
    check["found"] = [{"kind": f.kind, "title": f.title, "line": f.line} for f in found]
    if check["result"] == "missed" and any(f.kind == p.kind for f in found):
        check["result"] = "caught"
    return check


def run(cell: Cell, ctx: CellContext) -> CellResult:
    res = new_result(cell, ctx)
    start = time.monotonic()
    for p in PROVOCATIONS:
        lacking = [u for u in map(ctx.build.lacks, p.needs) if u is not None]
        if lacking:
            res.selfcheck.append({"crash": p.crash, "expected_kind": p.kind, "found": [],
                                  "result": "unavailable",
                                  "reason": unavailable_line(lacking[0], ctx.build.version)})
            continue
        check = provoke(p, cell, ctx)
        if check["result"] in INFRA_RESULTS:
            # The harness's own failure: once more, and the first try kept.
            again = provoke(p, cell, ctx)
            again["retried_after"] = f"{check['result']}: {check.get('reason', '')}"
            check = again
        res.selfcheck.append(check)
    res.durations["total"] = time.monotonic() - start
    verdict = judge(Outcome(Verdict.PASS), res)
    res.verdict, res.reason = verdict.verdict, verdict.reason
    return res
