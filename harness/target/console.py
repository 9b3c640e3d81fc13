"""The serial line of a target: the kernel's voice, logged and analysed, and a shell on it.

Every byte the machine prints goes, as it arrives, to the serial log and to
the console parser, so a cell can fail the moment a failure's report is
complete. Every wait has a deadline. The line is a pexpect child the target
attaches: QEMU's own terminal today, a console server's connection (telnet,
conserver, IPMI SOL) for a lab box. When the child ends, the target says why
(`ended`, set by the target).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import pexpect

from harness.console import (
    Analysis,
    BootStarted,
    ConsoleParser,
    CpaSelftest,
    Event,
    Failure,
    FailureFound,
    SelftestDone,
)
from harness.errors import HarnessError, InfraError
from harness.target.errors import CellDeadline, Ending, FailureSeen, GuestExited, GuestHang
from harness.target.serial import SerialView, ready_re

# printk lines (PRINTK_TIME is on) that land in the middle of a command's output
KMSG_RE = re.compile(r"^\s*(<\d+>)?\[\s*\d+\.\d+\]")
# A command typed on the serial shell whose start marker does not come back is
# typed again, this many times in all; a guard in the line makes sure it runs once.
TYPE_ATTEMPTS = 3
QUIET_FLUSH = 5.0   # seconds of silence after which a pending report counts as complete
SLICE = 0.5
# The drain thread reads in short slices: leaving draining() waits for the
# slice in progress, and every ssh command leaves it once.
DRAIN_SLICE = 0.05
# Markers are short lines: searching only the newest output keeps a guest that
# prints without end from costing time quadratic in what it printed...
SEARCH_WINDOW = 64 * 1024
# ...and output nobody waits for is dropped from memory beyond this (it is in
# the serial log); a command's output read over the serial console is smaller.
KEEP = 1 << 20
# A kernel that printed within this long of the ready deadline was still running.
RUNNING_WITHIN = 30.0
# A console server that dropped the line is asked again this often...
RECONNECT_EVERY = 1.0
# ...and a connection that lasts this long is taken as made (a client such as
# socat exits at once when the server refuses it)...
RECONNECT_HOLDS = 0.5
# ...for this long, whatever the wait that saw the drop (the drain's waits
# are short): a console server restarting, a network blip.
RECONNECT_FOR = 120.0
# A connection made again is the end of the gap once bytes come through it or
# it stays up this long; one that drops before is part of the same gap.
GAP_SETTLES = 5.0


class _Tee:
    """pexpect's logfile_read: write the raw bytes to the log, feed the parser."""

    def __init__(self, log: IO[bytes], console: Console) -> None:
        self.log = log
        self.console = console

    def write(self, data: bytes) -> None:
        self.console._feed(data)
        try:
            self.log.write(data)
            self.log.flush()
        except OSError as e:
            # Without its log the cell's evidence is gone: end it, say why.
            raise InfraError(f"cannot write the serial log {self.console.serial_log}: "
                             f"{e.strerror}", "free disk space; what was written before is "
                             "intact") from None

    def flush(self) -> None:
        self.log.flush()


class MaybeInGap(InfraError):
    """A wait ran out while the console was disconnected for part of it: what
    it waited for may have come in the gap. Not the kernel's fault."""


def _closed() -> Ending:
    return Ending("", True, "the console connection closed")


class Console:
    """One serial line, from the moment a target attaches it until finish()."""

    def __init__(self, serial_log: Path, nonce: str,
                 is_fatal: Callable[[Failure, str | None], bool] = lambda f, k: True) -> None:
        self.serial_log = serial_log
        self.nonce = nonce          # the first boot's: the harness's markers carry it
        self.parser = ConsoleParser()
        self.is_fatal = is_fatal
        self.failures: list[Failure] = []
        self.pending_fatal: Failure | None = None
        self.child: pexpect.spawn | None = None
        self.ended: Callable[[], Ending] = _closed     # the target's account, once it stops
        # How to connect the line again when it drops while the machine runs on
        # (a console server's connection); None where its end is the machine's
        # (QEMU's own terminal). It returns None once the line must stay closed.
        self.reopen: Callable[[], pexpect.spawn | None] | None = None
        self.gaps: list[tuple[float, float]] = []   # (lost at, seconds) after start
        self.ready_at: float | None = None      # time.monotonic() of the first ready marker
        self._gap: tuple[float, int] | None = None  # (lost at, tries) until it proves itself
        self.dropped_at: float | None = None    # time.monotonic() of the last drop
        self._gap_made = 0.0
        self.started = 0.0
        self.last_output = 0.0
        self.cell_deadline: float | None = None   # time.monotonic() by which all waits end
        self._log: IO[bytes] | None = None
        self._seq = itertools.count(1)
        # The console with kernel records lifted out of the lines they split;
        # waits search it from the cursor, where the last match ended.
        self.view = SerialView()
        self._cursor = 0
        self.before = b""       # what came between the last wait's start and its match
        self.notes: list[str] = []     # what the harness had to do again, for the result
        self.passes_at: list[float] = []    # seconds after start of this boot's self-test passes

    # --- the line ---------------------------------------------------------------

    def open_log(self) -> None:
        """Create the serial log (before the target starts: its first words go there)."""
        self.serial_log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.serial_log, "wb")

    def attach(self, child: pexpect.spawn) -> None:
        """Read the machine's console from `child` from now on."""
        if self._log is None:
            self.open_log()
        assert self._log is not None
        self.child = child
        child.logfile_read = _Tee(self._log, self)
        self.started = self.last_output = time.monotonic()

    def reattach(self, child: pexpect.spawn) -> None:
        """The same line through a new connection: the log and clocks go on."""
        assert self._log is not None
        self.child = child
        child.logfile_read = _Tee(self._log, self)

    def close(self) -> None:
        """Close the line and the log; what the log holds is kept."""
        self._gap_closed()
        try:
            if self.child is not None:
                if self.child.isalive():
                    self.child.terminate(force=True)
                self.child.close(force=True)
        finally:
            if self._log:
                with contextlib.suppress(OSError):     # a full disk: what it holds is kept
                    self._log.close()
                self._log = None

    def send(self, data: bytes) -> None:
        assert self.child is not None
        self.child.send(data)

    def _feed(self, data: bytes) -> None:
        if self._gap is not None:
            self._gap_closed()      # before these bytes, in the log as in time
        self.last_output = time.monotonic()
        self.view.feed(data)
        self._handle(self.parser.feed(data))

    def note(self, text: str) -> None:
        self.notes.append(f"{time.monotonic() - self.started:.1f}s: {text}")

    def flush_parser(self) -> None:
        """The line has gone quiet or closed: a pending report counts as complete."""
        self._handle(self.parser.flush())

    def _handle(self, events: Sequence[Event]) -> None:
        for ev in events:
            if isinstance(ev, BootStarted):
                self.passes_at = []
            elif isinstance(ev, SelftestDone):
                self.passes_at.append(time.monotonic() - self.started)
            if isinstance(ev, FailureFound):
                self.failures.append(ev.failure)
                if self.pending_fatal is None and self.is_fatal(ev.failure, self.kernel()):
                    self.pending_fatal = ev.failure

    # --- what the analysis has seen so far ---------------------------------------

    def kernel(self) -> str | None:
        """The version of the kernel now running, from its banner."""
        boots = self.parser.analysis.boots
        return boots[-1].kernel if boots else None

    def boot_index(self) -> int:
        """The index of the boot now running (kexec adds boots)."""
        return max(0, len(self.parser.analysis.boots) - 1)

    def passes(self) -> list[CpaSelftest]:
        """The current boot's completed self-test passes (passed or failed)."""
        boots = self.parser.analysis.boots
        return [p for p in (boots[-1].cpa_selftest if boots else [])
                if p.result in ("pass", "fail")]

    def failures_after(self, line: int) -> list[Failure]:
        """Every failure reported after console line `line`."""
        return [f for b in self.parser.analysis.boots for f in b.failures if f.line > line]

    # --- waits ------------------------------------------------------------------

    def _check_fatal(self) -> None:
        if self.pending_fatal is not None:
            raise FailureSeen(self.pending_fatal)

    def mark(self) -> int:
        """Where the console is now, for a later wait_for(since=...)."""
        return self.view.end

    def wait_for(self, pattern: re.Pattern[bytes], timeout: float, what: str,
                 since: int | None = None) -> re.Match[bytes]:
        """Wait for `pattern` in a complete line of the console, failing fast on a
        kernel failure. Kernel records that split the line are not in the way
        (harness.target.serial).

        The search starts where the last match ended, or at `since` (a mark()):
        a kernel record that began inside a marker's line comes before that
        line in the view, so what a typed command made the kernel print is
        searched for from before the command was typed."""
        assert self.child is not None
        deadline = time.monotonic() + timeout
        backstop = self.cell_deadline is not None and self.cell_deadline < deadline
        if backstop:
            deadline = self.cell_deadline or deadline
        start = searched = self._cursor if since is None else since
        began = time.monotonic()
        while True:
            self._check_fatal()
            # Markers are single lines: only lines completed since the last
            # look can hold a new match, so a guest printing without end costs
            # each byte one search.
            end = self.view.end
            m = self._search(pattern, start, searched)
            searched = end
            if m is not None:
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                self._handle(self.parser.flush())
                self._check_fatal()
                if backstop:
                    raise CellDeadline(f"the cell's deadline passed while waiting for {what}",
                                       "the host may be overloaded; see the serial log")
                if self.dropped_at is not None and self.dropped_at >= began:
                    # What was awaited may have come while nobody heard it.
                    raise MaybeInGap(f"no {what} within {timeout:.0f}s, and the console "
                                     "connection dropped meanwhile: it may have come in the "
                                     "gap", f"see {self.serial_log} and the console server")
                raise GuestHang(what, timeout)
            try:
                # Read through pexpect so the bytes reach the log, the parser and
                # the view (logfile_read); matching is done on the view.
                self.child.read_nonblocking(65536, timeout=min(SLICE, left))
            except pexpect.TIMEOUT:
                if self._gap is not None and time.monotonic() - self._gap_made > GAP_SETTLES:
                    self._gap_closed()      # a quiet line that stays up is back
                self.view.trim(KEEP)
                if time.monotonic() - self.last_output > QUIET_FLUSH:
                    self._handle(self.parser.flush())
            except pexpect.EOF:
                if self._reconnect():
                    continue
                self._handle(self.parser.flush())
                self.child.close()
                self._check_fatal()
                m = self._search(pattern, start, searched)
                if m is not None:       # in the machine's last words
                    return m
                raise GuestExited(what, self.ended()) from None

    def _reconnect(self) -> bool:
        """The line dropped: connect it again, for RECONNECT_FOR at most (and
        never past the cell's deadline). Whether it is back. The gap is
        recorded once the new connection proves itself (_gap_closed)."""
        if self.reopen is None:
            return False
        assert self.child is not None and self._log is not None
        # A connection that dropped before it proved itself (a console server
        # that accepts, then finds it cannot reach the line yet) is the same gap.
        lost, tries = self._gap or (time.monotonic(), 0)
        self._gap = None
        self.dropped_at = time.monotonic()
        # From the first drop: a server that keeps accepting and dropping is
        # given up on as surely as one that refuses.
        deadline = lost + RECONNECT_FOR
        if self.cell_deadline is not None:
            deadline = min(deadline, self.cell_deadline)
        self.child.close(force=True)
        while time.monotonic() < deadline:
            tries += 1
            reopen = self.reopen
            child = reopen() if reopen is not None else None
            if child is None:       # the target ended it: not the console's doing
                return False
            time.sleep(RECONNECT_HOLDS)
            if self.reopen is None:     # ended meanwhile (aborted): the line stays closed
                child.close(force=True)
                return False
            if child.isalive():
                self._gap = (lost, tries)
                self._gap_made = time.monotonic()
                self.reattach(child)
                return True
            child.close(force=True)
            time.sleep(max(0.0, min(RECONNECT_EVERY, deadline - time.monotonic())))
        return self._gave_up(lost, tries, f"not connected again within "
                                          f"{time.monotonic() - lost:.0f}s")

    def _gave_up(self, lost: float, tries: int, why: str) -> bool:
        self.gaps.append((round(lost - self.started, 1), round(time.monotonic() - lost, 1)))
        text = f"the console connection dropped; {why} ({tries} tries)"
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.write(f"\n[cpa-harness: {text}]\n".encode())
                self._log.flush()
        self.note(text)
        return False

    def _gap_closed(self) -> None:
        """The new connection carried bytes, or stayed up GAP_SETTLES: the gap
        goes into the serial log (not the parser: the harness's words are not
        the kernel's), the notes and `gaps`."""
        if self._gap is None:
            return
        (lost, tries), self._gap = self._gap, None
        gap = self._gap_made - lost
        self.gaps.append((round(lost - self.started, 1), round(gap, 1)))
        text = (f"the console connection dropped; connected again after {gap:.1f}s "
                f"({tries} {'try' if tries == 1 else 'tries'}): what the machine printed "
                "meanwhile is lost")
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.write(f"\n[cpa-harness: {text}]\n".encode())
        # A line the drop cut short ends here, for the parser as for a reader.
        self.view.feed(b"\n")
        self._handle(self.parser.feed(b"\n"))
        self.note(text)

    def _search(self, pattern: re.Pattern[bytes], start: int,
                since: int) -> re.Match[bytes] | None:
        """A match in the lines from `since` on (within the newest SEARCH_WINDOW);
        `before` (from `start`) and the cursor follow it."""
        m = self.view.search(pattern, max(since, self.view.end - SEARCH_WINDOW))
        if m is not None:
            self.before = self.view.between(start, self.view.offset(m, "start"))
            self._cursor = self.view.offset(m)
        return m

    def watch(self, seconds: float) -> None:
        """Keep reading the console for `seconds`, failing fast on a kernel failure."""
        never = re.compile(rb"(?!x)x")
        try:
            self.wait_for(never, seconds, "console output")
        except (GuestHang, MaybeInGap):     # nothing awaited: a drop is only a gap
            pass

    def wait_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Read the console until `done()` holds, e.g. a self-test pass was parsed."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestHang(what, timeout)
            self.watch(min(SLICE, left))

    def wait_ready(self, timeout: float, nonce: str | None = None) -> re.Match[bytes]:
        """The ready marker of the boot with `nonce` (the first boot's if None).

        A guest that never printed it while its kernel kept running (output
        lately, or a self-test pass) has not hung: the harness's own init failed
        it, or the marker was lost. That is an infrastructure error saying what
        was seen, never a hang a good kernel could be blamed for.
        """
        try:
            m = self.wait_for(ready_re(self.nonce if nonce is None else nonce), timeout,
                              "ready marker from the guest's init")
            if self.ready_at is None:   # the kernel under test's own boot, not a kexec trip's
                self.ready_at = time.monotonic()
            return m
        except GuestHang:
            seen = self.kernel_seen()
            if seen is None:
                raise
            raise InfraError(f"no ready marker from the guest's init within {timeout:.0f}s, "
                             f"but the kernel was running ({seen})",
                             f"see {self.serial_log}") from None

    def kernel_seen(self) -> str | None:
        """What shows the kernel running lately ('self-test pass at 31 s, ...'), or None."""
        quiet = time.monotonic() - self.last_output
        if not self.passes_at and quiet > RUNNING_WITHIN:
            return None
        parts = [f"self-test pass at {t:.0f} s" for t in self.passes_at[:3]]
        parts.append(f"last output {quiet:.0f} s ago")
        return ", ".join(parts)

    # --- the serial shell ---------------------------------------------------------

    def type_command(self, command: str, timeout: float = 60.0) -> int:
        """Type `command` on the serial shell and wait until it has started.

        The line prints a begin marker, runs the command, and prints an end
        marker with its exit status. A line whose begin marker does not come
        back (a lost character, a shell not yet reading) is typed again, up to
        TYPE_ATTEMPTS times in all; its guard (mkdir of a directory named by
        the boot's nonce and the command's number) makes a line that was only
        late run once, however often it was typed. The command ends its own
        line, so one ending in `&` or a comment still works. The markers are
        split by quotes in the typed line, so the shell's echo of it cannot
        match them. Returns the command's number, for `wait_command`.
        """
        n = next(self._seq)
        line = (f"mkdir /tmp/.cpa-harness-{self.nonce}-{n} 2>/dev/null && "
                f"{{ echo '@@CPA''-{n}-BEGIN@@'; "
                f"{command}\recho \"@@CPA\"\"-{n}-END-$?@@\"; }}\r")
        begin = re.compile(rf"@@CPA-{n}-BEGIN@@".encode())
        each = timeout / TYPE_ATTEMPTS
        for attempt in range(1, TYPE_ATTEMPTS + 1):
            # Ctrl-U first: whatever a lost character left on the shell's line goes.
            self.send(b"\x15" + line.encode())
            try:
                self.wait_for(begin, each, f"start of '{command}'")
                return n
            except GuestHang:
                if attempt == TYPE_ATTEMPTS:
                    raise GuestHang(f"start of '{command}' on the serial shell (typed "
                                    f"{TYPE_ATTEMPTS} times)", timeout) from None
                self.note(f"serial shell: no start marker for '{command[:80]}' within "
                          f"{each:.0f}s; typed it again ({attempt + 1}/{TYPE_ATTEMPTS})")
        raise AssertionError("unreachable")

    def wait_command(self, n: int, command: str, timeout: float) -> tuple[int, str]:
        """The exit status and output of command number `n`, once it ends."""
        end = re.compile(rf"@@CPA-{n}-END-(\d+)@@".encode())
        m = self.wait_for(end, timeout, f"end of '{command}'")
        lines = self.before.decode(errors="replace").split("\n")
        out = [ln for ln in lines if not KMSG_RE.match(ln)]
        return int(m.group(1)), "\n".join(out).strip("\n")

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run a command in the serial shell; return its status and output.

        Kernel messages printed meanwhile are dropped from the output (they are
        still in the log and were seen by the parser).
        """
        return self.wait_command(self.type_command(command, timeout), command, timeout)

    @contextlib.contextmanager
    def draining(self, on_stop: Callable[[], None] = lambda: None) -> Iterator[None]:
        """Keep reading the console in a thread while the caller uses ssh.

        A guest whose console nobody reads stalls once the pty buffer fills,
        and a kernel failure must still be caught the moment it completes. If
        the guest fails or the machine stops meanwhile, on_stop() is called (to
        break the ssh connection, so the caller is not left waiting out a
        timeout); on leaving, such a failure is raised here, in the caller's thread.
        """
        stop = threading.Event()
        ended: list[BaseException] = []

        def loop() -> None:
            try:
                while not stop.is_set():
                    self.watch(DRAIN_SLICE)
            except (FailureSeen, GuestExited, HarnessError, pexpect.ExceptionPexpect,
                    OSError) as e:
                ended.append(e)
                on_stop()

        t = threading.Thread(target=loop, name="console-drain", daemon=True)
        t.start()
        try:
            yield
        except Exception:
            # The caller's ssh failed: if the guest ended or failed meanwhile,
            # that is the news (ssh failing was its consequence).
            stop.set()
            t.join()
            if ended:
                raise ended[0] from None
            raise
        finally:
            stop.set()
            t.join()
        if ended:
            raise ended[0]

    def tail(self, lines: int = 20) -> list[str]:
        """The last lines of the serial log, for errors that need context."""
        try:
            data = self.serial_log.read_bytes()[-16384:]
        except OSError:
            return []
        text = data.decode(errors="replace").replace("\r", "")
        return [ln for ln in text.split("\n") if ln.strip()][-lines:]

    def finish(self) -> Analysis:
        """Close the line and complete the analysis of everything it carried."""
        self.close()
        return self.parser.finish()
