"""Security properties that hold by construction, checked on the code itself:
no shell between the harness and a value it did not write, listening sockets
on loopback or in a private directory, private keys private."""

from __future__ import annotations

import ast
import stat
from pathlib import Path

from harness.arches import get_arch
from harness.target import qmp
from harness.target.qemu import QemuParams, qemu_argv
from harness.target.ssh import free_port, generate_client_key

HARNESS = Path(__file__).parent.parent / "harness"


def test_no_shell_anywhere() -> None:
    """shell=True, os.system and os.popen would let a kernel command line, a
    path or a guest's words be read by a shell."""
    found = []
    for path in sorted(HARNESS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                                  and kw.value.value is False):
                        found.append(f"{path.name}:{node.lineno} shell=")
                f = node.func
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and \
                        f.value.id == "os" and f.attr in ("system", "popen"):
                    found.append(f"{path.name}:{node.lineno} os.{f.attr}")
    assert not found


def test_guest_ports_listen_on_loopback_only(tmp_path: Path) -> None:
    p = QemuParams(arch=get_arch("x86_64"), accel="tcg", cpu="max", memory_mb=512, smp=1,
                   cmdline="", kernel=tmp_path / "k", initrd=tmp_path / "i",
                   ssh_port=free_port(), qmp_socket=tmp_path / "q.sock")
    argv = qemu_argv(p)
    nets = [a for a in argv if "hostfwd=" in a]
    assert nets and all("hostfwd=tcp:127.0.0.1:" in a for a in nets)
    assert all(":0.0.0.0:" not in a and "hostfwd=tcp::" not in a for a in argv)
    assert [a for a in argv if a.startswith("unix:")], "QMP on a unix socket"
    assert not any(a.startswith(("tcp:", "telnet:")) for a in argv)


def test_qmp_socket_directory_is_private() -> None:
    d = qmp.socket_dir()
    try:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    finally:
        qmp.remove_socket_dir(d)


def test_client_key_is_private(tmp_path: Path) -> None:
    key, public = generate_client_key(tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert public.startswith("ssh-rsa ")
