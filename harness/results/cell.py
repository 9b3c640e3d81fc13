"""Results: one JSON per cell, a run summary, JUnit XML and the verdict table.

Files are written atomically (temp file, then rename): an interrupted or
crashed run never leaves a half-written result behind, and what was already
written stays readable.
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO
from xml.etree import ElementTree as ET

from harness.console.model import Failure
from harness.files import atomic, write_json
from harness.probes.passes import PeriodProof
from harness.probes.runtime import GuestView
from harness.records import Record
from harness.results import exercise


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"               # the kernel under test misbehaved
    USER_ERROR = "user-error"   # the request or the cell's expectations were wrong
    INFRA_ERROR = "infra-error" # the host failed: QEMU crashed, no disk, ...
    NOT_RUN = "not-run"         # interrupted before it ran


EXIT_CODES = {Verdict.PASS: 0, Verdict.FAIL: 1, Verdict.USER_ERROR: 2,
              Verdict.INFRA_ERROR: 3, Verdict.NOT_RUN: 3}
EXIT_INTERRUPTED = 130


def run_exit_code(verdicts: list[Verdict]) -> int:
    """A kernel failure outranks everything: it is what the run exists to find."""
    for v in (Verdict.FAIL, Verdict.USER_ERROR, Verdict.INFRA_ERROR, Verdict.NOT_RUN):
        if v in verdicts:
            return EXIT_CODES[v]
    return 0


@dataclass(frozen=True)
class CellFailure:
    """One failure of a cell: a report the console analysis found, as it found
    it, or the harness's own account of a failure no report shows (a hang, a
    kexec that never arrived, a reset: line 0, the console's tail as its
    report), with the boot it is in and whether a known issue explains it."""

    failure: Failure
    boot: int
    known: bool = False
    known_reason: str = ""

    @classmethod
    def seen_by_harness(cls, kind: str, title: str, boot: int,
                        tail: list[str]) -> CellFailure:
        return cls(Failure(kind=kind, title=title, line=0, first_line=0, last_line=0,
                           report=tuple(tail), completed_by=""), boot)

    @property
    def kind(self) -> str:
        return self.failure.kind

    @property
    def title(self) -> str:
        return self.failure.title

    @property
    def line(self) -> int:
        return self.failure.line

    def to_json(self) -> dict[str, Any]:
        return {**self.failure.to_json(), "boot": self.boot, "known": self.known,
                "known_reason": self.known_reason}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CellFailure:
        return cls(Failure.from_json(d), int(d.get("boot", 0)), bool(d.get("known", False)),
                   str(d.get("known_reason", "")))


@dataclass
class RoundTrip(Record):
    """One kexec round trip (scenarios/kexec.py): what was loaded, and how the
    new kernel proved it was running."""

    method: str
    nonce: str
    boot_id_before: str
    boot_id_after: str = ""
    cmdline_after: str = ""
    verified: bool = False
    seconds_to_ready: float | None = None
    boot: int | None = None          # the new kernel's boot in the console analysis
    selftest: str = ""               # the new kernel's first CPA self-test result
    error: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    def passed(self) -> bool:
        """Proven (nonce and new boot id), and the new kernel passed the self-test."""
        return self.verified and self.selftest == "pass"


@dataclass
class SshRecord(Record):
    """How the machine was reached over ssh: for the results and `cpa-harness ssh`."""

    host: str | None = None
    port: int | None = None
    key: str | None = None
    host_key: str | None = None
    boot_id: str = ""
    connect_seconds: float | None = None


@dataclass
class CellResult:
    name: str
    arch: str
    verdict: Verdict = Verdict.NOT_RUN
    reason: str = ""
    scenario: str = "cpa"
    accel: str = ""
    accel_reason: str = ""
    cpu: str = ""
    memory_mb: int = 0
    smp: int = 0
    cmdline: str = ""
    source_id: str = ""
    kernel_version: str | None = None
    build_dir: str = ""
    build_cached: bool = False
    config_hash: str = ""
    serial_log: str = ""
    boot_id: str = ""
    gbpages: bool | None = None
    debug_pagealloc: bool | None = None
    cpa_selftest: list[dict[str, Any]] = field(default_factory=list)
    periods_watched: int = 0
    # What each watched period's counters show of the silent passes in it
    periods: list[PeriodProof] = field(default_factory=list)
    direct_map: dict[str, int] = field(default_factory=dict)
    vmstat: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)     # snapshots and their delta
    failures: list[CellFailure] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    selfcheck: list[dict[str, Any]] = field(default_factory=list)
    ssh: SshRecord | None = None            # None: the cell had no ssh
    guest: GuestView | None = None          # what ran, as the machine says; None: never up
    kexec: list[RoundTrip] = field(default_factory=list)
    boots: list[dict[str, Any]] = field(default_factory=list)   # every boot the console saw
    serial_tail: list[str] = field(default_factory=list)    # context for infrastructure errors
    flush: dict[str, Any] = field(default_factory=dict)     # flush accounting windows
    workload: dict[str, Any] = field(default_factory=dict)
    exercise: dict[str, Any] = field(default_factory=dict)  # the CPA exerciser's modes
    # The fast self-test (kernel/fast_selftest.py): the patch, the period and
    # the passes seen after the first, their time and rate; {} for a stock cell
    fast_selftest: dict[str, Any] = field(default_factory=dict)
    numa_nodes: int = 1
    retried_after: str = ""     # the infrastructure error of a first attempt
    # The machine's own part: its kind and what only it has (QEMU: its command
    # line, pid, and, when it stopped early, its QMP account of why)
    target: dict[str, Any] = field(default_factory=dict)
    deadline: float = 0.0       # the cell's backstop, seconds
    # Wanted kernel features the tree could not give ("LKDTM unavailable on 6.1: ...")
    unavailable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)     # what the harness had to do again
    dropped_options: list[str] = field(default_factory=list)   # essential, not in this tree
    # What the harness expects of kernels but cannot on this version (kernel_facts)
    unchecked: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        d["failures"] = [f.to_json() for f in self.failures]
        d["periods"] = [p.to_json() for p in self.periods]
        # {} for "none", as results have always said it
        d["ssh"] = self.ssh.to_json() if self.ssh else {}
        d["guest"] = self.guest.to_json() if self.guest else {}
        d["passes_proven"] = self.passes_proven()
        return d

    def passes_proven(self) -> int:
        """The self-test passes the verdict rests on: those printed that passed, and
        the silent ones the watched periods' counters prove."""
        printed = sum(1 for p in self.cpa_selftest if p.get("result") == "pass")
        return printed + sum(1 for p in self.periods if p.ran)

    def selftest_summary(self) -> str:
        """'pass +2 silent': the printed passes' results, and the proven silent ones;
        '?' for a period that nothing could prove."""
        results = [p.get("result", "?") for p in self.cpa_selftest]
        shown = ",".join(results) or "-"
        if len(results) > 3:    # many printed (the fast self-test, many boots): counted
            shown = ",".join(f"{results.count(r)} {r}" for r in dict.fromkeys(results))
        proven = sum(1 for p in self.periods if p.ran)
        unproven = sum(1 for p in self.periods if p.ran is None)
        stuck = sum(1 for p in self.periods if p.ran is False)
        return shown + (f" +{proven} silent" if proven else "") + \
            (f" +{unproven}?" if unproven else "") + (" stuck" if stuck else "")

    def splits_summary(self) -> str:
        """The first pass's last split line: what the self-test left behind."""
        for p in self.cpa_selftest:
            if p.get("splits"):
                s = p["splits"][-1]
                return f"4k {s['4k']} large {s['large']}" + (f" gb {s['gb']}" if s.get("gb")
                                                             else "")
        return "-"


    def first_flush_groups(self) -> dict[str, Any] | None:
        """Flush calls per group in the first counting window, if there was one."""
        windows = self.flush.get("windows") if isinstance(self.flush, dict) else None
        if not isinstance(windows, list) or not windows or not isinstance(windows[0], dict):
            return None
        groups = windows[0].get("groups")
        return groups if isinstance(groups, dict) else None

    def flush_summary(self) -> str:
        """The first window's flush calls: full write-backs, CLFLUSH ranges, TLB flushes."""
        g = self.first_flush_groups()
        if g is None:
            return "n/a" if self.flush.get("unavailable") else "-"
        return (f"wbinvd {g['full_flush']} clflush {g['cache_range']} "
                f"tlb {g['cpa_tlb'] + g['global_tlb']} ipi {g['ipi']}")

    def machine(self) -> str:
        """Where the cell ran, as a report names it: a lab box by its name,
        a QEMU guest by its accelerator."""
        target = self.target or {}
        if target.get("kind") == "box":
            return f"box {target.get('box', '?')}"
        return self.accel

    def kexec_summary(self) -> str:
        """Round trips proven (nonce and boot id) and self-tested, of those tried."""
        if not self.kexec:
            return "-"
        return f"{sum(1 for rt in self.kexec if rt.passed())}/{len(self.kexec)}"


def write_cell(run_dir: Path, cell: CellResult) -> Path:
    path = run_dir / "cells" / cell.name / "result.json"
    write_json(path, cell.to_json())
    return path


def write_summary(run_dir: Path, cells: list[CellResult], meta: dict[str, Any]) -> Path:
    summary = dict(meta)
    summary["cells"] = [{"name": c.name, "arch": c.arch, "verdict": c.verdict.value,
                         "reason": c.reason,
                         "result": f"cells/{c.name}/result.json"} for c in cells]
    summary["exit_code"] = run_exit_code([c.verdict for c in cells])
    path = run_dir / "summary.json"
    write_json(path, summary)
    write_junit(run_dir / "junit.xml", cells)
    return path


def write_junit(path: Path, cells: list[CellResult]) -> None:
    suites = ET.Element("testsuites", name="cpa-harness")
    for c in cells:
        suite = ET.SubElement(suites, "testsuite", name=c.name)
        cases: list[tuple[str, str | None, str]] = []
        cases.append(("build", None if c.build_dir or c.verdict == Verdict.PASS
                      else c.reason, ""))
        cases.append(("boot", None if c.boot_id else (c.reason or "no ready marker"), ""))
        for i, p in enumerate(c.cpa_selftest, 1):
            cases.append((f"cpa_selftest pass {i}",
                          None if p.get("result") == "pass" else f"result {p.get('result')}",
                          "\n".join(e.get("message", "") if isinstance(e, dict) else str(e)
                                    for e in p.get("errors", []))))
        for period in c.periods:
            # a period nothing could prove is not a failure: the table says "?"
            cases.append((f"cpa_selftest silent pass {period.label}",
                          "no pass ran: " + period.describe() if period.ran is False else None,
                          period.describe()))
        for i, rt in enumerate(c.kexec, 1):
            cases.append((f"kexec round trip {i} ({rt.method})",
                          None if rt.passed() else rt.error or "not verified",
                          f"nonce {rt.nonce}, boot id {rt.boot_id_before} -> "
                          f"{rt.boot_id_after or '?'}"))
        for m in exercise.modes(c.exercise):
            if not m.get("unavailable"):
                problems = m.get("problems") or []
                cases.append((f"cpa_exercise {m.get('mode')}",
                              "; ".join(problems) or None, exercise.line(m)))
        bad = [f for f in c.failures if not f.known]
        cases.append(("no kernel failures",
                      "; ".join(f"{f.kind}: {f.title}{f.failure.times()}" for f in bad) or None,
                      "\n\n".join("\n".join(f.failure.report) for f in bad)))
        failed = 0
        for name, failure, text in cases:
            case = ET.SubElement(suite, "testcase", classname=c.name, name=name)
            if failure:
                failed += 1
                el = ET.SubElement(case, "failure", message=failure)
                el.text = text
        if c.verdict in (Verdict.USER_ERROR, Verdict.INFRA_ERROR, Verdict.NOT_RUN):
            case = ET.SubElement(suite, "testcase", classname=c.name, name="harness")
            ET.SubElement(case, "error", message=f"{c.verdict.value}: {c.reason}")
        suite.set("tests", str(len(suite)))
        suite.set("failures", str(failed))
    with atomic(path) as f:
        ET.ElementTree(suites).write(f, encoding="utf-8", xml_declaration=True)


def pagealloc_line(p: dict[str, Any]) -> str:
    """Whether page freeing under debug_pagealloc reached a split (stats.pagealloc_splits)."""
    counters = ", ".join(f"{k} +{v}" for k, v in (p.get("splits") or {}).items()) or \
        "no split counters"
    start = ("all 4k at boot" if p.get("all_4k_at_boot") else
             f"not all 4k at boot: {p.get('large_at_boot_kb')} kB") + f" ({p.get('source')})"
    if p.get("split"):
        return f"debug_pagealloc: direct map {start}, and split at run time: {counters}"
    return f"debug_pagealloc: direct map {start}, no split at run time ({counters})"


def fast_selftest_line(f: dict[str, Any]) -> str:
    """'fast self-test: 20 of 20 passes after the first in 40 s (30.2 a minute),
    1000 ms between passes (kernel patched: cpa-test-period.patch)'."""
    seen = f.get("passes_seen")
    rate = f" ({f['per_minute']} a minute)" if f.get("per_minute") else ""
    took = f" in {f['seconds']:.0f} s{rate}" if f.get("seconds") else ""
    counted = "no passes counted" if seen is None else \
        f"{seen} of {f.get('passes_wanted')} passes after the first{took}"
    return (f"fast self-test: {counted}, {f.get('period_ms')} ms between passes "
            f"(kernel patched: {f.get('patch')})")


def summary_line(cells: list[CellResult]) -> str:
    """One line a CI log can be grepped for: how many passed, and which did not."""
    bad = [c for c in cells if c.verdict != Verdict.PASS]
    line = f"{len(cells) - len(bad)} of {len(cells)} cells passed"
    return line + ("; not passed: " + ", ".join(f"{c.name} ({c.verdict.value})" for c in bad)
                   if bad else "")


def print_table(cells: list[CellResult], out: TextIO) -> None:
    rows = [("cell", "verdict", "accel", "self-test", "splits (last line)", "direct map mapped",
             "flushes (first pass)", "kexec", "time", "reason")]
    for c in cells:
        # What is really mapped (the page-table dump) when the kernel has it;
        # meminfo's DirectMap counters can overcount (6.12 x86_64, GB pages).
        dump = (c.stats.get("after_selftest") or {}).get("ptdump") or {}
        mapped = {k.removeprefix("DirectMap"): v for k, v in dump.items()
                  if k.startswith("DirectMap")} or c.direct_map
        dm = " ".join(f"{k}:{v // 1024}M" for k, v in mapped.items() if v)
        rows.append((c.name, c.verdict.value.upper(), c.machine() or "-",
                     c.selftest_summary(), c.splits_summary(), dm or "-",
                     c.flush_summary(), c.kexec_summary(),
                     f"{c.durations.get('total', 0):.0f}s", c.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1]
                  + "\n")
    for c in cells:
        for f in c.failures:
            tag = f"known: {f.known_reason[:70]}..." if f.known else "FAILED"
            again = f", {f.failure.count} times" if f.failure.count > 1 else ""
            out.write(f"  {c.name}: {f.kind}: {f.title} (line {f.line}{again}) [{tag}]\n")
        for line in exercise.lines(c.exercise):
            out.write(f"  {c.name}: exerciser {line}\n")
        if c.stats.get("pagealloc"):
            out.write(f"  {c.name}: {pagealloc_line(c.stats['pagealloc'])}\n")
        if c.fast_selftest:
            out.write(f"  {c.name}: {fast_selftest_line(c.fast_selftest)}\n")
    # Said once, with the arches it holds for: every cell of a build lacks the same.
    arches: dict[str, list[str]] = {}
    for c in cells:
        for line in [*c.unavailable, *c.unchecked]:
            if c.arch not in arches.setdefault(line, []):
                arches[line].append(c.arch)
    for line, where in arches.items():
        out.write(f"  {', '.join(where)}: {line}\n")
