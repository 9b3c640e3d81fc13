"""The CPA self-test (arch/x86/mm/pat/cpa-test.c): passes, split lines, errors.

Current format (2.6.25 on): the `pageattr-test` kthread runs a pass every 30 s
and prints only the first one in full:

    CPA self-test:
     4k 262144 large 0 gb 4 x 1024[ffff888000000000-ffff8881000fffff] miss 0
     (twice more)
    ok.

A failing pass, first or later, prints its error lines and then
`WARN(1, "NOT PASSED. Please report.\\n")`. Later passes print nothing else, so
error lines with no `CPA self-test:` before them start a pass of their own.
The 2.6.24 format printed `CPA mapping 4k ...` lines and `CPA selftests
PASSED` / `CPA selftests NOT PASSED. Please report.`.
"""

from __future__ import annotations

import re

from harness.console.lines import Line
from harness.console.model import Boot, CpaSelftest, SelftestError, Split

CPA_SELFTEST_START = re.compile(r"CPA self-test:\s*$")
CPA_SPLIT = re.compile(
    r"\s*(?P<old>CPA mapping )?4k (?P<k4>\d+) large (?P<large>\d+)(?: gb (?P<gb>\d+))?"
    r" x (?P<x>\d+)\[(?P<xa>[0-9a-fA-F]+)-(?P<xb>[0-9a-fA-F]+)\](?: miss (?P<miss>\d+))?\s*$"
)
CPA_OK = re.compile(r"ok\.\s*$")
CPA_NOT_PASSED = re.compile(r"NOT PASSED\. Please report\.")
CPA_OLD_PASSED = re.compile(r"CPA selftests PASSED")
CPA_OLD_NOT_PASSED = re.compile(r"CPA selftests NOT PASSED")
CPA_NO_BITMAP = re.compile(r"CPA Cannot vmalloc bitmap")
# Every error line pageattr_test() and print_split() can print: all start
# with "CPA " but print_split()'s "%lx level %d but not PSE %Lx".
CPA_ERRORS: tuple[re.Pattern[str], ...] = (
    re.compile(r"CPA -?\d+ failed -?\d+"),
    re.compile(r"CPA [0-9a-f]+: bad pte(?: after revert)? [0-9a-f]+"),
    re.compile(r"CPA [0-9a-f]+: unexpected level \d+"),
    re.compile(r"CPA lookup of [0-9a-f]+ failed"),
    re.compile(r"CPA reverting failed: -?\d+"),
    re.compile(r"CPA \w+ \d+ but expected \d+"),
    CPA_NO_BITMAP,
)
CPA_PTE_ERRORS: tuple[re.Pattern[str], ...] = (
    re.compile(r"[0-9a-f]+ level \d+ but not PSE [0-9a-f]+"),
)
# The first characters of every line this tracker looks at.
_FIRST_CHARS = frozenset("C 4oNW0123456789abcdef")
# The WARN of a failed pass, when its message line was lost: "... cpa-test.c:231
# pageattr_test+0x..", "... cpa-test.c:243 at pageattr_test+0x.., CPU#0: ..." (6.19).
CPA_WARNING = re.compile(
    r"WARNING: .*\b(?:cpa-test|pageattr-test)\.c:\d+ (?:at )?pageattr_test\b")


WARNING_FIRST = "NOT PASSED line not seen; the self-test's WARNING was"


class SelftestTracker:
    """Follows the self-test passes of one boot."""

    def __init__(self, boot: Boot) -> None:
        self.boot = boot
        self._open: CpaSelftest | None = None
        self._last_failed: CpaSelftest | None = None

    def observe(self, line: Line) -> tuple[bool, CpaSelftest | None]:
        """(line is a normal self-test line, pass that just became final)."""
        text = line.text
        first = text[:1]
        if first not in _FIRST_CHARS:
            return False, None
        if first == " " and not text.lstrip().startswith("4k "):
            return False, None
        if first == "C" and (not text.startswith("CPA ") or text.startswith("CPA  ")):
            return False, None  # not the self-test's, or the CPA_DEBUG flood
        pass_ = self._open
        if pass_ is not None and pass_.caller is not None and line.caller is not None \
                and line.caller != pass_.caller:
            return False, None
        if first == "C":
            if CPA_SELFTEST_START.match(text):
                done = self._close()
                self._start(line, "current")
                return True, done
            if text.startswith("CPA mapping "):
                return self._split(line), None
            if CPA_OLD_PASSED.match(text):
                return True, self._finish(line, "2.6", "pass")
            if CPA_OLD_NOT_PASSED.match(text):
                return False, self._finish(line, "2.6", "fail")
        if first in " 4":
            if self._split(line):
                return True, None
            return False, None
        if first == "o" and pass_ is not None and CPA_OK.match(text):
            if pass_.errors:
                return True, None
            if len(pass_.splits) != 3:
                pass_.notes.append(f"{len(pass_.splits)} of 3 split lines seen before ok.")
            return True, self._finish(line, pass_.format, "pass")
        if first == "N" and CPA_NOT_PASSED.match(text):
            last = self._last_failed
            if last is not None and last.notes and last.notes[-1] == WARNING_FIRST \
                    and line.number - last.last_line <= 5:
                # The message of the WARNING just seen: the reworked x86 WARN
                # (late 2025) prints it after the WARNING line.
                last.notes.pop()
                last.last_line = line.number
                return False, None
            return False, self._finish(line, "current", "fail")
        if first == "W" and CPA_WARNING.match(text):
            last = self._last_failed
            if last is not None and line.number - last.last_line <= 5:
                return False, None  # the WARN of the NOT PASSED line just seen
            pass_ = self._ensure(line, "current")
            pass_.notes.append(WARNING_FIRST)
            return False, self._finish(line, "current", "fail")
        for pattern in (CPA_ERRORS if first == "C" else CPA_PTE_ERRORS):
            if pattern.match(text):
                pass_ = self._ensure(line, "current")
                pass_.errors.append(SelftestError(line.number, text.strip()))
                pass_.result = "fail"
                pass_.last_line = line.number
                if pattern is CPA_NO_BITMAP:
                    # pageattr_test() returns -ENOMEM: no split lines, no WARN.
                    return False, self._finish(line, pass_.format, "fail")
                return True, None
        return False, None

    def close(self) -> CpaSelftest | None:
        """The boot ended: a pass with errors is final; one without stays incomplete."""
        return self._close()

    def _start(self, line: Line, fmt: str) -> CpaSelftest:
        pass_ = CpaSelftest(first_line=line.number, last_line=line.number, format=fmt,
                            caller=line.caller)
        self.boot.cpa_selftest.append(pass_)
        self._open = pass_
        return pass_

    def _ensure(self, line: Line, fmt: str) -> CpaSelftest:
        if self._open is not None:
            return self._open
        pass_ = self._start(line, fmt)
        pass_.notes.append("no 'CPA self-test:' line before this pass (a later pass "
                           "prints only its errors, or the log starts mid-pass)")
        return pass_

    def _split(self, line: Line) -> bool:
        m = CPA_SPLIT.match(line.text)
        if m is None:
            return False
        old = m.group("old") is not None
        pass_ = self._open
        if pass_ is None:
            pass_ = self._start(line, "2.6" if old else "current")
            if not old:
                pass_.notes.append("no 'CPA self-test:' line before the split lines")
        gb, miss = m.group("gb"), m.group("miss")
        pass_.splits.append(Split(
            line=line.number,
            pages_4k=int(m.group("k4")),
            large=int(m.group("large")),
            gb=int(gb) if gb is not None else None,
            x=int(m.group("x")),
            x_range=(int(m.group("xa"), 16), int(m.group("xb"), 16)),
            miss=int(miss) if miss is not None else None,
        ))
        pass_.last_line = line.number
        return True

    def _finish(self, line: Line, fmt: str, result: str) -> CpaSelftest:
        pass_ = self._ensure(line, fmt)
        if pass_.errors:
            result = "fail"
        pass_.result = result
        pass_.last_line = line.number
        self._open = None
        if result == "fail":
            self._last_failed = pass_
        return pass_

    def _close(self) -> CpaSelftest | None:
        pass_ = self._open
        self._open = None
        if pass_ is not None and pass_.result == "fail":
            return pass_
        return None
