"""QEMU's QMP events, read for real: a firmware that triple-faults, QEMU
stopped or killed from the host, QEMU that never starts. Each asks what
qmp.ending() makes of QEMU's own account."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import as_from_a_terminal

from harness.proc import die_with_parent
from harness.target import qmp

QEMU = "qemu-system-x86_64"

# At the reset vector (real mode): load an IDT with limit 0, then int3. The
# interrupt is beyond the limit (#GP), so is the #GP (double fault), so is the
# double fault: a triple fault, which QEMU turns into a reset request.
TRIPLE_FAULT = bytes([0xFA,                                  # cli
                      0x2E, 0x0F, 0x01, 0x1E, 0xF8, 0xFF,    # lidt cs:[0xfff8]
                      0xCC,                                  # int3
                      0, 0, 0, 0, 0, 0])                     # 0xfff8: limit 0, base 0
HALT = bytes([0xFA, 0xF4, 0xEB, 0xFD])                       # cli; hlt; jmp back


def firmware(tmp: Path, code: bytes) -> Path:
    img = bytearray(b"\xf4" * 65536)
    img[0xFFF0:0xFFF0 + len(code)] = code
    path = tmp / "fw.bin"
    path.write_bytes(bytes(img))
    return path


def start(tmp: Path, code: bytes, *extra: str) -> tuple[subprocess.Popen[bytes], qmp.Monitor]:
    sock_dir = qmp.socket_dir()
    sock = sock_dir / "qmp.sock"
    argv = [QEMU, "-machine", "pc", "-accel", "tcg", "-m", "16", "-nodefaults",
            "-display", "none", "-no-reboot", "-bios", str(firmware(tmp, code)),
            "-qmp", f"unix:{sock},server=on,wait=on", "-S", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: (die_with_parent(), as_from_a_terminal()))
    mon = qmp.Monitor(sock, tmp / "qmp.jsonl")
    mon.start(alive=lambda: proc.poll() is None)
    return proc, mon


def finish(proc: subprocess.Popen[bytes], mon: qmp.Monitor) -> qmp.Ending:
    proc.wait(timeout=30)
    mon.wait_closed()
    rc = proc.returncode
    end = qmp.ending(mon.snapshot(), rc if rc >= 0 else None, -rc if rc < 0 else None,
                     mon.connected.is_set())
    mon.stop()
    qmp.remove_socket_dir(mon.socket.parent)
    return end


def test_a_triple_fault_is_a_guest_reset(tmp_path: Path) -> None:
    proc, mon = start(tmp_path, TRIPLE_FAULT)
    end = finish(proc, mon)
    assert proc.returncode == 0         # the exit status alone would say nothing
    assert (end.kind, end.infra) == ("reset", False), end
    assert "guest-reset" in end.text
    logged = (tmp_path / "qmp.jsonl").read_text()
    assert '"SHUTDOWN"' in logged and '"guest": true' in logged


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_qemu_stopped_from_the_host_is_infrastructure(tmp_path: Path, sig: int) -> None:
    proc, mon = start(tmp_path, HALT)
    assert mon.connected.wait(20), mon.error
    time.sleep(0.5)
    os.kill(proc.pid, sig)
    end = finish(proc, mon)
    assert proc.returncode == 0         # QEMU exits 0 when told to stop by a signal
    assert (end.kind, end.infra) == ("", True), end
    assert "host-signal" in end.text


def test_qemu_killed_is_infrastructure(tmp_path: Path) -> None:
    proc, mon = start(tmp_path, HALT)
    assert mon.connected.wait(20), mon.error
    proc.kill()
    end = finish(proc, mon)
    assert (end.kind, end.infra) == ("", True), end
    assert "signal 9" in end.text


def test_qemu_that_does_not_start_is_infrastructure(tmp_path: Path) -> None:
    proc, mon = start(tmp_path, HALT, "-no-such-option")
    end = finish(proc, mon)
    assert proc.returncode != 0
    assert (end.kind, end.infra) == ("", True), end
    assert "did not start" in end.text and mon.error


def test_events_are_kept_in_order_with_their_data() -> None:
    events = [{"event": "STOP"}, {"event": "SHUTDOWN",
                                  "data": {"guest": True, "reason": "guest-shutdown"}}]
    assert qmp.ending(events, 0, None, True).kind == "shutdown"
    panicked = [{"event": "GUEST_PANICKED", "data": {"action": "pause"}}, *events]
    assert qmp.ending(panicked, 0, None, True).kind == "panic"
    host = [{"event": "SHUTDOWN", "data": {"guest": False, "reason": "host-qmp-quit"}}]
    assert qmp.ending(host, 0, None, True).infra
    assert qmp.ending([], 1, None, True).infra


def test_socket_dirs_of_a_dead_harness_are_swept() -> None:
    """A SIGKILLed harness runs no cleanup: the next one removes what it left."""
    import tempfile
    dead = _dead_pid()
    stale = Path(tempfile.mkdtemp(prefix=f"{qmp.SOCKET_DIR_PREFIX}{dead}."))
    live = qmp.socket_dir()
    try:
        assert not stale.exists()
        assert live.exists() and live.name.startswith(f"{qmp.SOCKET_DIR_PREFIX}{os.getpid()}.")
    finally:
        qmp.remove_socket_dir(live)
        qmp.remove_socket_dir(stale)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid
