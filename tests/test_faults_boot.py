"""Faults around a real guest: the ssh port taken by another process, QEMU
killed or stopped from the host mid-boot, QEMU that cannot start."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import qemu_pids, wait_for_file

from harness import paths
from harness.cells import SMOKE
from harness.results.cell import Verdict
from harness.run import RunOptions, run_cells
from harness.target import vm
from harness.target.ssh import free_port

pytestmark = pytest.mark.boot


def test_a_taken_ssh_port_is_an_infra_error_and_retried(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU cannot bind the forward: not the kernel's fault; one more try on a free port."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    taken = squatter.getsockname()[1]
    ports = iter([taken])
    monkeypatch.setattr(vm, "free_port", lambda: next(ports, None) or free_port())
    cell = replace(next(c for c in SMOKE if c.name == "i386"), periods=0)
    try:
        [res] = run_cells([cell], RunOptions(jobs=1), tmp_path, paths.cache_dir())
    finally:
        squatter.close()
    assert res.verdict == Verdict.PASS, res.reason
    assert res.retried_after.startswith(f"QEMU could not forward 127.0.0.1:{taken} to the "
                                        "guest's ssh port (taken by another process?)")
    assert res.ssh is not None and res.ssh.port != taken
    first = (tmp_path / "cells" / "i386" / "serial.attempt-1.log").read_text()
    assert "Could not set up host forwarding rule" in first


def _kill_when_booting(cell_dir: Path, marker: str, sig: int) -> None:
    """As soon as the kernel prints, kill its QEMU from outside the harness."""
    wait_for_file(cell_dir / "serial.log", b"Linux version")
    for pid in qemu_pids(marker):
        os.kill(pid, sig)


@pytest.mark.parametrize("sig,said", [(signal.SIGKILL, "killed by signal 9"),
                                      (signal.SIGTERM, "QMP SHUTDOWN reason host-signal")])
def test_qemu_killed_mid_boot_is_an_infra_error_and_retried(tmp_path: Path, sig: int,
                                                            said: str) -> None:
    """Someone on the host kills QEMU while the kernel boots: not the kernel's
    fault, whatever the console shows; the retry then passes."""
    marker = f"cpa_fault={secrets.token_hex(4)}"
    cell = replace(next(c for c in SMOKE if c.name == "i386"), name="i386-killed",
                   cmdline=marker, periods=0)
    killer = threading.Thread(target=_kill_when_booting,
                              args=(tmp_path / "cells" / cell.name, marker, sig), daemon=True)
    killer.start()
    [res] = run_cells([cell], RunOptions(jobs=1, accel="tcg"), tmp_path, paths.cache_dir())
    killer.join(5)
    assert res.verdict == Verdict.PASS, res.reason
    assert said in res.retried_after, res.retried_after
    assert not any(f.kind in ("reset", "shutdown", "hang") for f in res.failures)
    first = tmp_path / "cells" / cell.name / "serial.attempt-1.log"
    assert b"Linux version" in first.read_bytes()
    if sig == signal.SIGTERM:
        events = (tmp_path / "cells" / cell.name / "serial.attempt-1.qmp.jsonl").read_text()
        assert '"host-signal"' in events


@pytest.mark.parametrize("extra,said", [
    ("-no-such-option", "-no-such-option: invalid option"),
    ("-bios /nonexistent/bios.bin", "could not load PC BIOS '/nonexistent/bios.bin'"),
])
def test_qemu_that_cannot_start_is_an_infra_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  extra: str, said: str) -> None:
    """A bad option or missing firmware: QEMU exits at once. Infrastructure, tried
    twice, with QEMU's own words; never a kernel verdict."""
    real = shutil.which("qemu-system-i386")
    assert real
    wrapper = tmp_path / "bin" / "qemu-system-i386"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {real} "$@" {extra}\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    cell = replace(next(c for c in SMOKE if c.name == "i386"), periods=0)
    start = time.monotonic()
    [res] = run_cells([cell], RunOptions(jobs=1, accel="tcg"), tmp_path / "run",
                      paths.cache_dir())
    assert res.verdict == Verdict.INFRA_ERROR, (res.verdict, res.reason)
    assert said in res.reason and said in res.retried_after, (res.reason, res.retried_after)
    assert not res.failures
    assert time.monotonic() - start < 120
