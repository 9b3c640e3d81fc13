"""No QEMU outlives the harness: Ctrl-C, SIGTERM, and SIGKILL of the harness.

Each test starts a real boot in a child harness process, interrupts it once
the guest kernel is printing, and then reads the process table.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import as_from_a_terminal, qemu_pids

pytestmark = pytest.mark.boot


def start_boot(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    marker = f"cpa_teardown={secrets.token_hex(4)}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "boot", "--arch", "i386", "--cmdline", marker,
         "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=as_from_a_terminal)
    serial = tmp_path / "cells" / "i386-boot" / "serial.log"
    deadline = time.monotonic() + 900     # includes building the kernel if not cached
    while time.monotonic() < deadline:
        if serial.exists() and b"Linux version" in serial.read_bytes():
            break
        assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the guest never started printing")
    assert qemu_pids(marker), "no QEMU running with the marker"
    return proc, marker


def gone(marker: str, within: float = 10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not qemu_pids(marker):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_ends_qemu_and_keeps_results(tmp_path: Path, sig: signal.Signals) -> None:
    proc, marker = start_boot(tmp_path)
    proc.send_signal(sig)
    out = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode == 130, out
    assert gone(marker)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert (tmp_path / "cells" / "i386-boot" / "serial.log").stat().st_size > 0


def test_sigkill_of_the_harness_kills_qemu(tmp_path: Path) -> None:
    proc, marker = start_boot(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert gone(marker), "QEMU outlived a SIGKILLed harness"
