"""The guest over ssh: paramiko to the guest's dropbear, through QEMU's port forward.

The guest's init prints its host key on the serial console
(`CPA-HARNESS-HOSTKEY ssh-ed25519 AAAA... root@cpa-guest`) before its ready
marker; the harness pins exactly that key and refuses any other, so nothing
but the guest it booted can answer. The client key is a fresh key pair per
run, installed in the initramfs as root's authorized key.

QEMU's user networking accepts the TCP connection on the forwarded port before
dropbear listens in the guest, so the first attempts see resets, EOF or a
banner timeout: connect() retries until its deadline. Every later wait has a
deadline too, and a command that overruns it raises SshTimeout.

One command at a time: each channel is finished (exit status read, channel
closed) before the next is opened. Back-to-back open channels made dropbear
answer "Unable to open channel" in an earlier experiment.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import re
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import paramiko

from harness.errors import InfraError

# paramiko logs every failed attempt (with a traceback) at ERROR level; with no
# handler configured anywhere, Python would print those to stderr while
# connect() is merely waiting for dropbear. Applications that configure
# logging still receive them through the root logger.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# The line guest/init prints for each host key, before CPA-HARNESS-READY. The
# key must be followed by a space or the line end: matched against a stream
# (pexpect), the pattern would otherwise match a key cut where the read ended.
HOSTKEY_RE = re.compile(rb"CPA-HARNESS-HOSTKEY (?:nonce=(?P<nonce>\S+) )?"
                        rb"(?P<type>ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+) "
                        rb"(?P<key>[A-Za-z0-9+/]+={0,2})(?=\s)")
HOSTKEY_PREFIX = "CPA-HARNESS-HOSTKEY "

USER = "root"
# One attempt may wait this long for the TCP connect, the banner, the key
# exchange and authentication, but never past the caller's deadline.
ATTEMPT_CAP = 15.0
RETRY_PAUSE = 0.3
POLL = 0.01
CHUNK = 32768


class SshError(Exception):
    """An ssh operation on a connected guest failed."""


class SshNoAnswer(InfraError):
    """No ssh connection could be made before the deadline."""


class SshTimeout(SshError):
    """A command (or copy) did not finish before its deadline: the guest may hang."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"no end of {what} over ssh within {seconds:.0f}s")
        self.what = what
        self.seconds = seconds


class SshLost(SshError):
    """The connection or a channel broke while in use (the guest died or rebooted?)."""


class HostKeyMismatch(InfraError):
    """Something answered on the forwarded port with a host key other than the pinned one."""


class KeyRefused(InfraError):
    """The server answered with the pinned host key and refused the client key."""


@dataclass(frozen=True)
class Completed:
    status: int     # -1 when the channel closed without an exit status (killed by a signal)
    stdout: str
    stderr: str


# --- keys and ports ---------------------------------------------------------

def generate_client_key(dir: Path) -> tuple[Path, str]:
    """A fresh RSA 2048 key pair in dir: (private key path, authorized_keys line).

    paramiko cannot generate Ed25519 keys; RSA with the rsa-sha2 signatures is
    what dropbear 2022.83 accepts. The private key file is created 0600.
    """
    dir.mkdir(parents=True, exist_ok=True)
    key = paramiko.RSAKey.generate(2048)
    path = dir / "id_rsa"
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        key.write_private_key(f)
    line = f"{key.get_name()} {key.get_base64()} cpa-harness"
    (dir / "id_rsa.pub").write_text(line + "\n")
    return path, line


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for QEMU's hostfwd)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def parse_host_key_line(line: str) -> paramiko.PKey:
    """`[CPA-HARNESS-HOSTKEY ]<type> <base64> [comment]` as a paramiko public key."""
    text = line.strip()
    if text.startswith(HOSTKEY_PREFIX):
        text = text[len(HOSTKEY_PREFIX):]
    fields = [f for f in text.split() if not f.startswith("nonce=")]
    if len(fields) < 2:
        raise InfraError(f"bad host key line from the guest: {line.strip()[:120]!r}",
                         "the guest's init prints 'CPA-HARNESS-HOSTKEY <type> <base64>'")
    try:
        blob = base64.b64decode(fields[1], validate=True)
        key = paramiko.PKey.from_type_string(fields[0], blob)
        # paramiko pads a truncated key instead of refusing it
        if key.asbytes() != blob:
            raise ValueError("truncated or padded key")
    except (binascii.Error, ValueError, paramiko.SSHException) as e:
        raise InfraError(f"bad host key line from the guest: {line.strip()[:120]!r} ({e})",
                         "the serial console may have mixed a kernel message into it") from None
    return key


def host_key_lines(serial: bytes, nonce: str | None = None) -> list[str]:
    """Every host key line guest/init printed in serial output, as '<type> <base64>';
    with `nonce`, only the lines of the boot that carries it."""
    return [f"{m['type'].decode()} {m['key'].decode()}" for m in HOSTKEY_RE.finditer(serial)
            if nonce is None or (m["nonce"] or b"").decode() == nonce]


# --- the pinned host key ----------------------------------------------------

class _RefuseUnknownKey(paramiko.MissingHostKeyPolicy):
    """Any key that is not the pinned one is refused (paramiko itself raises
    BadHostKeyException for a different key of the pinned type)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise HostKeyMismatch(
            f"the guest at {hostname} offered a {key.get_name()} host key "
            f"{key.fingerprint}, not the one its console printed",
            "another process may own the port; run again")


# What paramiko may offer besides what its Transport lists (older versions).
_KNOWN_HOST_KEY_ALGORITHMS = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                              "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa",
                              "ssh-dss")


def _host_key_algorithms(key: paramiko.PKey) -> list[str]:
    """The host key algorithms that can verify `key`: the client offers only these."""
    name = key.get_name()
    if name == "ssh-rsa":
        return ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
    return [name]


def _disabled_for(key: paramiko.PKey) -> dict[str, list[str]]:
    # dropbear -R creates host keys of other types on demand when a client asks
    # for them; the client must not ask, or it would meet a key it cannot pin.
    keep = set(_host_key_algorithms(key))
    offered: tuple[str, ...] = getattr(paramiko.Transport, "_preferred_keys", ())
    every = dict.fromkeys((*offered, *_KNOWN_HOST_KEY_ALGORITHMS))
    return {"keys": [k for k in every if k not in keep]}


# --- the connection ---------------------------------------------------------

class GuestSsh:
    """One ssh connection to a guest, as root, with its host key pinned."""

    def __init__(self) -> None:
        self.client: paramiko.SSHClient | None = None
        self.host = ""
        self.port = 0
        self.attempts = 0
        self.aborted = False

    def abort(self) -> None:
        """From another thread: the guest is gone; stop connecting, close."""
        self.aborted = True
        self.close()

    def __enter__(self) -> GuestSsh:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def connect(self, *, host: str = "127.0.0.1", port: int, key_path: Path,
                host_key_line: str, deadline: float, user: str = USER) -> None:
        """Connect and authenticate, retrying until `deadline` (a time.monotonic() value).

        Raises HostKeyMismatch at once for a wrong host key, InfraError when no
        attempt succeeded before the deadline (the caller adds the serial tail).
        """
        self.close()
        pinned = parse_host_key_line(host_key_line)
        try:
            pkey = paramiko.PKey.from_path(key_path)
        except (OSError, paramiko.SSHException) as e:
            raise InfraError(f"cannot read the ssh client key {key_path}: {e}",
                             "the run directory may have been removed") from None
        self.host, self.port = host, port
        name = host if port == 22 else f"[{host}]:{port}"
        started = time.monotonic()
        last = "no attempt made"
        self.attempts = 0
        while True:
            left = deadline - time.monotonic()
            if self.aborted:
                raise SshNoAnswer(f"ssh to {host}:{port} abandoned: the guest stopped")
            if left <= 0:
                raise SshNoAnswer(
                    f"ssh to {host}:{port} did not answer within "
                    f"{time.monotonic() - started:.0f}s ({self.attempts} attempts; "
                    f"last error: {last})",
                    "see the guest's serial log: did dropbear start?")
            self.attempts += 1
            client = paramiko.SSHClient()
            client.get_host_keys().add(name, pinned.get_name(), pinned)
            client.set_missing_host_key_policy(_RefuseUnknownKey())
            each = max(0.1, min(ATTEMPT_CAP, left))
            try:
                client.connect(host, port=port, username=user, pkey=pkey, timeout=each,
                               banner_timeout=each, auth_timeout=each, channel_timeout=each,
                               allow_agent=False, look_for_keys=False,
                               disabled_algorithms=_disabled_for(pinned))
            except paramiko.BadHostKeyException as e:
                client.close()
                raise HostKeyMismatch(
                    f"the guest at {host}:{port} offered host key {e.key.fingerprint}, "
                    f"not the pinned {pinned.fingerprint}",
                    "another process may own the port, or the console line was garbled; "
                    "run again") from None
            except HostKeyMismatch:
                client.close()
                raise
            except paramiko.AuthenticationException as e:
                client.close()
                if "timeout" in str(e).lower() or "EOF" in str(e):
                    # A server too busy to finish, or restarting: not a refusal
                    last = " ".join(f"{type(e).__name__}: {e}".split())[:200]
                    time.sleep(min(RETRY_PAUSE, max(0.0, deadline - time.monotonic())))
                    continue
                raise KeyRefused(f"the guest at {host}:{port} refused the harness's ssh key "
                                 f"({e})",
                                 "was the initramfs built with this run's authorized_key?"
                                 ) from None
            except (OSError, EOFError, paramiko.SSHException) as e:
                # Reset, refused, EOF, banner or key exchange timeout: dropbear
                # is not listening yet, or not answering yet under TCG.
                client.close()
                last = " ".join(f"{type(e).__name__}: {e}".split())[:200]
                time.sleep(min(RETRY_PAUSE, max(0.0, deadline - time.monotonic())))
                continue
            self.client = client
            return

    def _transport(self) -> paramiko.Transport:
        if self.client is None:
            raise SshLost("not connected")
        t = self.client.get_transport()
        if t is None or not t.is_active():
            raise SshLost(f"the ssh connection to {self.host}:{self.port} is gone")
        return t

    def _exec(self, command: str, timeout: float, what: str,
              stdin: Path | None = None) -> Completed:
        """Run one command to its end: open, (feed stdin), read, exit status, close."""
        deadline = time.monotonic() + timeout
        t = self._transport()
        try:
            chan = t.open_session(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise SshLost(f"cannot open an ssh channel for {what}: {e}") from None
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            chan.settimeout(max(0.01, deadline - time.monotonic()))
            self._exec_request(chan, command, deadline, what, timeout)
            if stdin is not None:
                self._feed(chan, stdin, deadline, what, timeout)
            chan.shutdown_write()
            chan.settimeout(0.0)
            while True:
                busy = False
                if chan.recv_ready():
                    out.append(chan.recv(CHUNK))
                    busy = True
                if chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(CHUNK))
                    busy = True
                if (not busy and chan.exit_status_ready() and not chan.recv_ready()
                        and not chan.recv_stderr_ready()
                        and (chan.eof_received or chan.closed)):
                    break
                if time.monotonic() > deadline:    # also when output never stops
                    raise SshTimeout(what, timeout)
                if not busy:
                    if not t.is_active():
                        raise SshLost(f"the ssh connection broke during {what}")
                    time.sleep(POLL)
            status = chan.recv_exit_status()   # ready: does not block
        except TimeoutError:
            raise SshTimeout(what, timeout) from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise SshLost(f"ssh failed during {what}: {e}") from None
        finally:
            chan.close()
        return Completed(status, b"".join(out).decode(errors="replace"),
                         b"".join(err).decode(errors="replace"))

    @staticmethod
    def _exec_request(chan: paramiko.Channel, command: str, deadline: float, what: str,
                      timeout: float) -> None:
        """exec_command() waits for the guest's answer without any timeout (a guest
        that stopped after opening the channel would hold it for ever): closing
        the channel at the deadline ends the wait."""
        def give_up() -> None:
            with contextlib.suppress(Exception):    # the connection may be gone already
                chan.close()

        timer = threading.Timer(max(0.01, deadline - time.monotonic()), give_up)
        timer.daemon = True
        timer.start()
        try:
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError):
            if time.monotonic() >= deadline:
                raise SshTimeout(what, timeout) from None
            raise
        finally:
            timer.cancel()

    @staticmethod
    def _feed(chan: paramiko.Channel, local: Path, deadline: float, what: str,
              timeout: float) -> None:
        with open(local, "rb") as f:
            while block := f.read(CHUNK):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SshTimeout(what, timeout)
                chan.settimeout(left)
                chan.sendall(block)

    def run(self, command: str, timeout: float) -> Completed:
        """Run `command` in the guest's shell; stdout and stderr are kept apart."""
        return self._exec(command, timeout, f"'{command}'")

    def runner(self, timeout: float) -> Callable[[str], tuple[int, str]]:
        """A (status, output) command runner like Machine.run, for stats.collect().

        The output is stdout; stderr is appended only when the command failed.
        """
        def run(command: str) -> tuple[int, str]:
            c = self.run(command, timeout)
            return c.status, c.stdout if c.status == 0 else c.stdout + c.stderr
        return run

    def put(self, local: Path, remote: str, mode: int = 0o644, timeout: float = 60.0) -> None:
        """Copy a host file into the guest (no sftp-server there: `cat >` with stdin)."""
        q = shlex.quote(remote)
        what = f"copy of {local} to {remote}"
        c = self._exec(f"cat > {q} && chmod {mode:o} {q}", timeout, what, stdin=local)
        if c.status != 0:
            raise SshError(f"{what} failed with status {c.status}: "
                           f"{(c.stderr or c.stdout).strip()[:200]}")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
