"""Manual sessions for real: `boot --ssh` and `boot --interactive` driven from a pty,
with `cpa-harness ssh RUN` reaching the guest from a second process meanwhile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

pytestmark = pytest.mark.boot

BOOT = 400      # build (cached) + TCG boot + ssh, with other tests running
HARNESS = [sys.executable, "-m", "harness"]


def start(mode: str, out: Path) -> pexpect.spawn:
    child = pexpect.spawn(HARNESS[0], [*HARNESS[1:], "boot", "--arch", "i386-pae", mode,
                                       "--out", str(out), "--db", str(out / "h.sqlite")],
                          encoding="utf-8", codec_errors="replace", timeout=BOOT,
                          dimensions=(40, 200))
    child.logfile_read = open(out.parent / f"{out.name}.pty.log", "w")   # noqa: SIM115
    child.expect(r"guest up \(boot id [0-9a-f-]{36}\)")
    return child


def second_terminal(out: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, "ssh", str(out), "--", *command], capture_output=True,
                          text=True, timeout=120)


def result(out: Path) -> dict[str, object]:
    [cell] = (out / "cells").iterdir()
    doc: dict[str, object] = json.loads((cell / "result.json").read_text())
    return doc


def test_ssh_session(tmp_path: Path) -> None:
    out = tmp_path / "ssh-run"
    child = start("--ssh", out)
    child.expect("ssh shell follows")
    r = second_terminal(out, "cat", "/proc/cmdline")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("console=ttyS0,115200 panic=-1")
    assert second_terminal(out, "sh", "-c", "exit 7").returncode == 7
    # stay past the first self-test pass (30 s after boot), then leave
    child.sendline("sleep 40; echo DONE-$((6*7))")
    child.expect("DONE-42", timeout=180)
    child.sendline("exit")
    child.expect(r"results: ", timeout=300)
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus == 0
    r2 = result(out)
    assert r2["verdict"] == "pass"
    stats = r2["stats"]
    assert isinstance(stats, dict) and {"boot", "end", "delta"} <= set(stats)
    # the guest is gone: the second terminal is told so
    [cell] = (out / "cells").iterdir()
    assert json.loads((cell / "guest.json").read_text())["released"] is True
    gone = second_terminal(out, "true")
    assert gone.returncode == 2 and "is running" in gone.stderr


def test_interactive_session(tmp_path: Path) -> None:
    out = tmp_path / "console-run"
    child = start("--interactive", out)
    child.expect("Ctrl-] leaves")
    child.send("\r")
    child.send("echo HELLO-$((40+2))\r")
    child.expect("HELLO-42", timeout=120)
    r = second_terminal(out, "uname", "-m")
    assert (r.returncode, r.stdout) == (0, "i686\n")
    child.send("\x1d")                      # Ctrl-]: leave before the first pass
    child.expect(pexpect.EOF, timeout=300)
    child.close()
    r2 = result(out)
    # no CPA self-test verdict was seen: not a pass, not a failure
    assert r2["verdict"] == "not-run" and "before the CPA self-test" in str(r2["reason"])
    log = (out / "cells" / "i386-pae-boot" / "serial.log").read_text(errors="replace")
    assert "HELLO-42" in log                 # what the user did is in the log
