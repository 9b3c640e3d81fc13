"""Faults around a real guest: the ssh port taken by another process."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest

from harness import paths
from harness.cells import SMOKE
from harness.results import Verdict
from harness.run import RunOptions, run_cells
from harness.scenarios import cpa
from harness.ssh import free_port

pytestmark = pytest.mark.boot


def test_a_taken_ssh_port_is_an_infra_error_and_retried(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU cannot bind the forward: not the kernel's fault; one more try on a free port."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    taken = squatter.getsockname()[1]
    ports = iter([taken])
    monkeypatch.setattr(cpa, "free_port", lambda: next(ports, None) or free_port())
    cell = replace(next(c for c in SMOKE if c.name == "i386"), periods=0)
    try:
        [res] = run_cells([cell], RunOptions(jobs=1), tmp_path, paths.cache_dir())
    finally:
        squatter.close()
    assert res.verdict == Verdict.PASS, res.reason
    assert res.retried_after == (f"QEMU could not forward 127.0.0.1:{taken} to the guest's ssh "
                                 "port (taken by another process?)")
    assert res.ssh["port"] != taken
    first = (tmp_path / "cells" / "i386" / "serial.attempt-1.log").read_text()
    assert "Could not set up host forwarding rule" in first
