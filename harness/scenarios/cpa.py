"""The CPA scenario: boot, see the self-test pass, watch more periods, read the direct map.

The pageattr-test kthread sleeps 30 s, runs the test, and prints only the first
pass; later passes are silent unless they fail with "NOT PASSED. Please
report." (a WARN). So after the first pass the scenario keeps reading the
console for N more periods, poking the shell now and then so that a guest that
stopped running is caught as a hang rather than mistaken for a quiet one.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cells import Cell
from harness.console import Failure
from harness.console.known import KnownIssue
from harness.console.known import match as match_known
from harness.errors import HarnessError, InfraError, UserError
from harness.kernel import facts as kernel_facts
from harness.kernel.build import Build
from harness.probes import flush, runtime, stats
from harness.results.cell import CellResult, FailureRecord, Verdict, write_json
from harness.scenarios import kexec
from harness.target.guest import Guest, SshAccess
from harness.target.machine import FailureSeen, GuestExited, GuestHang, Machine
from harness.target.qemu import AccelChoice, QemuParams, show_command
from harness.target.serial import NONCE_PARAM, new_nonce
from harness.target.ssh import free_port

SELFTEST_PERIOD = 30.0


@dataclass(frozen=True)
class Timeouts:
    boot: float            # QEMU start (or kexec) to the ready marker
    first_pass: float      # ready marker to the first self-test verdict
    command: float         # one shell command
    ssh: float             # ready marker to an ssh session
    copy: float = 300.0    # one file copied into the guest
    liveness: float = 10.0  # how often the shell is poked while watching

    def cell_budget(self, periods: int, trips: int) -> float:
        """A whole cell's backstop: every wait at its own deadline, plus slack."""
        one_boot = self.boot + self.ssh + self.first_pass + 30 * self.command
        period = SELFTEST_PERIOD + 5 + 4 * self.command
        trip = one_boot + 2 * self.copy
        return one_boot + periods * period + trips * trip

    @classmethod
    def for_accel(cls, accel: str) -> Timeouts:
        # TCG runs the guest 10-50x slower than KVM; the self-test period is 30 s either way.
        if accel == "kvm":
            return cls(boot=120, first_pass=90, command=30, ssh=30)
        return cls(boot=300, first_pass=180, command=90, ssh=90)


@dataclass(frozen=True)
class CellContext:
    build: Build
    initrd: Path
    accel: AccelChoice
    cell_dir: Path
    known: list[KnownIssue]     # empty with --strict
    ssh_key: Path | None = None         # the run's client key; its public half is in initrd
    kexec_image: Path | None = None     # None: kexec into the cell's own build


def qemu_params(cell: Cell, ctx: CellContext, ssh_port: int | None = None) -> QemuParams:
    return QemuParams(arch=cell.arch_params, accel=ctx.accel.accel, cpu=cell.cpu_model,
                      memory_mb=cell.memory_mb, smp=cell.smp, cmdline=cell.cmdline,
                      kernel=ctx.build.image, initrd=ctx.initrd, ssh_port=ssh_port,
                      numa_nodes=cell.numa_nodes, nonce=new_nonce())


def new_result(cell: Cell, ctx: CellContext) -> CellResult:
    """A cell's result with what is known before it boots."""
    return CellResult(name=cell.name, arch=cell.arch, scenario=cell.scenario,
                      accel=ctx.accel.accel, accel_reason=ctx.accel.reason, cpu=cell.cpu_model,
                      memory_mb=cell.memory_mb, smp=cell.smp, numa_nodes=cell.numa_nodes,
                      source_id=ctx.build.source_id,
                      build_dir=str(ctx.build.dir), build_cached=ctx.build.cached,
                      config_hash=ctx.build.config_hash, cmdline=cell.cmdline,
                      durations={"build": ctx.build.seconds},
                      unavailable=ctx.build.unavailable_lines(),
                      unchecked=kernel_facts.unchecked(ctx.build.version))


class KexecFailed(Exception):
    """The kernel did not complete a kexec round trip: a kernel-side failure."""


class RuntimeMismatch(UserError):
    """What runs is not what the cell asked for."""


def launch(cell: Cell, ctx: CellContext, res: CellResult,
           is_fatal: Callable[[Failure, str | None], bool]) -> tuple[Guest, Timeouts]:
    """The cell's guest, not started yet: its serial log, QEMU command and ssh access."""
    serial = ctx.cell_dir / "serial.log"
    res.serial_log = str(serial)
    access = SshAccess(free_port(), ctx.ssh_key) if ctx.ssh_key else None
    params = qemu_params(cell, ctx, access.port if access else None)
    res.cmdline = params.full_cmdline()
    res.qemu_command = show_command(params)
    t = Timeouts.for_accel(ctx.accel.accel)
    return Guest(Machine(params, serial, is_fatal=is_fatal), access, t.command), t


def first_look(cell: Cell, ctx: CellContext, res: CellResult,
               g: Guest) -> tuple[runtime.GuestView, stats.Snapshot]:
    """Right after the ready marker: how to reach the guest, what it runs, and its
    statistics before the first self-test pass (30 s after boot)."""
    if g.access:
        res.ssh = g.describe()
        write_json(ctx.cell_dir / "guest.json", g.describe())
    view = runtime.read_view(g.run, ctx.build.config_text())
    res.guest = view.to_json()
    boot = stats.collect(g.run, "boot", cell.arch)
    res.stats = {"boot": boot.to_json()}
    return view, boot


def run(cell: Cell, ctx: CellContext) -> CellResult:
    res = new_result(cell, ctx)

    def is_fatal(f: Failure, kernel: str | None) -> bool:
        return match_known(ctx.known, f.kind, f.title, kernel, cell.arch) is None

    g, t = launch(cell, ctx, res, is_fatal)
    m = g.m
    start = time.monotonic()
    res.deadline = cell.deadline or t.cell_budget(cell.periods, len(cell.kexec_trips()))
    m.cell_deadline = start + res.deadline
    try:
        m.start()
        res.boot_id = g.boot(t.boot, t.ssh)
        res.durations["boot_to_ready"] = time.monotonic() - start
        view, boot = first_look(cell, ctx, res, g)
        _check_runtime(res, cell, view, boot, _boot(m))
        prof = _profiler(g, res)
        m.wait_until(lambda: bool(_passes(m)), t.first_pass, "CPA self-test verdict")
        res.durations["to_first_pass"] = time.monotonic() - start
        _close_window(prof, res, "first-pass", again=cell.periods > 0)
        snaps = [boot, stats.collect(g.run, "first-pass", cell.arch)]
        workload = _start_workload(g, cell, res)
        for n in range(cell.periods):
            _watch_period(m, t)
            res.periods_watched += 1
            _close_window(prof, res, f"period-{n + 2}", again=n + 1 < cell.periods)
            snaps.append(stats.collect(g.run, f"period-{n + 2}", cell.arch))
        if prof:
            prof.teardown()
        if workload:
            g.run(f"kill {workload}")
        after = snaps[-1]
        res.durations["to_verdict"] = time.monotonic() - start
        res.stats.update({"after_selftest": after.to_json(),
                          "delta": stats.snapshot_delta(boot, after),
                          "snapshots": [s.to_json() for s in snaps]})
        res.direct_map = {k.removeprefix("DirectMap"): v
                          for k, v in (after.meminfo or {}).items()}
        res.vmstat = after.vmstat or {}
        for n, method in enumerate(cell.kexec_trips()):
            _round_trip(res, cell, ctx, g, t, method, n)
        g.close_ssh()
        m.poweroff(t.command)
        res.verdict = Verdict.PASS
    except FailureSeen as e:
        res.verdict, res.reason = Verdict.FAIL, f"{e.failure.kind}: {e.failure.title}"
    except GuestHang as e:
        res.verdict, res.reason = Verdict.FAIL, f"hang: {e}"
        res.failures.append(FailureRecord(kind="hang", title=str(e), line=0,
                                          boot=_boot_index(m), report=m.tail()))
    except KexecFailed as e:
        res.verdict, res.reason = Verdict.FAIL, f"kexec: {e}"
        res.failures.append(FailureRecord(kind="kexec", title=str(e), line=0,
                                          boot=_boot_index(m), report=m.tail()))
    except GuestExited as e:
        _exited(res, m, e)
    except OSError as e:
        if m.alive():
            res.verdict = Verdict.INFRA_ERROR
            res.reason = f"I/O error: {e.strerror or e}{f' ({e.filename})' if e.filename else ''}"
            res.serial_tail = m.tail()
        else:
            # EIO writing to QEMU's terminal: QEMU went away under the harness.
            _exited(res, m, GuestExited(f"a write to the console ({e.strerror})",
                                        m.exit_status(), m.ending()))
    except HarnessError as e:
        res.verdict = Verdict.USER_ERROR if e.exit_code == 2 else Verdict.INFRA_ERROR
        res.reason = e.line()
        if e.exit_code == 3:
            res.serial_tail = m.tail()
    finally:
        g.close_ssh()
        doc = m.finish()
        res.durations["total"] = time.monotonic() - start
        res.notes = m.notes
    _fill_from_analysis(res, doc, ctx.known)
    _judge(res, cell, doc)
    return res


def _exited(res: CellResult, m: Machine, e: GuestExited) -> None:
    """QEMU ended before the cell was done: the guest's doing (it reset or powered
    off, QEMU says) is a kernel failure; anything else is the host's."""
    res.qemu_ended = {"kind": e.ending.kind, "infra": e.ending.infra, "text": e.ending.text,
                      "status": e.status}
    res.serial_tail = m.tail()
    if e.ending.infra:
        res.verdict, res.reason = Verdict.INFRA_ERROR, str(e)
    else:
        res.verdict, res.reason = Verdict.FAIL, f"{e.ending.kind}: {e}"
        res.failures.append(FailureRecord(kind=e.ending.kind, title=str(e),
                                          line=0, boot=_boot_index(m), report=res.serial_tail))


def _check_runtime(res: CellResult, cell: Cell, view: runtime.GuestView,
                   boot: stats.Snapshot, booted: dict[str, Any]) -> None:
    """Fail the cell now if what runs is not what it asked for or expects."""
    problems = runtime.mismatches(view, res.cmdline, res.accel, cell.smp)
    if booted.get("debug_pagealloc") and boot.ptdump:
        large = {k: v for k, v in boot.ptdump.items()
                 if k in ("DirectMap2M", "DirectMap4M", "DirectMap1G") and v}
        if large:
            problems.append(f"debug_pagealloc was asked for, but the page tables map the "
                            f"direct map with large pages ({large}): it is off")
    if cell.expect.gbpages is True and "pdpe1gb" not in view.cpu_flags:
        problems.append(f"the cell expects GB pages, but the guest CPU ({view.cpu_model}) has "
                        f"no pdpe1gb")
    if problems:
        raise RuntimeMismatch("runtime check failed: " + "; ".join(problems),
                              "the guest is not running what the cell describes")


def _start_workload(g: Guest, cell: Cell, res: CellResult) -> str:
    """Start the cell's workload in the background; its pid, or '' without one."""
    if not cell.workload:
        return ""
    status, out = g.run(f"sh -c {shlex.quote(cell.workload)} </dev/null >/dev/null 2>&1 & "
                        "echo $!")
    pid = out.strip()
    if status != 0 or not pid.isdigit():
        raise InfraError(f"the workload did not start: {out.strip()[:200]}")
    res.workload = {"command": cell.workload, "pid": int(pid)}
    return pid


def _profiler(g: Guest, res: CellResult) -> flush.Profiler | None:
    """Flush accounting from now on, or the reason it cannot be had (recorded)."""
    kvm = res.accel == "kvm"
    prof = flush.Profiler(g.run, show_times=kvm)
    res.flush = {"windows": [], "timing": "time per call shown (KVM)" if kvm else
                 "time per call withheld: under TCG it measures the emulator, not the CPU"}
    # the running kernel, from its banner
    avoid = kernel_facts.avoided("flush-accounting", res.arch, g.m.kernel() or "")
    if avoid:
        res.flush["unavailable"] = avoid
        return None
    try:
        prof.setup()
        prof.start()
    except flush.Unavailable as e:
        res.flush["unavailable"] = str(e)
        return None
    res.flush.update(traceable=prof.traceable, untraceable=prof.untraceable)
    return prof


def _close_window(prof: flush.Profiler | None, res: CellResult, label: str,
                  again: bool) -> None:
    """End one counting window (a self-test period) and start the next."""
    if prof is None:
        return
    try:
        res.flush["windows"].append(prof.stop(label).to_json())
        if again:
            prof.start()
    except flush.Unavailable as e:
        res.flush["unavailable"] = f"window {label}: {e}"


def _round_trip(res: CellResult, cell: Cell, ctx: CellContext, g: Guest, t: Timeouts,
                method: str, n: int) -> None:
    """kexec into the target kernel, prove it runs, and run the CPA scenario in it."""
    rt = kexec.RoundTrip(method=method, nonce=new_nonce(), boot_id_before=g.boot_id)
    res.kexec.append(rt.to_json())

    def record() -> None:
        res.kexec[n] = rt.to_json()

    m = g.m
    before = stats.collect(g.run, f"before-kexec-{n + 1}", cell.arch)
    rt.stats["before"] = before.to_json()
    record()
    if g.ssh is None:
        raise InfraError("kexec needs ssh to copy the target kernel in, and ssh is not up")
    g.put(ctx.kexec_image or ctx.build.image, kexec.GUEST_IMAGE, 0o644, t.copy)
    g.put(ctx.initrd, kexec.GUEST_INITRD, 0o644, t.copy)
    status, current = g.run("cat /proc/cmdline")
    if status != 0:
        raise InfraError(f"cannot read /proc/cmdline before kexec: {current.strip()[:200]}")
    loaded = g.exec(kexec.load_command(method, kexec.next_cmdline(current.strip(), rt.nonce)),
                    t.command)
    if loaded.status != 0:
        rt.error = (loaded.stderr or loaded.stdout).strip()[:500]
        record()
        first = rt.error.splitlines()[0] if rt.error else f"status {loaded.status}"
        raise KexecFailed(f"{method} did not load the target: {first}")
    g.exec(kexec.EXECUTE, t.command)
    g.close_ssh()
    started = time.monotonic()
    try:
        m.wait_for(kexec.STARTING_RE, t.command, "'Starting new kernel' after kexec -e")
    except GuestHang:
        raise KexecFailed(f"no 'Starting new kernel' within {t.command:.0f}s of "
                          f"kexec -e ({method})") from None
    try:
        rt.boot_id_after = g.boot(t.boot, t.ssh, rt.nonce)
    except GuestHang:
        raise KexecFailed(f"the new kernel did not reach its ready marker within "
                          f"{t.boot:.0f}s ({method})") from None
    rt.seconds_to_ready = round(time.monotonic() - started, 1)
    rt.boot = _boot_index(m)
    _, rt.cmdline_after = g.run("cat /proc/cmdline")
    rt.cmdline_after = rt.cmdline_after.strip()
    nonce_seen = f"{NONCE_PARAM}={rt.nonce}" in rt.cmdline_after.split()
    rt.verified = nonce_seen and rt.boot_id_after != rt.boot_id_before
    record()
    if not rt.verified:
        why = "the nonce is not in /proc/cmdline" if not nonce_seen else "the boot id is unchanged"
        raise KexecFailed(f"the kernel running after {method} is not the one loaded "
                          f"({why})")
    # The new kernel's direct map as it booted (GB pages again?), then after its self-test.
    rt.stats["after"] = stats.collect(g.run, f"after-kexec-{n + 1}", cell.arch).to_json()
    record()
    m.wait_until(lambda: bool(_passes(m)), t.first_pass,
                 "CPA self-test verdict in the kexec'd kernel")
    rt.selftest = _passes(m)[0].get("result", "")
    rt.stats["first_pass"] = stats.collect(g.run, f"kexec-{n + 1}-first-pass",
                                           cell.arch).to_json()
    record()


def _boot_index(m: Machine) -> int:
    return max(0, len(m.parser.analysis.to_json()["boots"]) - 1)


def _boot(m: Machine) -> dict[str, Any]:
    boots = m.parser.analysis.to_json()["boots"]
    return boots[-1] if boots else {}


def _passes(m: Machine) -> list[dict[str, Any]]:
    return [p for p in _boot(m).get("cpa_selftest", []) if p.get("result") in ("pass", "fail")]


def _watch_period(m: Machine, t: Timeouts) -> None:
    """Read the console for one self-test period, checking the guest still runs."""
    end = time.monotonic() + SELFTEST_PERIOD + 5
    while (left := end - time.monotonic()) > 0:
        m.watch(min(t.liveness, left))
        m.run("true", t.command)


def _fill_from_analysis(res: CellResult, doc: dict[str, Any], known: list[KnownIssue]) -> None:
    boots = doc.get("boots", [])
    for n, boot in enumerate(boots):
        for f in boot.get("failures", []):
            k = match_known(known, f["kind"], f["title"], boot.get("kernel"), res.arch)
            res.failures.append(FailureRecord(
                kind=f["kind"], title=f["title"], line=f.get("line", 0), boot=n,
                known=k is not None, known_reason=k.reason if k else "",
                call_trace=list(f.get("call_trace", [])), report=list(f.get("report", []))))
    res.boots = [{"boot": n, "kernel": b.get("kernel"), "ended_by": b.get("ended_by"),
                  "failures": len(b.get("failures", []))} for n, b in enumerate(boots)]
    # Every boot's self-test passes, each marked with its boot (kexec adds boots).
    res.cpa_selftest = [{**p, "boot": n} for n, b in enumerate(boots)
                        for p in b.get("cpa_selftest", [])]
    first = next((b for b in boots if b.get("kernel")), boots[0] if boots else None)
    if first:
        # What the cell's own kernel booted with; a kexec'd kernel is judged by its trip.
        res.kernel_version = first.get("kernel")
        res.gbpages = first.get("gbpages")
        res.debug_pagealloc = first.get("debug_pagealloc")


def _judge(res: CellResult, cell: Cell, doc: dict[str, Any]) -> None:
    """The verdict from everything seen, the strongest finding first."""
    unknown = [f for f in res.failures if not f.known]
    failed_passes = [p for p in res.cpa_selftest if p.get("result") == "fail"]
    if res.verdict in (Verdict.USER_ERROR, Verdict.INFRA_ERROR):
        # A kernel that failed on the way outranks what went wrong around it.
        if not doc.get("boots") or not (unknown or failed_passes):
            return
    if unknown:
        f = unknown[0]
        res.verdict, res.reason = Verdict.FAIL, f"{f.kind}: {f.title}"
        return
    if failed_passes:
        res.verdict, res.reason = Verdict.FAIL, "CPA self-test NOT PASSED"
        return
    if res.verdict == Verdict.FAIL and not doc.get("boots") and not res.failures:
        # QEMU ended before the kernel printed anything, and not by the guest's
        # doing (that is a failure record): not the kernel's fault.
        res.verdict = Verdict.INFRA_ERROR
        res.reason = f"{res.reason}; no kernel output (see {res.serial_log})"
        return
    if res.verdict != Verdict.PASS:
        return
    if not any(p.get("result") == "pass" for p in res.cpa_selftest):
        res.verdict, res.reason = Verdict.FAIL, "no CPA self-test pass completed"
        return
    mismatch = _expectation_mismatch(res, cell)
    if mismatch:
        res.verdict, res.reason = Verdict.USER_ERROR, f"cell expectation not met: {mismatch}"


def _mapped(res: CellResult, when: str) -> tuple[dict[str, int], str]:
    """The direct map by page size in kB, and where the figures came from.

    The page-table dump is what is really mapped; /proc/meminfo's counters can
    disagree with it (on 6.12 x86_64 with GB pages their total exceeds the
    RAM), so they are only the fallback when the kernel has no dump.
    """
    snap = res.stats.get(when, {})
    src, name = (snap.get("ptdump"), "page tables") if snap.get("ptdump") else \
        (snap.get("meminfo"), "/proc/meminfo")
    if not src:
        return {f"DirectMap{k}": v for k, v in res.direct_map.items()}, "/proc/meminfo"
    return {k: v for k, v in src.items() if k.startswith("DirectMap")}, name


def _expectation_mismatch(res: CellResult, cell: Cell) -> str:
    e = cell.expect
    booted, src = _mapped(res, "boot")
    gb = booted.get("DirectMap1G", 0)
    if e.gbpages is True and not (res.gbpages and gb > 0):
        return (f"GB pages expected for the direct map, but the log says gbpages={res.gbpages} "
                f"and the {src} at boot show {gb} kB in 1G pages")
    if e.gbpages is False and (res.gbpages or gb > 0):
        return f"GB pages were used for the direct map ({src}), but the cell expects none"
    if e.debug_pagealloc is not None and bool(res.debug_pagealloc) != e.debug_pagealloc:
        return f"debug_pagealloc expected {'on' if e.debug_pagealloc else 'off'}, the kernel " \
               f"says {'on' if res.debug_pagealloc else 'off'}"
    if e.direct_map_all_4k:
        dm, src = _mapped(res, "after_selftest")
        large = {k: v for k, v in dm.items() if k != "DirectMap4k" and v}
        if large or not dm:
            return f"direct map expected all 4k, the {src} say {dm or 'nothing'}"
    return ""
