"""What the CPA exerciser (guest/exerciser/cpa_exercise.c) printed in one run.

Every line of a run is `cpa_exercise: run=ID WHAT key=value ...` in the
kernel log, from `start` to `done`; the run id tells a run from an earlier
one still in the log. Between the two, the kernel's fault injection prints
`FAULT_INJECTION: forcing a failure.` for every allocation it failed on the
exerciser's request (alloc-fail): expected, counted, never a failure.

What a run proves or breaks: every `mismatch` line (a page whose cache
attribute is not the one a successful change asked for) and every call that
failed when nothing was injected (`unclean`) is a failure; so is a run that
did not print `done`. A failed call's partial change is the kernel's
documented behaviour (CPA does not roll back), reported, not a failure.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("cache", "concurrent", "alloc-fail")
LINE = re.compile(r"cpa_exercise: run=(?P<run>\S+) (?P<what>[a-z-]+)(?P<words>(?: \S+=\S*)*)\s*$")
WORD = re.compile(r"(\S+?)=(\S*)")
INJECTED = re.compile(r"FAULT_INJECTION: forcing a failure\.")
MAX_KEPT = 16


def _value(text: str) -> int | str:
    if text.startswith("0x"):
        return text         # an address or a page-table entry: shown as printed
    try:
        return int(text)
    except ValueError:
        return text


@dataclass
class Run:
    """One insmod's lines, as numbers where they are numbers."""

    run: str
    mode: str = ""
    start: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)      # cache, concurrent, ...
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    done: dict[str, Any] | None = None
    injected_reports: int = 0       # FAULT_INJECTION lines between start and done
    lines: list[str] = field(default_factory=list)                # as printed, capped

    def rows_of(self, what: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("what") == what]

    def summary(self) -> dict[str, Any]:
        """alloc-fail's own totals (its row without a round)."""
        return next((r for r in self.rows_of("alloc-fail") if "round" not in r), {})

    def problems(self) -> list[str]:
        """What fails the cell: one line each."""
        out = []
        if not self.start:
            out.append("the exerciser printed nothing for this run")
        elif self.done is None:
            out.append("the exerciser did not finish (no 'done' line)")
        if self.mismatches:
            m = self.mismatches[0]
            more = f" (and {len(self.mismatches) - 1} more)" if len(self.mismatches) > 1 else ""
            out.append(f"page {m.get('addr')} is {m.get('found')} after {m.get('after')}, "
                       f"not {m.get('want')} ({m.get('level')} entry {m.get('entry')}){more}")
        for e in self.errors:
            out.append(f"{e.get('call')} failed with {e.get('ret')} with nothing injected")
        if self.done is not None:
            unclean = self.done.get("unclean", 0)
            if isinstance(unclean, int) and unclean > len(self.errors):
                out.append(f"{unclean - len(self.errors)} call(s) failed with nothing injected")
            ret = self.done.get("ret")
            if ret not in (0, None) and self.mode in MODES and not self.unavailable():
                out.append(f"the exerciser's {self.mode} run returned {ret}")
        return out

    def unavailable(self) -> str:
        """Why the mode could not run in this kernel ('' when it ran)."""
        for r in self.rows:
            if "unavailable" in r:
                return str(r["unavailable"])
        return ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse(text: str, run: str) -> Run:
    """The lines of run `run` in a kernel log (dmesg or the console)."""
    res = Run(run)
    started = finished = False
    for line in text.splitlines():
        if started and not finished and INJECTED.search(line):
            res.injected_reports += 1
            continue
        m = LINE.search(line)
        if m is None or m["run"] != run:
            continue
        words: dict[str, Any] = {k: _value(v) for k, v in WORD.findall(m["words"])}
        what = m["what"]
        if len(res.lines) < 4 * MAX_KEPT:
            res.lines.append(line[m.start():])
        if what == "start":
            started = True
            res.start, res.mode = words, str(words.get("mode", ""))
        elif what == "done":
            finished = True
            res.done = words
        elif what == "mismatch":
            if len(res.mismatches) < MAX_KEPT:
                res.mismatches.append(words)
        elif what == "error":
            if len(res.errors) < MAX_KEPT:
                res.errors.append(words)
        else:
            res.rows.append({"what": what, **words})
    return res


def ops_per_second(row: dict[str, Any]) -> float | None:
    """Changes per second of a cache or concurrent row (None without a time)."""
    ns, changes = row.get("ns"), row.get("changes")
    if not isinstance(ns, int) or not isinstance(changes, int) or ns <= 0:
        return None
    return changes * 1e9 / ns
