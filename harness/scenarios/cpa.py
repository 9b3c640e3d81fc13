"""The CPA scenario: boot, see the self-test pass, watch more periods, read the direct map.

The pageattr-test kthread sleeps 30 s, runs the test, and prints only the first
pass; later passes are silent unless they fail with "NOT PASSED. Please
report." (a WARN). So after the first pass the scenario keeps reading the
console for N more periods, poking the shell now and then so that a guest that
stopped running is caught as a hang rather than mistaken for a quiet one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import stats
from harness.build import Build
from harness.cells import Cell
from harness.errors import HarnessError
from harness.known_issues import KnownIssue
from harness.known_issues import match as match_known
from harness.machine import READY_RE, FailureSeen, GuestExited, GuestHang, Machine
from harness.qemu import AccelChoice, QemuParams, show_command
from harness.results import CellResult, FailureRecord, Verdict

SELFTEST_PERIOD = 30.0


@dataclass(frozen=True)
class Timeouts:
    boot: float            # QEMU start to the ready marker
    first_pass: float      # ready marker to the first self-test verdict
    command: float         # one shell command
    liveness: float = 10.0  # how often the shell is poked while watching

    @classmethod
    def for_accel(cls, accel: str) -> Timeouts:
        # TCG runs the guest 10-50x slower than KVM; the self-test period is 30 s either way.
        if accel == "kvm":
            return cls(boot=120, first_pass=90, command=30)
        return cls(boot=300, first_pass=180, command=90)


@dataclass(frozen=True)
class CellContext:
    build: Build
    initrd: Path
    accel: AccelChoice
    cell_dir: Path
    known: list[KnownIssue]     # empty with --strict


def qemu_params(cell: Cell, ctx: CellContext) -> QemuParams:
    return QemuParams(arch=cell.arch_params, accel=ctx.accel.accel, cpu=cell.cpu_model,
                      memory_mb=cell.memory_mb, smp=cell.smp, cmdline=cell.cmdline,
                      kernel=ctx.build.image, initrd=ctx.initrd)


def new_result(cell: Cell, ctx: CellContext) -> CellResult:
    """A cell's result with what is known before it boots."""
    return CellResult(name=cell.name, arch=cell.arch, scenario=cell.scenario,
                      accel=ctx.accel.accel, accel_reason=ctx.accel.reason, cpu=cell.cpu_model,
                      memory_mb=cell.memory_mb, smp=cell.smp, source_id=ctx.build.source_id,
                      build_dir=str(ctx.build.dir), build_cached=ctx.build.cached,
                      config_hash=ctx.build.config_hash, cmdline=cell.cmdline)


def run(cell: Cell, ctx: CellContext) -> CellResult:
    res = new_result(cell, ctx)
    params = qemu_params(cell, ctx)
    res.cmdline = params.full_cmdline()
    res.qemu_command = show_command(params)
    serial = ctx.cell_dir / "serial.log"
    res.serial_log = str(serial)
    t = Timeouts.for_accel(ctx.accel.accel)

    def is_fatal(f: Any, kernel: str | None) -> bool:
        return match_known(ctx.known, f.kind, f.title, kernel, cell.arch) is None

    m = Machine(params, serial, is_fatal=is_fatal)
    start = time.monotonic()
    try:
        m.start()
        ready = m.wait_for(READY_RE, t.boot, "ready marker from the guest's init")
        res.boot_id = ready.group(1).decode()
        res.durations["boot_to_ready"] = time.monotonic() - start
        # Before the first pass (30 s after boot): the direct map as booted.
        boot = stats.collect(lambda c: m.run(c, t.command), "boot", cell.arch)
        m.wait_until(lambda: bool(_passes(m)), t.first_pass, "CPA self-test verdict")
        res.durations["to_first_pass"] = time.monotonic() - start
        for _ in range(cell.periods):
            _watch_period(m, t)
            res.periods_watched += 1
        after = stats.collect(lambda c: m.run(c, t.command), "after-selftest", cell.arch)
        res.durations["to_verdict"] = time.monotonic() - start
        res.stats = {"boot": boot.to_json(), "after_selftest": after.to_json(),
                     "delta": stats.snapshot_delta(boot, after)}
        res.direct_map = {k.removeprefix("DirectMap"): v
                          for k, v in (after.meminfo or {}).items()}
        res.vmstat = after.vmstat or {}
        m.poweroff(t.command)
        res.verdict = Verdict.PASS
    except FailureSeen as e:
        res.verdict, res.reason = Verdict.FAIL, f"{e.failure.kind}: {e.failure.title}"
    except GuestHang as e:
        res.verdict, res.reason = Verdict.FAIL, f"hang: {e}"
        res.failures.append(FailureRecord(kind="hang", title=f"hang: {e}", line=0, boot=0))
    except (GuestExited, OSError) as e:
        # QEMU went away (EOF, or EIO writing to its terminal): the analysis
        # below tells a kernel that died from a QEMU that did.
        res.verdict, res.reason = Verdict.FAIL, f"QEMU ended early: {e}"
    except HarnessError as e:
        res.verdict = Verdict.USER_ERROR if e.exit_code == 2 else Verdict.INFRA_ERROR
        res.reason = e.line()
    finally:
        doc = m.finish()
        res.durations["total"] = time.monotonic() - start
    _fill_from_analysis(res, doc, ctx.known)
    _judge(res, cell, doc)
    return res


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
    if boots:
        last = boots[-1]
        res.kernel_version = last.get("kernel")
        res.gbpages = last.get("gbpages")
        res.debug_pagealloc = last.get("debug_pagealloc")
        res.cpa_selftest = list(last.get("cpa_selftest", []))


def _judge(res: CellResult, cell: Cell, doc: dict[str, Any]) -> None:
    """The verdict from everything seen, the strongest finding first."""
    if res.verdict in (Verdict.USER_ERROR, Verdict.INFRA_ERROR):
        if not doc.get("boots") or res.verdict == Verdict.USER_ERROR:
            return
    unknown = [f for f in res.failures if not f.known]
    failed_passes = [p for p in res.cpa_selftest if p.get("result") == "fail"]
    if unknown:
        f = unknown[0]
        res.verdict, res.reason = Verdict.FAIL, f"{f.kind}: {f.title}"
        return
    if failed_passes:
        res.verdict, res.reason = Verdict.FAIL, "CPA self-test NOT PASSED"
        return
    if res.verdict == Verdict.FAIL and not doc.get("boots"):
        # QEMU ended before the kernel printed anything: not the kernel's fault.
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
