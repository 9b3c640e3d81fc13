"""Bisect for real: a git repository made from Debian's kernel source with five
commits after the base, the third of which breaks the CPA self-test
(tests/data/patches/break-cpa-selftest.patch: it reverts the self-test's
attribute change with an empty mask). Every step builds the checkout and boots
it; bisect must name that commit in at most ceil(log2 5)+1 = 4 steps and leave
the repository as it was. The run at --bad is also the proof that a kernel
whose self-test really fails is called broken, with the right kind.

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
from harness.cli import main
from harness.kernel import source

pytestmark = pytest.mark.boot

PATCH = Path(__file__).parent / "data" / "patches" / "break-cpa-selftest.patch"
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
    doc = r / "Documentation" / "arch" / "x86" / "pat.rst"
    for n in range(1, 6):
        if n == 3:
            target = r / "arch" / "x86" / "mm" / "pat" / "cpa-test.c"
            own(target)
            subprocess.run(["git", "-C", str(r), "apply", str(PATCH)], check=True)
            revs.append(commit(r, "x86/mm/cpa: revert the self-test's change with an empty "
                                  "mask"))
        else:
            own(doc)
            with open(doc, "a") as f:
                f.write(f"\n.. harmless change {n}\n")
            revs.append(commit(r, f"Documentation: harmless change {n}"))
    return r, revs


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
