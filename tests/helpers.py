"""Shared by the boot tests that act on a running guest from outside the harness."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def qemu_pids(marker: str) -> list[int]:
    """QEMU processes whose command line holds `marker` (a word on the guest's)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd and b"qemu-system" in cmd:
            pids.append(int(p.name))
    return pids


def wait_for_file(path: Path, text: bytes = b"", within: float = 900.0) -> float:
    """Wait until `path` exists (and holds `text`); the time.time() it did."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            if text in path.read_bytes():
                return time.time()
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{path} never appeared{' with ' + repr(text) if text else ''}")


def guest_command(run_dir: Path, cell: str, command: str) -> subprocess.Popen[bytes]:
    """`cpa-harness ssh RUN --cell CELL -- sh -c COMMAND`, started and not waited for:
    a command that resets or wedges the guest never answers."""
    return subprocess.Popen([sys.executable, "-m", "harness", "ssh", str(run_dir), "--cell", cell,
                             "--", "sh", "-c", command],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def fake_kernel_tree(tree: Path, version: str = "6.12.117") -> Path:
    """The few files that make a directory a kernel tree the harness supports."""
    major, minor, *sub = version.split(".")
    (tree / "arch" / "x86" / "mm" / "pat").mkdir(parents=True)
    (tree / "arch" / "x86" / "Kconfig").write_text("")
    (tree / "arch" / "x86" / "Kconfig.debug").write_text("config CPA_DEBUG\n\tbool\n")
    (tree / "arch" / "x86" / "mm" / "pat" / "set_memory.c").write_text("")
    (tree / "Makefile").write_text(f"VERSION = {major}\nPATCHLEVEL = {minor}\n"
                                   f"SUBLEVEL = {sub[0] if sub else 0}\nEXTRAVERSION =\n")
    return tree


def as_from_a_terminal() -> None:
    """preexec_fn for a child a test will signal: SIGINT and SIGQUIT at their
    defaults, as a terminal starts a program. A background job of a
    non-interactive shell (`nohup ... &`, CI runners) starts with them ignored,
    the child inherits that, and the harness rightly keeps an ignored SIGINT
    ignored -- so a test that sends SIGINT must not depend on how it was started."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def run_passing_matrix(where: Path, matrix: str) -> dict[str, dict[str, Any]]:
    """`cpa-harness run` of a matrix's cells (two at a time) into where/run, which
    must pass; each cell's result.json by name."""
    from harness.cli import main
    (where / "m.toml").write_text(matrix)
    code = main(["run", "--matrix", str(where / "m.toml"), "--jobs", "2",
                 "--out", str(where / "run")])
    cells = {p.parent.name: json.loads(p.read_text())
             for p in (where / "run" / "cells").glob("*/result.json")}
    assert code == 0, {n: (c["verdict"], c["reason"]) for n, c in cells.items()}
    return cells
