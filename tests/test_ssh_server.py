"""GuestSsh against a real ssh server (paramiko's, on loopback) that misbehaves
the way a stopped guest does: it opens the channel, then never answers the
exec request. paramiko's exec_command() would wait for ever; the harness's
command must end at its deadline as a timeout."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from harness.target.ssh import GuestSsh, SshTimeout, generate_client_key


class _Stalls(paramiko.ServerInterface):
    def __init__(self, public: paramiko.PKey) -> None:
        self.public = public
        self.release = threading.Event()

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL if key == self.public else paramiko.AUTH_FAILED

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.release.wait(60)       # a guest whose dropbear was stopped: no answer
        return False


@pytest.fixture
def stalling_server(tmp_path: Path) -> Iterator[tuple[int, Path, str]]:
    key_path, public_line = generate_client_key(tmp_path)
    public = paramiko.RSAKey(data=base64.b64decode(public_line.split()[1]))
    hk = paramiko.RSAKey.generate(2048)
    server = _Stalls(public)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    port = sock.getsockname()[1]
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        conn, _ = sock.accept()
        t = paramiko.Transport(conn)
        t.add_server_key(hk)
        transports.append(t)
        t.start_server(server=server)

    threading.Thread(target=serve, daemon=True).start()
    yield port, key_path, f"{hk.get_name()} {hk.get_base64()}"
    server.release.set()
    for t in transports:
        t.close()
    sock.close()


def test_an_exec_request_never_answered_ends_at_the_deadline(
        stalling_server: tuple[int, Path, str]) -> None:
    port, key_path, host_key = stalling_server
    ssh = GuestSsh()
    ssh.connect(port=port, key_path=key_path, host_key_line=host_key,
                deadline=time.monotonic() + 20)
    start = time.monotonic()
    with pytest.raises(SshTimeout):
        ssh.run("true", 2.0)
    assert time.monotonic() - start < 5
    ssh.close()
