"""cpa-harness: build x86 kernels with the change_page_attr self-test, boot them
as 64-bit and 32-bit (PAE and non-PAE) machines, and report what the kernel did:
the self-test's passes, direct-map splits, flushes, failures and kexec round
trips. Also: bisect a regression, merge sharded runs, compare runs, publish
reports, analyse saved console logs, and hand a guest to a person.

Exit codes of run and boot: 0 every cell passed; 1 a kernel-side failure
(self-test failed, oops, WARNING, panic, hang, build failure); 2 a user error
(bad arguments, a missing tree, an option that did not survive olddefconfig, a
cell expectation not met); 3 an infrastructure error (QEMU missing or
crashed, no disk space); 130 interrupted (SIGINT/SIGTERM). A kernel-side
failure in any cell outranks the other codes.
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import hashlib
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from harness import __version__, paths
from harness.arches import ARCHES, get_arch
from harness.cells import ALL_CELLS, KERNEL_FRAGMENTS, SMOKE, Cell, Expect
from harness.console import known as known_issues
from harness.errors import BuildError, HarnessError, InfraError, UserError
from harness.kernel import fast_selftest, kconfig, source
from harness.probes.exercise import MODES as EXERCISE_MODES
from harness.results.cell import (
    EXIT_INTERRUPTED,
    CellResult,
    Verdict,
    print_table,
    run_exit_code,
    summary_line,
)
from harness.scenarios.kexec import METHODS, check_method

if TYPE_CHECKING:
    from harness.run import RunOptions


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage, which is our user-error code already."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"cpa-harness: error: {message} (see --help)\n")


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tree", metavar="PATH",
                   help="kernel source tree (default: Debian's linux-source tarball)")
    p.add_argument("--fragment", action="append", default=[], metavar="NAME|PATH",
                   help="extra Kconfig fragment: a shipped name or a file (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="CONFIG_X=y",
                   help="one extra Kconfig option (repeatable)")
    p.add_argument("--patch", action="append", default=[], metavar="FILE|DIR",
                   help="apply a patch (or a directory holding a series) to a copy of "
                        "the source before building (repeatable)")
    p.add_argument("--make-jobs", type=int, default=0, metavar="N",
                   help="make -j for kernel builds (default: number of CPUs)")


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="result directory (default: a new one under the data directory)")
    p.add_argument("--jobs", type=_jobs, default=None, metavar="N|auto",
                   help="at most N cells at once; auto (the default): as many as the host's "
                        "CPUs have room for, by what the running guests use, within memory")
    p.add_argument("--builds-first", action="store_true",
                   help="build every kernel before the first cell starts (default: a cell "
                        "starts as soon as its kernel is built)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="auto: KVM if a probe guest really runs under it, else TCG")
    p.add_argument("--periods", type=int, metavar="N",
                   help="self-test periods (30 s each) to watch after the first pass")
    p.add_argument("--strict", action="store_true",
                   help="ignore the known-issues list: every failure fails its cell")
    p.add_argument("--known-issues", type=Path, default=paths.KNOWN_ISSUES, metavar="FILE")
    p.add_argument("--show-command", action="store_true",
                   help="build, then print each cell's QEMU command line instead of booting")
    p.add_argument("--kexec-rounds", type=int, metavar="N",
                   help="repeat each cell's kexec round trips N times in a row (default 1)")
    p.add_argument("--db", type=Path, metavar="FILE",
                   help="record the run in this history store (default: history.sqlite in "
                        "the data directory)")
    p.add_argument("--lab", type=Path, metavar="FILE",
                   help="the lab file (ci/lab.example.toml) naming the boxes cells run on")
    p.add_argument("--target", metavar="NAME",
                   help="run the cells on this box of --lab instead of in QEMU")


def _add_step(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cell", required=True, metavar="NAME", help="the cell that fails")
    p.add_argument("--matrix", type=Path, metavar="FILE", help="the matrix that has the cell")
    p.add_argument("--any-failure", action="store_true",
                   help="any failure is bad (default: the same kind and title as at --bad)")
    p.add_argument("--periods", type=int, metavar="N", help="self-test periods after the first")
    p.add_argument("--passes", type=int, metavar="N",
                   help="good only after N passes after the first with the fast self-test "
                        "(the tree patched, a second between passes), bad on the first "
                        "failure: for a failure that shows once in many passes")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    p.add_argument("--make-jobs", type=int, default=0, metavar="N")
    p.add_argument("--patch", action="append", default=[], metavar="FILE|DIR",
                   help="apply on top of every revision tested (repeatable; a directory is a "
                        "series); a revision it does not apply to is skipped")


def _args_run(p: argparse.ArgumentParser) -> None:
    _add_source(p)
    _add_run(p)
    p.add_argument("--matrix", type=Path, metavar="FILE",
                   help="a TOML matrix of cells, e.g. ci/nightly.toml (default: the smoke "
                        "matrix)")
    p.add_argument("--cell", "--only", action="append", default=[], metavar="PATTERN",
                   help="run only cells whose name matches (shell-style, repeatable)")
    p.add_argument("--shard", metavar="I/N",
                   help="run the I-th of N stable parts of the cells (1-based); join the "
                        "parts with 'cpa-harness merge'")
    p.add_argument("--list", action="store_true", help="list the cells and exit")
    p.add_argument("--resume", type=Path, metavar="RUN",
                   help="run the cells an interrupted RUN did not finish, into RUN")


def _args_bisect(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tree", required=True, metavar="GIT", help="a clean git checkout")
    p.add_argument("--good", required=True, metavar="REV")
    p.add_argument("--bad", required=True, metavar="REV")
    _add_step(p)
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="steps and report (default: a new directory under the data one)")


def _args_bisect_step(p: argparse.ArgumentParser) -> None:
    _add_step(p)
    p.add_argument("--signature", metavar="TEXT",
                   help="the failure that means bad: 'kind: title' as the report shows")
    p.add_argument("--steps-dir", type=Path, metavar="DIR", default=Path("bisect-steps"))
    p.add_argument("--log", type=Path, metavar="FILE", help="append each step as JSON")


def _args_merge(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, metavar="OUT", help="a new directory")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN")


def _args_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, metavar="RUN")


def _args_history(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, metavar="FILE", help="the store (default: "
                   "history.sqlite in the data directory)")
    p.add_argument("--cell", metavar="NAME", help="one cell's figures, run by run: verdict, "
                   "GB pages at boot, 4k after the self-test, flushes, time to verdict")
    p.add_argument("--last", type=int, default=20, metavar="N",
                   help="with --cell, the last N runs (default 20)")


def _args_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", metavar="RUN_A", help="a run id from 'history', or a run directory")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--db", type=Path, metavar="FILE")


def _args_boot(p: argparse.ArgumentParser) -> None:
    _add_source(p)
    _add_run(p)
    p.add_argument("--arch", required=True, choices=sorted(ARCHES))
    p.add_argument("--cmdline", default="", help="appended to the kernel command line")
    p.add_argument("--cpu", help="QEMU CPU model (default: the arch's)")
    p.add_argument("--memory", type=int, default=2048, metavar="MB")
    p.add_argument("--smp", type=int, default=2)
    p.add_argument("--kexec", action="append", default=[], choices=sorted(METHODS),
                   help="after the self-test, kexec with this system call and run it "
                        "again in the new kernel (repeatable)")
    p.add_argument("--kexec-target", type=Path, metavar="PATH",
                   help="kexec into this kernel (build directory, bzImage or vmlinux) "
                        "instead of the one booted")
    p.add_argument("--exercise", action="append", default=[], metavar="MODE",
                   choices=EXERCISE_MODES,
                   help="after the self-test periods, run the CPA exerciser in this mode: "
                        f"{', '.join(EXERCISE_MODES)} (repeatable)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--interactive", action="store_true",
                     help="hand the serial console to you (Ctrl-] leaves); the ssh command "
                          "for a second terminal is printed")
    who.add_argument("--ssh", action="store_true",
                     help="open an ssh shell in the guest; leaving it ends the session")


def _args_ssh(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, metavar="RUN", help="the run's result directory")
    p.add_argument("--cell", metavar="NAME", help="which cell's guest (when several are up)")
    # Not REMAINDER: it would swallow a --cell given after RUN. main() takes
    # what follows '--' before argparse sees it.
    p.add_argument("remote", nargs="*", metavar="COMMAND",
                   help="run this command instead of a shell (after --)")


def _args_build(p: argparse.ArgumentParser) -> None:
    _add_source(p)
    p.add_argument("--arch", required=True, choices=sorted(ARCHES))


def _args_doctor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tree", metavar="PATH")
    p.add_argument("--lab", metavar="FILE", type=Path,
                   help="check a lab file and its boxes (ci/lab.example.toml) instead")
    p.add_argument("--offline", action="store_true",
                   help="with --lab: check only what this host can see, connect to no box")


def _args_parse(p: argparse.ArgumentParser) -> None:
    p.add_argument("log")
    p.add_argument("--json", action="store_true", help="print the JSON document")
    p.add_argument("--vmlinux", metavar="PATH", help="symbolize call traces with DWARF")


Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="cpa-harness", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"cpa-harness {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, summary, add_args, handler in SUBCOMMANDS:
        p = sub.add_parser(name, help=summary)
        add_args(p)
        p.set_defaults(handler=handler)
    return ap


def _select(patterns: list[str], matrix: Path | None = None,
            shard: str | None = None) -> list[Cell]:
    """The smoke matrix (or --matrix) by default; --cell patterns choose among its cells
    (among all built-in cells without --matrix); --shard takes a stable part."""
    if matrix is not None:
        from harness.matrix import load
        universe = default = list(load(matrix).cells)
    else:
        universe, default = list(ALL_CELLS), list(SMOKE)
    chosen = default
    if patterns:
        chosen = [c for c in universe if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
        if not chosen:
            raise UserError(f"no cell matches {' '.join(patterns)}",
                            f"cells: {', '.join(c.name for c in universe)}")
    if shard is not None:
        index, count = _shard(shard)
        # round robin over the matrix's order: the same cells land in the same part
        chosen = [c for n, c in enumerate(chosen) if n % count == index - 1]
    return chosen


def _shard(spec: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", spec)
    if m is None or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise UserError(f"bad --shard {spec!r}", "write I/N with 1 <= I <= N, e.g. 2/4")
    return int(m.group(1)), int(m.group(2))


def _check_source(args: argparse.Namespace) -> None:
    """--tree, --fragment, --set and --patch, read and checked before any work: a
    mistake in one is one line, not a run directory, a source unpacked, or a
    configure step that fails minutes later."""
    if args.tree:
        source.check_tree(args.tree)
    kconfig.merge([kconfig.fragment_path(f) for f in args.fragment], args.set)
    source.patch_files(args.patch)


def _jobs(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"takes a number of cells or 'auto', not {text!r}") from None


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UserError(f"{name} must be at least 1, not {value}")


def matrix_id(path: Path | None) -> dict[str, str]:
    """What a run was made from, so that --resume can refuse another matrix."""
    if path is None:
        return {"matrix": "built-in cells", "matrix_sha256": ""}
    return {"matrix": str(path.resolve()),
            "matrix_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _do_resume(args: argparse.Namespace) -> int:
    from harness.results.rundir import read_run

    run = args.resume
    summary, previous = read_run(run)
    recorded = summary.get("matrix", "built-in cells")
    matrix = args.matrix or (None if recorded == "built-in cells" else Path(recorded))
    if matrix is not None and not matrix.is_file():
        raise UserError(f"{run} was made from the matrix {matrix}, which is gone",
                        "restore it or run afresh")
    if matrix_id(matrix)["matrix_sha256"] != summary.get("matrix_sha256", ""):
        raise UserError(f"{run} was made from another matrix ({recorded})",
                        "resume with the matrix it was made from, or run afresh")
    done = {r.name for r in previous if r.verdict != Verdict.NOT_RUN}
    wanted = summary.get("cells_requested", [])
    universe = {c.name: c for c in (_select([], matrix) if matrix else ALL_CELLS)}
    missing = [n for n in wanted if n not in universe]
    if missing:
        raise UserError(f"{run} asks for cells the matrix lacks: {', '.join(missing)}")
    todo = [universe[n] for n in wanted if n not in done]
    print(f"resuming {run}: {len(done)} cells kept, {len(todo)} to run")
    args.out = run
    # a resumed shard is the same attempt, finished: merge must still see its record
    return _do_run(args, todo, matrix=matrix, keep=[r for r in previous if r.name in done],
                   requested=wanted, shard=summary.get("shard"))


def _run_options(args: argparse.Namespace, kexec_target: Path | None) -> RunOptions:
    """run's and boot's shared options, checked before any work."""
    from harness.run import RunOptions
    _positive("--jobs", args.jobs)
    if args.periods is not None and args.periods < 0:
        raise UserError(f"--periods must be 0 or more, not {args.periods}")
    if args.kexec_rounds is not None:
        _positive("--kexec-rounds", args.kexec_rounds)
    known = [] if args.strict else known_issues.load(args.known_issues)
    _check_source(args)
    return RunOptions(tree=args.tree, patches=tuple(args.patch),
                      extra_fragments=tuple(args.fragment), sets=tuple(args.set),
                      accel=args.accel, jobs=args.jobs, pipeline=not args.builds_first,
                      make_jobs=args.make_jobs, known=known,
                      periods=args.periods, show_command=args.show_command,
                      kexec_rounds=args.kexec_rounds, kexec_target=kexec_target,
                      lab=args.lab, target=args.target or "")


def _check_targets(cells: list[Cell], opts: RunOptions) -> None:
    """Every box a cell names is in the lab file, and of the cell's arch:
    found before anything builds."""
    from harness.target import lab
    on = [(c, opts.target or c.target) for c in cells if opts.target or c.target]
    if not on:
        return
    if opts.lab is None:
        raise UserError(f"target {on[0][1]!r} needs a lab file", "add --lab FILE")
    boxes = lab.load(opts.lab)
    for cell, name in on:
        boxes.box(name).check_arch(cell.name, cell.arch)


def _out_dir(out: Path | None) -> Path:
    """--out, made if missing, or a new run directory under the data directory."""
    if out is None:
        from harness.run import new_run_dir
        return new_run_dir(paths.data_dir())
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:     # exist_ok covers directories only
        raise UserError(f"--out {out} is a file, not a directory") from None
    except OSError as e:
        raise UserError(f"cannot create --out {out}: {e.strerror}") from None
    return out


def _do_run(args: argparse.Namespace, cells: list[Cell], *, matrix: Path | None = None,
            kexec_target: Path | None = None, session: str | None = None,
            keep: list[CellResult] | None = None, requested: list[str] | None = None,
            shard: dict[str, Any] | None = None) -> int:
    """Run `cells` (or, with `session`, hand the one cell to a person), then report."""
    from harness.run import run_cells, run_session

    opts = _run_options(args, kexec_target)
    _check_targets(cells, opts)
    run_dir = _out_dir(args.out)
    if session and not args.show_command:
        results = [run_session(cells[0], opts, run_dir, paths.cache_dir(), session,
                               sys.stdout)]
    else:
        meta = {**matrix_id(matrix), "cells_requested": requested or [c.name for c in cells],
                **({"shard": shard} if shard else {})}
        results = run_cells(cells, opts, run_dir, paths.cache_dir(), meta=meta, keep=keep)
    if args.show_command:
        return 0
    sys.stdout.write("\n")
    print_table(results, sys.stdout)
    sys.stdout.write(f"\n{summary_line(results)}\n")
    _publish(run_dir, args.db)
    sys.stdout.write(f"\nresults: {run_dir}\n")
    return run_exit_code([r.verdict for r in results])


def _one_cell(name: str, matrix: Path | None) -> Cell:
    cells = _select([], matrix) if matrix else list(ALL_CELLS)
    for c in cells:
        if c.name == name:
            return c
    raise UserError(f"no cell {name!r} in {matrix or 'the built-in cells'}",
                    f"cells: {', '.join(c.name for c in cells)}")


def _cell_runner(args: argparse.Namespace) -> tuple[Cell, Callable[[Path, Path], CellResult]]:
    """The bisected cell, and how one revision's tree is run for it."""
    cell = _one_cell(args.cell, args.matrix)
    if args.passes is not None:
        if args.passes < 1:
            raise UserError(f"--passes must be 1 or more, not {args.passes}")
        if args.periods is not None:
            raise UserError("--passes and --periods cannot go together",
                            "the fast self-test counts passes, not periods")
        if cell.scenario != "cpa":
            raise UserError(f"--passes counts self-test passes, and cell {cell.name} runs the "
                            f"{cell.scenario} scenario", "bisect a cpa cell")
        # the matrix's deadline was for its own passes: the budget follows N
        cell = replace(fast_selftest.make_fast(
            cell, cell.selftest_period_ms or fast_selftest.DEFAULT_PERIOD_MS, args.passes),
            deadline=None)
    elif args.periods is not None:
        cell = replace(cell, periods=args.periods)
    known = known_issues.load(paths.KNOWN_ISSUES)

    def run_cell(tree: Path, out: Path) -> CellResult:
        from harness.run import RunOptions, run_cells
        opts = RunOptions(tree=str(tree), accel=args.accel, jobs=1, make_jobs=args.make_jobs,
                          known=known, reuse_build_dir=True)
        out.mkdir(parents=True, exist_ok=True)
        return run_cells([cell], opts, out, paths.cache_dir(), out=sys.stderr)[0]

    return cell, run_cell


def _step_patches(args: argparse.Namespace) -> list[Path]:
    """--patch's files (a missing one: a user error now), and with --passes the
    fast self-test's patch, applied in place like them at each step."""
    patches = source.patch_files(args.patch)
    if args.passes is not None and fast_selftest.PATCH.resolve() not in \
            [p.resolve() for p in patches]:
        patches.append(fast_selftest.PATCH)
    return patches


def _cmd_bisect_step(args: argparse.Namespace) -> int:
    from harness import bisect
    _, run_cell = _cell_runner(args)
    patches = _step_patches(args)
    if not args.any_failure and not args.signature:
        raise UserError("bisect-step needs --signature 'kind: title' or --any-failure")
    return bisect.main_step(Path.cwd(), run_cell, None if args.any_failure else
                            args.signature, args.steps_dir, args.log, patches)


def _cmd_bisect(args: argparse.Namespace) -> int:
    from harness import bisect
    cell, run_cell = _cell_runner(args)
    patches = _step_patches(args)
    bisect.check_tree(Path(args.tree).resolve(), args.good, args.bad)  # before any output
    out = args.out or _out_dir(None)
    step = [sys.executable, "-m", "harness", "bisect-step", "--cell", cell.name,
            "--accel", args.accel]
    step += ["--passes", str(args.passes)] if args.passes is not None else \
        ["--periods", str(cell.periods)]
    if args.matrix:
        step += ["--matrix", str(args.matrix.resolve())]
    if args.make_jobs:
        step += ["--make-jobs", str(args.make_jobs)]
    report = bisect.bisect(Path(args.tree), args.good, args.bad, cell, out, run_cell, step,
                           args.any_failure, sys.stdout, patches)
    bisect.print_report(report, sys.stdout)
    sys.stdout.write(f"\nreport: {out / 'bisect.json'}\n")
    return 0 if report.first_bad else 3


def _run_ref(ref: str) -> str | Path:
    """A run directory when the argument names one, else a run id in the store."""
    return Path(ref) if Path(ref).is_dir() else ref


def _publish(run_dir: Path, db: Path | None) -> None:
    """KCIDB JSON beside the results, and the run in the history store. Neither
    may cost the results already written: a failure is one warning line."""
    from harness.results import history, html, kcidb
    store = db or history.default_db()
    # history first: the HTML report plots each cell's last runs, this one included
    for what, do in (("KCIDB JSON", lambda: kcidb.write_kcidb(run_dir)),
                     ("history", lambda: history.record_run(store, run_dir)),
                     ("HTML report", lambda: html.write_html(run_dir, store))):
        try:
            do()
        except HarnessError as e:
            sys.stderr.write(f"cpa-harness: warning: {what} not written: {e.line()}\n")


def _cmd_build(args: argparse.Namespace) -> int:
    from harness.kernel import build
    arch = get_arch(args.arch)
    _check_source(args)
    src = source.with_patches(source.resolve(args.tree, paths.cache_dir()),
                              source.patch_files(args.patch), paths.cache_dir())
    names = [*KERNEL_FRAGMENTS[arch.name], *args.fragment]
    req = build.BuildRequest(src, arch, build.fragments_for(arch, names), tuple(args.set),
                             **({"jobs": args.make_jobs} if args.make_jobs else {}))
    b = build.build(req, paths.cache_dir())
    print(f"{'cached' if b.cached else 'built'} in {b.seconds:.1f}s: {b.image}")
    print(f"source {b.source_id}, config {b.config_hash[:12]}, log {b.log}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        return _do_resume(args)
    cells = _select(args.cell, args.matrix, args.shard)
    if args.list:
        print("\n".join(c.name for c in cells))
        return 0
    shard = None
    if args.shard is not None:
        from harness.results.merge import shard_record
        # The whole selection goes with each part: merge finds a missing part's cells by it
        index, count = _shard(args.shard)
        shard = shard_record(index, count, [c.name for c in cells],
                             {c.name: c.arch for c in _select(args.cell, args.matrix)})
    return _do_run(args, cells, matrix=args.matrix, shard=shard)


def _cmd_boot(args: argparse.Namespace) -> int:
    from harness.matrix import cmdline_problem
    _positive("--memory", args.memory)
    _positive("--smp", args.smp)
    problem = cmdline_problem(args.cmdline)
    if problem:
        raise UserError(f"--cmdline {problem}")
    if args.kexec_target and not args.kexec:
        raise UserError("--kexec-target needs --kexec METHOD", f"methods: {', '.join(METHODS)}")
    for method in args.kexec:
        check_method(method, get_arch(args.arch))
    cell = Cell(f"{args.arch}-boot", args.arch, KERNEL_FRAGMENTS[args.arch],
                cmdline=args.cmdline, cpu=args.cpu, memory_mb=args.memory,
                smp=args.smp, expect=Expect(), kexec=tuple(args.kexec),
                exercise=tuple(dict.fromkeys(args.exercise)))
    if cell.exercise and (args.interactive or args.ssh):
        raise UserError("--exercise runs in a checked boot, not in a session",
                        "leave out --interactive/--ssh; the module is in the build "
                        "directory's cpa-exercise/ for a session of your own")
    session = "interactive" if args.interactive else "ssh" if args.ssh else None
    return _do_run(args, [cell], kexec_target=args.kexec_target, session=session)


def _cmd_ssh(args: argparse.Namespace) -> int:
    from harness.scenarios.session import ssh_into_run
    return ssh_into_run(args.run, args.cell, args.remote, sys.stdout)


def _cmd_merge(args: argparse.Namespace) -> int:
    from harness.results.merge import merge
    merged = merge(args.out, args.runs)
    print_table(merged.cells, sys.stdout)
    _publish(args.out, None)
    sys.stdout.write(f"\nmerged {len(args.runs)} runs into {args.out}\n")
    if merged.not_run:
        sys.stdout.write(f"not run: {', '.join(c['name'] for c in merged.not_run)}\n")
    if merged.missing:
        # results are missing: as much a failed run as a failed cell
        sys.stderr.write(f"cpa-harness: error: {merged.missing_line(args.out)}\n")
        return 1
    return run_exit_code([r.verdict for r in merged.cells])


def _cmd_history(args: argparse.Namespace) -> int:
    from harness.results import history
    db = args.db or history.default_db()
    if args.cell:
        _positive("--last", args.last)
        sys.stdout.write(history.format_cell_history(
            args.cell, history.cell_history(db, args.cell, args.last)))
        return 0
    sys.stdout.write(history.format_runs(history.list_runs(db)))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from harness.results import history
    c = history.compare(args.db or history.default_db(), _run_ref(args.run_a),
                        _run_ref(args.run_b))
    sys.stdout.write(history.format_comparison(c))
    return 1 if c.has_regressions else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.results.rundir import read_run
    loaded = read_run(args.run)[1]
    print_table(loaded, sys.stdout)
    return run_exit_code([r.verdict for r in loaded])


def _cmd_doctor(args: argparse.Namespace) -> int:
    from harness.doctor import doctor, doctor_lab
    if args.lab is not None:
        return doctor_lab(args.lab, sys.stdout, connect=not args.offline)
    return doctor(paths.cache_dir(), args.tree, sys.stdout)


def _cmd_parse(args: argparse.Namespace) -> int:
    from harness.console.cli import main_parse
    return int(main_parse(args.log, args.json, args.vmlinux, sys.stdout))


# name, the line --help shows, its arguments, its handler: in --help's order
SUBCOMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]] = [
    ("run", "build kernels and run the smoke matrix", _args_run, _cmd_run),
    ("bisect", "find the commit that made a cell fail", _args_bisect, _cmd_bisect),
    ("bisect-step", "one bisect step on the current directory's checkout (a 'git bisect "
     "run' command)", _args_bisect_step, _cmd_bisect_step),
    ("merge", "join the result directories of a sharded run", _args_merge, _cmd_merge),
    ("report", "print a run's verdict table again, from disk", _args_report, _cmd_report),
    ("history", "list the runs in the history store", _args_history, _cmd_history),
    ("compare", "verdict changes and statistic deltas between runs", _args_compare,
     _cmd_compare),
    ("boot", "build one kernel and run the CPA scenario on it", _args_boot, _cmd_boot),
    ("ssh", "reach a guest of a run that is still up", _args_ssh, _cmd_ssh),
    ("build", "configure and build one kernel (cached)", _args_build, _cmd_build),
    ("doctor", "check that this host can build, boot and check", _args_doctor, _cmd_doctor),
    ("parse", "analyse a saved console log or dmesg", _args_parse, _cmd_parse),
]


def main(argv: list[str]) -> int:
    remote: list[str] = []
    if argv[:1] == ["ssh"] and "--" in argv:
        # Everything after '--' is the guest's command, whatever it looks like
        # (argparse would take its options, or miss a --cell given after RUN).
        cut = argv.index("--")
        argv, remote = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if remote:
        args.remote = [*args.remote, *remote]
    try:
        handler: Handler = args.handler
        return handler(args)
    except HarnessError as e:
        sys.stderr.write(f"cpa-harness: error: {e.line()}\n")
        if isinstance(e, BuildError) and e.errors:
            sys.stderr.write("".join(f"  {line}\n" for line in e.errors))
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("cpa-harness: interrupted; finished cells are kept\n")
        return EXIT_INTERRUPTED
    except OSError as e:
        # The host failed an I/O the code did not expect to fail (a full disk,
        # EIO): still one line, and an infrastructure error.
        where = f" ({e.filename})" if e.filename else ""
        hint = "free disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else \
            "check the path and the filesystem"
        sys.stderr.write(f"cpa-harness: error: {e.strerror or e}{where}: {hint}; results "
                         "written before are intact\n")
        return InfraError.exit_code


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_main() -> None:
    signal.signal(signal.SIGTERM, _sigterm)
    sys.exit(main(sys.argv[1:]))
