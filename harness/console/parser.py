"""The console parser: a push-driven state machine over the line stream.

The live runner feeds it serial output as it arrives, so unlike KUnit's
pull-driven parser it cannot peek ahead: every stage is a small state machine
that takes one `Line` at a time and says what the line completed. The stages:
boot splitting (here), boot facts (boots.py), the CPA self-test (selftest.py)
and failure reports (reports.py). Problems in the input are recorded, never
raised.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from harness.console.boots import (
    CLOCK_RESTART_BELOW,
    CLOCK_RESTART_GAP,
    COMMAND_LINE,
    GB_PAGES,
    WX_CHECKED,
    BootFacts,
    banner_version,
    end_of_boot,
)
from harness.console.headers import CUT_HERE, match_header
from harness.console.lines import MAX_LINE, Line, LineSplitter, strip_prefix
from harness.console.model import (
    Analysis,
    Boot,
    BootEnded,
    BootStarted,
    Event,
    Failure,
    FailureFound,
    SelftestDone,
)
from harness.console.reports import ReportAssembler
from harness.console.selftest import CPA_SELFTEST_START, CPA_SPLIT, SelftestTracker
from harness.errors import UserError

READ_CHUNK = 1 << 20

# A shell prompt still waiting for its newline when the kernel printed: without
# printk timestamps, "/ # BUG: soft lockup ..." is one line.
SHELL_PROMPT = re.compile(r"(?:[^\s#$]{0,40} ?[#$]|\S{1,40} login:) (?=\S)")

# Messages that are kernel output even without a printk prefix.
_KERNEL_FACTS = (CPA_SELFTEST_START, CPA_SPLIT, COMMAND_LINE, GB_PAGES, WX_CHECKED)


def is_kernel_output(line: Line) -> bool:
    """Certainly kernel output: a printk prefix, or a message only the kernel prints."""
    if line.prefixed:
        return True
    text = line.text
    if match_header(text) is not None:
        return True
    return any(p.match(text) for p in _KERNEL_FACTS)


def unglue_prompt(line: Line) -> Line:
    """The kernel message after a shell prompt on the same line, if it is a report's."""
    m = SHELL_PROMPT.match(line.text)
    if m is None:
        return line
    rest = line.text[m.end():]
    if CUT_HERE.match(rest) or match_header(rest) is not None:
        return line._replace(text=rest)
    return line


class ConsoleParser:
    """Feed it console output in any pieces; read boots, passes and failures.

    `feed()` and `flush()` return the events the input completed; `finish()`
    ends the log and returns the Analysis (its own events are in
    `finish_events`). `analysis` is the live Analysis at any time.
    """

    def __init__(self) -> None:
        self.analysis = Analysis()
        self.finish_events: list[Event] = []
        self._splitter = LineSplitter()
        self._events: list[Event] = []
        self._boot: Boot | None = None
        self._open = False
        self._facts: BootFacts | None = None
        self._selftest: SelftestTracker | None = None
        self._reports: ReportAssembler | None = None
        self._had_timestamps = False
        self._last_ts: float | None = None
        self._finished = False
        self._cut_lines = 0
        # `** N printk messages dropped **`: how many, how often, first line.
        self._dropped = (0, 0, 0)

    def feed(self, chunk: bytes | bytearray | str) -> list[Event]:
        if self._finished:
            raise RuntimeError("ConsoleParser.feed() after finish()")
        self._events = []
        for number, text, truncated in self._splitter.feed(chunk):
            if truncated:
                self._cut_lines += 1
            self._line(strip_prefix(number, text, truncated))
        self.analysis.lines = self._splitter.number
        return self._events

    def flush(self) -> list[Event]:
        """Complete the reports still open (the console went quiet); boots carry on."""
        self._events = []
        if self._boot is not None and self._reports is not None:
            self._failures(self._reports.close_all("flush"))
        return self._events

    def finish(self) -> Analysis:
        if self._finished:
            return self.analysis
        self._events = []
        for number, text, truncated in self._splitter.finish():
            if truncated:
                self._cut_lines += 1
            self._line(strip_prefix(number, text, truncated))
        self.analysis.lines = self._splitter.number
        if self._cut_lines:
            self.analysis.notes.append(
                f"{self._cut_lines} lines longer than {MAX_LINE} characters were cut")
        dropped, times, first = self._dropped
        if times:
            where = f"at line {first}" if times == 1 else f"{times} times, first at line {first}"
            self.analysis.notes.append(
                f"the console dropped {dropped} printk messages ({where}): reports around "
                "there may be incomplete")
        if self._boot is not None:
            if self._open:
                self._end_boot("end-of-log", None)
            elif self._reports is not None:
                self._failures(self._reports.close_all("end-of-log"))
        self._finished = True
        self.finish_events = self._events
        return self.analysis

    # One line.

    def _line(self, line: Line) -> None:
        if line.marker is not None:
            self._console_marker(line)
            if not line.text:
                return
        if not line.prefixed:
            line = unglue_prompt(line)
        boot = self._boot
        version = None
        if line.text.startswith("Linux version "):
            version = banner_version(line, boot if self._open else None, self._had_timestamps)
        ts, last = line.timestamp, self._last_ts
        if version is not None:
            self._start_boot(line, version, line.text.strip())
        elif (boot is not None and ts is not None and last is not None
              and ts < CLOCK_RESTART_BELOW and last - ts > CLOCK_RESTART_GAP):
            # The printk clock started again: a new kernel that printed no banner.
            self._start_boot(line, None, None)
        elif not self._open:
            # After a panic the same kernel may still print (other CPUs); after a
            # reboot or power-off message it prints its last lines ("reboot:
            # machine restart") on the same printk clock. Neither is a new boot.
            same_clock = ts is not None and last is not None and ts >= last
            if boot is None or (boot.ended_by != "panic" and not same_clock):
                if not is_kernel_output(line):
                    return
                self._start_boot(line, None, None)
            else:
                assert self._reports is not None
                self._failures(self._reports.observe(line))
                return
        self._in_boot(line)

    def _console_marker(self, line: Line) -> None:
        """A line the console printed of its own (lines.CONSOLE_MARKER): never part of
        a report, never its end."""
        if line.marker == "dropped":
            dropped, times, first = self._dropped
            self._dropped = (dropped + line.dropped, times + 1, first or line.number)
            if self._reports is not None:
                self._reports.lost()
        elif self._reports is not None:
            self._reports.replay()

    def _in_boot(self, line: Line) -> None:
        boot, facts, selftest, reports = self._boot, self._facts, self._selftest, self._reports
        assert boot is not None and facts is not None and selftest is not None
        assert reports is not None
        if line.timestamp is not None:
            self._had_timestamps = True
            self._last_ts = line.timestamp
        boot.last_line = line.number
        normal = facts.observe(line)
        consumed, done = selftest.observe(line)
        if done is not None:
            self._events.append(SelftestDone(boot.index, done))
        self._failures(reports.observe(line, normal or consumed))
        how = end_of_boot(line.text, boot.panic is not None)
        if how is not None:
            self._end_boot(how, line)

    def _start_boot(self, line: Line, version: str | None, banner: str | None) -> None:
        if self._boot is not None:
            if self._open:
                self._end_boot("reset", None)
            elif self._reports is not None:
                self._failures(self._reports.close_all("boot-end"))
        boot = Boot(index=len(self.analysis.boots), first_line=line.number,
                    last_line=line.number, kernel=version, banner=banner)
        self.analysis.boots.append(boot)
        self._boot = boot
        self._open = True
        self._facts = BootFacts(boot)
        self._selftest = SelftestTracker(boot)
        self._reports = ReportAssembler(boot)
        self._had_timestamps = line.timestamp is not None
        self._last_ts = line.timestamp
        self._events.append(BootStarted(boot.index))

    def _end_boot(self, how: str, line: Line | None) -> None:
        boot = self._boot
        assert boot is not None and self._reports is not None and self._selftest is not None
        self._failures(self._reports.close_all("end-of-log" if how == "end-of-log"
                                               else "boot-end"))
        done = self._selftest.close()
        if done is not None:
            self._events.append(SelftestDone(boot.index, done))
        if how in ("reset", "end-of-log") and boot.panic is not None:
            how = "panic"
        boot.ended_by = how
        if line is not None:
            boot.last_line = line.number
        self._open = False
        self._events.append(BootEnded(boot.index, how))

    def _failures(self, failures: list[Failure]) -> None:
        boot = self._boot
        assert boot is not None
        for failure in failures:
            self._events.append(FailureFound(boot.index, failure))


def parse_path(path: str | os.PathLike[str], vmlinux: str | os.PathLike[str] | None = None
               ) -> Analysis:
    """Parse a saved console log or dmesg file, streaming it in chunks."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p} is a directory", "give the path of a console log file")
    parser = ConsoleParser()
    try:
        with p.open("rb") as f:
            while chunk := f.read(READ_CHUNK):
                parser.feed(chunk)
    except FileNotFoundError:
        raise UserError(f"{p}: no such file", "check the path of the console log") from None
    except OSError as e:
        raise UserError(f"{p}: cannot read: {e.strerror or e}",
                        "check the file's permissions") from None
    analysis = parser.finish()
    if vmlinux is not None:
        from harness.console.symbolize import symbolize
        symbolize(analysis, vmlinux)
    return analysis
