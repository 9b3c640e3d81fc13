"""What every machine the kernel under test runs on offers a scenario.

A target, in labgrid's sense, is one machine seen through three protocols:
power (bring the kernel under test up, power it off, release the machine),
the console (harness.target.console: the serial line, the kernel's voice, and
a shell on it) and commands (harness.target.shell: ssh while it is up, the
serial shell otherwise). The QEMU guest is one kind (harness.target.vm); a lab
box will be another. Scenarios use only what is here, so what only one kind
has (QEMU's command line, its QMP account of an ending) stays in that kind's
describe(), which goes into the result as its `target` part.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from harness.console import Analysis, Failure
from harness.errors import InfraError
from harness.target.console import Console
from harness.target.errors import Ending
from harness.target.shell import Shell, SshAccess


@dataclass(frozen=True)
class Timeouts:
    """How long a machine may take for each kind of wait."""

    boot: float            # start (or kexec) to the ready marker
    first_pass: float      # ready marker to the first self-test verdict
    command: float         # one shell command
    ssh: float             # ready marker to an ssh session
    copy: float = 300.0    # one file copied in
    liveness: float = 10.0  # how often the shell is poked while watching

    @classmethod
    def for_accel(cls, accel: str) -> Timeouts:
        # TCG runs the guest 10-50x slower than KVM; the self-test period is 30 s either way.
        if accel == "kvm":
            return cls(boot=120, first_pass=90, command=30, ssh=30)
        return cls(boot=300, first_pass=180, command=90, ssh=90)


class Target(abc.ABC):
    """One machine under test: its console, its command runner and its power."""

    kind: ClassVar[str]

    def __init__(self, console: Console, access: SshAccess | None,
                 command_timeout: float) -> None:
        self.console = console
        self.shell = Shell(console, access, command_timeout)

    @abc.abstractmethod
    def start(self) -> None:
        """Bring the kernel under test up (QEMU: start the guest)."""

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the machine still runs the kernel the harness talks to."""

    @abc.abstractmethod
    def kernel_cmdline(self) -> str:
        """The command line the kernel under test is booted with, as /proc/cmdline shows it."""

    @abc.abstractmethod
    def ending(self) -> Ending:
        """The machine has stopped: why."""

    @abc.abstractmethod
    def power_off(self, timeout: float) -> None:
        """End the kernel under test cleanly if it can, by force otherwise."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Stop the machine now, from any thread; the cell's own thread then sees it end."""

    @abc.abstractmethod
    def release(self) -> None:
        """Stop at once and give back everything held (processes, sockets, files)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """The target's own part of a result: what only this kind of machine has."""

    @classmethod
    def may_be_up(cls, described: dict[str, Any]) -> bool:
        """From what describe() said while it ran: whether this machine can still
        be up. Only connecting (and its boot id) can tell for most kinds."""
        return True

    def finish(self) -> Analysis:
        """The machine is done with: release it and complete the console's analysis."""
        self.shell.close_ssh()
        self.release()
        return self.console.finish()


# What a scenario asks of whoever provides its targets: a target for the cell
# (its serial log, with ssh or not, a failure filter, words added to the kernel
# command line), ready to start.
class Targets(abc.ABC):
    @property
    @abc.abstractmethod
    def timeouts(self) -> Timeouts:
        """How long these machines may take (a TCG guest is 10-50x slower than KVM)."""

    @abc.abstractmethod
    def new(self, serial_log: Path, *, ssh: bool,
            is_fatal: Callable[[Failure, str | None], bool],
            extra_cmdline: str = "") -> Target:
        """A target for one boot of the cell, not started yet."""

    @abc.abstractmethod
    def command(self, extra_cmdline: str = "") -> str:
        """How a target of this cell is started, for --show-command and the results."""

    def host_pids(self) -> list[int]:
        """The processes on this host of the cell's live machines, whose CPU
        the scheduler measures; none for a lab box."""
        return []


class Fleet:
    """A run's live targets and its stop flag.

    When the run is torn down (Ctrl-C, SIGTERM, a full disk) every live target
    is released at once, so each cell's thread ends now, and no target may
    start after that: a cell's thread would otherwise take its killed guest
    for an infrastructure error and start another. Each run has its own, so
    two runs in one process share nothing.
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._live: set[Target] = set()
        self._lock = threading.Lock()

    def add(self, target: Target) -> None:
        with self._lock:
            if self.stopping.is_set():
                raise InfraError("the run is stopping: no guest is started")
            self._live.add(target)

    def discard(self, target: Target) -> None:
        with self._lock:
            self._live.discard(target)

    def stop(self) -> None:
        """Abort every live target, and start no more."""
        self.stopping.set()
        with self._lock:
            live = list(self._live)
        for t in live:
            t.abort()
