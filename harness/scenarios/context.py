"""What every scenario is given for a cell, and the result it starts from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.cells import Cell
from harness.console.known import KnownIssue
from harness.kernel import facts, fast_selftest
from harness.kernel.build import Build
from harness.results.cell import CellResult
from harness.target.base import Targets

SELFTEST_PERIOD = 30.0      # arch/x86/mm/pat/cpa-test.c: the kthread's sleep between passes


@dataclass(frozen=True)
class CellContext:
    build: Build
    targets: Targets            # the machines the cell's kernel runs on
    initrd: Path                # the guest image (kexec copies it in)
    cell_dir: Path
    known: list[KnownIssue]     # empty with --strict
    accel: str = ""             # how the machine runs the kernel: kvm, tcg
    accel_reason: str = ""
    kexec_image: Path | None = None     # None: kexec into the cell's own build


def new_result(cell: Cell, ctx: CellContext) -> CellResult:
    """A cell's result with what is known before it boots."""
    # A box has the CPUs and memory it has; the cell's QEMU machine is not it
    qemu = ctx.accel != "box"
    return CellResult(name=cell.name, arch=cell.arch, scenario=cell.scenario,
                      accel=ctx.accel, accel_reason=ctx.accel_reason,
                      cpu=cell.cpu_model if qemu else "",
                      memory_mb=cell.memory_mb if qemu else 0, smp=cell.smp if qemu else 0,
                      numa_nodes=cell.numa_nodes,
                      source_id=ctx.build.source_id,
                      build_dir=str(ctx.build.dir), build_cached=ctx.build.cached,
                      config_hash=ctx.build.config_hash, cmdline=cell.cmdline,
                      durations={"build": ctx.build.seconds},
                      unavailable=ctx.build.unavailable_lines(),
                      unchecked=facts.unchecked(ctx.build.version),
                      fast_selftest={"patch": fast_selftest.PATCH.name,
                                     "period_ms": cell.selftest_period_ms,
                                     "passes_wanted": cell.passes}
                      if cell.selftest_period_ms else {})
