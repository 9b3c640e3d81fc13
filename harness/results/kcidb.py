"""One run directory as a KCIDB I/O document (kernelci.org's common report schema).

The document has one checkout (the source the run built), one build per
distinct kernel configuration among the cells, and per cell a tree of tests:

    cpa.<cell>                 the cell's verdict and reason
    cpa.<cell>.boot            the kernel reached the guest's ready marker
    cpa.<cell>.selftest.<n>    each CPA self-test pass the console showed
    cpa.<cell>.kexec.<n>       each kexec round trip
    cpa.<cell>.failures        no kernel failure report outside the known issues

Only the run directory is read (summary.json and each cell's result.json), so
a run can be converted long after, on another machine. kcidb_io is needed only
by validate(): the harness itself runs without it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.arches import ARCHES
from harness.errors import InfraError, UserError
from harness.files import write_json
from harness.results import exercise
from harness.results.cell import CellResult, RoundTrip, Verdict
from harness.results.rundir import read_cell, read_summary

ORIGIN = "cpa_harness"
# Written against this schema version of kcidb-io (its LATEST when written);
# pinned so the document keeps its shape when kcidb-io moves on.
SCHEMA_VERSION = {"major": 5, "minor": 3}
# The schema's maxLength of every log_excerpt.
LOG_EXCERPT_MAX = 16384
REPORT_LINES = 40       # of each failure report: the header and the top of the trace

# What each cell verdict says about a test whose own data cannot say more.
VERDICT_STATUS = {
    Verdict.PASS: "PASS",
    Verdict.FAIL: "FAIL",
    Verdict.USER_ERROR: "ERROR",
    Verdict.INFRA_ERROR: "ERROR",
    Verdict.NOT_RUN: "SKIP",
}
# When several cells share a build, the strongest status wins (schema priority order).
STATUS_PRIORITY = ["FAIL", "ERROR", "MISS", "PASS", "DONE", "SKIP"]

# harness/source.py: git:<sha>[-dirty], then +patches:<tag> when --patch was given.
GIT_ID_RE = re.compile(r"^git:(?P<sha>[0-9a-f]{40})(?P<dirty>[-+]dirty)?$")
PATCHES_SEP = "+patches:"
# harness/build.py's BuildError line, as harness/run.py's _error_result records it.
BUILD_FAILED_RE = re.compile(r"^building \S+ \(.*\) failed; log: (?P<log>\S+?):? ")


# ---- small helpers ----------------------------------------------------------------------

def _time(epoch: Any) -> str | None:
    """RFC 3339 (the schema's date-time) from a Unix time, None when not recorded."""
    if not isinstance(epoch, int | float) or isinstance(epoch, bool) or epoch <= 0:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _text(s: str) -> str:
    """Most schema strings forbid NUL, and console text can carry one."""
    return s.replace("\0", "")


def _excerpt(lines: Iterable[str]) -> str:
    text = _text("\n".join(lines))
    if len(text) <= LOG_EXCERPT_MAX:
        return text
    cut = "\n[... cut to the KCIDB log_excerpt limit]"
    return text[:LOG_EXCERPT_MAX - len(cut)] + cut


def _url(path: Path) -> str:
    return path.resolve().as_uri()


def _path_part(name: str) -> str:
    """A KCIDB test path node allows letters, digits, '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"


def _short_hash(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:12]


def _strongest(statuses: Iterable[str]) -> str:
    return min(statuses, key=STATUS_PRIORITY.index)


def _put(obj: dict[str, Any], key: str, value: Any) -> None:
    """The schema allows no nulls: a field that is not known is left out."""
    if value is not None and value != "" and value != [] and value != {}:
        obj[key] = value


# ---- the checkout -----------------------------------------------------------------------

def _split_source_id(source_id: str) -> tuple[str, str]:
    """(base id, patch tag or "")."""
    base, sep, tag = source_id.rpartition(PATCHES_SEP)
    return (base, tag) if sep else (source_id, "")


def _tree_name(tree: str) -> str:
    """"debian" is Debian's linux-source tarball; a --tree path is named by its directory."""
    return _text(tree if tree == "debian" else Path(tree).name or tree)


def _checkout(ident: str, run_dir: Path, summary: dict[str, Any],
              cells: list[CellResult]) -> dict[str, Any]:
    source_id = str(summary.get("source_id") or "")
    base, patches = _split_source_id(source_id)
    git = GIT_ID_RE.match(base)
    co: dict[str, Any] = {"id": ident, "origin": ORIGIN}
    _put(co, "tree_name", _tree_name(str(summary.get("tree") or "")))
    if git:
        # A dirty tree's commit is still the base the code came from; misc says it was dirty.
        co["git_commit_hash"] = git["sha"]
    _put(co, "start_time", _time(summary.get("started")))
    if not summary.get("interrupted"):
        _put(co, "origin_tests_finish_time", _time(summary.get("finished")))
    _put(co, "comment", _text(" ".join(
        p for p in (summary.get("kernel_version"), source_id) if p)))
    # Nothing proves the source good until a kernel was built from it.
    co["valid"] = any(c.build_dir for c in cells)
    misc: dict[str, Any] = {"run_dir": str(run_dir.resolve()), "source_id": source_id}
    _put(misc, "kernel_version", summary.get("kernel_version"))
    _put(misc, "host", summary.get("host"))
    _put(misc, "tree", summary.get("tree"))
    if git and git["dirty"]:
        misc["dirty"] = True
    # The schema's patchset_hash is a sha256 over each patch's sha256; the
    # source id keeps only a digest of its own, so the tag goes here.
    _put(misc, "patches", patches)
    for key in ("interrupted", "exit_code", "cells_requested"):
        _put(misc, key, summary.get(key))
    co["misc"] = misc
    return co


# ---- builds -----------------------------------------------------------------------------

def _build_key(cell: CellResult) -> tuple[str, str]:
    return (cell.arch, cell.config_hash)


def _is_build_failure(cell: CellResult) -> bool:
    return (cell.verdict == Verdict.FAIL and not cell.build_dir
            and BUILD_FAILED_RE.match(cell.reason) is not None)


def _cell_build_status(cell: CellResult) -> str:
    if cell.build_dir:
        return "PASS"
    if _is_build_failure(cell):
        return "FAIL"
    # Stopped before building (a bad request, the host, an interrupt): the
    # build's own outcome is unknown, so it gets the cell's non-pass status.
    return VERDICT_STATUS[cell.verdict] if cell.verdict != Verdict.PASS else "ERROR"


def _architecture(cell: CellResult, run_dir: Path) -> str:
    arch = ARCHES.get(cell.arch)
    if arch is None:
        raise UserError(f"{run_dir / 'cells' / cell.name / 'result.json'}: unknown arch "
                        f"{cell.arch!r}", f"known: {', '.join(ARCHES)}")
    return arch.make_arch   # "i386-pae" builds ARCH=i386


def _build_log(cells: list[CellResult]) -> Path | None:
    """The build directory's own log: the run's builds/ copy is per arch, not per config."""
    for c in cells:
        m = BUILD_FAILED_RE.match(c.reason)
        if m and not c.build_dir:
            return Path(m["log"])
    return Path(cells[0].build_dir) / "build.log" if cells[0].build_dir else None


def _build(ident: str, checkout_id: str, run_dir: Path,
           cells: list[CellResult]) -> dict[str, Any]:
    first = cells[0]
    b: dict[str, Any] = {"id": ident, "origin": ORIGIN, "checkout_id": checkout_id,
                         "architecture": _architecture(first, run_dir)}
    if first.config_hash:
        b["config_name"] = f"cpa-harness-{first.arch}-{first.config_hash[:12]}"
    if first.build_dir:
        b["config_url"] = _url(Path(first.build_dir) / ".config")
    log = _build_log(cells)
    if log is not None:
        b["log_url"] = _url(log)
    b["status"] = _strongest(_cell_build_status(c) for c in cells)
    failed = [c for c in cells if _is_build_failure(c)]
    if failed:
        # The reason holds the BuildError line and the first compiler errors.
        b["log_excerpt"] = _excerpt(failed[0].reason.splitlines())
    misc: dict[str, Any] = {"arch": first.arch, "cells": [c.name for c in cells]}
    _put(misc, "config_hash", first.config_hash)
    _put(misc, "build_dir", first.build_dir)
    if first.build_dir:
        misc["cached"] = any(c.build_cached for c in cells)
    _put(misc, "source_id", first.source_id)
    b["misc"] = misc
    return b


# ---- tests ------------------------------------------------------------------------------

def _environment(cell: CellResult) -> dict[str, Any]:
    target = cell.target or {}
    if target.get("kind") == "box":
        return _box_environment(cell, target)
    env: dict[str, Any] = {}
    if cell.accel:
        env["comment"] = _text(f"QEMU {cell.accel}, -cpu {cell.cpu}, {cell.memory_mb} MiB, "
                               f"{cell.smp} CPU(s), cmdline: {cell.cmdline}")
    misc: dict[str, Any] = {}
    for key in ("accel", "accel_reason", "cpu", "memory_mb", "smp", "cmdline"):
        _put(misc, key, getattr(cell, key))
    for key in ("cpu_model", "hypervisor"):
        _put(misc, f"guest_{key}", getattr(cell.guest, key, None))
    _put(env, "misc", misc)
    return env


def _box_environment(cell: CellResult, target: dict[str, Any]) -> dict[str, Any]:
    """A lab box is the test environment: who it said it is, and how the
    kernel under test reached it."""
    who = target.get("identity") or {}
    machine = " ".join(filter(None, (who.get("vendor"), who.get("product")))) or "?"
    memory = f"{who['memory_kb'] // 1024} MiB" if who.get("memory_kb") else "? MiB"
    env: dict[str, Any] = {"comment": _text(
        f"lab box {target.get('box')}: {machine}, {who.get('cpu_model') or '?'} "
        f"(microcode {who.get('microcode') or '?'}), {memory}; booted by "
        f"{target.get('boot')}, cmdline: {target.get('cmdline') or cell.cmdline}")}
    misc: dict[str, Any] = {"target": "box"}
    for key in ("box", "boot", "recovery", "kexec_to_ready_s"):
        _put(misc, key, target.get(key))
    for key in ("vendor", "product", "cpu_model", "microcode", "memory_kb", "kernel"):
        _put(misc, f"box_{key}", who.get(key))
    _put(misc, "box_gbpages", "pdpe1gb" in who.get("cpu_flags", []) if who else None)
    _put(misc, "cmdline", target.get("cmdline") or cell.cmdline)
    back = target.get("back") or {}
    _put(misc, "box_back", back.get("kernel"))
    _put(misc, "box_back_error", back.get("error"))
    env["misc"] = misc
    return env


def _serial_log(run_dir: Path, cell: CellResult) -> Path | None:
    """The log in the run directory; the recorded path only when the run was not moved."""
    here = run_dir / "cells" / cell.name / "serial.log"
    if here.exists():
        return here
    return Path(cell.serial_log) if cell.serial_log and Path(cell.serial_log).is_absolute() \
        else None


def _direct_map(snapshot: Any) -> dict[str, Any]:
    """meminfo's DirectMap lines and the page-table dump (what is really mapped)."""
    if not isinstance(snapshot, dict):
        return {}
    return {k: snapshot[k] for k in ("label", "meminfo", "ptdump") if k in snapshot}


class _Tests:
    """The tests of one cell: ids, the shared fields, then one builder per kind."""

    def __init__(self, run_id: str, build_id: str, run_dir: Path, cell: CellResult) -> None:
        self.run_id = run_id
        self.build_id = build_id
        self.run_dir = run_dir
        self.cell = cell
        self.prefix = f"cpa.{_path_part(cell.name)}"

    def new(self, suffix: str, status: str) -> dict[str, Any]:
        path = f"{self.prefix}.{suffix}" if suffix else self.prefix
        t: dict[str, Any] = {"id": f"{ORIGIN}:{self.run_id}:test:{path}", "origin": ORIGIN,
                             "build_id": self.build_id, "path": path, "status": status}
        _put(t, "environment", _environment(self.cell))
        _put(t, "start_time", _time(self.cell.started))
        log = _serial_log(self.run_dir, self.cell)
        if log is not None:
            t["log_url"] = _url(log)
        return t

    def all(self) -> list[dict[str, Any]]:
        tests = [self.summary()]
        if not self.cell.build_dir:
            return tests        # nothing was booted
        tests.append(self.boot())
        tests += [self.selftest(n, p) for n, p in enumerate(self.cell.cpa_selftest, 1)]
        tests += [self.kexec(n, rt) for n, rt in enumerate(self.cell.kexec, 1)]
        tests += [self.exercise(m) for m in exercise.modes(self.cell.exercise)]
        tests.append(self.failures())
        return tests

    def summary(self) -> dict[str, Any]:
        c = self.cell
        t = self.new("", VERDICT_STATUS[c.verdict])
        _put(t, "comment", _text(c.reason.splitlines()[0] if c.reason else ""))
        _put(t, "log_excerpt", _excerpt([*c.reason.splitlines(), *c.serial_tail]))
        _put(t, "duration", c.durations.get("total"))
        cell_dir = self.run_dir / "cells" / c.name
        _put(t, "output_files", [{"name": p.name, "url": _url(p)} for p in
                                 (cell_dir / "result.json", cell_dir / "serial.attempt-1.log")
                                 if p.exists()])
        misc: dict[str, Any] = {"verdict": c.verdict.value, "scenario": c.scenario}
        for key in ("kernel_version", "source_id", "gbpages", "debug_pagealloc",
                    "periods_watched", "vmstat", "retried_after", "selfcheck", "durations"):
            _put(misc, key, getattr(c, key))
        _put(misc, "direct_map", self.direct_map_stats())
        t["misc"] = misc
        return t

    def direct_map_stats(self) -> dict[str, Any]:
        s = self.cell.stats
        stats: dict[str, Any] = {}
        _put(stats, "meminfo_last", self.cell.direct_map)
        _put(stats, "boot", _direct_map(s.get("boot")))
        _put(stats, "after_selftest", _direct_map(s.get("after_selftest")))
        _put(stats, "delta", _direct_map(s.get("delta")))
        return stats

    def boot(self) -> dict[str, Any]:
        c = self.cell
        # The ready marker's boot id proves the boot; without it the cell's
        # verdict says why (a panic, a hang, QEMU dying, an interrupt).
        t = self.new("boot", "PASS" if c.boot_id else VERDICT_STATUS[c.verdict])
        if not c.boot_id:
            _put(t, "log_excerpt", _excerpt([*c.reason.splitlines(), *c.serial_tail]))
        _put(t, "duration", c.durations.get("boot_to_ready"))
        misc: dict[str, Any] = {}
        _put(misc, "boot_id", c.boot_id)
        _put(misc, "boots", c.boots)
        _put(misc, "direct_map", _direct_map(c.stats.get("boot")))
        _put(misc, "config_source", c.guest.config_source if c.guest else None)
        _put(t, "misc", misc)
        return t

    def selftest(self, n: int, p: dict[str, Any]) -> dict[str, Any]:
        # "incomplete": the pass never finished, so the code's state is unknown.
        status = {"pass": "PASS", "fail": "FAIL"}.get(str(p.get("result")), "ERROR")
        t = self.new(f"selftest.{n}", status)
        errors = [e.get("message", "") if isinstance(e, dict) else str(e)
                  for e in p.get("errors") or []]
        _put(t, "log_excerpt", _excerpt(errors))
        if n == 1:
            _put(t, "duration", self.cell.durations.get("to_first_pass"))
        t["misc"] = {k: p[k] for k in ("result", "boot", "format", "first_line", "last_line",
                                       "splits", "notes") if k in p}
        return t

    def exercise(self, m: dict[str, Any]) -> dict[str, Any]:
        problems = m.get("problems") or []
        status = "SKIP" if m.get("unavailable") else "FAIL" if problems else "PASS"
        t = self.new(f"exercise.{_path_part(str(m.get('mode')))}", status)
        _put(t, "comment", _text(exercise.line(m)))
        _put(t, "log_excerpt", _excerpt([*problems, *(m.get("mismatch_lines") or [])]))
        _put(t, "duration", m.get("seconds"))
        misc: dict[str, Any] = {}
        for key in ("flush", "splits", "summary", "rows", "injected_reports", "unavailable"):
            _put(misc, key, m.get(key))
        _put(t, "misc", misc)
        return t

    def kexec(self, n: int, rt: RoundTrip) -> dict[str, Any]:
        if not rt.verified:
            status = "FAIL"     # the new kernel never proved it arrived
        else:
            status = {"pass": "PASS", "fail": "FAIL"}.get(rt.selftest, "ERROR")
        t = self.new(f"kexec.{n}", status)
        _put(t, "comment", _text(f"{rt.method} round trip"))
        _put(t, "log_excerpt", _excerpt([rt.error] if rt.error else []))
        _put(t, "duration", rt.seconds_to_ready)
        trip = rt.to_json()
        keys = ("method", "nonce", "boot_id_before", "boot_id_after", "cmdline_after",
                "verified", "boot", "selftest")
        misc: dict[str, Any] = {k: trip[k] for k in keys}
        snaps = rt.stats
        if snaps:
            _put(misc, "direct_map", {label: _direct_map(s) for label, s in snaps.items()})
        t["misc"] = misc
        return t

    def failures(self) -> dict[str, Any]:
        c = self.cell
        bad = [f for f in c.failures if not f.known]
        if bad:
            status = "FAIL"
        elif c.boot_id or c.boots:
            status = "PASS"
        else:
            # No kernel output was read, so there was nothing to judge.
            status = "SKIP" if c.verdict == Verdict.NOT_RUN else "ERROR"
        t = self.new("failures", status)
        _put(t, "comment", _text("; ".join(f"{f.kind}: {f.title}" for f in bad)))
        lines: list[str] = []
        for f in c.failures:
            tag = " [known issue]" if f.known else ""
            lines.append(f"{f.kind}: {f.title} (console line {f.line}, boot {f.boot})"
                         f"{f.failure.times()}{tag}")
            if not f.known:
                lines += [*f.failure.report[:REPORT_LINES], ""]
        _put(t, "log_excerpt", _excerpt(lines))
        _put(t, "misc", {"failures": [
            {"kind": f.kind, "title": f.title, "line": f.line, "boot": f.boot,
             "known": f.known, **({"known_reason": f.known_reason} if f.known else {}),
             "call_trace": f.failure.call_trace, "count": f.failure.count,
             **({"repeat_lines": f.failure.repeat_lines} if f.failure.repeat_lines else {})}
            for f in c.failures]})
        return t


# ---- the document -----------------------------------------------------------------------

def to_kcidb(run_dir: Path) -> dict[str, Any]:
    """The run as a KCIDB document; UserError when the directory is not a readable run."""
    summary = read_summary(run_dir)
    summary_path = run_dir / "summary.json"
    cells = [read_cell(run_dir, e, summary_path) for e in summary["cells"]]
    # Run directory names are unique per run (time and random suffix); the
    # source id keeps two runs reusing one --out directory apart.
    run_id = f"{run_dir.resolve().name}:{_short_hash(str(summary.get('source_id', '')))}"
    checkout_id = f"{ORIGIN}:{run_id}"
    groups: dict[tuple[str, str], list[CellResult]] = {}
    for c in cells:
        groups.setdefault(_build_key(c), []).append(c)
    build_ids = {key: f"{ORIGIN}:{run_id}:build:{key[0]}:{key[1][:12] or 'unbuilt'}"
                 for key in groups}
    return {
        "version": dict(SCHEMA_VERSION),
        "checkouts": [_checkout(checkout_id, run_dir, summary, cells)],
        "builds": [_build(build_ids[key], checkout_id, run_dir, group)
                   for key, group in groups.items()],
        "tests": [t for c in cells
                  for t in _Tests(run_id, build_ids[_build_key(c)], run_dir, c).all()],
    }


def write_kcidb(run_dir: Path) -> Path:
    """run_dir/kcidb.json, written atomically; not validated (see validate())."""
    path = run_dir / "kcidb.json"
    write_json(path, to_kcidb(run_dir))
    return path


def validate(doc: dict[str, Any]) -> None:
    """Check the document with kcidb_io; InfraError with one line when it does not pass."""
    try:
        import jsonschema
        import kcidb_io
    except ImportError:
        raise InfraError("cannot validate the KCIDB document: kcidb_io is not installed",
                         "pip install kcidb-io (in the test extra)") from None
    try:
        kcidb_io.schema.LATEST.validate(doc)
    except jsonschema.ValidationError as e:
        where = getattr(e, "json_path", "$")
        msg = (str(e.message).splitlines() or ["?"])[0]
        if len(msg) > 200:
            msg = msg[:200] + "..."
        raise InfraError(f"KCIDB document is not valid for schema {kcidb_io.schema.LATEST} "
                         f"at {where}: {msg}") from None
