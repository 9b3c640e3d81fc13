"""The CPA scenario: boot, see the self-test pass, watch more periods, read the direct map.

The pageattr-test kthread sleeps 30 s, runs the test, and prints only the first
pass; later passes are silent unless they fail with "NOT PASSED. Please
report." (a WARN). So after the first pass the scenario keeps reading the
console for N more periods, poking the shell now and then so that a guest that
stopped running is caught as a hang rather than mistaken for a quiet one.

It talks to its machine only through the target interface
(harness.target.base), so it runs unchanged on any kind of machine. Each step
returns what it saw; run() puts the result together and judge() decides.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

from harness.cells import Cell
from harness.console import Analysis, Boot, Failure
from harness.console.known import match as match_known
from harness.errors import HarnessError, InfraError, UserError
from harness.files import write_json
from harness.kernel import facts, fast_selftest
from harness.probes import flush, passes, runtime, stats
from harness.results.cell import CellFailure, CellResult, RoundTrip, SshRecord, Verdict
from harness.scenarios import exercise, kexec
from harness.scenarios.context import SELFTEST_PERIOD, CellContext, new_result
from harness.scenarios.judge import Outcome, judge, read_console
from harness.target.base import Target, Timeouts
from harness.target.console import SLICE
from harness.target.errors import Ending, FailureSeen, GuestExited, GuestHang
from harness.target.serial import NONCE_PARAM, new_nonce

# A period is watched this much longer than the kthread's sleep: its test takes time too.
PERIOD_SLACK = 5.0


def cell_budget(t: Timeouts, periods: int, trips: int, fast: Cell | None = None) -> float:
    """A whole cell's backstop: every wait at its own deadline, plus slack
    (a fast self-test's passes: their periods, 10 s each to run, and one gap)."""
    one_boot = t.boot + t.ssh + t.first_pass + 30 * t.command
    if fast is not None and fast.selftest_period_ms:
        one_boot += fast.passes * (fast.selftest_period_ms / 1000 + 10) + t.first_pass
    period = SELFTEST_PERIOD + PERIOD_SLACK + 4 * t.command
    trip = one_boot + 2 * t.copy
    # a quiet period is watched once more before the self-test is called stuck
    longer = period if periods else 0
    return one_boot + periods * period + longer + trips * trip


class KexecFailed(Exception):
    """The kernel did not complete a kexec round trip: a kernel-side failure."""


class RuntimeMismatch(UserError):
    """What runs is not what the cell asked for."""


# How to reach a cell's machine while it is up, for `cpa-harness ssh`.
GUEST_FILE = "guest.json"


def first_look(cell: Cell, ctx: CellContext, target: Target) -> tuple[runtime.GuestView,
                                                                         stats.Snapshot]:
    """Right after the ready marker: what the machine runs, and its statistics
    before the first self-test pass (30 s after boot)."""
    if target.shell.access:
        write_json(ctx.cell_dir / GUEST_FILE, {**target.shell.describe(),
                                               **target.describe()})
    view = runtime.read_view(target.shell.run, ctx.build.config_text())
    return view, stats.collect(target.shell.run, "boot", cell.arch)


def finish(target: Target, ctx: CellContext) -> Analysis:
    """Give the machine back, and say so to anyone who would ssh into it."""
    try:
        return target.finish()
    finally:
        path = ctx.cell_dir / GUEST_FILE
        if path.exists():
            write_json(path, {**json.loads(path.read_text()), "released": True})


def run(cell: Cell, ctx: CellContext) -> CellResult:
    res = new_result(cell, ctx)

    def is_fatal(f: Failure, kernel: str | None) -> bool:
        return match_known(ctx.known, f.kind, f.title, kernel, cell.arch) is None

    t = ctx.targets.timeouts
    target = ctx.targets.new(ctx.cell_dir / "serial.log", ssh=cell.ssh, is_fatal=is_fatal)
    con, sh = target.console, target.shell
    res.serial_log = str(con.serial_log)
    res.cmdline = target.kernel_cmdline()
    start = time.monotonic()
    res.deadline = cell.deadline or cell_budget(t, cell.periods, len(cell.kexec_trips()), cell)
    con.cell_deadline = start + res.deadline
    trips: list[RoundTrip] = []
    ended: dict[str, Any] = {}      # how the machine stopped, when it stopped early
    module = exercise.prepare(cell, ctx)
    try:
        target.start()
        res.cmdline = target.kernel_cmdline()   # as booted: a box adds its own words
        res.boot_id = sh.boot(t.boot, t.ssh)
        res.durations["boot_to_ready"] = time.monotonic() - start
        if sh.access:
            res.ssh = SshRecord(**sh.describe())
        view, boot = first_look(cell, ctx, target)
        res.guest = view
        res.stats = {"boot": boot.to_json()}
        booted = con.parser.analysis.boots
        problems = runtime_problems(res, cell, view, boot, booted[-1] if booted else None)
        if problems:
            raise RuntimeMismatch("runtime check failed: " + "; ".join(problems),
                                  "the guest is not running what the cell describes")
        prof, res.flush = profiler(target, res.accel, cell.arch)
        con.wait_until(lambda: bool(con.passes()), t.first_pass, "CPA self-test verdict")
        res.durations["to_first_pass"] = time.monotonic() - start
        close_window(prof, res.flush, "first-pass", again=cell.periods > 0)
        snaps = [boot, stats.collect(sh.run, "first-pass", cell.arch)]
        workload = start_workload(target, cell)
        if workload:
            res.workload = {"command": cell.workload, "pid": workload}
        pagealloc = bool(booted and booted[-1].debug_pagealloc)
        if cell.selftest_period_ms:
            stuck = watch_passes(target, t, cell, res.fast_selftest)
            if stuck:
                res.failures.append(CellFailure.seen_by_harness(
                    "cpa_selftest", "CPA self-test ran no pass", con.boot_index(), [stuck]))
            snaps.append(stats.collect(sh.run, "passes", cell.arch))
        for n in range(cell.periods):
            label = f"period-{n + 2}"
            begun = time.monotonic()
            watch_period(target, t)
            res.periods_watched += 1
            calls = close_window(prof, res.flush, label, again=n + 1 < cell.periods)
            snaps.append(stats.collect(sh.run, label, cell.arch))
            proof = passes.prove(label, snaps[-2], snaps[-1], time.monotonic() - begun,
                                 calls, pagealloc)
            if proof.ran is False:
                proof = watch_longer(target, t, cell, snaps, proof, pagealloc)
            res.periods.append(proof)
            if proof.ran is False:
                res.failures.append(CellFailure.seen_by_harness(
                    "cpa_selftest", "CPA self-test ran no pass", con.boot_index(),
                    [f"{proof.label}: {proof.describe()}: the self-test thread is stuck"]))
                break
        if workload:
            sh.run(f"kill {workload}")
        after = snaps[-1]
        res.durations["to_verdict"] = time.monotonic() - start
        res.stats.update({"after_selftest": after.to_json(),
                          "delta": stats.snapshot_delta(boot, after),
                          "snapshots": [s.to_json() for s in snaps]})
        res.direct_map = {k.removeprefix("DirectMap"): v
                          for k, v in (after.meminfo or {}).items()}
        res.vmstat = after.vmstat or {}
        if module is not None:
            res.exercise = exercise.run_modes(cell, ctx, target, module, prof, res.failures)
            res.durations["exercise"] = time.monotonic() - start - res.durations["to_verdict"]
        if pagealloc:
            # the exerciser's changes count too: they ran on the same direct map
            last = stats.collect(sh.run, "end", cell.arch) if module is not None else after
            res.stats["pagealloc"] = stats.pagealloc_splits(boot, last)
        if prof:
            prof.teardown()
        for n, method in enumerate(cell.kexec_trips()):
            trips.append(RoundTrip(method=method, nonce=new_nonce(), boot_id_before=sh.boot_id))
            round_trip(trips[-1], cell, ctx, target, t, n)
        sh.close_ssh()
        target.power_off(t.command)
        steps = Outcome(Verdict.PASS)
    except Exception as e:      # each kind judged below; anything else is a bug, re-raised
        steps, record, stopped = ended_by(e, target)
        if record is not None:
            res.failures.append(record)
        if stopped is not None:
            ended = stopped.to_json()
        if steps.verdict == Verdict.INFRA_ERROR or ended:
            res.serial_tail = con.tail()
    finally:
        res.kexec = trips
        analysis = finish(target, ctx)
        res.target = {**target.describe(), **({"ended": ended} if ended else {})}
        res.durations["total"] = time.monotonic() - start
        res.notes = con.notes
    read_console(analysis, ctx.known, cell.arch).fill(res)
    verdict = judge(steps, res, cell.expect)
    res.verdict, res.reason = verdict.verdict, verdict.reason
    return res


def ended_by(e: Exception,
             target: Target) -> tuple[Outcome, CellFailure | None, Ending | None]:
    """How the steps ended, from what stopped them: the outcome, the failure it
    records if any, and how the machine stopped if it did.

    A kernel failure, a hang and a failed kexec are the kernel's; the machine
    stopping is the guest's doing only when the target says so (QEMU: its QMP
    account); a harness error is the user's or the host's.
    """
    con = target.console

    def record(kind: str, title: str) -> CellFailure:
        return CellFailure.seen_by_harness(kind, title, con.boot_index(), con.tail())

    if isinstance(e, FailureSeen):
        return Outcome(Verdict.FAIL, f"{e.failure.kind}: {e.failure.title}"), None, None
    if isinstance(e, GuestHang):
        return Outcome(Verdict.FAIL, f"hang: {e}"), record("hang", str(e)), None
    if isinstance(e, KexecFailed):
        return Outcome(Verdict.FAIL, f"kexec: {e}"), record("kexec", str(e)), None
    if isinstance(e, OSError) and not target.alive():
        # EIO writing to the console: the machine went away under the harness.
        e = GuestExited(f"a write to the console ({e.strerror})", target.ending())
    if isinstance(e, GuestExited):
        if e.ending.infra:
            return Outcome(Verdict.INFRA_ERROR, str(e)), None, e.ending
        return (Outcome(Verdict.FAIL, f"{e.ending.kind}: {e}"), record(e.ending.kind, str(e)),
                e.ending)
    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        return Outcome(Verdict.INFRA_ERROR, f"I/O error: {e.strerror or e}{where}"), None, None
    if isinstance(e, HarnessError):
        verdict = Verdict.USER_ERROR if e.exit_code == 2 else Verdict.INFRA_ERROR
        return Outcome(verdict, e.line()), None, None
    raise e


def runtime_problems(res: CellResult, cell: Cell, view: runtime.GuestView,
                     boot: stats.Snapshot, booted: Boot | None) -> list[str]:
    """What runs that is not what the cell asked for or expects."""
    problems = runtime.mismatches(view, res.cmdline, res.accel, res.smp)
    if booted and booted.debug_pagealloc and boot.ptdump:
        large = {k: v for k, v in boot.ptdump.items()
                 if k in ("DirectMap2M", "DirectMap4M", "DirectMap1G") and v}
        if large:
            problems.append(f"debug_pagealloc was asked for, but the page tables map the "
                            f"direct map with large pages ({large}): it is off")
    if cell.expect.gbpages is True and "pdpe1gb" not in view.cpu_flags:
        problems.append(f"the cell expects GB pages, but the guest CPU ({view.cpu_model}) has "
                        f"no pdpe1gb")
    return problems


def start_workload(target: Target, cell: Cell) -> int | None:
    """Start the cell's workload in the background; its pid, or None without one."""
    if not cell.workload:
        return None
    status, out = target.shell.run(f"sh -c {shlex.quote(cell.workload)} </dev/null "
                                   ">/dev/null 2>&1 & echo $!")
    pid = out.strip()
    if status != 0 or not pid.isdigit():
        raise InfraError(f"the workload did not start: {out.strip()[:200]}")
    return int(pid)


def profiler(target: Target, accel: str, arch: str) -> tuple[flush.Profiler | None,
                                                              dict[str, Any]]:
    """Flush accounting from now on, and its record (with the reason it cannot be had)."""
    # Under TCG a time per call measures the emulator; on KVM and a real box, the CPU.
    real = accel in ("kvm", "box")
    prof = flush.Profiler(target.shell.run, show_times=real)
    on = "KVM" if accel == "kvm" else "a real CPU"
    info: dict[str, Any] = {
        "windows": [], "timing": f"time per call shown ({on})" if real else
        "time per call withheld: under TCG it measures the emulator, not the CPU"}
    # the running kernel, from its banner
    avoid = facts.avoided("flush-accounting", arch, target.console.kernel() or "")
    if avoid:
        return None, {**info, "unavailable": avoid}
    try:
        prof.setup()
        prof.start()
    except flush.Unavailable as e:
        return None, {**info, "unavailable": str(e)}
    return prof, {**info, "traceable": prof.traceable, "untraceable": prof.untraceable}


def close_window(prof: flush.Profiler | None, info: dict[str, Any], label: str,
                 again: bool) -> dict[str, int] | None:
    """End one counting window (a self-test period) into `info` and start the
    next; the window's calls per function, when it was counted."""
    if prof is None:
        return None
    try:
        window = prof.stop(label).to_json()
        info["windows"].append(window)
        if again:
            prof.start()
    except flush.Unavailable as e:
        info["unavailable"] = f"window {label}: {e}"
        return None
    return window.get("counts")


def watch_longer(target: Target, t: Timeouts, cell: Cell, snaps: list[stats.Snapshot],
                 quiet: passes.PeriodProof, pagealloc: bool) -> passes.PeriodProof:
    """A period in which no counter moved: one period more before calling the
    self-test stuck, so that a pass late under load is not taken for none."""
    begun = time.monotonic()
    watch_period(target, t)
    snaps.append(stats.collect(target.shell.run, f"{quiet.label}-longer", cell.arch))
    return passes.prove(quiet.label, snaps[-3], snaps[-1],
                        quiet.seconds + time.monotonic() - begun, debug_pagealloc=pagealloc)


def round_trip(rt: RoundTrip, cell: Cell, ctx: CellContext, target: Target,
               t: Timeouts, n: int) -> None:
    """kexec into the target kernel, prove it runs, and run the CPA scenario in it.

    What is learnt goes into `rt` as it is learnt, so a trip that fails half
    way keeps its evidence."""
    con, sh = target.console, target.shell
    rt.stats["before"] = stats.collect(sh.run, f"before-kexec-{n + 1}", cell.arch).to_json()
    if sh.ssh is None:
        raise InfraError("kexec needs ssh to copy the target kernel in, and ssh is not up")
    sh.put(ctx.kexec_image or ctx.build.image, kexec.GUEST_IMAGE, 0o644, t.copy)
    sh.put(ctx.initrd, kexec.GUEST_INITRD, 0o644, t.copy)
    status, current = sh.run("cat /proc/cmdline")
    if status != 0:
        raise InfraError(f"cannot read /proc/cmdline before kexec: {current.strip()[:200]}")
    loaded = sh.exec(kexec.load_command(rt.method, kexec.next_cmdline(current.strip(),
                                                                       rt.nonce)), t.command)
    if loaded.status != 0:
        rt.error = (loaded.stderr or loaded.stdout).strip()[:500]
        first = rt.error.splitlines()[0] if rt.error else f"status {loaded.status}"
        raise KexecFailed(f"{rt.method} did not load the target: {first}")
    sh.exec(kexec.EXECUTE, t.command)
    sh.close_ssh()
    started = time.monotonic()
    try:
        con.wait_for(kexec.STARTING_RE, t.command, "'Starting new kernel' after kexec -e")
    except GuestHang:
        raise KexecFailed(f"no 'Starting new kernel' within {t.command:.0f}s of "
                          f"kexec -e ({rt.method})") from None
    try:
        rt.boot_id_after = sh.boot(t.boot, t.ssh, rt.nonce)
    except GuestHang:
        raise KexecFailed(f"the new kernel did not reach its ready marker within "
                          f"{t.boot:.0f}s ({rt.method})") from None
    rt.seconds_to_ready = round(time.monotonic() - started, 1)
    rt.boot = con.boot_index()
    _, rt.cmdline_after = sh.run("cat /proc/cmdline")
    rt.cmdline_after = rt.cmdline_after.strip()
    nonce_seen = f"{NONCE_PARAM}={rt.nonce}" in rt.cmdline_after.split()
    rt.verified = nonce_seen and rt.boot_id_after != rt.boot_id_before
    if not rt.verified:
        why = "the nonce is not in /proc/cmdline" if not nonce_seen else "the boot id is unchanged"
        raise KexecFailed(f"the kernel running after {rt.method} is not the one loaded "
                          f"({why})")
    # The new kernel's direct map as it booted (GB pages again?), then after its self-test.
    rt.stats["after"] = stats.collect(sh.run, f"after-kexec-{n + 1}", cell.arch).to_json()
    con.wait_until(lambda: bool(con.passes()), t.first_pass,
                   "CPA self-test verdict in the kexec'd kernel")
    rt.selftest = con.passes()[0].result
    rt.stats["first_pass"] = stats.collect(sh.run, f"kexec-{n + 1}-first-pass",
                                           cell.arch).to_json()


def watch_passes(target: Target, t: Timeouts, cell: Cell, record: dict[str, Any]) -> str:
    """The fast self-test: read the console until the cell's passes after the
    first are printed, each one proof of itself, poking the shell as a
    period's watch does. What was seen goes into `record`; a wait for one pass
    far beyond the period (the first-pass timeout more) is a stuck self-test,
    said in the line returned ("" when every pass came). A failed pass ends
    the wait as the console's failure."""
    con = target.console
    status, out = target.shell.run(f"cat {fast_selftest.SYSFS}")
    taken = out.strip()
    if status != 0 or taken != str(cell.selftest_period_ms):
        raise RuntimeMismatch(
            f"the kernel does not run the fast self-test ({fast_selftest.SYSFS}: "
            f"{taken[:80] or 'missing'}, {cell.selftest_period_ms} asked for)",
            f"the cell's kernel is built with {fast_selftest.PATCH.name}; was it applied?")
    # counted from the boot's first pass: those printed while the harness took
    # its first statistics count too
    def passed() -> int:    # a failed pass is no pass (a known one does not end the cell)
        return sum(1 for p in con.passes() if p.result == "pass")
    counted = passed()
    want = 1 + cell.passes
    gap = cell.selftest_period_ms / 1000 + t.first_pass
    begun = last = poked = time.monotonic()
    stuck = ""
    while counted < want:
        now = time.monotonic()
        if (seen := passed()) > counted:
            counted, last = seen, now
            continue
        if now - last > gap:
            stuck = (f"{counted - 1} of {cell.passes} passes after the first, none in "
                     f"the last {now - last:.0f} s (period {cell.selftest_period_ms} ms): "
                     "the self-test thread is stuck")
            break
        if now - poked >= t.liveness:
            con.run("true", t.command)
            poked = time.monotonic()
        con.watch(SLICE)
    record["passes_seen"] = counted - 1
    # The rate from the first pass to the newest one, at the times the console
    # parser completed each (as their lines arrived, read throughout): the
    # harness's polling does not enter it.
    at = con.passes_at
    if len(at) > 1:
        span = at[-1] - at[0]
        record["seconds"] = round(span, 1)
        record["per_minute"] = round(60 * (len(at) - 1) / span, 1) if span > 0 else None
    record["watched"] = round(time.monotonic() - begun, 1)
    return stuck


def watch_period(target: Target, t: Timeouts) -> None:
    """Read the console for one self-test period, checking the machine still runs."""
    end = time.monotonic() + SELFTEST_PERIOD + PERIOD_SLACK
    while (left := end - time.monotonic()) > 0:
        target.console.watch(min(t.liveness, left))
        target.console.run("true", t.command)
