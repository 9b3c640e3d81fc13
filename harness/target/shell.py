"""Commands on a target: ssh while it is up, the serial shell otherwise.

Shell.boot() waits for the ready marker of a boot (the first, or the one a
kexec started), pins the host key that boot's init printed, and connects over
ssh. Commands go over ssh while it is up, with the console read in the
background so a kernel failure still ends the cell at once; without ssh they
fall back to the serial shell. Nothing here knows what kind of machine it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import InfraError
from harness.target.console import Console
from harness.target.errors import GuestHang
from harness.target.ssh import (
    Completed,
    GuestSsh,
    SshError,
    SshNoAnswer,
    SshTimeout,
    host_key_lines,
)


@dataclass(frozen=True)
class SshAccess:
    """What reaching the machine over ssh takes: an address and the run's key."""

    port: int
    key: Path
    host: str = "127.0.0.1"


class Shell:
    def __init__(self, console: Console, access: SshAccess | None,
                 command_timeout: float) -> None:
        self.console = console
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
        nonce = self.console.nonce if nonce is None else nonce
        ready = self.console.wait_ready(timeout, nonce)
        self.boot_id = ready.group(1).decode()
        keys = host_key_lines(self.console.before, nonce)
        if self.access is not None:
            if not keys:
                raise InfraError("the guest printed no ssh host key before its ready marker",
                                 f"dropbear did not start; see {self.console.serial_log}")
            self.host_key = keys[-1]
            self._connect(ssh_deadline)
        return self.boot_id

    def _connect(self, deadline: float) -> None:
        assert self.access is not None
        ssh = GuestSsh()
        start = time.monotonic()
        try:
            with self.console.draining(on_stop=ssh.abort):
                ssh.connect(port=self.access.port, key_path=self.access.key,
                            host_key_line=self.host_key, deadline=time.monotonic() + deadline,
                            host=self.access.host)
        except SshNoAnswer as e:
            # dropbear, or the whole guest? The serial shell answers for the kernel.
            ssh.close()
            try:
                self.console.run("true", self.timeout)
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
        return "; serial tail: " + " | ".join(self.console.tail(8))

    def run(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        """(status, output) of a command: stdout, plus stderr when it failed."""
        c = self.exec(command, timeout)
        return c.status, c.stdout if c.status == 0 else c.stdout + c.stderr

    def exec(self, command: str, timeout: float | None = None) -> Completed:
        t = timeout or self.timeout
        if self.ssh is None:
            status, out = self.console.run(command, t)
            return Completed(status, out + "\n" if out else "", "")
        ssh = self.ssh
        try:
            with self.console.draining(on_stop=ssh.close):
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
            self.console.run("true", t)
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
            with self.console.draining(on_stop=ssh.close):
                ssh.put(local, remote, mode, timeout)
        except SshError as e:
            raise self._ssh_failed(f"copying {local.name} in", e, timeout) from None

    def close_ssh(self) -> None:
        if self.ssh is not None:
            self.ssh.close()
            self.ssh = None

    def describe(self) -> dict[str, Any]:
        """How to reach the machine over ssh, for the results and `cpa-harness ssh`."""
        return {"host": self.access.host if self.access else None,
                "port": self.access.port if self.access else None,
                "key": str(self.access.key) if self.access else None,
                "host_key": self.host_key, "boot_id": self.boot_id,
                "connect_seconds": self.connect_seconds}
