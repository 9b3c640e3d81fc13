"""A target in memory, for unit tests of the scenarios' orchestration (no QEMU).

The machine's console is scripted from real captured logs (tests/data/logs),
and what the harness types on its serial shell or runs over its "ssh" is
answered from captured /proc files (tests/data/stats). The real Console,
Shell and console parser do the rest: only the machine and its ssh server are
fake. This is a test of orchestration, never proof that a feature works on a
kernel; the boot tests are that.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pexpect

from harness.console import Failure
from harness.kernel import fast_selftest
from harness.probes import stats
from harness.scenarios import kexec
from harness.target.base import Target, Targets, Timeouts
from harness.target.console import Console
from harness.target.errors import Ending
from harness.target.serial import NONCE_PARAM, new_nonce
from harness.target.shell import Shell, SshAccess
from harness.target.ssh import Completed, SshLost

DATA = Path(__file__).parent / "data"
TYPED_RE = re.compile(rb"echo '@@CPA''-(\d+)-BEGIN@@'; (.*?)\recho \"@@CPA\"\"-\d+-END-\$\?@@\"",
                      re.S)
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkEkfake0000000000000000000000000000000000000"


def log_lines(name: str, start: int, end: int) -> list[str]:
    """Lines start..end (1-based, inclusive) of a captured console log."""
    text = (DATA / "logs" / name).read_bytes().decode(errors="replace")
    return [ln.rstrip("\r") for ln in text.split("\n")[start - 1:end]]


# tests/data/logs/i386.log: the boot up to init, and the first self-test pass.
BOOT = log_lines("i386.log", 1, 435)
FIRST_PASS = log_lines("i386.log", 440, 444)
# tests/data/logs/x86_64-cpa-selftest-not-passed.log: a pass that fails, and its WARN.
NOT_PASSED = log_lines("x86_64-cpa-selftest-not-passed.log", 1115, 1386)


@dataclass
class Script:
    """What the fake machine does, in seconds after its ready marker."""

    first_pass_after: float = 0.3
    later: list[tuple[float, list[str]]] = field(default_factory=list)   # console output
    hang_after: float | None = None     # stops printing and answering
    reset_after: float | None = None    # the guest resets (its console ends)
    kexec_arrives: bool = True          # kexec -e starts the new kernel
    ssh_dies_after: int | None = None   # the ssh connection breaks on this command
    dies_with_ssh: bool = False         # ...and the whole machine stops answering then
    arch: str = "i386"
    smp: int = 2
    # The self-test thread: a silent pass this often after the first (the
    # kthread's 30 s, scaled as the tests scale the period), or stuck after it.
    pass_every: float = 1.0
    stuck: bool = False
    # The fast self-test's patched kernel: its cpa_test.period_ms as sysfs
    # shows it (None: a stock kernel, no such file), and every pass printed
    # in full rather than silent; printed passes after the first, at most
    period_ms: int | None = None
    printed_passes: int = 0
    # The CPA exerciser: its kernel log lines, from a real run (a mode's lines
    # of tests/data/exerciser/x86_64-6.12-clflush.log), with the run id the
    # harness asks for; or no end at all (stuck in CPA)
    exercise_lines: dict[str, list[str]] = field(default_factory=dict)
    exercise_stuck: bool = False


class FakeMachine:
    """The machine behind the fake line: scripted output, answered commands."""

    def __init__(self, script: Script, nonce: str, cmdline: str) -> None:
        self.script = script
        self.cmdline = cmdline
        self.out = bytearray()
        self.pending: list[tuple[float, bytes]] = []     # (due, bytes)
        self.lock = threading.Lock()
        self.ready_at = 0.0
        self.ended: Ending | None = None
        self.hung = False
        self.commands: list[str] = []
        self.exercise_runs: list[tuple[str, str]] = []
        self.ssh_commands = 0
        self.boot(nonce, first=True)

    def at(self, delay: float, lines: list[str]) -> None:
        data = "".join(f"{ln}\r\n" for ln in lines).encode()
        with self.lock:
            self.pending.append((time.monotonic() + delay, data))

    def boot(self, nonce: str, first: bool = False) -> None:
        self.at(0.0, BOOT + [f"CPA-HARNESS-HOSTKEY nonce={nonce} {HOST_KEY} root@cpa-guest",
                             f"CPA-HARNESS-READY nonce={nonce} boot_id={uuid.uuid4()}",
                             "cpa-guest:/# "])
        self.ready_at = time.monotonic()
        self.at(self.script.first_pass_after, FIRST_PASS)
        if not self.script.stuck:
            for k in range(1, self.script.printed_passes + 1):
                self.at(self.script.first_pass_after + k * self.script.pass_every, FIRST_PASS)
        if first:
            for delay, lines in self.script.later:
                self.at(delay, lines)

    def state(self) -> str:
        s, since = self.script, time.monotonic() - self.ready_at
        if self.ended is not None:
            return "ended"
        if s.reset_after is not None and since >= s.reset_after:
            self.ended = Ending("reset", False, "the guest reset (scripted)")
            return "ended"
        if self.hung or (s.hang_after is not None and since >= s.hang_after):
            return "hung"
        return "running"

    def due(self) -> bytes:
        with self.lock:
            now = time.monotonic()
            ready = [d for t, d in self.pending if t <= now]
            self.pending = [(t, d) for t, d in self.pending if t > now]
        return b"".join(ready)

    def typed(self, data: bytes) -> None:
        if self.state() != "running":
            return
        for m in TYPED_RE.finditer(data):
            n, command = m.group(1).decode(), m.group(2).decode()
            status, out = self.answer(command)
            body = out.replace("\n", "\r\n")
            self.at(0.0, [f"@@CPA-{n}-BEGIN@@", *([body.rstrip("\r\n")] if body else []),
                          f"@@CPA-{n}-END-{status}@@", "cpa-guest:/# "])

    def passes(self) -> int:
        """Self-test passes run so far."""
        since = time.monotonic() - self.ready_at - self.script.first_pass_after
        if since < 0:
            return 0
        return 1 if self.script.stuck else 1 + int(since // self.script.pass_every)

    def stats_file(self, name: str) -> str:
        """A captured file: as at boot before the first pass, as after it later, with
        cpa_stats' 4k counter moving by one pass's worth for each pass after it."""
        n = self.passes()
        f = DATA / "stats" / f"{self.script.arch}-{'selftest' if n else 'boot'}-{name}.txt"
        if not f.exists():
            return stats.ABSENT + "\n"
        text = f.read_text()
        if name == "cpa_stats" and n > 1:
            value = stats.parse_cpa_stats(text)["4k_set_checked"]
            text = text.replace(f"{value}\n", f"{value + (n - 1) * 27484}\n")
        return text

    def answer(self, command: str) -> tuple[int, str]:
        """What the guest's shell prints for `command` (captured files where there are)."""
        self.commands.append(command)
        if command == "cat /proc/cmdline":
            return 0, self.cmdline + "\n"
        if command == f"cat {fast_selftest.SYSFS}":
            if self.script.period_ms is None:
                return 1, f"cat: can't open '{fast_selftest.SYSFS}': No such file or directory\n"
            return 0, f"{self.script.period_ms}\n"
        if "/proc/config.gz" in command:
            return 0, "NO-IKCONFIG\n"
        if command == "cat /proc/cpuinfo":
            block = "processor\t: {n}\nmodel name\t: QEMU Virtual CPU\nflags\t\t: fpu pae pse\n\n"
            return 0, "".join(block.format(n=n) for n in range(self.script.smp))
        for name, path in stats.GUEST_FILES.items():
            if f"cat {path};" in command:
                return 0, self.stats_file(name)
        if command.startswith("kexec ") and command != kexec.EXECUTE:
            found = re.search(rf"{NONCE_PARAM}=(\w+)", command)
            self.next_nonce = found.group(1) if found else ""
            return 0, ""
        if command == kexec.EXECUTE:
            if self.script.kexec_arrives:
                self.at(0.2, ["[   40.000000][  T100] kexec_core: Starting new kernel"])
                self.cmdline = f"{self.cmdline} {NONCE_PARAM}={self.next_nonce}"
                threading.Timer(0.4, self.boot, (self.next_nonce,)).start()
            return 0, ""
        if command in ("true", "dmesg | grep 'Hypervisor detected' || true") or \
                command.startswith("kill "):
            return 0, ""
        return self.exerciser(command)

    def exerciser(self, command: str) -> tuple[int, str]:
        """insmod in the background, its rc file, rmmod, dmesg, fail_page_alloc."""
        started = re.search(r"insmod \S+ mode=(\S+) run=(\S+)", command)
        if started:
            self.exercise_runs.append((started.group(1), started.group(2)))
            return 0, ""
        if re.fullmatch(r"cat /tmp/\S+\.rc 2>/dev/null", command):
            return (1, "") if self.script.exercise_stuck else (0, "0\n")
        if command.startswith(("cat /tmp/", "rmmod ", "echo N > /sys/kernel/debug/")):
            return 0, ""
        if command.startswith("dmesg | grep -e 'cpa_exercise: run='"):
            out = []
            for mode, run in self.exercise_runs:
                for line in self.script.exercise_lines.get(mode, []):
                    out.append(re.sub(r"run=\S+", f"run={run}", line))
            return 0, "".join(f"{ln}\n" for ln in out)
        return 1, f"sh: {command.split()[0]}: not found\n"


class FakeLine:
    """A pexpect child in memory, as Console reads it."""

    pid = 1

    def __init__(self, machine: FakeMachine) -> None:
        self.machine = machine
        self.logfile_read: Any = None

    def read_nonblocking(self, size: int, timeout: float) -> bytes:
        end = time.monotonic() + timeout
        while True:
            state = self.machine.state()
            data = self.machine.due() if state == "running" else b""
            if data:
                self.logfile_read.write(data)
                return data
            if state == "ended":
                raise pexpect.EOF("the fake machine ended")
            if time.monotonic() >= end:
                raise pexpect.TIMEOUT("nothing")
            time.sleep(0.02)

    def send(self, data: bytes) -> int:
        self.machine.typed(data)
        return len(data)

    def isalive(self) -> bool:
        return self.machine.ended is None

    def close(self, force: bool = False) -> None:
        pass

    def terminate(self, force: bool = False) -> None:
        self.machine.ended = self.machine.ended or Ending("", True, "released")


class FakeSsh:
    """GuestSsh's surface, answered by the fake machine's shell."""

    def __init__(self, machine: FakeMachine) -> None:
        self.machine = machine
        self.client = None

    def run(self, command: str, timeout: float) -> Completed:
        m = self.machine
        m.ssh_commands += 1
        if m.script.ssh_dies_after is not None and m.ssh_commands >= m.script.ssh_dies_after:
            m.hung = m.script.dies_with_ssh
            raise SshLost(f"the connection broke during '{command}'")
        if m.state() != "running":
            raise SshLost("no answer")
        status, out = m.answer(command)
        return Completed(status, out if status == 0 else "", "" if status == 0 else out)

    def put(self, local: Path, remote: str, mode: int, timeout: float) -> None:
        if self.machine.state() != "running":
            raise SshLost("no answer")

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class FakeShell(Shell):
    def __init__(self, console: Console, access: SshAccess | None, timeout: float,
                 machine: FakeMachine) -> None:
        super().__init__(console, access, timeout)
        self.machine = machine

    def _connect(self, deadline: float) -> None:
        self.ssh = FakeSsh(self.machine)  # type: ignore[assignment]
        self.connect_seconds = 0.0


class FakeTarget(Target):
    kind = "fake"

    def __init__(self, script: Script, serial_log: Path, ssh: bool,
                 is_fatal: Callable[[Failure, str | None], bool], cmdline: str,
                 timeouts: Timeouts) -> None:
        nonce = new_nonce()
        super().__init__(Console(serial_log, nonce, is_fatal),
                         SshAccess(22, Path("/none")) if ssh else None, timeouts.command)
        self.full_cmdline = f"{cmdline} {NONCE_PARAM}={nonce}".strip()
        self.machine = FakeMachine(script, nonce, self.full_cmdline)
        self.shell = FakeShell(self.console, self.shell.access, timeouts.command, self.machine)
        self.console.ended = self.ending

    def start(self) -> None:
        self.console.attach(FakeLine(self.machine))  # type: ignore[arg-type]

    def alive(self) -> bool:
        return self.machine.state() != "ended"

    def kernel_cmdline(self) -> str:
        return self.full_cmdline

    def ending(self) -> Ending:
        return self.machine.ended or Ending("", True, "the fake machine has not ended")

    def power_off(self, timeout: float) -> None:
        self.machine.ended = self.machine.ended or Ending("shutdown", False, "powered off")
        self.release()

    def abort(self) -> None:
        self.machine.ended = self.machine.ended or Ending("", True, "aborted")

    def release(self) -> None:
        self.console.close()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


FAST = Timeouts(boot=5, first_pass=5, command=2, ssh=2, copy=2, liveness=0.3)


@dataclass
class FakeTargets(Targets):
    script: Script
    cmdline: str = ""
    made: list[FakeTarget] = field(default_factory=list)

    @property
    def timeouts(self) -> Timeouts:
        return FAST

    def new(self, serial_log: Path, *, ssh: bool,
            is_fatal: Callable[[Failure, str | None], bool],
            extra_cmdline: str = "") -> FakeTarget:
        t = FakeTarget(self.script, serial_log, ssh, is_fatal,
                       f"{self.cmdline} {extra_cmdline}".strip(), FAST)
        self.made.append(t)
        return t

    def command(self, extra_cmdline: str = "") -> str:
        return "fake"
