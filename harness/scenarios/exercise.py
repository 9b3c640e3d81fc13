"""The CPA exerciser in a cell: the paths the self-test never takes.

The self-test only toggles a software bit, so it never changes a caching
attribute and never needs a cache flush. The exerciser module
(guest/exerciser/cpa_exercise.c, built against the cell's kernel) changes
caching attributes the way drivers do, from several CPUs at once, and with
page allocations failed on purpose; each mode is one insmod, run after the
cell's self-test periods so that its splits and flushes never count as a
self-test pass's. For each mode the result holds the module's own lines
(counts, failed calls, attribute mismatches), the flush calls of its window
(full write-backs next to CLFLUSH ranges), and the direct-map counters
around it. Times are shown only where they are the CPU's (KVM, a box).

A mode that cannot run here is unavailable with its reason (no ssh, a kernel
without modules or fault injection, a module that does not compile); a mode
that does not finish is the kernel's hang; an attribute mismatch, or a call
that failed with nothing injected, is a `cpa_exercise` failure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cells import Cell
from harness.errors import BuildError
from harness.kernel import exerciser
from harness.probes import exercise as probe
from harness.probes import flush, stats
from harness.results.cell import CellFailure
from harness.scenarios.context import CellContext
from harness.target.base import Target
from harness.target.errors import GuestHang
from harness.target.serial import new_nonce

GUEST_KO = "/tmp/cpa_exercise.ko"
FAIL_PAGE_ALLOC = "/sys/kernel/debug/fail_page_alloc"
# Injected failures only where the exerciser asks for them (its task's
# fail-nth): CPA splits with GFP_KERNEL, which fail_page_alloc ignores by
# default (ignore-gfp-wait, min-order 1); verbose 1 prints the injection's
# line without a stack dump.
FAULT_SETTINGS = (("ignore-gfp-wait", "N"), ("ignore-gfp-highmem", "N"), ("min-order", "0"),
                  ("verbose", "1"))
# The kernel features each mode needs (kernel-configs/options.toml's wanted ones)
NEEDS = {"cache": ("exerciser",), "concurrent": ("exerciser",),
         "alloc-fail": ("exerciser", "fault-injection")}
POLL = 1.0


@dataclass
class Module:
    """The cell's module, or why there is none."""

    path: Path | None
    unavailable: str = ""


def prepare(cell: Cell, ctx: CellContext) -> Module | None:
    """Build the module before the machine starts (None: the cell runs no mode)."""
    if not cell.exercise:
        return None
    if not cell.ssh:
        return Module(None, "the exerciser needs ssh into the guest")
    lacking = [f for f in ("exerciser",) if ctx.build.lacks(f)]
    if lacking:
        return Module(None, f"this kernel has no {lacking[0]} options (modules)")
    try:
        return Module(exerciser.build_module(ctx.build))
    except BuildError as e:
        return Module(None, "; ".join([e.message, *e.errors[:3]]))


def run_modes(cell: Cell, ctx: CellContext, target: Target, module: Module,
              prof: flush.Profiler | None, failures: list[CellFailure]) -> dict[str, Any]:
    """Every mode of the cell, one after the other; their record."""
    real = ctx.accel in ("kvm", "box")
    record: dict[str, Any] = {
        "module": str(module.path or ""), "modes": [],
        "timing": "times shown (the CPU's)" if real else
        "times withheld: under TCG they measure the emulator, not the CPU"}
    if module.path is None:
        record["unavailable"] = module.unavailable
        return record
    sh = target.shell
    sh.put(module.path, GUEST_KO)
    for mode in cell.exercise:
        lacking = next((f for f in NEEDS[mode] if ctx.build.lacks(f)), None)
        if lacking:
            record["modes"].append({"mode": mode, "unavailable":
                                    f"this kernel has no {lacking} options"})
            continue
        rec = _run_mode(cell, ctx, target, mode, prof, real)
        record["modes"].append(rec)
        problems = rec.get("problems") or []
        if problems:
            failures.append(CellFailure.seen_by_harness(
                "cpa_exercise", f"{mode}: {_title(rec)}", target.console.boot_index(),
                [*problems, *rec.get("mismatch_lines", [])]))
    return record


def _title(rec: dict[str, Any]) -> str:
    """A title that stays the same from run to run (no addresses)."""
    if rec.get("mismatches"):
        return "page attribute mismatch"
    if not rec.get("done"):
        return "the exerciser did not finish"
    return "a call failed with nothing injected"


def _run_mode(cell: Cell, ctx: CellContext, target: Target, mode: str,
              prof: flush.Profiler | None, real: bool) -> dict[str, Any]:
    sh, t = target.shell, ctx.targets.timeouts
    run_id = f"{mode}-{new_nonce()[:8]}"
    rec: dict[str, Any] = {"mode": mode, "run": run_id}
    if mode == "alloc-fail":
        settings = " && ".join(f"echo {v} > {FAIL_PAGE_ALLOC}/{k}" for k, v in FAULT_SETTINGS)
        status, out = sh.run(settings)
        if status != 0:
            return {**rec, "unavailable": f"{FAIL_PAGE_ALLOC} cannot be set: {out.strip()[:200]}"}
    params = f"mode={mode} run={run_id}"
    if mode == "concurrent" and cell.exercise_threads:
        params += f" threads={cell.exercise_threads}"
    before = stats.collect(sh.run, f"exercise-{mode}-before", cell.arch)
    if prof is not None:
        prof.start()
    began = time.monotonic()
    rc = _insmod(target, mode, params, run_id, 2 * t.command)
    rec["seconds"] = round(time.monotonic() - began, 1)
    if prof is not None:
        # Its own window, kept with the mode: the cell's windows are the self-test's
        try:
            window = prof.stop(f"exercise-{mode}").to_json()
            rec["flush"], rec["flush_window"] = window.get("groups"), window
        except flush.Unavailable as e:
            rec["flush_unavailable"] = str(e)
    after = stats.collect(sh.run, f"exercise-{mode}-after", cell.arch)
    sh.run("rmmod cpa_exercise")
    rec["insmod"] = rc
    # grep keeps the order, and the injections between a run's start and done
    status, text = sh.run("dmesg | grep -e 'cpa_exercise: run=' -e 'FAULT_INJECTION: '")
    found = probe.parse(text, run_id)
    rec.update(_figures(found, real))
    rec["splits"] = {k: v for k, v in stats.delta(before.vmstat or {}, after.vmstat or {}).items()
                     if k.startswith("direct_map_")}
    problems = found.problems()
    if rc[0] != 0 and not found.done:
        problems.append(f"insmod failed ({rc[0]}): {rc[1].strip()[:200]}")
    rec["problems"] = problems
    return rec


def _insmod(target: Target, mode: str, params: str, run_id: str,
            within: float) -> tuple[int, str]:
    """insmod in the background, polled: a kernel stuck in CPA is a hang of the
    kernel under test, never an ssh timeout blamed on the host."""
    sh = target.shell
    rc_file, out_file = f"/tmp/{run_id}.rc", f"/tmp/{run_id}.out"
    sh.run(f"(insmod {GUEST_KO} {params} >{out_file} 2>&1; echo $? >{rc_file}) "
           "</dev/null >/dev/null 2>&1 &")
    deadline = time.monotonic() + within
    while True:
        status, out = sh.run(f"cat {rc_file} 2>/dev/null")
        if status == 0 and out.strip().lstrip("-").isdigit():
            _, said = sh.run(f"cat {out_file}")
            return int(out.strip()), said
        if time.monotonic() > deadline:
            raise GuestHang(f"end of the CPA exerciser's {mode} run (insmod {params})", within)
        time.sleep(POLL)


def _figures(found: probe.Run, real: bool) -> dict[str, Any]:
    """The run's counts; its rates only where times are the CPU's."""
    out: dict[str, Any] = {"start": found.start, "done": found.done,
                           "mismatches": found.mismatches, "errors": found.errors,
                           "injected_reports": found.injected_reports,
                           "mismatch_lines": [ln for ln in found.lines if " mismatch " in ln],
                           "lines": found.lines}
    if found.unavailable():
        out["unavailable"] = found.unavailable()
    rows = [dict(r) for r in found.rows]
    for r in rows:
        ops = probe.ops_per_second(r)
        if not real:
            r.pop("ns", None)
        elif ops is not None:
            r["ops_per_s"] = round(ops)
    if real:
        one = next((r.get("ops_per_s") for r in rows
                    if r.get("what") == "concurrent" and r.get("threads") == 1), None)
        for r in rows:
            if one and r.get("what") == "concurrent" and r.get("ops_per_s"):
                r["efficiency"] = round(r["ops_per_s"] / (one * r["threads"]), 2)
    out["rows"] = rows
    out["summary"] = found.summary()
    return out
