"""Every make the harness runs (the kernel's build, the exerciser module's),
as a real child process: a session of its own, nice 10 in an autogroup at
nice 10, the harness's build identity; the harness's own priority untouched."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness.kernel.build import start_make

SHOW = "cat /proc/self/stat; cat /proc/self/autogroup 2>/dev/null; echo $KBUILD_BUILD_USER"


def test_make_runs_in_its_own_session_and_yields_to_guests() -> None:
    autogroup = Path("/proc/self/autogroup")
    ours = autogroup.read_text() if autogroup.exists() else ""
    proc = start_make(["sh", "-c", SHOW], subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    stat, *rest = out.splitlines()
    # after the command's name: state ppid pgrp session ... nice is the 19th field
    fields = stat.rsplit(")", 1)[1].split()
    session, nice = int(fields[3]), int(fields[16])
    assert session != os.getsid(0) and nice == os.nice(0) + 10
    if ours:
        # its own autogroup (a new session makes one), at nice 10; ours as it was
        assert rest[0].split()[0] != ours.split()[0] and rest[0].split()[-1] == "10"
        assert autogroup.read_text() == ours
    assert rest[-1] == "cpa-harness"
