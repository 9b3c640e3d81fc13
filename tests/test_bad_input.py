"""Bad input, table-tested through the real entry point (harness.cli.main).

Each case gives its documented exit code (README, "Exit codes": 2 for a user
error), one line on stderr that says what is wrong, no traceback, and does no
work first: no run directory, no source unpacked, no build, no file touched.
Logs are the exception that proves the rule: a binary or enormous log is
still a log, so `parse` analyses it and says what it found.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import fake_kernel_tree

from harness import run
from harness.cli import main
from harness.kernel import build, source
from harness.target.qemu import BASE_CMDLINE

LOGS = Path(__file__).parent / "data" / "logs"
# Bytes that are not UTF-8 (0x80-0xff), with NULs and every control byte among them.
BINARY = bytes(range(256)) * 16
HUGE = 20 * 1024 * 1024         # one line of 20 MB, no newline


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:     # argparse usage errors
        code = int(e.code or 0)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _run_dir(base: Path, name: str, verdicts: dict[str, str], **summary: Any) -> Path:
    """A finished run directory as write_summary and write_cell leave it."""
    d = base / name
    for cell, verdict in verdicts.items():
        (d / "cells" / cell).mkdir(parents=True)
        (d / "cells" / cell / "result.json").write_text(json.dumps(
            {"name": cell, "arch": "x86_64", "verdict": verdict, "reason": ""}))
    d.mkdir(exist_ok=True)
    (d / "summary.json").write_text(json.dumps({
        "started": 1.0, "finished": 2.0, "host": "h", "tree": "debian", "source_id": "s",
        "cells_requested": list(verdicts),
        "cells": [{"name": c, "arch": "x86_64", "verdict": v, "reason": "",
                   "result": f"cells/{c}/result.json"} for c, v in verdicts.items()],
        **summary}))
    return d


CELL = '[[cell]]\nname = "a"\narch = "x86_64"\n'


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every bad input file, made once: some are 20 MB."""
    b = tmp_path_factory.mktemp("bad")

    def text(name: str, content: str) -> None:
        (b / name).parent.mkdir(parents=True, exist_ok=True)
        (b / name).write_text(content)

    def binary(name: str, content: bytes) -> None:
        (b / name).parent.mkdir(parents=True, exist_ok=True)
        (b / name).write_bytes(content)

    text("plain-file", "just a file\n")
    (b / "empty-dir").mkdir()
    (b / "fragment-dir.config").mkdir()
    # fragments and --patch
    text("garbage.config", "CONFIG_X=y\nthis is not kconfig\n")
    binary("binary.config", BINARY)
    binary("nul.config", b"CONFIG_A=y\n\0\0\0\n")
    text("bad-value.config", "CONFIG_X=y; rm -rf /\n")
    text("huge-line.config", "x" * 1_000_000)
    binary("patch-series/series", BINARY)
    # trees
    text("half-tree/Makefile", "VERSION = 6\nPATCHLEVEL = 12\n")     # no arch/x86/Kconfig
    binary("binary-makefile-tree/Makefile", BINARY)
    text("binary-makefile-tree/arch/x86/Kconfig", "")
    (b / "loop-a").symlink_to(b / "loop-b")
    (b / "loop-b").symlink_to(b / "loop-a")
    # logs
    binary("binary.log", BINARY)
    binary("huge-line.log", b"A" * HUGE)
    text("empty.log", "")
    binary("noise-then-pass.log", BINARY + b"\n" + (LOGS / "i386.log").read_bytes())
    binary("huge-then-bug.log", b"\xff" * HUGE + b"\n"
           + (LOGS / "lkdtm-x86_64-bug.log").read_bytes())
    # matrices
    binary("binary.toml", BINARY)
    (b / "matrix-dir.toml").mkdir()
    text("huge.toml", "# " + "x" * HUGE + "\n")
    text("huge-value.toml", CELL + f'memory = "{"x" * 5_000_000}"\n')
    text("kexec-list.toml", CELL + "kexec = [[1]]\n")
    text("cmdline-newline.toml", CELL + 'cmdline = "nokaslr\\nreboot"\n')
    text("cmdline-quote.toml", CELL + "cmdline = 'init=\"/bin/sh'\n")
    text("cmdline-long.toml", CELL + f'cmdline = "{"a" * 3000}"\n')
    text("fragment-garbage.toml", CELL + f'fragments = ["{b}/garbage.config"]\n')
    text("nested.toml", "cell = " + "[" * 100_000)
    text("long-name.toml", f'[[cell]]\nname = "{"n" * 200}"\narch = "i386"\n')
    text("cell-list.toml", "cell = [1]\n")
    # known-issues files
    text("issue-int.toml", "issue = 1\n")
    text("issue-list.toml", "issue = [1]\n")
    text("issue-arches.toml", '[[issue]]\nkind = "warning"\ntitle = "x"\narches = "x86_64"\n')
    text("issue-version.toml", '[[issue]]\nkind = "warning"\ntitle = "x"\nmin_kernel = "six"\n')
    # run directories
    _run_dir(b, "run-good", {"x1": "pass"})
    text("run-truncated/summary.json", '{"started": 1.0, "cells": [')
    binary("run-binary/summary.json", BINARY)
    text("run-nested/summary.json", "[" * 100_000)
    _run_dir(b, "run-source-list", {"x2": "pass"}, source_id=["a", "b"])
    _run_dir(b, "run-started-text", {"x3": "pass"}, started="yesterday")
    _run_dir(b, "run-host-object", {"x4": "pass"}, host={"name": "h"})
    _run_dir(b, "run-huge-name", {}, cells=[{"name": "a" * 1_000_000, "verdict": "pass"}])
    _run_dir(b, "run-result-truncated", {"x5": "pass"})
    text("run-result-truncated/cells/x5/result.json", '{"name": "x5", "ar')
    _run_dir(b, "run-result-verdict", {"x6": "pass"})
    text("run-result-verdict/cells/x6/result.json",
         '{"name": "x6", "arch": "x86_64", "verdict": "great"}')
    # history stores that are not
    text("note.txt", "x\n")
    binary("binary.sqlite", BINARY)
    return b


@pytest.fixture
def no_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Data and cache in tmp_path, and any start of real work fails the test at once
    (rather than unpacking a kernel source or starting a build)."""
    monkeypatch.setenv("CPA_HARNESS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CPA_HARNESS_CACHE", str(tmp_path / "cache"))

    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the bad input was noticed")

    monkeypatch.setattr(source, "from_debian", work)
    monkeypatch.setattr(build, "build", work)
    monkeypatch.setattr(run, "new_run_dir", work)
    return tmp_path


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = Path(root) / name
            st = p.lstat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def case(category: str, name: str, argv: list[str], needle: str, code: int = 2) -> Any:
    return pytest.param(argv, code, needle, id=f"{category}-{name}")


# One cell, so that a case that got past its check would fail fast in no_work.
RUN = ["run", "--cell", "i386"]
# "@" at the start of an argument is the directory of the bad files.
BAD_INPUT = [
    # --- options: unknown, wrong types, out of range ---------------------------
    case("option", "unknown", ["run", "--colour", "red"], "unrecognized arguments: --colour"),
    case("option", "not-int", ["boot", "--arch", "x86_64", "--smp", "two"],
         "argument --smp: invalid int value: 'two'"),
    case("option", "not-a-choice", ["run", "--accel", "xen"], "argument --accel: invalid choice"),
    case("option", "missing-log", ["parse"], "the following arguments are required: log"),
    case("option", "merge-nothing", ["merge", "@/out"],
         "the following arguments are required: RUN"),
    case("option", "smp-zero", ["boot", "--arch", "x86_64", "--smp", "0"],
         "--smp must be at least 1, not 0"),
    case("option", "out-is-a-file", [*RUN, "--out", "@/plain-file"],
         "is a file, not a directory"),
    # --- config fragments, --set, --patch ----------------------------------------
    case("fragment", "a-directory", [*RUN, "--fragment", "@/fragment-dir.config"],
         "fragment-dir.config is a directory"),
    case("fragment", "under-a-file", [*RUN, "--fragment", "@/plain-file/x.config"],
         "cannot read config fragment"),
    case("fragment", "garbage-line", [*RUN, "--fragment", "@/garbage.config"],
         "garbage.config:2: not a Kconfig line: 'this is not kconfig'"),
    case("fragment", "binary", [*RUN, "--fragment", "@/binary.config"],
         "binary.config is not text (not UTF-8)"),
    case("fragment", "nul-bytes", [*RUN, "--fragment", "@/nul.config"],
         r"nul.config:2: not a Kconfig line: '\x00\x00\x00'"),
    case("fragment", "shell-in-value", [*RUN, "--fragment", "@/bad-value.config"],
         "CONFIG_X has a value kconfig does not take: 'y; rm -rf /'"),
    case("fragment", "huge-line", [*RUN, "--fragment", "@/huge-line.config"],
         "huge-line.config:1: not a Kconfig line: 'xxxx"),
    case("fragment", "build-command", ["build", "--arch", "i386", "--fragment", "@/garbage.config"],
         "garbage.config:2: not a Kconfig line"),
    case("fragment", "set-no-value", [*RUN, "--set", "CONFIG_X"],
         "--set: not a Kconfig line: 'CONFIG_X'"),
    case("fragment", "set-shell-value", [*RUN, "--set", "X=y;reboot"],
         "--set: CONFIG_X has a value kconfig does not take: 'y;reboot'"),
    case("fragment", "set-open-quote", ["boot", "--arch", "i386", "--set", 'CMDLINE="a b'],
         "--set: CONFIG_CMDLINE has a value kconfig does not take"),
    case("fragment", "set-comment", ["build", "--arch", "x86_64", "--set", "# hello"],
         "--set '# hello' is not an option"),
    case("fragment", "patch-series-binary", [*RUN, "--patch", "@/patch-series"],
         "cannot read the patch series"),
    # --- kernel trees ---------------------------------------------------------------
    case("tree", "a-file", [*RUN, "--tree", "@/plain-file"],
         "plain-file is not a directory"),
    case("tree", "empty-dir", [*RUN, "--tree", "@/empty-dir"],
         "empty-dir is not a kernel source tree"),
    case("tree", "half-a-tree", ["boot", "--arch", "i386", "--tree", "@/half-tree"],
         "half-tree is not a kernel source tree"),
    case("tree", "binary-makefile", ["build", "--arch", "i386", "--tree", "@/binary-makefile-tree"],
         "binary-makefile-tree is not a kernel source tree"),
    case("tree", "symlink-loop", [*RUN, "--tree", "@/loop-a"],
         "kernel tree"),
    # --- logs that are errors (parse) --------------------------------------------------
    case("log", "missing", ["parse", "@/missing.log"], "missing.log: no such file"),
    case("log", "under-a-file", ["parse", "@/plain-file/x.log"], "cannot read: Not a directory"),
    case("log", "a-directory", ["parse", "@/empty-dir"], "empty-dir is a directory"),
    case("log", "vmlinux-missing", ["parse", "@/empty.log", "--vmlinux", "@/missing"],
         "missing: no such file"),
    # --- hostile kernel command lines (the accepted ones: test_hostile_cmdline_...) ---
    case("cmdline", "newline", ["boot", "--arch", "x86_64", "--show-command",
                                "--cmdline", "nokaslr\nreboot"],
         r"--cmdline has a control character '\n'"),
    case("cmdline", "nul", ["boot", "--arch", "x86_64", "--show-command", "--cmdline", "a\0b"],
         r"--cmdline has a control character '\x00'"),
    case("cmdline", "escape", ["boot", "--arch", "x86_64", "--cmdline", "a\x1b[2Jb"],
         r"--cmdline has a control character '\x1b'"),
    case("cmdline", "open-quote", ["boot", "--arch", "x86_64", "--show-command",
                                   "--cmdline", 'init="/bin/sh -c reboot'],
         "--cmdline has an unbalanced double quote"),
    case("cmdline", "too-long", ["boot", "--arch", "x86_64", "--cmdline", "a" * 3000],
         "--cmdline is 3000 bytes"),
    # --- matrix files (those test_matrix.py does not cover) --------------------------
    case("matrix", "binary", ["run", "--list", "--matrix", "@/binary.toml"],
         "binary.toml is not text (not UTF-8)"),
    case("matrix", "a-directory", ["run", "--list", "--matrix", "@/matrix-dir.toml"],
         "cannot read matrix"),
    case("matrix", "under-a-file", ["run", "--list", "--matrix", "@/plain-file/m.toml"],
         "cannot read matrix"),
    case("matrix", "huge-file", ["run", "--list", "--matrix", "@/huge.toml"],
         "no [[cell]] tables"),
    case("matrix", "huge-value", ["run", "--list", "--matrix", "@/huge-value.toml"],
         "key 'memory': must be an integer, not 'xxxx"),
    case("matrix", "nested", ["run", "--list", "--matrix", "@/nested.toml"],
         "TOML nested too deeply"),
    case("matrix", "kexec-not-a-name", ["run", "--list", "--matrix", "@/kexec-list.toml"],
         "key 'kexec': unknown method [1]"),
    case("matrix", "cmdline-newline", ["run", "--list", "--matrix", "@/cmdline-newline.toml"],
         r"key 'cmdline': has a control character '\n'"),
    case("matrix", "cmdline-open-quote", ["run", "--list", "--matrix", "@/cmdline-quote.toml"],
         "key 'cmdline': has an unbalanced double quote"),
    case("matrix", "cmdline-too-long", ["run", "--list", "--matrix", "@/cmdline-long.toml"],
         "key 'cmdline': is 3000 bytes"),
    case("matrix", "fragment-garbage", ["run", "--list", "--matrix", "@/fragment-garbage.toml"],
         "key 'fragments': garbage.config:2: not a Kconfig line"),
    case("matrix", "long-name", ["run", "--list", "--matrix", "@/long-name.toml"],
         "(128 at most)"),
    case("matrix", "cell-not-a-table", ["run", "--list", "--matrix", "@/cell-list.toml"],
         "cell '#1': a cell must be a table"),
    case("matrix", "bisect", ["bisect", "--tree", "@/empty-dir", "--good", "a", "--bad", "b",
                              "--cell", "a", "--matrix", "@/binary.toml"],
         "binary.toml is not text"),
    # --- known-issues files ---------------------------------------------------------------
    case("known", "binary", [*RUN, "--known-issues", "@/binary.toml"],
         "known-issues file @/binary.toml is not text (not UTF-8)"),
    case("known", "a-directory", [*RUN, "--known-issues", "@/empty-dir"],
         "cannot read known-issues file @/empty-dir: Is a directory"),
    case("known", "issue-not-a-list", [*RUN, "--known-issues",
                                       "@/issue-int.toml"], "'issue' must be a list"),
    case("known", "issue-not-a-table", [*RUN, "--known-issues",
                                        "@/issue-list.toml"], "issue #1 is not a table"),
    case("known", "arches-a-string", [*RUN, "--known-issues",
                                      "@/issue-arches.toml"], "arches must be a list of strings"),
    case("known", "bad-version", [*RUN, "--known-issues",
                                  "@/issue-version.toml"], "min_kernel must be a version"),
    # --- run directories: report, merge, history, compare, resume --------------------
    case("rundir", "report-not-a-run", ["report", "@/empty-dir"], "summary.json is missing"),
    case("rundir", "report-a-file", ["report", "@/plain-file"], "plain-file is not a directory"),
    case("rundir", "report-truncated", ["report", "@/run-truncated"],
         "run-truncated/summary.json is not valid JSON"),
    case("rundir", "report-binary", ["report", "@/run-binary"],
         "run-binary/summary.json: not UTF-8 text"),
    case("rundir", "report-nested", ["report", "@/run-nested"], "JSON nested too deeply"),
    case("rundir", "report-started-text", ["report", "@/run-started-text"],
         "started is not a time"),
    case("rundir", "report-huge-cell-name", ["report", "@/run-huge-name"],
         "that cannot be a directory"),
    case("rundir", "merge-into-a-file", ["merge", "@/plain-file", "@/run-good"],
         "plain-file is not a directory: merge into a new directory"),
    case("rundir", "merge-source-list", ["merge", "@/merged", "@/run-good", "@/run-source-list"],
         "source_id is not a string"),
    case("rundir", "merge-huge-cell-name", ["merge", "@/merged", "@/run-huge-name"],
         "that cannot be a directory"),
    case("rundir", "merge-truncated-result", ["merge", "@/merged", "@/run-result-truncated"],
         "cells/x5/result.json is not valid JSON"),
    case("rundir", "compare-not-a-run", ["compare", "@/empty-dir", "@/run-good"],
         "empty-dir is not a finished run directory (no summary.json)"),
    case("rundir", "compare-host-object", ["compare", "@/run-host-object", "@/run-good"],
         "host is not a name or a list of names"),
    case("rundir", "compare-bad-verdict", ["compare", "@/run-result-verdict", "@/run-good"],
         "'great' is not a valid Verdict"),
    case("rundir", "compare-binary", ["compare", "@/run-binary", "@/run-good"],
         "not UTF-8 text"),
    case("rundir", "history-a-text-file", ["history", "--db", "@/note.txt"],
         "note.txt is not a usable history store (not a database"),
    case("rundir", "history-binary", ["history", "--db", "@/binary.sqlite"],
         "binary.sqlite is not a usable history store"),
    case("rundir", "history-under-a-file", ["compare", "@/run-good", "@/run-good", "--db",
                                            "@/plain-file/h.sqlite"],
         "plain-file is a file"),
    case("rundir", "resume-truncated", ["run", "--resume", "@/run-truncated"],
         "summary.json is not valid JSON"),
]


@pytest.mark.parametrize("argv,code,needle", BAD_INPUT)
def test_bad_input(argv: list[str], code: int, needle: str, bad: Path, no_work: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(bad) + a[1:] if a.startswith("@") else a for a in argv]
    needle = needle.replace("@", str(bad))
    before = _snapshot(bad)
    start = time.monotonic()
    got, out, err = run_cli(argv, capsys)
    assert time.monotonic() - start < 30
    assert "Traceback" not in err + out
    assert got == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[:2000]
    assert lines[0].startswith("cpa-harness: error: ") and needle in lines[0], lines[0][:2000]
    assert len(lines[0]) < 400, "a huge input must not make a huge message"
    # nothing was done and nothing touched
    assert _snapshot(bad) == before
    assert not [p for p in no_work.rglob("*") if p.is_file()]


# A binary or enormous log is still a log: it is analysed, and the summary says
# what was found (exit 0 for a pass, 1 for a failure or nothing at all).
@pytest.mark.parametrize("log,code,needle", [
    ("binary.log", 1, "no kernel output in 17 lines"),
    ("huge-line.log", 1, "no kernel output in 1 lines"),
    ("empty.log", 1, "no kernel output in 0 lines"),
    ("noise-then-pass.log", 0, "CPA self-test pass 1: pass"),
    ("huge-then-bug.log", 1, "failure: bug: kernel BUG in lkdtm_BUG"),
])
def test_odd_logs_are_still_logs(log: str, code: int, needle: str, bad: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    got, out, err = run_cli(["parse", str(bad / log)], capsys)
    assert time.monotonic() - start < 30
    assert (got, err) == (code, "")
    assert needle in out and "Traceback" not in out
    got, out, err = run_cli(["parse", "--json", str(bad / log)], capsys)
    assert (got, err) == (code, "")
    assert json.loads(out)["verdict"] == ("pass" if code == 0 else
                                          "fail" if "failure" in needle else "incomplete")


def _fake_tree(d: Path) -> Path:
    return fake_kernel_tree(d, "6.12")


@pytest.mark.parametrize("cmdline", [
    'foo="a b;c" bar=\'x\' baz=1;2',
    "$(touch {pwned}) `touch {pwned}` ${{IFS}}",
    "a;b && c | d > {pwned} < /dev/null & wait",
    "init=/bin/sh -c \"echo 'hi'; reboot\" \\ \\\\ ' ''",
    "dyndbg=\"file arch/x86/mm/pat/* +p\" ü",
])
def test_hostile_cmdline_is_one_argv_word(cmdline: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """--show-command prints a shell quoting of QEMU's argv that round-trips
    through shlex, and nothing in the line is ever run by a shell."""
    from harness.kernel.build import Build
    from harness.scenarios.context import CellContext
    from harness.target.base import Fleet
    from harness.target.qemu import AccelChoice
    from harness.target.vm import QemuTargets

    pwned = tmp_path / "pwned"
    cmdline = cmdline.format(pwned=pwned)
    monkeypatch.setenv("CPA_HARNESS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CPA_HARNESS_CACHE", str(tmp_path / "cache"))

    def prepared(cells: list[Any], opts: Any, src: Any, run_dir: Path, *rest: Any) -> Any:
        # what _prepared gives after a build, an initramfs and an accelerator probe
        b = Build("x86_64", tmp_path, tmp_path / "bz Image", tmp_path / "vmlinux",
                  tmp_path / ".config", src.id, "0" * 64, True, 0.0, tmp_path / "log")
        initrd = tmp_path / "initrd.cpio"
        return [(c, CellContext(b, QemuTargets(c, b.image, initrd, AccelChoice("tcg", "test"),
                                               Fleet()),
                                initrd, run_dir / "cells" / c.name, [], "tcg"))
                for c in cells]

    monkeypatch.setattr(run, "_prepared", prepared)
    tree = _fake_tree(tmp_path / "linux")
    code, out, err = run_cli(["boot", "--arch", "x86_64", "--show-command", "--tree", str(tree),
                              "--out", str(tmp_path / "out"), "--cmdline", cmdline], capsys)
    assert (code, err) == (0, "")
    shown = [ln.removeprefix("x86_64-boot: ") for ln in out.splitlines()
             if ln.startswith("x86_64-boot: ")]
    assert len(shown) == 1
    argv = shlex.split(shown[0])
    assert shlex.join(argv) == shown[0]
    assert re.fullmatch(re.escape(f"{BASE_CMDLINE} {cmdline}") + r" cpa_harness.nonce=[0-9a-f]{16}",
                        argv[argv.index("-append") + 1])
    assert argv[argv.index("-kernel") + 1] == str(tmp_path / "bz Image")
    assert not pwned.exists()


def test_history_leaves_a_file_that_is_not_a_store_alone(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite takes a short file for an empty database and would write its schema over it."""
    note = tmp_path / "note.txt"
    note.write_text("x\n")
    run_good = _run_dir(tmp_path, "run-good", {"x1": "pass"})
    for argv in (["history", "--db", str(note)],
                 ["compare", str(run_good), str(run_good), "--db", str(note)]):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and "not a usable history store" in err
    assert note.read_text() == "x\n"


def test_a_merged_run_is_recorded_in_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """merge writes the shards' hosts as a list: history stores them (it used to warn
    'history not written' for every merged run), and a merge of merges flattens them."""
    monkeypatch.setenv("CPA_HARNESS_DATA", str(tmp_path / "data"))
    a = _run_dir(tmp_path, "a", {"x1": "pass"}, host="ci-1")
    b = _run_dir(tmp_path, "b", {"x2": "pass"}, host="ci-2")
    c = _run_dir(tmp_path, "c", {"x3": "pass"}, host="ci-3")
    code, _, err = run_cli(["merge", str(tmp_path / "ab"), str(a), str(b)], capsys)
    assert (code, err) == (0, "")
    code, _, err = run_cli(["merge", str(tmp_path / "abc"), str(tmp_path / "ab"), str(c)], capsys)
    assert (code, err) == (0, "")
    summary = json.loads((tmp_path / "abc" / "summary.json").read_text())
    assert summary["host"] == ["ci-1", "ci-2", "ci-3"]
    code, out, err = run_cli(["history"], capsys)
    assert (code, err) == (0, "")
    assert "ab" in out.split() and "abc" in out.split()


def test_a_summary_never_chooses_what_history_reads(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """As report and merge do, history reads cells/NAME/result.json, whatever the
    summary's 'result' says."""
    r = _run_dir(tmp_path, "r", {"x1": "pass"})
    summary = json.loads((r / "summary.json").read_text())
    summary["cells"][0]["result"] = "/etc/hostname"
    (r / "summary.json").write_text(json.dumps(summary))
    code, out, err = run_cli(["compare", str(r), str(r), "--db", str(tmp_path / "h.sqlite")],
                             capsys)
    assert (code, err) == (0, ""), err
