"""A booted guest: the serial console is the kernel's voice, ssh the harness's hands.

Guest.boot() waits for the ready marker of a boot (the first, or the one a
kexec started), pins the host key that boot's init printed, and connects over
ssh. Commands go over ssh while it is up, with the console read in the
background so a kernel failure still ends the cell at once; without ssh they
fall back to the serial shell.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import InfraError
from harness.target.machine import GuestHang, Machine, pid_running, wait_ready
from harness.target.ssh import (
    Completed,
    GuestSsh,
    SshError,
    SshNoAnswer,
    SshTimeout,
    host_key_lines,
)

Runner = Callable[[str], tuple[int, str]]


@dataclass(frozen=True)
class SshAccess:
    """What reaching the guest over ssh takes: a forwarded port and the run's key."""

    port: int
    key: Path


class Guest:
    def __init__(self, machine: Machine, access: SshAccess | None, command_timeout: float) -> None:
        self.m = machine
        self.access = access
        self.timeout = command_timeout
        self.ssh: GuestSsh | None = None
        self.boot_id = ""
        self.host_key = ""
        self.connect_seconds: float | None = None

    def boot(self, timeout: float, ssh_deadline: float, nonce: str | None = None) -> str:
        """Wait for the ready marker of the boot with `nonce` (the first boot's if
        None), then connect; return the boot id."""
        self.close_ssh()
        nonce = self.m.nonce if nonce is None else nonce
        ready = wait_ready(self.m, timeout, nonce)
        self.boot_id = ready.group(1).decode()
        keys = host_key_lines(self.m.before, nonce)
        if self.access is not None:
            if not keys:
                raise InfraError("the guest printed no ssh host key before its ready marker",
                                 f"dropbear did not start; see {self.m.serial_log}")
            self.host_key = keys[-1]
            self._connect(ssh_deadline)
        return self.boot_id

    def _connect(self, deadline: float) -> None:
        assert self.access is not None
        ssh = GuestSsh()
        start = time.monotonic()
        try:
            with self.m.draining(on_stop=ssh.abort):
                ssh.connect(port=self.access.port, key_path=self.access.key,
                            host_key_line=self.host_key, deadline=time.monotonic() + deadline)
        except SshNoAnswer as e:
            # dropbear, or the whole guest? The serial shell answers for the kernel.
            ssh.close()
            try:
                self.m.run("true", self.timeout)
            except GuestHang:
                raise GuestHang(f"ssh connection ({e.message}), nor an answer from the "
                                "serial shell", self.timeout) from None
            raise InfraError(f"{e.message} (the serial shell answers)",
                             e.hint + self._tail()) from None
        except InfraError as e:
            ssh.close()
            raise InfraError(e.message, e.hint + self._tail()) from None
        self.ssh = ssh
        self.connect_seconds = time.monotonic() - start

    def _tail(self) -> str:
        return "; serial tail: " + " | ".join(self.m.tail(8))

    def run(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        """(status, output) of a guest command: stdout, plus stderr when it failed."""
        c = self.exec(command, timeout)
        return c.status, c.stdout if c.status == 0 else c.stdout + c.stderr

    def exec(self, command: str, timeout: float | None = None) -> Completed:
        t = timeout or self.timeout
        if self.ssh is None:
            status, out = self.m.run(command, t)
            return Completed(status, out + "\n" if out else "", "")
        ssh = self.ssh
        try:
            with self.m.draining(on_stop=ssh.close):
                return ssh.run(command, t)
        except SshError as e:
            raise self._ssh_failed(f"'{command}'", e, t) from None

    def _ssh_failed(self, what: str, e: SshError, t: float) -> InfraError:
        """ssh failed: the guest's fault, or only ssh's? The serial shell answers
        for the kernel. A guest that answers neither hangs (GuestHang, raised
        here); one whose serial shell answers had an ssh problem (returned, an
        infrastructure error). Never retry a hung kernel as if the host failed."""
        self.close_ssh()
        try:
            self.m.run("true", t)
        except GuestHang:
            raise GuestHang(f"answer to {what} (ssh: {e}; nor the serial shell)", t) from None
        if isinstance(e, SshTimeout):
            return InfraError(f"ssh command {what} got no answer in {t:.0f}s, but the serial "
                              "shell did", "dropbear may have died" + self._tail())
        return InfraError(f"ssh to the guest failed: {e} (the serial shell answers)",
                          self._tail().lstrip("; "))

    def put(self, local: Path, remote: str, mode: int = 0o644, timeout: float = 300.0) -> None:
        if self.ssh is None:
            raise InfraError(f"cannot copy {local.name} into the guest: ssh is not up")
        ssh = self.ssh
        try:
            with self.m.draining(on_stop=ssh.close):
                ssh.put(local, remote, mode, timeout)
        except SshError as e:
            raise self._ssh_failed(f"copying {local.name} in", e, timeout) from None

    def close_ssh(self) -> None:
        if self.ssh is not None:
            self.ssh.close()
            self.ssh = None

    def describe(self) -> dict[str, Any]:
        """How to reach this guest, for the results and `cpa-harness ssh`."""
        return {"port": self.access.port if self.access else None,
                "key": str(self.access.key) if self.access else None,
                "host_key": self.host_key, "boot_id": self.boot_id,
                "qemu_pid": self.m.child.pid if self.m.child is not None else None,
                "connect_seconds": self.connect_seconds}


def read_guest_file(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def qemu_running(pid: int | None) -> bool:
    return bool(pid) and pid_running(int(pid or 0))
