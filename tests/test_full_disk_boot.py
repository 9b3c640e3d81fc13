"""A full disk while writing results, made for real: a small tmpfs.

What must hold: one line saying what could not be written and what to do,
exit 3 (infrastructure), no traceback, nothing written before damaged, no
half-written file left under a result's name, and no QEMU left running.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import qemu_pids, wait_for_file

pytestmark = pytest.mark.boot

HARNESS = [sys.executable, "-m", "harness"]
SAMPLE = Path(__file__).parent / "data" / "runs" / "sample"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill the disk until `leave` bytes are free."""
    free = shutil.disk_usage(disk).free
    try:
        with open(disk / "filler", "wb") as f:
            f.write(b"\0" * max(0, free - leave))
    except OSError as e:        # full a little early (the harness writes too): the aim
        assert e.errno == errno.ENOSPC, e


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("cpa-harness: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_merge_onto_a_full_disk(small_disk: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(SAMPLE, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    fill(small_disk, 4096)
    r = subprocess.run([*HARNESS, "merge", str(small_disk / "merged"), str(run)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, (r.stdout, r.stderr)
    line = one_error_line(r.stderr)
    assert "No space left on device" in line and "free disk space" in line, line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # whatever was written is whole JSON; nothing half-written under a final name
    for p in (small_disk / "merged").rglob("*.json"):
        json.loads(p.read_text())
    assert not [p for p in small_disk.rglob(".*.tmp*")]


def test_a_run_whose_disk_fills_mid_boot(small_disk: Path) -> None:
    """Room to start (keys, the keyed initramfs); the disk fills as the kernel boots."""
    marker = "cpa_fulldisk=1"
    out = small_disk / "run"
    serial = out / "cells" / "i386-boot" / "serial.log"
    filler = threading.Thread(target=lambda: (wait_for_file(serial, b"Linux version"),
                                              fill(small_disk, 0)), daemon=True)
    filler.start()
    r = subprocess.run([*HARNESS, "boot", "--arch", "i386", "--accel", "tcg", "--cmdline", marker,
                        "--out", str(out)], capture_output=True, text=True, timeout=900)
    filler.join(5)
    assert r.returncode == 3, (r.stdout[-2000:], r.stderr)
    line = one_error_line(r.stderr)
    assert "No space left on device" in line, line
    assert not qemu_pids(marker), "QEMU outlived the run"
    logs = [serial, serial.with_name("serial.attempt-1.log")]
    assert any(b"Linux version" in p.read_bytes() for p in logs if p.exists())
    assert not [p for p in out.rglob(".*.tmp*")]
