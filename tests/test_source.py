from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness import source
from harness.errors import UserError

PATCH = """\
--- a/arch/x86/mm/pat/cpa-test.c
+++ b/arch/x86/mm/pat/cpa-test.c
@@ -1,3 +1,3 @@
 a
-b
+B
 c
"""


def fake_tree(root: Path) -> Path:
    tree = root / "linux"
    (tree / "arch" / "x86" / "mm" / "pat").mkdir(parents=True)
    (tree / "arch" / "x86" / "Kconfig").write_text("")
    (tree / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION =\n")
    (tree / "arch" / "x86" / "mm" / "pat" / "cpa-test.c").write_text("a\nb\nc\n")
    return tree


def test_plain_directory(tmp_path: Path) -> None:
    src = source.from_tree(str(fake_tree(tmp_path)))
    assert src.version == "6.12.117"
    assert src.id == f"dir:{tmp_path / 'linux'}" and src.cache_key is None


def test_git_tree_id_and_dirty_flag(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    clean = source.from_tree(str(tree))
    assert clean.id == f"git:{head}" and clean.cache_key == f"git-{head}"
    (tree / "Makefile").write_text((tree / "Makefile").read_text() + "# edit\n")
    dirty = source.from_tree(str(tree))
    assert dirty.id == f"git:{head}-dirty" and dirty.cache_key is None


def test_patches_apply_to_a_copy_and_are_recorded(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    src = source.Source(tree, "dir:x", "6.12.117", "k")
    patch = tmp_path / "p.patch"
    patch.write_text(PATCH)
    patched = source.with_patches(src, source.patch_files([str(patch)]), tmp_path / "cache")
    assert (patched.path / "arch/x86/mm/pat/cpa-test.c").read_text() == "a\nB\nc\n"
    assert (tree / "arch/x86/mm/pat/cpa-test.c").read_text() == "a\nb\nc\n"   # untouched
    assert patched.id.startswith("dir:x+patches:") and patched.cache_key != src.cache_key
    again = source.with_patches(src, [patch], tmp_path / "cache")
    assert again == patched


def test_series_order(tmp_path: Path) -> None:
    d = tmp_path / "series-dir"
    d.mkdir()
    for n in ("b.patch", "a.patch"):
        (d / n).write_text(PATCH)
    assert [p.name for p in source.patch_files([str(d)])] == ["a.patch", "b.patch"]
    (d / "series").write_text("b.patch\na.patch  # second\n")
    assert [p.name for p in source.patch_files([str(d)])] == ["b.patch", "a.patch"]


def test_a_patch_that_does_not_apply_names_patch_and_file(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    (tree / "arch/x86/mm/pat/cpa-test.c").write_text("x\ny\nz\n")
    patch = tmp_path / "bad.patch"
    patch.write_text(PATCH)
    with pytest.raises(UserError) as e:
        source.with_patches(source.Source(tree, "dir:x", "6", None), [patch], tmp_path / "c")
    assert "bad.patch does not apply to arch/x86/mm/pat/cpa-test.c" in e.value.line()


def test_missing_patch(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="patch .*nope.patch does not exist"):
        source.patch_files([str(tmp_path / "nope.patch")])
