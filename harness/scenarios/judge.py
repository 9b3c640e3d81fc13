"""One verdict from everything seen, for every scenario: data in, a verdict out.

A scenario's steps end one way or another (all done, a failure seen, a hang,
the machine gone, the harness's own error); that is the Outcome of the steps.
judge() then weighs it against what the console analysis found over the
whole cell, the strongest finding first, and against the cell's
expectations. It reads and changes nothing else, so it is table-tested on
its own (tests/test_judge.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.cells import Expect
from harness.console import Analysis
from harness.console.known import KnownIssue
from harness.console.known import match as match_known
from harness.results.cell import CellFailure, CellResult, Verdict


@dataclass(frozen=True)
class Outcome:
    """How a cell's steps ended (PASS: all of them done), or the judged verdict."""

    verdict: Verdict
    reason: str = ""


@dataclass(frozen=True)
class ConsoleFindings:
    """What the console analysis of a whole cell says, in the result's terms."""

    failures: list[CellFailure]
    boots: list[dict[str, Any]]
    cpa_selftest: list[dict[str, Any]]      # every boot's passes, each with its boot
    kernel_version: str | None = None       # the cell's own kernel (the first boot's)
    gbpages: bool | None = None
    debug_pagealloc: bool | None = None

    def fill(self, res: CellResult) -> None:
        """Into the cell's result, after what its steps recorded."""
        res.failures += self.failures
        res.boots, res.cpa_selftest = self.boots, self.cpa_selftest
        res.kernel_version, res.gbpages = self.kernel_version, self.gbpages
        res.debug_pagealloc = self.debug_pagealloc


def read_console(analysis: Analysis, known: list[KnownIssue], arch: str) -> ConsoleFindings:
    failures = []
    for n, boot in enumerate(analysis.boots):
        for f in boot.failures:
            k = match_known(known, f.kind, f.title, boot.kernel, arch)
            failures.append(CellFailure(f, n, known=k is not None,
                                        known_reason=k.reason if k else ""))
    boots = [{"boot": n, "kernel": b.kernel, "ended_by": b.ended_by, "failures": len(b.failures)}
             for n, b in enumerate(analysis.boots)]
    passes = [{**p.to_json(), "boot": n} for n, b in enumerate(analysis.boots)
              for p in b.cpa_selftest]
    first = next((b for b in analysis.boots if b.kernel),
                 analysis.boots[0] if analysis.boots else None)
    if first is None:
        return ConsoleFindings(failures, boots, passes)
    # What the cell's own kernel booted with; a kexec'd kernel is judged by its trip.
    return ConsoleFindings(failures, boots, passes, first.kernel, first.gbpages,
                           first.debug_pagealloc)


def judge(steps: Outcome, res: CellResult, expect: Expect | None = None, *,
          session: bool = False) -> Outcome:
    """The cell's verdict. `res` holds what was seen (its console findings
    included); `expect` is the cell's claims, None where none are checked; a
    manual `session` without a self-test verdict was not run, not failed."""
    if res.scenario == "selfcheck":
        return _selfcheck(res.selfcheck)
    unknown = [f for f in res.failures if not f.known]
    failed_passes = [p for p in res.cpa_selftest if p.get("result") == "fail"]
    if steps.verdict in (Verdict.USER_ERROR, Verdict.INFRA_ERROR):
        # A kernel that failed on the way outranks what went wrong around it.
        if not res.boots or not (unknown or failed_passes):
            return steps
    if unknown:
        return Outcome(Verdict.FAIL, f"{unknown[0].kind}: {unknown[0].title}")
    if failed_passes:
        return Outcome(Verdict.FAIL, "CPA self-test NOT PASSED")
    if steps.verdict == Verdict.FAIL and not res.boots and not res.failures:
        # The machine stopped before the kernel printed anything, and not by
        # the guest's doing (that is a failure record): not the kernel's fault.
        return Outcome(Verdict.INFRA_ERROR,
                       f"{steps.reason}; no kernel output (see {res.serial_log})")
    if steps.verdict != Verdict.PASS:
        return steps
    if not any(p.get("result") == "pass" for p in res.cpa_selftest):
        if session:
            return Outcome(Verdict.NOT_RUN, "the session ended before the CPA self-test's "
                                            "first verdict (30 s after boot)")
        return Outcome(Verdict.FAIL, "no CPA self-test pass completed")
    mismatch = expectation_mismatch(res, expect) if expect else ""
    if mismatch:
        return Outcome(Verdict.USER_ERROR, f"cell expectation not met: {mismatch}")
    return steps


def _selfcheck(checks: list[dict[str, Any]]) -> Outcome:
    """Every provocation caught is a pass; one missed means the harness's eyes fail."""
    if not checks:
        return Outcome(Verdict.NOT_RUN, "no provocation ran")
    bad = [c for c in checks if c["result"] not in ("caught", "unavailable")]
    if all(c["result"] == "unavailable" for c in checks):
        return Outcome(Verdict.USER_ERROR, "nothing to provoke: " + checks[0]["reason"])
    if not bad:
        verdict = Verdict.PASS
    elif all(c["result"] in ("missed", "no-trigger") for c in bad):
        # The harness did not see what the kernel was made to do: its eyes fail.
        verdict = Verdict.FAIL
    else:
        verdict = Verdict.INFRA_ERROR
    reason = "; ".join(
        f"{c['crash']}: {c['result']} (expected {c['expected_kind']}, found "
        f"{', '.join(f['kind'] for f in c['found']) or 'nothing'})" for c in bad)
    skipped = [c for c in checks if c["result"] == "unavailable"]
    if skipped:
        reason = "; ".join(filter(None, [
            reason, f"not provoked: {', '.join(c['crash'] for c in skipped)} "
                    f"({skipped[0]['reason']})"]))
    return Outcome(verdict, reason)


def mapped(res: CellResult, when: str) -> tuple[dict[str, int], str]:
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


def expectation_mismatch(res: CellResult, e: Expect) -> str:
    """What of the cell's claims the kernel did not bear out ('' if all did)."""
    booted, src = mapped(res, "boot")
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
        dm, src = mapped(res, "after_selftest")
        large = {k: v for k, v in dm.items() if k != "DirectMap4k" and v}
        if large or not dm:
            return f"direct map expected all 4k, the {src} say {dm or 'nothing'}"
    return ""
