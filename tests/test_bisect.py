"""Bisect orchestration on a small real git repository.

The cell is replaced by a fake that fails when the checkout's `state` file
says "broken" (a unit test of the orchestration: git, the verification runs,
the step answers, the report and the tree left as found). The real thing --
kernels built and booted at each step -- is tests/test_bisect_boot.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import bisect
from harness.cells import ALL_CELLS
from harness.console.model import Failure
from harness.errors import UserError
from harness.results.cell import CellFailure, CellResult, Verdict

CELL = ALL_CELLS[0]


def sh(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Ten commits; commit 7 breaks the cell, commit 4 breaks the build."""
    r = tmp_path / "repo"
    r.mkdir()
    sh(r, "init", "-q", "-b", "main")
    sh(r, "config", "user.email", "t@example.org")
    sh(r, "config", "user.name", "t")
    for n in range(1, 11):
        state = "broken" if n >= 7 else "ok"
        (r / "state").write_text(state + "\n")
        (r / "nocompile").write_text("yes\n" if n == 4 else "no\n")
        (r / "n").write_text(f"{n}\n")
        sh(r, "add", "-A")
        sh(r, "commit", "-q", "-m", f"commit {n}")
    return r


def fake_cell(tree: Path, out: Path) -> CellResult:
    out.mkdir(parents=True, exist_ok=True)
    if (tree / "nocompile").read_text() == "yes\n":
        return CellResult(name=CELL.name, arch=CELL.arch, verdict=Verdict.FAIL,
                          reason="building x86_64 failed")
    broken = (tree / "state").read_text() == "broken\n"
    res = CellResult(name=CELL.name, arch=CELL.arch, build_dir="/b", boot_id="x",
                     verdict=Verdict.FAIL if broken else Verdict.PASS)
    if broken:
        res.failures.append(CellFailure(Failure("cpa_selftest", "CPA self-test NOT PASSED", 1, 1,
                                                2, ("CPA self-test:", "NOT PASSED.")), 0))
        res.reason = "cpa_selftest: CPA self-test NOT PASSED"
        d = out / "cells" / CELL.name
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(res.to_json()))
    return res


STEP = """
import sys, pathlib
state = pathlib.Path("state").read_text()
if pathlib.Path("nocompile").read_text() == "yes\\n":
    sys.exit(125)
sys.exit(1 if state == "broken\\n" else 0)
"""


def test_bisect_names_the_first_bad_commit_and_restores_the_tree(repo: Path,
                                                                  tmp_path: Path) -> None:
    sh(repo, "checkout", "-q", "-b", "work")
    head = sh(repo, "rev-parse", "HEAD")
    good, bad = sh(repo, "rev-parse", "HEAD~9"), head
    step = [sys.executable, "-c", STEP]
    report = bisect.bisect(repo, good, bad, CELL, tmp_path / "out", fake_cell, step,
                           any_failure=False, say=open("/dev/null", "w"))
    assert sh(repo, "log", "-1", "--format=%s", report.first_bad) == "commit 7"
    assert report.subject == "commit 7" and report.commits == 9 and report.max_steps == 5
    assert report.signature == "cpa_selftest: CPA self-test NOT PASSED"
    assert [s.checked for s in report.steps[:2]] == ["bad", "good"]
    # left as found: same branch, same commit, no bisection in progress
    assert sh(repo, "symbolic-ref", "--short", "HEAD") == "work"
    assert sh(repo, "rev-parse", "HEAD") == head
    assert not (repo / ".git" / "BISECT_LOG").exists()
    assert json.loads((tmp_path / "out" / "bisect.json").read_text())["first_bad"] == \
        report.first_bad


def test_bad_input_leaves_the_tree_untouched(repo: Path, tmp_path: Path) -> None:
    head = sh(repo, "rev-parse", "HEAD")
    with pytest.raises(UserError, match="is not a git repository"):
        bisect.check_tree(tmp_path, "a", "b")
    with pytest.raises(UserError, match="--good nope is not a commit"):
        bisect.check_tree(repo, "nope", "HEAD")
    with pytest.raises(UserError, match="is not an ancestor"):
        bisect.check_tree(repo, "HEAD", "HEAD~3")
    (repo / "state").write_text("dirty\n")
    with pytest.raises(UserError, match="uncommitted changes"):
        bisect.check_tree(repo, "HEAD~3", "HEAD")
    sh(repo, "checkout", "-q", "state")
    # good and bad reversed in meaning: the "good" revision fails
    with pytest.raises(UserError, match="does not pass at --good"):
        bisect.bisect(repo, "HEAD~1", "HEAD", CELL, tmp_path / "o", fake_cell, ["false"],
                      any_failure=False, say=open("/dev/null", "w"))
    assert sh(repo, "rev-parse", "HEAD") == head
    assert sh(repo, "symbolic-ref", "--short", "HEAD") == "main"


def test_step_answers() -> None:
    ok = CellResult(name="c", arch="x86_64", verdict=Verdict.PASS)
    assert bisect.answer(ok, "x") == bisect.GOOD
    same = CellResult(name="c", arch="x86_64", verdict=Verdict.FAIL, build_dir="/b",
                      failures=[CellFailure(Failure("oops", "Oops in f", 1, 1, 1, ()), 0)])
    assert bisect.answer(same, "oops: Oops in f") == bisect.BAD
    assert bisect.answer(same, "warning: WARNING in g") == bisect.SKIP   # not chased
    assert bisect.answer(same, None) == bisect.BAD                        # --any-failure
    nobuild = CellResult(name="c", arch="x86_64", verdict=Verdict.FAIL, reason="building")
    assert bisect.answer(nobuild, None) == bisect.SKIP
    infra = CellResult(name="c", arch="x86_64", verdict=Verdict.INFRA_ERROR)
    assert bisect.answer(infra, None) == bisect.SKIP
    user = CellResult(name="c", arch="x86_64", verdict=Verdict.USER_ERROR)
    assert bisect.answer(user, None) == bisect.ABORT
    # a revision that cannot give an essential option is skipped, not a reason to stop
    lacks = CellResult(name="c", arch="x86_64", verdict=Verdict.USER_ERROR,
                       dropped_options=["CONFIG_MITIGATION_PAGE_TABLE_ISOLATION"])
    assert bisect.answer(lacks, None) == bisect.SKIP


def test_patches_are_applied_for_each_run_and_taken_off_after(repo: Path,
                                                              tmp_path: Path) -> None:
    patch = tmp_path / "marker.patch"
    patch.write_text("--- /dev/null\n+++ b/marker\n@@ -0,0 +1 @@\n+patched\n")
    seen: list[bool] = []

    def cell(tree: Path, out: Path) -> CellResult:
        seen.append((tree / "marker").exists())
        return fake_cell(tree, out)

    step = [sys.executable, "-c", STEP]
    report = bisect.bisect(repo, "HEAD~9", "HEAD", CELL, tmp_path / "out", cell, step,
                           any_failure=False, say=open("/dev/null", "w"), patches=[patch])
    assert report.subject == "commit 7"
    assert seen == [True, True]                  # the bad and good runs had it
    assert not (repo / "marker").exists()
    assert sh(repo, "status", "--porcelain") == ""
    # a patch that does not apply: the revision is skipped, the tree left clean
    bad = tmp_path / "bad.patch"
    bad.write_text("--- a/nope\n+++ b/nope\n@@ -1 +1 @@\n-x\n+y\n")
    code, s = bisect.run_step(repo, cell, None, tmp_path / "steps", None, [bad])
    assert code == bisect.SKIP and "bad.patch does not apply here" in s.reason
    assert sh(repo, "status", "--porcelain") == ""


def test_the_self_tests_not_passed_is_one_failure_whatever_its_report_is_titled() -> None:
    """At --bad the WARN that carries "NOT PASSED." was seen whole; at a later
    step only its message line was (or the other way round): the same failure.
    A signature given by hand as the report's title still matches."""
    def failed(title: str) -> CellResult:
        res = CellResult(name=CELL.name, arch=CELL.arch, build_dir="/b", verdict=Verdict.FAIL,
                         reason=f"cpa_selftest: {title}")
        res.failures.append(CellFailure(Failure("cpa_selftest", title, 1, 1, 2,
                                                ("NOT PASSED. Please report.",)), 0))
        res.cpa_selftest = [{"result": "fail", "boot": 0}]
        return res

    whole, message = failed("WARNING in pageattr_test"), failed("CPA self-test NOT PASSED")
    assert bisect.signature(whole) == bisect.signature(message) == bisect.NOT_PASSED
    assert bisect.answer(message, bisect.signature(whole)) == bisect.BAD
    assert bisect.answer(whole, "cpa_selftest: WARNING in pageattr_test") == bisect.BAD
    other = failed("BUG in free_pages")
    other.cpa_selftest = [{"result": "pass", "boot": 0}]
    assert bisect.answer(other, bisect.NOT_PASSED) == bisect.SKIP


def test_passes_bisects_with_the_fast_self_test_patched_in_place(repo: Path,
                                                                 tmp_path: Path) -> None:
    """--passes N: the cell becomes a fast one (a pass a second, N passes after
    the first for good), and the fast self-test's patch joins the patches
    each step applies in place; each step says how many passes it rests on."""
    from harness.cli import _cell_runner, _step_patches, build_parser
    from harness.kernel import fast_selftest
    args = build_parser().parse_args(["bisect-step", "--cell", "i386", "--passes", "40"])
    cell, _ = _cell_runner(args)
    assert (cell.selftest_period_ms, cell.passes, cell.periods) == (1000, 40, 0)
    assert cell.cmdline.split()[-1] == "cpa_test.period_ms=1000"
    assert _step_patches(args) == [fast_selftest.PATCH]
    again = build_parser().parse_args(["bisect-step", "--cell", "i386", "--passes", "40",
                                       "--patch", str(fast_selftest.PATCH)])
    assert _step_patches(again) == [fast_selftest.PATCH]        # not twice
    for bad in (["--passes", "0"], ["--passes", "3", "--periods", "2"],
                ["--passes", "3", "--cell", "selfcheck-i386"]):
        with pytest.raises(UserError, match="--passes"):
            _cell_runner(build_parser().parse_args(["bisect-step", "--cell", "i386", *bad]))

    def cell_with_passes(tree: Path, out: Path) -> CellResult:
        res = fake_cell(tree, out)
        res.cpa_selftest = [{"result": "pass"}] * (1 if res.verdict == Verdict.FAIL else 41)
        return res

    code, step = bisect.run_step(repo, cell_with_passes, None, tmp_path / "steps", None)
    assert (code, step.passes) == (bisect.BAD, 1)
    sh(repo, "checkout", "-q", "HEAD~5")
    code, step = bisect.run_step(repo, cell_with_passes, None, tmp_path / "steps", None)
    assert (code, step.passes) == (bisect.GOOD, 41)
    report = bisect.Report("t", "c", "g", "b", "", steps=[step])
    out = io.StringIO()
    bisect.print_report(report, out)
    assert out.getvalue().splitlines()[2].split()[:3] == [step.rev[:12], "good", "41"]
