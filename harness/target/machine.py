"""One running guest: QEMU under pexpect, its serial console logged and analysed.

Every byte the guest prints goes, as it arrives, to the serial log and to the
console parser, so a cell can fail the moment a failure's report is complete.
Every wait has a deadline. QEMU runs with a parent-death signal, so it dies
with the harness even when the harness is SIGKILLed. A QMP connection records
QEMU's events, so when QEMU ends, QEMU itself says whether the guest reset or
powered off or the host stopped it.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import pexpect

from harness.console import BootStarted, ConsoleParser, Failure, FailureFound, SelftestDone
from harness.errors import HarnessError, InfraError
from harness.proc import die_with_parent
from harness.target import qmp
from harness.target.qemu import QemuParams, qemu_argv
from harness.target.serial import SerialView, ready_re

# printk lines (PRINTK_TIME is on) that land in the middle of a command's output
KMSG_RE = re.compile(r"^\s*(<\d+>)?\[\s*\d+\.\d+\]")
# A command typed on the serial shell whose start marker does not come back is
# typed again, this many times in all; a guard in the line makes sure it runs once.
TYPE_ATTEMPTS = 3
QUIET_FLUSH = 5.0   # seconds of silence after which a pending report counts as complete
SLICE = 0.5
# QEMU's words when the ssh port forward cannot bind (net/slirp.c)
HOSTFWD_FAILED = "Could not set up host forwarding rule"
# Markers are short lines: searching only the newest output keeps a guest that
# prints without end from costing time quadratic in what it printed...
SEARCH_WINDOW = 64 * 1024
# ...and output nobody waits for is dropped from memory beyond this (it is in
# the serial log); a command's output read over the serial console is smaller.
KEEP = 1 << 20


_LIVE: set[Machine] = set()
_LIVE_LOCK = threading.Lock()


# Set when the run is being torn down: no guest may start after it (a cell's
# thread would otherwise take its killed QEMU for an infrastructure error and
# start another).
stopping = threading.Event()


def kill_all() -> None:
    """Kill every running guest of this process (Ctrl-C, SIGTERM), and start no more."""
    stopping.set()
    with _LIVE_LOCK:
        live = list(_LIVE)
    for m in live:
        if m.child is not None and m.child.isalive():
            m.child.terminate(force=True)


def pid_running(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not), without reaping it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class GuestHang(Exception):
    """The guest made no progress towards `what` before its deadline."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"no {what} within {seconds:.0f}s")
        self.what = what
        self.seconds = seconds


class GuestExited(Exception):
    """QEMU ended while the harness was waiting for something; `ending` says why."""

    def __init__(self, what: str, status: int | None, ending: qmp.Ending) -> None:
        super().__init__(f"{ending.text}, while waiting for {what}")
        self.what = what
        self.status = status
        self.ending = ending


class CellDeadline(InfraError):
    """The cell as a whole ran out of time: a backstop behind every wait's own
    deadline. The host was too slow (or something waited without one), not
    proof against the kernel, so it is an infrastructure error."""


class FailureSeen(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.kind}: {failure.title}")
        self.failure = failure


class _Tee:
    """pexpect's logfile_read: write the raw bytes to the log, feed the parser."""

    def __init__(self, log: IO[bytes], machine: Machine) -> None:
        self.log = log
        self.machine = machine

    def write(self, data: bytes) -> None:
        self.machine._feed(data)
        try:
            self.log.write(data)
            self.log.flush()
        except OSError as e:
            # Without its log the cell's evidence is gone: end it, say why.
            raise InfraError(f"cannot write the serial log {self.machine.serial_log}: "
                             f"{e.strerror}", "free disk space; what was written before is "
                             "intact") from None

    def flush(self) -> None:
        self.log.flush()


class Machine:
    def __init__(self, params: QemuParams, serial_log: Path,
                 is_fatal: Callable[[Failure, str | None], bool] = lambda f, k: True) -> None:
        self.params = params
        self.serial_log = serial_log
        self.parser = ConsoleParser()
        self.is_fatal = is_fatal
        self.failures: list[Failure] = []
        self.pending_fatal: Failure | None = None
        self.child: pexpect.spawn | None = None
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
        self.monitor: qmp.Monitor | None = None
        self._qmp_dir: Path | None = None

    # --- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        if stopping.is_set():
            raise InfraError("the run is stopping: no guest is started")
        try:
            self._qmp_dir = qmp.socket_dir()
            self.serial_log.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.serial_log, "wb")
            qmp_log = self.serial_log.with_name(self.serial_log.stem + ".qmp.jsonl")
            qmp_log.unlink(missing_ok=True)
        except OSError as e:
            self.kill()
            raise InfraError(f"cannot start a guest: {e.strerror} ({e.filename})",
                             "free disk space or check the results directory") from None
        self.params = replace(self.params, qmp_socket=self._qmp_dir / "qmp.sock")
        argv = qemu_argv(self.params)
        try:
            self.child = pexpect.spawn(argv[0], argv[1:], timeout=None, echo=False,
                                       preexec_fn=die_with_parent,
                                       dimensions=(24, 500))
        except pexpect.ExceptionPexpect as e:
            self.kill()
            raise InfraError(f"cannot start {argv[0]}: {e}") from None
        self.child.logfile_read = _Tee(self._log, self)
        with _LIVE_LOCK:
            _LIVE.add(self)
        self.started = self.last_output = time.monotonic()
        self.monitor = qmp.Monitor(self.params.qmp_socket or Path(), qmp_log)
        # Not self.alive(): waitpid() from the monitor's thread would race this one's.
        pid = self.child.pid
        self.monitor.start(alive=lambda: pid_running(pid))
        if not self.monitor.wait_connected():
            with contextlib.suppress(pexpect.ExceptionPexpect, OSError):
                self.child.expect(pexpect.EOF, timeout=2)   # QEMU's own words, into the log
            said = self.tail(1)
            self.kill()
            port = self.params.ssh_port
            if port is not None and said and HOSTFWD_FAILED in said[0]:
                raise InfraError(f"QEMU could not forward 127.0.0.1:{port} to the guest's ssh "
                                 "port (taken by another process?)", f"see {self.serial_log}")
            raise InfraError(f"QEMU did not start: {said[0] if said else self.monitor.error}",
                             f"see {self.serial_log}")

    def alive(self) -> bool:
        return self.child is not None and self.child.isalive()

    def kill(self) -> None:
        with _LIVE_LOCK:
            _LIVE.discard(self)
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
            if self.monitor is not None:
                self.monitor.stop()
            if self._qmp_dir is not None:
                qmp.remove_socket_dir(self._qmp_dir)
                self._qmp_dir = None

    def exit_status(self) -> int | None:
        if self.child is None or self.child.isalive():
            return None
        st = self.child.exitstatus
        return st if st is not None else (128 + (self.child.signalstatus or 0))

    def ending(self) -> qmp.Ending:
        """QEMU has exited: why, from its QMP events and its exit."""
        events: list[dict[str, Any]] = []
        monitored = False
        if self.monitor is not None:
            self.monitor.wait_closed()
            events, monitored = self.monitor.snapshot(), self.monitor.connected.is_set()
        signal = self.child.signalstatus if self.child is not None else None
        return qmp.ending(events, self.exit_status(), signal, monitored)

    # --- the console stream -----------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self.last_output = time.monotonic()
        self.view.feed(data)
        self._handle(self.parser.feed(data))

    def note(self, text: str) -> None:
        self.notes.append(f"{time.monotonic() - self.started:.1f}s: {text}")

    @property
    def nonce(self) -> str:
        """The nonce on this guest's first kernel command line."""
        return self.params.nonce

    def ready_re(self, nonce: str | None = None) -> re.Pattern[bytes]:
        return ready_re(self.params.nonce if nonce is None else nonce)

    def _handle(self, events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, BootStarted):
                self.passes_at = []
            elif isinstance(ev, SelftestDone):
                self.passes_at.append(time.monotonic() - self.started)
            if isinstance(ev, FailureFound):
                self.failures.append(ev.failure)
                if self.pending_fatal is None and self.is_fatal(ev.failure, self.kernel()):
                    self.pending_fatal = ev.failure

    def kernel(self) -> str | None:
        """The version of the kernel now running, from its banner."""
        boots = self.parser.analysis.to_json()["boots"]
        return boots[-1].get("kernel") if boots else None

    def _check_fatal(self) -> None:
        if self.pending_fatal is not None:
            raise FailureSeen(self.pending_fatal)

    def wait_for(self, pattern: re.Pattern[bytes], timeout: float, what: str,
                 quiet_ok: bool = True) -> re.Match[bytes]:
        """Wait for `pattern` in a complete line of the console, failing fast on a
        kernel failure. Kernel records that split the line are not in the way
        (harness.serial)."""
        assert self.child is not None
        deadline = time.monotonic() + timeout
        backstop = self.cell_deadline is not None and self.cell_deadline < deadline
        if backstop:
            deadline = self.cell_deadline or deadline
        start = searched = self._cursor
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
                raise GuestHang(what, timeout)
            try:
                # Read through pexpect so the bytes reach the log, the parser and
                # the view (logfile_read); matching is done on the view.
                self.child.read_nonblocking(65536, timeout=min(SLICE, left))
            except pexpect.TIMEOUT:
                self.view.trim(KEEP)
                if time.monotonic() - self.last_output > QUIET_FLUSH:
                    self._handle(self.parser.flush())
            except pexpect.EOF:
                self._handle(self.parser.flush())
                self.child.close()
                self._check_fatal()
                m = self._search(pattern, start, searched)
                if m is not None:       # in QEMU's last words
                    return m
                raise GuestExited(what, self.exit_status(), self.ending()) from None

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
        except GuestHang:
            pass

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
        assert self.child is not None
        n = next(self._seq)
        line = (f"mkdir /tmp/.cpa-harness-{self.nonce}-{n} 2>/dev/null && "
                f"{{ echo '@@CPA''-{n}-BEGIN@@'; "
                f"{command}\recho \"@@CPA\"\"-{n}-END-$?@@\"; }}\r")
        begin = re.compile(rf"@@CPA-{n}-BEGIN@@".encode())
        each = timeout / TYPE_ATTEMPTS
        for attempt in range(1, TYPE_ATTEMPTS + 1):
            # Ctrl-U first: whatever a lost character left on the shell's line goes.
            self.child.send(b"\x15" + line.encode())
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

    def poweroff(self, timeout: float = 30.0) -> None:
        """`reboot -f` with -no-reboot ends QEMU; kill it if it does not."""
        if not self.alive():
            return
        assert self.child is not None
        try:
            self.child.send(b"\rreboot -f\r")
            self.child.expect(pexpect.EOF, timeout=timeout)
        except (pexpect.TIMEOUT, OSError):
            pass
        self._handle(self.parser.flush())
        self.kill()

    @contextlib.contextmanager
    def draining(self, on_stop: Callable[[], None] = lambda: None) -> Iterator[None]:
        """Keep reading the console in a thread while the caller uses ssh.

        A guest whose console nobody reads stalls once the pty buffer fills,
        and a kernel failure must still be caught the moment it completes. If
        the guest fails or QEMU ends meanwhile, on_stop() is called (to break
        the ssh connection, so the caller is not left waiting out a timeout);
        on leaving, such a failure is raised here, in the caller's thread.
        """
        stop = threading.Event()
        ended: list[BaseException] = []

        def loop() -> None:
            try:
                while not stop.is_set():
                    self.watch(SLICE)
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

    def wait_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Read the console until `done()` holds, e.g. a self-test pass was parsed."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestHang(what, timeout)
            self.watch(min(SLICE, left))

    def finish(self) -> dict[str, Any]:
        """The guest is gone: complete the analysis and return its JSON document."""
        self.kill()
        analysis = self.parser.finish()
        return analysis.to_json()


# A kernel that printed within this long of the ready deadline was still running.
RUNNING_WITHIN = 30.0


def wait_ready(m: Machine, timeout: float, nonce: str | None = None) -> re.Match[bytes]:
    """The ready marker of the boot with `nonce` (the first boot's if None).

    A guest that never printed it while its kernel kept running (output
    lately, or a self-test pass) has not hung: the harness's own init failed
    it, or the marker was lost. That is an infrastructure error saying what
    was seen, never a hang a good kernel could be blamed for.
    """
    try:
        return m.wait_for(m.ready_re(nonce), timeout, "ready marker from the guest's init")
    except GuestHang:
        seen = kernel_seen(m)
        if seen is None:
            raise
        raise InfraError(f"no ready marker from the guest's init within {timeout:.0f}s, "
                         f"but the kernel was running ({seen})",
                         f"see {m.serial_log}") from None


def kernel_seen(m: Machine) -> str | None:
    """What shows the kernel running lately ('self-test pass at 31 s, ...'), or None."""
    quiet = time.monotonic() - m.last_output
    if not m.passes_at and quiet > RUNNING_WITHIN:
        return None
    parts = [f"self-test pass at {t:.0f} s" for t in m.passes_at[:3]]
    parts.append(f"last output {quiet:.0f} s ago")
    return ", ".join(parts)
