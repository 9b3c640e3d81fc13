"""Failure reports: from a header line to a complete, titled Failure.

A report opens at a header (headers.py), takes the lines printed just before
it that belong to it (`cut here` and a WARN message, the opening `=====`),
collects its own lines and call trace, and is complete at its end marker, at
the first line after its call trace, at a line that cannot belong to it, or
when the live runner flushes. With printk caller ids (`[    T1]`, `[  C0]`),
each caller has its own open report and other callers' lines never enter it.
Lines from the ignore list and lines the boot and self-test trackers
recognise as normal messages are left out of reports.

A panic that an earlier report caused (`Fatal exception` after an Oops,
`panic_on_warn set` after a WARNING, ...) is not a failure of its own: the
boot records it as its panic, `caused_by` that report.

An nbcon console that another context took over in the middle of a record
prints `** replaying previous printk message **` and the whole record again:
the cut copy before it (a partial header, a cut call-trace line) is taken
back when the next line turns out to be its full version.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import replace
from typing import NamedTuple

from harness.console.headers import (
    CUT_HERE,
    END_TRACE,
    INLINE_FRAME,
    PANIC_END,
    PANIC_REBOOTING,
    PRELUDE_BODY,
    RAW_ADDRESS_FRAME,
    REGISTER_LINE,
    RIP_LINE,
    RULE_LINE,
    TASK_INFO,
    TRACE_FRAGMENT,
    TRACE_FRAME,
    TRACE_MARKER,
    TRACE_START,
    UNWIND_DUMP,
    WARNING_PID,
    End,
    HeaderSpec,
    Pre,
    match_header,
)
from harness.console.ignore import is_flood, is_ignored
from harness.console.lines import Line
from harness.console.model import Boot, Failure, Frame, Panic
from harness.console.titles import CRASH_KINDS, ReportFacts, kind_and_title

# Report lines kept per failure; the rest are counted in report_lines_dropped.
MAX_REPORT_LINES = 300
# A report that grows this long without ending is closed.
MAX_REPORT_TOTAL = 5000
MAX_FRAMES = 128
# How a symbolizer marks a function inlined into the next line's.
INLINED = "[inline]"
# Completions that can come in the middle of a call trace and cut it short.
CUT_SHORT = frozenset({"end-of-log", "boot-end", "line-limit"})
# Failures per boot kept with their whole report; later ones keep their header.
MAX_FULL_FAILURES = 200
# A failure reported again and again keeps the lines of this many repeats (all are counted).
MAX_REPEAT_LINES = 100
# A line printed this many seconds after the report's last line is not part of it.
TIME_GAP = 2.0
LOOKBACK = 48
# A `cut here` line counts for a header at most this many lines before it.
CUT_HERE_WINDOW = 12
PRELUDE_MAX = 10
# How late a header a flushed report awaited may still arrive.
FLUSHED_WINDOW = 50

# The message of a WARN_ONCE that can come without a `cut here` line before it.
WARN_MESSAGE_NO_CUT = re.compile(r"CPA detected W\^X violation: ")

OOPS_CAUSES = CRASH_KINDS | {"list_corruption", "kasan"}
# Panics that finish the report just before them.
PANIC_CONSEQUENCES: tuple[tuple[re.Pattern[str], frozenset[str] | None, int], ...] = (
    (re.compile(r"Fatal exception(?: in interrupt)?\s*$"), OOPS_CAUSES, 300),
    (re.compile(r"Attempted to kill init!|Attempted to kill the idle task!"
                r"|Aiee, killing interrupt handler!|Oopsed too often|Oops failed to kill thread"),
     OOPS_CAUSES, 300),
    (re.compile(r".*(?:panic_on_warn|panic_on_taint|kasan\.fault=panic\w*|kmsan\.panic"
                r"|\w+\.fault=panic) set"), None, 300),
    (re.compile(r".*system warned too often"), None, 300),
    (re.compile(r"softlockup: hung tasks"), frozenset({"soft_lockup"}), 2000),
    (re.compile(r"Hard LOCKUP"), frozenset({"hard_lockup"}), 2000),
    (re.compile(r"hung_task: blocked tasks"), frozenset({"hung_task"}), 10000),
    (re.compile(r"RCU Stall"), frozenset({"rcu_stall"}), 10000),
    (re.compile(r"Out of memory.*panic_on_oom|System is deadlocked on memory"),
     frozenset({"oom"}), 50000),
)

HEAD, TRACE, AFTER = 0, 1, 2
# Lines after a WARNING line that can be its WARN() message: the x86 WARN
# reworked in late 2025 prints the message after the WARNING line, as kernels
# before 4.x did.
LATE_MESSAGE_LINES = 2


def warning_pid(match: re.Match[str]) -> str | None:
    m = WARNING_PID.match(match.group(0))
    return (m.group("pid") or m.group("pid2")) if m is not None else None


def parse_frame(m: re.Match[str], reliable: bool, context: str | None) -> Frame:
    groups = m.groupdict()
    return Frame(
        function=m.group("func"),
        offset=int(m.group("offset"), 16),
        size=int(m.group("size"), 16),
        module=m.group("module"),
        reliable=reliable,
        context=context,
        file=groups.get("file"),
        line=int(groups["line"]) if groups.get("line") else None,
    )


class _Mark(NamedTuple):
    headers: int
    absorbs: frozenset[str]
    end: End
    pre_trace_limit: int
    trace_start: re.Pattern[str] | None
    phase: int
    head_count: int
    prelude_count: int
    frames: int
    stack: tuple[str, ...]
    task_stack_done: bool
    rip: Frame | None
    lines: int
    dropped: int
    total: int
    last_line: int
    last_ts: float | None
    warning_at: int | None
    pid: str | None
    mixed: bool


class OpenReport:
    """A report being collected."""

    def __init__(self, spec: HeaderSpec, match: re.Match[str], line: Line,
                 pre_lines: list[Line]) -> None:
        self.headers: list[tuple[str, re.Match[str]]] = [(spec.name, match)]
        self.end = spec.end
        self.absorbs = spec.absorbs
        self.pre_trace_limit = spec.pre_trace_limit
        self.trace_start = spec.trace_start
        self.caller = line.caller
        self.header_line = line.number
        self.first_line = pre_lines[0].number if pre_lines else line.number
        self.last_line = line.number
        self.last_ts = line.timestamp
        self.lines: list[str] = []
        self.dropped = 0
        self.total = 0
        self.pre_lines = pre_lines
        self.message = [
            p.text for p in pre_lines if not CUT_HERE.match(p.text) and not RULE_LINE.match(p.text)
        ]
        for p in pre_lines:
            self._add(p)
        # The WARNING line's index in `lines` and the task it names: a `CPU: ...
        # PID:` line of another task means another report's lines are mixed in.
        self.warning_at: int | None = None
        self.pid: str | None = None
        self.mixed = False
        # How many frames the trace had when the console lost records inside it.
        self.lost_after: int | None = None
        if spec.name == "warning":
            self._warning(match)
        self._add(line)
        self.phase = TRACE if spec.trace_from_header else HEAD
        self.head_count = 0
        self.prelude_count = 0
        self.frames: list[Frame] = []
        self.stack: tuple[str, ...] = ()
        self._task_stack_done = False
        self.rip: Frame | None = None

    def absorb(self, spec: HeaderSpec, match: re.Match[str], line: Line) -> None:
        """A header this report announced: the report carries on under it."""
        self.headers.append((spec.name, match))
        self.absorbs = (self.absorbs - {spec.name}) | spec.absorbs
        if spec.name == "warning":
            self._warning(match)
        if spec.end is not End.PRELUDE:
            # An announced header takes over; a late message line does not.
            self.end = spec.end
            self.pre_trace_limit = spec.pre_trace_limit
        self.trace_start = spec.trace_start or self.trace_start
        if spec.trace_from_header:
            self.phase = TRACE
        self._add(line)

    def restate(self, match: re.Match[str], line: Line) -> None:
        """The last header again, as the next line of a symbolizer's expansion."""
        self.headers[-1] = (self.headers[-1][0], match)
        if self.headers[-1][0] == "warning":
            self._warning(match)
        self._add(line)

    def feed(self, line: Line) -> tuple[str | None, bool]:
        """Take one line: (completion reason or None, whether the line is the report's)."""
        text = line.text
        if self.pid is not None and text[:4] == "CPU:":
            info = TASK_INFO.match(text)
            if info is not None and info.group("pid") != self.pid:
                self.mixed = True
        if self.end is End.PRELUDE:
            if self.prelude_count < PRELUDE_MAX and PRELUDE_BODY.match(text):
                self.prelude_count += 1
                self._scan_rip(text)
                self._add(line)
                return None, True
            return "next-line", False
        if self.phase == HEAD:
            if TRACE_START.match(text) or (self.trace_start and self.trace_start.match(text)):
                self.phase = TRACE
            else:
                self._scan_rip(text)
                self.head_count += 1
                if self.head_count > self.pre_trace_limit:
                    return "line-limit", False
        elif self.phase == TRACE:
            if self._trace_line(text):
                self._add(line)
                if not self._task_stack_done:
                    return None, True
                # " </TASK>" closes the outermost stack: the trace is complete.
                self.phase = AFTER
                return ("trace-end", True) if self.end is End.TRACE else (None, True)
            if TRACE_FRAGMENT.match(text):
                # A cut frame: the next line says whether the trace goes on.
                self._add(line)
                return None, True
            self.phase = AFTER
            if self.end is End.TRACE:
                return "trace-end", False
        if self.end in (End.MARKER, End.MARKER_OR_RULE) and END_TRACE.match(text):
            self._add(line)
            return "end-marker", True
        if self.end in (End.RULE, End.MARKER_OR_RULE) and RULE_LINE.match(text):
            self._add(line)
            return "end-marker", True
        if self.end is End.PANIC and (PANIC_END.match(text) or PANIC_REBOOTING.match(text)):
            self._add(line)
            return "end-marker", True
        self._add(line)
        if self.total >= MAX_REPORT_TOTAL:
            return "line-limit", True
        return None, True

    def mark(self) -> _Mark:
        """The state before a line, for rewind(); cheap, as it is taken for every line."""
        return _Mark(len(self.headers), self.absorbs, self.end, self.pre_trace_limit,
                     self.trace_start, self.phase, self.head_count, self.prelude_count,
                     len(self.frames), self.stack, self._task_stack_done, self.rip,
                     len(self.lines), self.dropped, self.total, self.last_line, self.last_ts,
                     self.warning_at, self.pid, self.mixed)

    def rewind(self, mark: _Mark) -> None:
        """Take back the lines fed since mark() (a cut line the console prints again)."""
        del self.headers[mark.headers:]
        del self.frames[mark.frames:]
        del self.lines[mark.lines:]
        (_, self.absorbs, self.end, self.pre_trace_limit, self.trace_start, self.phase,
         self.head_count, self.prelude_count, _, self.stack, self._task_stack_done, self.rip,
         _, self.dropped, self.total, self.last_line, self.last_ts, self.warning_at, self.pid,
         self.mixed) = mark

    def failure(self, reason: str, keep_report: bool) -> Failure:
        late: list[str] = []
        if self.warning_at is not None:
            late = self.lines[self.warning_at + 1:self.warning_at + 1 + LATE_MESSAGE_LINES]
        cut = reason in CUT_SHORT and self.phase != AFTER
        facts = ReportFacts(self.headers, self.message, self.lines, self.frames, self.rip,
                            late_message=late, mixed=self.mixed, cut=cut,
                            lost_after=self.lost_after)
        kind, title = kind_and_title(facts)
        report = tuple(self.lines) if keep_report else tuple(self.lines[:1])
        return Failure(
            kind=kind,
            title=title,
            line=self.header_line,
            first_line=self.first_line,
            last_line=self.last_line,
            report=report,
            frames=tuple(self.frames) if keep_report else (),
            rip=self.rip,
            caller=self.caller,
            completed_by=reason,
            report_lines_dropped=self.dropped + len(self.lines) - len(report),
        )

    def _warning(self, match: re.Match[str]) -> None:
        self.warning_at = len(self.lines)
        self.pid = warning_pid(match)

    def _add(self, line: Line) -> None:
        self.total += 1
        self.last_line = line.number
        if line.timestamp is not None:
            self.last_ts = line.timestamp
        if len(self.lines) < MAX_REPORT_LINES:
            self.lines.append(line.text)
        else:
            self.dropped += 1

    def _scan_rip(self, text: str) -> None:
        if self.rip is None and text[:1] in "REI":
            m = RIP_LINE.match(text)
            if m is not None:
                self.rip = parse_frame(m, True, None)

    def _trace_line(self, text: str) -> bool:
        m = TRACE_FRAME.match(text)
        if m is not None:
            if len(self.frames) < MAX_FRAMES:
                context = self.stack[-1] if self.stack else None
                self.frames.append(parse_frame(m, m.group("unreliable") is None, context))
            return True
        inline = INLINE_FRAME.match(text)
        if inline is not None:
            if len(self.frames) < MAX_FRAMES:
                self.frames.append(Frame(inline.group("func"), 0, 0, reliable=True,
                                         context=self.stack[-1] if self.stack else None,
                                         file=inline.group("file"),
                                         line=int(inline.group("line")), inline=True))
            return True
        marker = TRACE_MARKER.match(text)
        if marker is not None:
            name = marker.group("name")
            if marker.group("close"):
                self.stack = self.stack[:-1]
                self._task_stack_done = name == "TASK" and not self.stack
            elif name in ("EOI", "EOE"):
                self.stack = self.stack[:-1]
            elif len(self.stack) < 16:
                self.stack = (*self.stack, name)
            return True
        return (REGISTER_LINE.match(text) is not None or RAW_ADDRESS_FRAME.match(text) is not None
                or UNWIND_DUMP.match(text) is not None)


# What one line did to the reports: (line, the report open in its context before
# it and that report's mark(), the report it opened, the boot's panic before it,
# whether it went to the lookback).
_Effect = tuple[Line, OpenReport | None, _Mark | None, OpenReport | None, Panic | None, bool]


class ReportAssembler:
    """Finds the failures of one boot, line by line."""

    def __init__(self, boot: Boot) -> None:
        self.boot = boot
        self._open: dict[str | None, OpenReport] = {}
        self._lookback: deque[Line] = deque(maxlen=LOOKBACK)
        # Reports flush() completed while they still awaited a header: that
        # header, arriving late, must not become a second failure.
        self._flushed: dict[str | None, tuple[frozenset[str], int]] = {}
        self._last: _Effect | None = None
        self._replay: _Effect | None = None

    def replay(self) -> None:
        """The console printed `** replaying previous printk message **`.

        The record it cut is printed again next; the line before the marker is
        then a cut copy of it, whose effect the next line takes back.
        """
        self._replay = self._last

    def observe(self, line: Line, normal: bool = False) -> list[Failure]:
        """Take one line; return the failures it completed, in order."""
        replayed, self._replay = self._replay, None
        if replayed is not None and replayed[0].raw and line.raw.startswith(replayed[0].raw):
            self._take_back(replayed)
        rep = self._open.get(line.caller)
        panic = self.boot.panic
        mark = rep.mark() if rep is not None else None
        done = self._observe(line, normal)
        opened = self._open.get(line.caller)
        self._last = (line, rep, mark, opened if opened is not rep else None, panic,
                      bool(self._lookback) and self._lookback[-1] is line)
        return done

    def _take_back(self, effect: _Effect) -> None:
        """Undo what a cut line did, as far as it did not complete a report."""
        line, rep, mark, opened, panic, in_lookback = effect
        if in_lookback and self._lookback and self._lookback[-1] is line:
            self._lookback.pop()
        if opened is not None:
            if self._open.get(opened.caller) is opened:
                # A cut header: its full copy opens the report again, with the
                # lines before it.
                del self._open[opened.caller]
                self._lookback.extend(opened.pre_lines)
        elif rep is not None and mark is not None and self._open.get(rep.caller) is rep:
            rep.rewind(mark)
        self.boot.panic = panic

    def _observe(self, line: Line, normal: bool) -> list[Failure]:
        return [f for f in self._observe_all(line, normal) if f is not None]

    def _observe_all(self, line: Line, normal: bool) -> list[Failure | None]:
        done: list[Failure | None] = []
        text = line.text
        rep = self._open.get(line.caller)
        found = None if normal else match_header(text)
        if found is not None and (is_ignored(text) or (
                found[0].name == "panic_end" and self.boot.panic is not None)):
            found = None
        if rep is not None and line.timestamp is not None and rep.last_ts is not None \
                and line.timestamp - rep.last_ts > TIME_GAP and not (
                    # A message printed before its header (WARN's own text) is
                    # that header's, however late it comes: the printk of the
                    # message may have spent seconds printing others' lines.
                    rep.end is End.PRELUDE and found is not None
                    and found[0].name in rep.absorbs):
            done.append(self._close(rep, "next-line"))
            rep = None
        if found is not None:
            spec, m = found
            flushed = self._flushed.pop(line.caller, None)
            if rep is None and flushed is not None and spec.name in flushed[0] \
                    and line.number - flushed[1] <= FLUSHED_WINDOW:
                return done
            if rep is not None and rep.headers[-1][0] == spec.name \
                    and rep.headers[-1][1].string.rstrip().endswith(INLINED):
                # A symbolizer's expansion of one header line, an inlined
                # function per line (syzbot's reports): the last line is the one
                # the kernel printed, with the address.
                rep.restate(m, line)
                return done
            if rep is not None and spec.name in rep.absorbs:
                rep.absorb(spec, m, line)
                if rep.end is End.SINGLE:
                    done.append(self._close(rep, "header"))
                return done
            if spec.interjects:
                # A one-line report of its own; the report open here goes on.
                if not (spec.follows and self._follows(spec, line)):
                    done.append(self._close(OpenReport(spec, m, line, []), "header"))
                return done
            if rep is not None:
                done.append(self._close(rep, "next-line"))
            if spec.name in ("panic", "panic_end"):
                rep = self._panic(spec, m, line)
                if rep is not None and spec.end is End.SINGLE:
                    done.append(self._close(rep, "header"))
            elif not (spec.follows and self._follows(spec, line)):
                rep = self._start(spec, m, line)
                if spec.end is End.SINGLE:
                    done.append(self._close(rep, "header"))
            return done
        if rep is None:
            if not is_flood(text):
                self._lookback.append(line)
            return done
        ignored = normal or is_ignored(text)
        if not ignored and rep.end is not End.PRELUDE:
            # A new report's first line ends one that is still open.
            if (CUT_HERE.match(text) or (RULE_LINE.match(text) and rep.end not in (
                    End.RULE, End.MARKER_OR_RULE))):
                done.append(self._close(rep, "next-line"))
                rep = None
        if rep is None or ignored:
            if not is_flood(text):
                self._lookback.append(line)
            return done
        reason, included = rep.feed(line)
        if not included:
            self._lookback.append(line)
        if reason is not None:
            done.append(self._close(rep, reason))
        return done

    def lost(self) -> None:
        """The console printed `** N printk messages dropped **`: every report open
        in its call trace may have lost frames."""
        for rep in self._open.values():
            if rep.phase == TRACE and rep.lost_after is None:
                rep.lost_after = len(rep.frames)

    def close_all(self, reason: str) -> list[Failure]:
        closed = [self._close(rep, reason) for rep in list(self._open.values())]
        return [f for f in closed if f is not None]

    def _start(self, spec: HeaderSpec, m: re.Match[str], line: Line) -> OpenReport:
        rep = OpenReport(spec, m, line, self._pre_lines(spec, line))
        # Lines before a report are not lines before the next one of its caller.
        self._lookback = deque((p for p in self._lookback if p.caller != line.caller),
                               maxlen=LOOKBACK)
        self._open[line.caller] = rep
        return rep

    def _close(self, rep: OpenReport, reason: str) -> Failure | None:
        """The report is complete: a new failure (returned), or the same failure
        once more in this boot (a hung task every 120 s, a soft lockup that
        keeps firing), counted on the first one, and None."""
        if self._open.get(rep.caller) is rep:
            del self._open[rep.caller]
        if reason == "flush" and rep.absorbs:
            self._flushed[rep.caller] = (frozenset(rep.absorbs), rep.last_line)
        failure = rep.failure(reason, keep_report=len(self.boot.failures) < MAX_FULL_FAILURES)
        self.boot.last_line = max(self.boot.last_line, failure.last_line)
        for n, seen in enumerate(self.boot.failures):
            if (seen.kind, seen.title) == (failure.kind, failure.title):
                lines = seen.repeat_lines
                if len(lines) < MAX_REPEAT_LINES:
                    lines = (*lines, failure.line)
                self.boot.failures[n] = replace(seen, count=seen.count + 1, repeat_lines=lines)
                return None
        self.boot.failures.append(failure)
        return failure

    def _pre_lines(self, spec: HeaderSpec, line: Line) -> list[Line]:
        if spec.pre is Pre.NONE:
            return []
        mine = [
            p for p in self._lookback
            if p.caller == line.caller and line.number - p.number <= 4 * CUT_HERE_WINDOW
            and (p.timestamp is None or line.timestamp is None
                 or line.timestamp - p.timestamp <= TIME_GAP)
        ]
        if spec.pre in (Pre.CUT_HERE, Pre.CUT_OR_RULE):
            for i in range(len(mine) - 1, max(-1, len(mine) - 1 - CUT_HERE_WINDOW), -1):
                if CUT_HERE.match(mine[i].text):
                    return [p for p in mine[i:] if not is_flood(p.text)]
        quiet = [p for p in mine if not is_flood(p.text)]
        if not quiet:
            return []
        last = quiet[-1]
        if spec.name == "warning" and WARN_MESSAGE_NO_CUT.match(last.text):
            return [last]
        if spec.pre in (Pre.RULE, Pre.CUT_OR_RULE) and RULE_LINE.match(last.text):
            return [last]
        return []

    def _follows(self, spec: HeaderSpec, line: Line) -> bool:
        for failure in reversed(self.boot.failures):
            if failure.kind in spec.follows:
                window = spec.follow_window
                return window is None or line.number - failure.last_line <= window
        return False

    def _panic(self, spec: HeaderSpec, m: re.Match[str], line: Line) -> OpenReport | None:
        message = m.group("msg").strip()
        cause = self._cause_of_panic(message, line)
        if self.boot.panic is None:
            self.boot.panic = Panic(message, line.number, cause)
        if cause is None:
            return self._start(spec, m, line)
        return None

    def _cause_of_panic(self, message: str, line: Line) -> int | None:
        for pattern, kinds, window in PANIC_CONSEQUENCES:
            if not pattern.match(message):
                continue
            failures = self.boot.failures
            for index in range(len(failures) - 1, max(-1, len(failures) - 4), -1):
                failure = failures[index]
                if line.number - failure.last_line > window:
                    break
                if kinds is None or failure.kind in kinds:
                    return index
            return None
        return None
