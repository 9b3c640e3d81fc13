"""Orchestration of a run: builds (each once), guest images, accelerators, cells.

Operations raise typed errors; here they become cell verdicts. Cells start
as their kernel is built and as the scheduler lets them (harness.schedule);
each cell's result is written the moment it ends, so an interrupted run keeps
everything already finished.
"""

from __future__ import annotations

import platform
import queue
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TextIO, TypeVar, cast

from harness import schedule
from harness.cells import Cell
from harness.console.known import KnownIssue
from harness.errors import BuildError, HarnessError, OptionsDropped, UserError
from harness.image import initramfs
from harness.kernel import build as kbuild
from harness.kernel import fast_selftest, kconfig, source
from harness.progress import Live, reporting, say
from harness.results.cell import CellResult, Verdict, write_cell, write_summary
from harness.scenarios import cpa, kexec, selfcheck
from harness.scenarios.context import CellContext
from harness.target import box as boxes
from harness.target import box_target, lab, labgrid_place, qemu
from harness.target.base import Fleet, Targets, Timeouts
from harness.target.ssh import generate_client_key
from harness.target.vm import QemuTargets


@dataclass
class RunOptions:
    tree: str | None = None
    patches: tuple[str, ...] = ()
    extra_fragments: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()
    accel: str = "auto"
    jobs: int | None = None             # at most this many cells at once; None: by CPU demand
    pipeline: bool = True               # cells start as their kernel is built
    make_jobs: int = 0
    known: list[KnownIssue] = field(default_factory=list)
    out: Path | None = None
    periods: int | None = None
    kexec_rounds: int | None = None
    kexec_target: Path | None = None    # a build dir, bzImage or vmlinux; None: the cell's own
    reuse_build_dir: bool = False       # bisect: one build directory across commits
    show_command: bool = False
    lab: Path | None = None             # the lab file, for cells with a target
    target: str = ""                    # run every cell on this lab box


def new_run_dir(base: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    d = base / "runs" / f"{stamp}-{secrets.token_hex(3)}"
    d.mkdir(parents=True)
    return d


def _build_key(cell: Cell, opts: RunOptions) -> tuple[str, tuple[str, ...], tuple[str, ...],
                                                      bool]:
    return (cell.arch, tuple(cell.fragments) + opts.extra_fragments, cell.sets + opts.sets,
            bool(cell.selftest_period_ms))


def run_cells(cells: list[Cell], opts: RunOptions, run_dir: Path, cache: Path,
              out: TextIO | None = None, meta: dict[str, Any] | None = None,
              keep: list[CellResult] | None = None) -> list[CellResult]:
    """Run cells into run_dir; `keep` are finished results of an earlier attempt (--resume)."""
    out = out or sys.stdout   # looked up now: sys.stdout may have been replaced
    live = Live(out, len(cells)) if out.isatty() else None
    if live:
        out = cast(TextIO, live)
    results = {r.name: r for r in keep or []}
    results.update({c.name: CellResult(name=c.name, arch=c.arch) for c in cells})
    meta = {"started": time.time(), "host": platform.node(), "tree": opts.tree or "debian",
            "cells_requested": [c.name for c in cells], "interrupted": False, **(meta or {})}

    failed = False
    fleet = Fleet()     # this run's guests and its stop flag

    written: set[str] = set()
    lock = threading.Lock()     # the preparing thread finishes the cells it could not prepare

    def finish(res: CellResult) -> None:
        with lock:
            if res.name in written:
                return
            written.add(res.name)
            results[res.name] = res
            write_cell(run_dir, res)
        if live:
            live.finished(res.name)
        say(out, f"[{res.name}] {res.verdict.value}{': ' + res.reason if res.reason else ''}"
                 f" ({res.durations.get('total', 0):.0f}s)")

    try:
        with reporting(out):
            src = source.with_patches(source.resolve(opts.tree, cache),
                                      source.patch_files(list(opts.patches)), cache)
            meta["source_id"] = src.id
            meta["kernel_version"] = src.version
            say(out, f"source: {src.id} ({src.version})")
            prepared = _prepared(_build_order(cells, opts), opts, src, run_dir, cache,
                                 finish, out, fleet)
            if opts.show_command:
                for cell, ctx in prepared:
                    out.write(f"{cell.name}: {ctx.targets.command()}\n")
                return list(results.values())
            sched = schedule.Scheduler(opts.jobs, schedule.History(cache / "demand.json"),
                                       partial(say, out))
            meta["schedule"] = {"jobs": opts.jobs or "auto", "cpus": sched.cpus,
                                "pipeline": opts.pipeline}
            ready: queue.Queue[schedule.Job[CellResult] | None] = queue.Queue()
            crashed: list[BaseException] = []
            feed = partial(_feed, prepared, ready, out, fleet, crashed)
            feeder = threading.Thread(target=feed, name="prepare", daemon=True)
            if opts.pipeline:   # cells start as their kernel is built
                feeder.start()
            else:
                feed()

            def done(job: schedule.Job[CellResult], res: CellResult,
                     r: schedule.Running) -> None:
                if r.cpu:
                    res.durations["guest_cpu"] = round(r.cpu, 1)
                finish(res)

            try:
                sched.run(ready, done, fleet.stop)
            finally:
                meta["schedule"]["most_running"] = sched.most_running
                if feeder.is_alive():
                    # Stopped while preparing: its make is killed, a box it
                    # holds is given back; wait for that, within reason.
                    feeder.join(PREPARE_JOIN_S)
            if crashed:
                raise crashed[0]
    except KeyboardInterrupt:
        meta["interrupted"] = True
        raise
    except BaseException:
        failed = True
        raise
    finally:
        if live:
            live.close()
        meta["finished"] = time.time()
        _drop_keyed_images(run_dir)
        try:
            write_summary(run_dir, list(results.values()), meta)
        except HarnessError:
            if not failed and not meta["interrupted"]:
                raise
            # else: what stopped the run (a full disk, most likely) is the news
    return [results[n] for n in [*(r.name for r in keep or []), *(c.name for c in cells)]]


def _drop_keyed_images(run_dir: Path) -> None:
    """The cached image plus the run's key: 7 MB each, remade in a moment, not a result."""
    for img in (run_dir / "ssh").glob("initrd-*.cpio"):
        img.unlink(missing_ok=True)


T = TypeVar("T")


def _once(memo: dict[Any, Any], key: object, make: Callable[[], T]) -> T:
    """make() once per key; a failure is remembered too and raised for every cell."""
    if key not in memo:
        try:
            memo[key] = make()
        except HarnessError as e:
            memo[key] = e
    got = memo[key]
    if isinstance(got, HarnessError):
        raise got
    return cast(T, got)


def _build_order(cells: list[Cell], opts: RunOptions) -> list[Cell]:
    """The cells grouped by the kernel they need, in the order each kernel is
    first needed: with builds in a pipeline, a cell whose kernel is built never
    waits behind another kernel's build."""
    first: dict[Any, int] = {}
    for c in cells:
        first.setdefault(_build_key(c, opts), len(first))
    return sorted(cells, key=lambda c: first[_build_key(c, opts)])


PREPARE_JOIN_S = 60.0


def _feed(prepared: Iterator[tuple[Cell, CellContext]],
          ready: queue.Queue[schedule.Job[CellResult] | None], out: TextIO,
          fleet: Fleet, crashed: list[BaseException]) -> None:
    """Each prepared cell to the scheduler, then the end; in the preparing
    thread when builds run in a pipeline, so it reports to `out` itself and
    leaves what stopped it in `crashed`, for the run to raise."""
    try:
        with reporting(out), kbuild.stopped_by(fleet.stopping):
            for cell, ctx in prepared:
                if fleet.stopping.is_set():
                    return
                ready.put(schedule.Job(
                    cell.name, cell.memory_mb, f"{cell.name}|{cell.arch}|{ctx.accel}",
                    ctx.targets.host_pids, partial(_attempts, cell, ctx, out, fleet),
                    on_host=ctx.accel != "box"))
    except BaseException as e:      # noqa: BLE001 - the run raises it, once its cells end
        crashed.append(e)
        if threading.current_thread() is threading.main_thread():
            raise
    finally:
        ready.put(None)


def _prepared(cells: list[Cell], opts: RunOptions, src: source.Source, run_dir: Path,
              cache: Path, finish: Callable[[CellResult], None],
              out: TextIO, fleet: Fleet) -> Iterator[tuple[Cell, CellContext]]:
    """Builds, guest images and accelerator choices, each made once and
    shared; each cell as soon as what it needs is made. A cell that cannot
    be prepared is finished with its error."""
    memo: dict[Any, Any] = {}

    def build(cell: Cell, own: tuple[Path, Path] | None) -> kbuild.Build:
        _, fragments, sets, fast = _build_key(cell, opts)
        arch = cell.arch_params
        # the fast self-test's cells: their own kernel, from the tree with its patch
        tree = _once(memo, "fast-selftest-source", partial(
            source.with_patches, src, [fast_selftest.PATCH], cache)) \
            if fast and not fast_selftest.applied(src.path) else src
        req = kbuild.BuildRequest(tree, arch, kbuild.fragments_for(
                                      arch, list(fragments), "box" if own else "base"), sets,
                                  **({"jobs": opts.make_jobs} if opts.make_jobs else {}),
                                  reuse_dir=opts.reuse_build_dir,
                                  base_config=own[0] if own else None,
                                  lsmod=own[1] if own else None)
        b = kbuild.build(req, cache, log_dir=run_dir / "builds")
        say(out, f"build {arch.name}{' from ' + str(own[0]) if own else ''}: "
                 f"{'cached' if b.cached else 'built'} in {b.seconds:.1f}s ({b.dir})")
        return b

    def own_config(box: lab.Box) -> tuple[Path, Path]:
        with labgrid_place.held(box) as held:
            got = boxes.own_config(held, Timeouts.for_accel("tcg").ssh,
                                   run_dir / "boxes" / box.name)
        say(out, f"box {box.name}: its own kernel configuration and lsmod read into "
                 f"{got[0].parent}")
        return got

    def accel(cell: Cell, b: kbuild.Build, img: Path) -> qemu.AccelChoice:
        arch = cell.arch_params
        qemu.require_qemu(arch)
        choice = qemu.choose_accel(arch, cell.cpu_model, cache, opts.accel, kernel=b.image,
                                   initrd=img)
        say(out, f"accelerator for {arch.qemu} -cpu {cell.cpu_model}: {choice.accel} "
                 f"({choice.reason})")
        return choice

    def keyed(arch: str, base: Path) -> Path:
        _, pub = _once(memo, "ssh-key", partial(generate_client_key, run_dir / "ssh"))
        return initramfs.with_authorized_key(base, pub, run_dir / "ssh" / f"initrd-{arch}.cpio")

    for cell in cells:
        try:
            if opts.periods is not None and not cell.selftest_period_ms:
                cell = replace(cell, periods=opts.periods)     # a fast cell counts passes
            if opts.kexec_rounds is not None:
                cell = replace(cell, kexec_rounds=opts.kexec_rounds)
            box = _box(cell, opts, memo)
            own = (_once(memo, ("own-config", box.name), partial(own_config, box))
                   if box is not None and box.config == "box" else None)
            b = _once(memo, ("build", _build_key(cell, opts), own), partial(build, cell, own))
            config = kconfig.parse_config(b.config_text())
            for method in cell.kexec:
                kexec.check_method(method, cell.arch_params, config)
            img = _once(memo, ("initramfs", cell.arch),
                        partial(initramfs.build_initramfs, cell.arch_params, cache))
            acc = None if box else _once(memo, ("accel", cell.arch_params.qemu,
                                                cell.cpu_model), partial(accel, cell, b, img))
            target = (kexec.check_target(opts.kexec_target, cell.arch_params)
                      if opts.kexec_target and cell.kexec else None)
            key = None
            if cell.ssh:
                img = _once(memo, ("keyed", cell.arch), partial(keyed, cell.arch, img))
                key = run_dir / "ssh" / "id_rsa"
            targets: Targets
            if box is not None:
                health = _once(memo, "health", box_target.Health)
                targets = box_target.BoxTargets(box, cell.cmdline, b.image, img, health, fleet,
                                                key)
                how = ("box", f"lab box {box.name} ({box.boot}, recovery by {box.recovery})")
            else:
                assert acc is not None
                targets = QemuTargets(cell, b.image, img, acc, fleet, ssh_key=key)
                how = (acc.accel, acc.reason)
            ctx = CellContext(b, targets, img, run_dir / "cells" / cell.name, opts.known, *how,
                              kexec_image=target)
        except HarnessError as e:
            if fleet.stopping.is_set():
                return      # a build killed as the run stopped: the cells stay not-run
            finish(_error_result(cell, e))
            continue
        yield cell, ctx


def _box(cell: Cell, opts: RunOptions, memo: dict[Any, Any]) -> lab.Box | None:
    """The lab box a cell runs on (--target, or the cell's own), None for QEMU."""
    name = opts.target or cell.target
    if not name:
        return None
    if opts.lab is None:
        raise UserError(f"cell {cell.name} runs on target {name!r}, but no lab file was given",
                        "add --lab FILE (ci/lab.example.toml shows one)")
    box = _once(memo, ("lab", opts.lab), partial(lab.load, opts.lab)).box(name)
    box.check_arch(cell.name, cell.arch)
    return box


def run_session(cell: Cell, opts: RunOptions, run_dir: Path, cache: Path, mode: str,
                out: TextIO) -> CellResult:
    """One cell booted for a person (session.run), in this thread: it owns the terminal."""
    from harness.scenarios import session
    res = CellResult(name=cell.name, arch=cell.arch)

    def keep(r: CellResult) -> None:
        nonlocal res
        res = r

    src = source.with_patches(source.resolve(opts.tree, cache),
                              source.patch_files(list(opts.patches)), cache)
    meta = {"started": time.time(), "host": platform.node(), "tree": opts.tree or "debian",
            "source_id": src.id, "kernel_version": src.version, "session": mode}
    try:
        with reporting(out):
            prepared = list(_prepared([cell], opts, src, run_dir, cache, keep, out, Fleet()))
        for c, ctx in prepared:
            ctx.cell_dir.mkdir(parents=True, exist_ok=True)
            try:
                res = session.run(c, ctx, run_dir, mode, out)
            except session.Interrupted as stop:
                res = stop.result       # written below, then the interrupt goes on
                raise
    finally:
        write_cell(run_dir, res)
        meta["finished"] = time.time()
        write_summary(run_dir, [res], meta)
        _drop_keyed_images(run_dir)
    return res


def _error_result(cell: Cell, e: HarnessError) -> CellResult:
    if isinstance(e, BuildError):
        verdict = Verdict.FAIL
        reason = e.line() + ("\n    " + "\n    ".join(e.errors) if e.errors else "")
    else:
        verdict = Verdict.USER_ERROR if e.exit_code == 2 else Verdict.INFRA_ERROR
        reason = e.line()
    return CellResult(name=cell.name, arch=cell.arch, verdict=verdict, reason=reason,
                      dropped_options=list(e.options) if isinstance(e, OptionsDropped) else [])


SCENARIOS: dict[str, Callable[[Cell, CellContext], CellResult]] = {
    "cpa": cpa.run,
    "selfcheck": selfcheck.run,
}


def _attempts(cell: Cell, ctx: CellContext, out: TextIO, fleet: Fleet) -> CellResult:
    """Run a cell; an infrastructure error (QEMU, ssh, a taken port) gets one more try.

    A kernel-side failure is never retried: a flaky kernel must not pass on
    its second attempt. The first attempt's serial log is kept beside.
    """
    ctx.cell_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(out, Live):
        out.started(cell.name)
    say(out, f"[{cell.name}] started ({cell.arch}, {ctx.accel}, {ctx.cell_dir})")
    res = SCENARIOS[cell.scenario](cell, ctx)
    if res.verdict != Verdict.INFRA_ERROR or fleet.stopping.is_set():
        return res
    for name in ("serial.log", "serial.qmp.jsonl"):
        first = ctx.cell_dir / name
        if first.exists():
            first.replace(ctx.cell_dir / name.replace("serial.", "serial.attempt-1.", 1))
    say(out, f"[{cell.name}] infrastructure error, trying once more: {res.reason}")
    again = SCENARIOS[cell.scenario](cell, ctx)
    again.retried_after = res.reason
    return again
