"""The QEMU guest as a target: QEMU under pexpect, its terminal the serial line.

QEMU runs with a parent-death signal, so it dies with the harness even when
the harness is SIGKILLed. A QMP connection records QEMU's events, so when QEMU
ends, QEMU itself says whether the guest reset or powered off or the host
stopped it (harness.target.qmp).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pexpect

from harness.cells import Cell
from harness.console import Failure
from harness.errors import InfraError
from harness.proc import die_with_parent
from harness.target import qmp
from harness.target.base import Fleet, Target, Targets, Timeouts
from harness.target.console import Console
from harness.target.errors import Ending
from harness.target.qemu import AccelChoice, QemuParams, qemu_argv, show_command
from harness.target.serial import new_nonce
from harness.target.shell import SshAccess
from harness.target.ssh import free_port

# QEMU's words when the ssh port forward cannot bind (net/slirp.c)
HOSTFWD_FAILED = "Could not set up host forwarding rule"


def pid_running(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not), without reaping it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class QemuTarget(Target):
    kind = "qemu"

    def __init__(self, params: QemuParams, serial_log: Path, fleet: Fleet | None = None,
                 access: SshAccess | None = None, command_timeout: float = 60.0,
                 is_fatal: Callable[[Failure, str | None], bool] = lambda f, k: True) -> None:
        super().__init__(Console(serial_log, params.nonce, is_fatal), access, command_timeout)
        self.params = params
        self.fleet = fleet or Fleet()
        self.console.ended = self.ending
        self.monitor: qmp.Monitor | None = None
        self._qmp_dir: Path | None = None

    @property
    def child(self) -> pexpect.spawn | None:
        return self.console.child

    def start(self) -> None:
        self.fleet.add(self)
        serial_log = self.console.serial_log
        try:
            self._qmp_dir = qmp.socket_dir()
            self.console.open_log()
            qmp_log = serial_log.with_name(serial_log.stem + ".qmp.jsonl")
            qmp_log.unlink(missing_ok=True)
        except OSError as e:
            self.release()
            raise InfraError(f"cannot start a guest: {e.strerror} ({e.filename})",
                             "free disk space or check the results directory") from None
        self.params = replace(self.params, qmp_socket=self._qmp_dir / "qmp.sock")
        argv = qemu_argv(self.params)
        try:
            child = pexpect.spawn(argv[0], argv[1:], timeout=None, echo=False,
                                  preexec_fn=die_with_parent, dimensions=(24, 500))
        except pexpect.ExceptionPexpect as e:
            self.release()
            raise InfraError(f"cannot start {argv[0]}: {e}") from None
        self.console.attach(child)
        self.monitor = qmp.Monitor(self.params.qmp_socket or Path(), qmp_log)
        # Not self.alive(): waitpid() from the monitor's thread would race this one's.
        pid = child.pid
        self.monitor.start(alive=lambda: pid_running(pid))
        if not self.monitor.wait_connected():
            with contextlib.suppress(pexpect.ExceptionPexpect, OSError):
                child.expect(pexpect.EOF, timeout=2)   # QEMU's own words, into the log
            said = self.console.tail(1)
            self.release()
            port = self.params.ssh_port
            if port is not None and said and HOSTFWD_FAILED in said[0]:
                raise InfraError(f"QEMU could not forward 127.0.0.1:{port} to the guest's ssh "
                                 "port (taken by another process?)", f"see {serial_log}")
            raise InfraError(f"QEMU did not start: {said[0] if said else self.monitor.error}",
                             f"see {serial_log}")

    def alive(self) -> bool:
        return self.child is not None and self.child.isalive()

    def exit_status(self) -> int | None:
        if self.child is None or self.child.isalive():
            return None
        st = self.child.exitstatus
        return st if st is not None else (128 + (self.child.signalstatus or 0))

    def kernel_cmdline(self) -> str:
        return self.params.full_cmdline()

    def ending(self) -> Ending:
        """QEMU has exited: why, from its QMP events and its exit."""
        events: list[dict[str, Any]] = []
        monitored = False
        if self.monitor is not None:
            self.monitor.wait_closed()
            events, monitored = self.monitor.snapshot(), self.monitor.connected.is_set()
        signal = self.child.signalstatus if self.child is not None else None
        return qmp.ending(events, self.exit_status(), signal, monitored)

    def power_off(self, timeout: float) -> None:
        """`reboot -f` with -no-reboot ends QEMU; kill it if it does not."""
        if not self.alive():
            return
        assert self.child is not None
        try:
            self.child.send(b"\rreboot -f\r")
            self.child.expect(pexpect.EOF, timeout=timeout)
        except (pexpect.TIMEOUT, OSError):
            pass
        self.console.flush_parser()
        self.release()

    def abort(self) -> None:
        child = self.child
        if child is not None and child.isalive():
            child.terminate(force=True)

    def release(self) -> None:
        self.fleet.discard(self)
        try:
            self.console.close()
        finally:
            if self.monitor is not None:
                self.monitor.stop()
            if self._qmp_dir is not None:
                qmp.remove_socket_dir(self._qmp_dir)
                self._qmp_dir = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "command": show_command(self.params),
                "qemu_pid": self.child.pid if self.child is not None else None}

    @classmethod
    def may_be_up(cls, described: dict[str, Any]) -> bool:
        pid = described.get("qemu_pid")
        return isinstance(pid, int) and pid > 0 and pid_running(pid)


@dataclass
class QemuTargets(Targets):
    """QEMU guests for one cell: its build, initramfs, accelerator and the run's fleet."""

    cell: Cell
    kernel: Path
    initrd: Path
    accel: AccelChoice
    fleet: Fleet
    ssh_key: Path | None = None
    made: list[QemuTarget] = field(default_factory=list, repr=False)

    def params(self, extra_cmdline: str = "", ssh_port: int | None = None) -> QemuParams:
        c = self.cell
        return QemuParams(arch=c.arch_params, accel=self.accel.accel, cpu=c.cpu_model,
                          memory_mb=c.memory_mb, smp=c.smp,
                          cmdline=f"{c.cmdline} {extra_cmdline}".strip(),
                          kernel=self.kernel, initrd=self.initrd, ssh_port=ssh_port,
                          numa_nodes=c.numa_nodes, nonce=new_nonce())

    def new(self, serial_log: Path, *, ssh: bool,
            is_fatal: Callable[[Failure, str | None], bool],
            extra_cmdline: str = "") -> QemuTarget:
        access = SshAccess(free_port(), self.ssh_key) if ssh and self.ssh_key else None
        target = QemuTarget(self.params(extra_cmdline, access.port if access else None),
                            serial_log, self.fleet, access, self.timeouts.command, is_fatal)
        self.made = [*(t for t in self.made if t.child is None or pid_running(t.child.pid)),
                     target]
        return target

    def host_pids(self) -> list[int]:
        # pid_running, not alive(): waitpid() here would race the cell's thread
        return [c.pid for t in self.made if (c := t.child) is not None and pid_running(c.pid)]

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts.for_accel(self.accel.accel)

    def command(self, extra_cmdline: str = "") -> str:
        return show_command(self.params(extra_cmdline))
