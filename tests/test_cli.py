"""Bad input: one clear line, the documented exit code, no traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:   # argparse usage errors
        code = int(e.code or 0)
    cap = capsys.readouterr()
    return code, cap.err


@pytest.mark.parametrize("argv,code,needle", [
    (["run", "--cell", "nope*"], 2, "no cell matches nope*"),
    (["run", "--tree", "/nonexistent/linux"], 2, "kernel tree /nonexistent/linux does not exist"),
    (["run", "--tree", "/etc"], 2, "is not a kernel source tree"),
    (["run", "--fragment", "no-such-fragment"], 2, "unknown config fragment"),
    (["run", "--jobs", "0"], 2, "--jobs must be at least 1"),
    (["run", "--jobs", "two"], 2, "takes a number of cells or 'auto', not 'two'"),
    (["run", "--known-issues", "/nonexistent.toml"], 2, "known-issues file"),
    (["boot", "--arch", "arm64"], 2, "invalid choice"),
    (["boot", "--arch", "x86_64", "--memory", "0"], 2, "--memory must be at least 1"),
    (["frobnicate"], 2, "invalid choice"),
    (["boot", "--arch", "i386-pae", "--kexec", "kexec_file_load"], 2,
     "kexec_file_load exists on x86_64 only"),
    (["boot", "--arch", "x86_64", "--kexec", "kexec_jump"], 2, "invalid choice"),
    (["boot", "--arch", "x86_64", "--kexec-target", "/boot"], 2, "--kexec-target needs --kexec"),
    (["boot", "--arch", "x86_64", "--interactive", "--ssh"], 2, "not allowed with"),
    (["run", "--kexec-rounds", "0"], 2, "--kexec-rounds must be at least 1"),
    (["ssh", "/nonexistent-run"], 2, "is not a cpa-harness run directory"),
    (["ssh", "/tmp"], 2, "is not a cpa-harness run directory"),
    (["bisect", "--tree", "/tmp", "--good", "a", "--bad", "b", "--cell", "nope"], 2,
     "no cell 'nope' in the built-in cells"),
    (["bisect", "--tree", "/tmp", "--good", "a", "--bad", "b", "--cell", "i386"], 2,
     "/tmp is not a git repository"),
    (["bisect", "--tree", "/tmp", "--good", "a", "--bad", "b", "--cell", "i386",
      "--patch", "/nonexistent.patch"], 2, "/nonexistent.patch"),
    (["bisect-step", "--cell", "i386"], 2, "needs --signature"),
    (["parse", "/nonexistent.log"], 2, "/nonexistent.log"),
    (["parse", "/"], 2, "directory"),
])
def test_bad_input(argv: list[str], code: int, needle: str,
                   capsys: pytest.CaptureFixture[str]) -> None:
    got, err = run(argv, capsys)
    assert got == code
    assert needle in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_list_cells(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--list"]) == 0
    out = capsys.readouterr().out.split()
    assert out == ["x86_64-gbpages", "x86_64-debug-pagealloc", "i386-pae", "i386"]
    assert main(["run", "--list", "--cell", "i386*"]) == 0
    assert capsys.readouterr().out.split() == ["i386-pae", "i386"]


def test_ssh_to_a_run_with_no_guest_up(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    guest = tmp_path / "cells" / "i386" / "guest.json"
    guest.parent.mkdir(parents=True)
    # a guest that has gone: its QEMU pid is no longer running
    guest.write_text('{"port": 2222, "key": "k", "host_key": "ssh-ed25519 AAAA", '
                     '"kind": "qemu", "qemu_pid": 999999999}')
    code, err = run(["ssh", str(tmp_path)], capsys)
    assert code == 2 and f"no guest of {tmp_path} is running" in err
    assert len(err.strip().splitlines()) == 1
    # a machine its run has released, even if something still runs under that pid
    guest.write_text(json.dumps({"port": 2222, "key": "k", "host_key": "ssh-ed25519 AAAA",
                                 "kind": "qemu", "qemu_pid": os.getpid(), "released": True}))
    code, err = run(["ssh", str(tmp_path)], capsys)
    assert code == 2 and f"no guest of {tmp_path} is running" in err


def test_which_machines_may_still_be_up() -> None:
    from harness.target.kinds import may_be_up
    assert may_be_up({"kind": "qemu", "qemu_pid": os.getpid()})
    assert not may_be_up({"kind": "qemu", "qemu_pid": 999999999})
    assert not may_be_up({"kind": "qemu", "qemu_pid": None})
    # a machine the harness did not start: only connecting can tell
    assert may_be_up({"kind": "a-lab-box"})


def test_out_dir_not_creatable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run(["run", "--cell", "i386", "--out", str(blocker / "sub")], capsys)
    assert code == 2 and "cannot create --out" in err


def test_ssh_takes_cell_after_the_run_and_a_command_after_dashes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.scenarios import session
    seen: list[tuple[Path, str | None, list[str]]] = []
    monkeypatch.setattr(session, "ssh_into_run",
                        lambda run, cell, command, out: seen.append((run, cell, command)) or 0)
    assert main(["ssh", "RUN", "--cell", "x", "--", "sh", "-c", "a -- b"]) == 0
    assert main(["ssh", "--cell", "y", "RUN"]) == 0
    assert main(["ssh", "RUN", "--", "ls", "--cell"]) == 0
    assert seen == [(Path("RUN"), "x", ["sh", "-c", "a -- b"]), (Path("RUN"), "y", []),
                    (Path("RUN"), None, ["ls", "--cell"])]
