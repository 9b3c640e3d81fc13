"""Bisect for real: a git repository made from Debian's kernel source with five
commits after the base, the third of which breaks the CPA self-test
(tests/data/patches/break-cpa-selftest.patch: it reverts the self-test's
attribute change with an empty mask). Every step builds the checkout and boots
it; bisect must name that commit in at most ceil(log2 5)+1 = 4 steps and leave
the repository as it was. The run at --bad is also the proof that a kernel
whose self-test really fails is called broken, with the right kind.

A second history, a branch from the same base, breaks the self-test on one
pass in four (tests/data/patches/break-cpa-selftest-every-fourth-pass.patch):
the stock cell's one pass never sees it, and `bisect --passes 8` must name
it, every good answer resting on 9 proven passes and every bad one on the 3
before the failing fourth, the fast self-test's patch applied in place at
each step and reverted after.

Good and bad reversed, a dirty tree, unknown revisions: tests/test_bisect.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import paths
from harness.bisect import NOT_PASSED
from harness.cli import main
from harness.kernel import fast_selftest, source

pytestmark = pytest.mark.boot

PATCH = Path(__file__).parent / "data" / "patches" / "break-cpa-selftest.patch"
FLAKY = Path(__file__).parent / "data" / "patches" / "break-cpa-selftest-every-fourth-pass.patch"
PASSES = 8      # twice the failure's period: every good answer saw a fourth pass twice
CELL = "x86_64-debug-pagealloc"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def own(path: Path) -> None:
    """Break the hard link to the cached source before the file is changed."""
    tmp = path.with_name(path.name + ".own")
    shutil.copy2(path, tmp)
    os.replace(tmp, path)


def commit(repo: Path, message: str) -> str:
    # -f: Debian's linux-source .gitignore ignores everything at the top level
    git(repo, "add", "-A", "-f")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    tree = source.resolve(None, paths.cache_dir()).path
    # Hard links: a second copy of 1.4 GB would cost more than the test.
    r = tmp_path_factory.mktemp("bisect") / "linux"
    subprocess.run(["cp", "-al", str(tree), str(r)], check=True)
    git(r, "init", "-q", "-b", "master")
    git(r, "config", "user.email", "bisect@cpa-harness")
    git(r, "config", "user.name", "cpa-harness test")
    git(r, "config", "core.preloadIndex", "true")
    revs = [commit(r, "base: Debian's linux-source-6.12")]
    revs += series(r, 5, 3, PATCH, "x86/mm/cpa: revert the self-test's change with an empty mask")
    return r, revs


def series(r: Path, count: int, breaking: int, patch: Path, subject: str,
           tag: str = "") -> list[str]:
    """`count` commits on the checkout: the `breaking`th applies `patch` to the
    self-test, the others are harmless changes to a document."""
    doc = r / "Documentation" / "arch" / "x86" / "pat.rst"
    revs = []
    for n in range(1, count + 1):
        if n == breaking:
            own(r / "arch" / "x86" / "mm" / "pat" / "cpa-test.c")
            subprocess.run(["git", "-C", str(r), "apply", str(patch)], check=True)
            revs.append(commit(r, subject))
        else:
            own(doc)
            with open(doc, "a") as f:
                f.write(f"\n.. harmless {tag}change {n}\n")
            revs.append(commit(r, f"Documentation: harmless {tag}change {n}"))
    return revs


@pytest.fixture(scope="module")
def flaky(repo: tuple[Path, list[str]]) -> list[str]:
    """Branch 'flaky' from the base: a harmless change, the one that breaks
    one pass in four, two harmless changes; the repository left on master."""
    r, revs = repo
    git(r, "checkout", "-q", "-b", "flaky", revs[0])
    try:
        return [revs[0], *series(r, 4, 2, FLAKY, "x86/mm/cpa: revert with an empty mask on "
                                 "every fourth pass", "flaky-branch ")]
    finally:
        git(r, "checkout", "-q", "master")


def test_bisect_names_the_breaking_commit(repo: tuple[Path, list[str]],
                                          tmp_path: Path) -> None:
    r, revs = repo
    head = git(r, "rev-parse", "HEAD")
    out = tmp_path / "bisect"
    code = main(["bisect", "--tree", str(r), "--good", revs[0], "--bad", revs[-1],
                 "--cell", CELL, "--periods", "0", "--out", str(out)])
    report = json.loads((out / "bisect.json").read_text())
    assert code == 0, report
    assert report["first_bad"] == revs[3]
    assert report["subject"].startswith("x86/mm/cpa: revert the self-test's change")
    # compared by the self-test's own verdict, whatever its WARN's title
    assert report["signature"] == "cpa_selftest: CPA self-test NOT PASSED"
    assert any("NOT PASSED" in line for line in report["excerpt"])
    bisected = [s for s in report["steps"] if not s["checked"]]
    assert 1 <= len(bisected) <= report["max_steps"] == 4
    # every step built and ran; the ones after the first reused the build directory
    assert all(s["build_seconds"] >= 0 and s["run_seconds"] > 0 for s in report["steps"])
    # the bad revision's run: a kernel whose self-test really fails is called broken
    bad = next(s for s in report["steps"] if s["checked"] == "bad")
    [result] = Path(bad["result_dir"]).glob("cells/*/result.json")
    doc = json.loads(result.read_text())
    assert doc["verdict"] == "fail"
    # the self-test's WARN, titled like any WARN (so dashboards group it)
    assert doc["reason"] == "cpa_selftest: WARNING in pageattr_test"
    assert doc["source_id"] == f"git:{revs[-1]}"
    assert [p["result"] for p in doc["cpa_selftest"]] == ["fail"]
    assert any("bad pte after revert" in e["message"] for e in doc["cpa_selftest"][0]["errors"])
    junit = (result.parent.parent.parent / "junit.xml").read_text()
    assert "bad pte after revert" in junit and "WARNING in pageattr_test" in junit
    # the repository is as it was
    assert git(r, "rev-parse", "HEAD") == head
    assert git(r, "symbolic-ref", "--short", "HEAD") == "master"
    assert git(r, "status", "--porcelain", "--untracked-files=no") == ""
    assert not (r / ".git" / "BISECT_LOG").exists()


def test_bisect_passes_names_a_commit_that_breaks_one_pass_in_four(
        repo: tuple[Path, list[str]], flaky: list[str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    r, _ = repo
    head = git(r, "rev-parse", "HEAD")
    out = tmp_path / "bisect"
    code = main(["bisect", "--tree", str(r), "--good", flaky[0], "--bad", flaky[-1],
                 "--cell", CELL, "--passes", str(PASSES), "--out", str(out)])
    report = json.loads((out / "bisect.json").read_text())
    assert code == 0, report
    assert report["first_bad"] == flaky[2]
    assert report["subject"].startswith("x86/mm/cpa: revert with an empty mask on every fourth")
    assert report["signature"] == NOT_PASSED
    steps = report["steps"]
    assert 1 <= len([s for s in steps if not s["checked"]]) <= report["max_steps"] == 3
    # no step skipped: each was a fast cell that answered
    assert {s["answer"] for s in steps} == {"good", "bad"}, steps
    for s in steps:
        # the fast self-test's patch at every step, the checks' and git bisect run's
        assert [Path(p).resolve() for p in s["patches"]] == [fast_selftest.PATCH.resolve()]
        if s["answer"] == "good":
            assert s["passes"] >= PASSES + 1, s    # the first, then PASSES more
        else:
            assert s["passes"] == 3, s             # the three before the failing fourth
            assert s["signature"] == NOT_PASSED
    # the bad revision's run: three printed passes, then the failing one
    bad = next(s for s in steps if s["checked"] == "bad")
    [result] = Path(bad["result_dir"]).glob("cells/*/result.json")
    doc = json.loads(result.read_text())
    # the patch in place: a dirty checkout of the revision, marked fast
    assert doc["verdict"] == "fail" and doc["source_id"] == f"git:{flaky[-1]}-dirty"
    assert [p["result"] for p in doc["cpa_selftest"]] == ["pass", "pass", "pass", "fail"]
    assert any("bad pte after revert" in e["message"]
               for e in doc["cpa_selftest"][-1]["errors"])
    assert (doc["fast_selftest"]["patch"], doc["fast_selftest"]["period_ms"]) == (
        fast_selftest.PATCH.name, fast_selftest.DEFAULT_PERIOD_MS)
    assert f"{fast_selftest.PARAM}=" in doc["guest"]["cmdline"]
    # the table says how many passes each answer rests on
    table = capsys.readouterr().out
    for s in steps:
        assert f"{s['rev'][:12]}  {s['answer']:6}  {s['passes']:6d}" in table
    # the repository is as it was, the fast self-test's patch reverted
    assert git(r, "rev-parse", "HEAD") == head
    assert git(r, "symbolic-ref", "--short", "HEAD") == "master"
    assert git(r, "status", "--porcelain", "--untracked-files=no") == ""
    assert not (r / ".git" / "BISECT_LOG").exists()
