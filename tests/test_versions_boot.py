"""Another kernel version for real, through a bisect across releases.

A git history made from two Debian source versions, 6.1 then 6.12, as
consecutive commits, the way a bisect across releases sees them. On the 6.1
revision:
- a step builds and boots the GB-pages cell (both kexec methods) although
  6.1's Kconfig lacks wanted options (the buddy hard-lockup detector came in
  6.5) and names PAGE_TABLE_ISOLATION the old way: it passes, and the result
  says what was unavailable. This is also CI's cell on 6.1, so that version
  drift is caught at every change;
- a step whose cell asks for an essential option 6.1 does not have is
  skipped (125), and its record names the option;
- the failed configuration poisoned nothing: the next step's kernel is the
  cached one, and it passes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness import paths
from harness.cli import main
from harness.kernel import source

pytestmark = pytest.mark.boot

TARBALL_61 = Path("/usr/src/linux-source-6.1.tar.xz")
# In 6.10 and later only (lib/Kconfig.debug): essential when asked for, so a
# 6.1 revision cannot be tested with it.
NEW_ONLY = "CONFIG_MEM_ALLOC_PROFILING=y"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def commit_tree(repo: Path, tree: Path, message: str) -> str:
    """Make the work tree `tree`'s files (hard links) and commit them."""
    for p in repo.iterdir():
        if p.name != ".git":
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    subprocess.run(["cp", "-al", f"{tree}/.", str(repo)], check=True)
    # Debian's tarballs end their .gitignore with lines that ignore everything
    # at the top level: without taking them out nothing would be committed.
    gi = repo / ".gitignore"
    lines = gi.read_text().splitlines()
    gi.unlink()     # a hard link into the cached tree: never written through
    gi.write_text("\n".join(ln for ln in lines if ln not in ("/*", "!/debian/")) + "\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    if not TARBALL_61.exists():
        pytest.fail(f"{TARBALL_61} is missing: ci/setup.sh --test installs linux-source-6.1")
    cache = paths.cache_dir()
    old = source.from_tree(str(TARBALL_61), cache)
    new = source.resolve(None, cache)
    assert old.version.startswith("6.1.") and new.version.startswith("6.12.")
    repo = tmp_path_factory.mktemp("versions") / "linux"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "master")
    git(repo, "config", "user.email", "versions@cpa-harness")
    git(repo, "config", "user.name", "cpa-harness test")
    revs = [commit_tree(repo, old.path, f"Debian's linux-source {old.version}"),
            commit_tree(repo, new.path, f"Debian's linux-source {new.version}")]
    git(repo, "checkout", "-q", revs[0])
    return repo, revs


def step(repo: Path, tmp: Path, mp: pytest.MonkeyPatch, cell: str,
         *extra: str) -> tuple[int, dict[str, Any]]:
    """`cpa-harness bisect-step` in the checkout, as `git bisect run` calls it."""
    log = tmp / "steps.jsonl"
    mp.chdir(repo)
    code = main(["bisect-step", "--cell", cell, "--any-failure", "--steps-dir",
                 str(tmp / "steps"), "--log", str(log), *extra])
    rec: dict[str, Any] = json.loads(log.read_text().splitlines()[-1])
    return code, rec


def test_a_step_on_61_builds_and_boots_without_the_wanted_options(
        history: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, revs = history
    code, rec = step(repo, tmp_path, monkeypatch, "x86_64-gbpages")
    assert (code, rec["answer"], rec["verdict"]) == (0, "good", "pass"), rec
    assert rec["rev"] == revs[0] and rec["dropped"] == []
    res = json.loads(next(Path(rec["result_dir"]).rglob("result.json")).read_text())
    assert res["kernel_version"].startswith("6.1.")
    assert res["source_id"] == f"git:{revs[0]}"
    assert any(line.startswith("the buddy hard-lockup detector unavailable on 6.1.")
               for line in res["unavailable"]), res["unavailable"]
    # the old name of the PTI option was taken, and GB pages and kexec work on 6.1
    assert res["guest"]["config_differences"] == []
    assert res["gbpages"] is True
    assert [rt["verified"] and rt["selftest"] == "pass" for rt in res["kexec"]] == [True, True]


def test_a_missing_essential_option_skips_the_step_and_names_it(
        history: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, revs = history
    frag = tmp_path / "new-only.config"
    frag.write_text(NEW_ONLY + "\n")
    matrix = tmp_path / "matrix.toml"
    matrix.write_text(f'[[cell]]\nname = "new-only"\narch = "x86_64"\nfragments = ["{frag}"]\n')
    code, rec = step(repo, tmp_path, monkeypatch, "new-only", "--matrix", str(matrix))
    assert (code, rec["answer"]) == (125, "skip"), rec
    assert rec["dropped"] == ["CONFIG_MEM_ALLOC_PROFILING"]
    assert "CONFIG_MEM_ALLOC_PROFILING=y (from new-only.config) did not survive" in rec["reason"]
    assert "not defined in this tree's Kconfig" in rec["reason"]
    # Nothing was poisoned: the next step's kernel is the one built before.
    code, rec = step(repo, tmp_path, monkeypatch, "x86_64-debug-pagealloc", "--periods", "0")
    assert (code, rec["answer"]) == (0, "good"), rec
    res = json.loads(next(Path(rec["result_dir"]).rglob("result.json")).read_text())
    assert res["build_cached"] is True and res["kernel_version"].startswith("6.1.")
