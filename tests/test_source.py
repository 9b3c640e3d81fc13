from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import fake_kernel_tree

from harness.errors import UserError
from harness.kernel import source

PATCH = """\
--- a/arch/x86/mm/pat/cpa-test.c
+++ b/arch/x86/mm/pat/cpa-test.c
@@ -1,3 +1,3 @@
 a
-b
+B
 c
"""


def fake_tree(root: Path, version: str = "6.12.117") -> Path:
    tree = fake_kernel_tree(root / "linux", version)
    (tree / "arch" / "x86" / "mm" / "pat" / "cpa-test.c").write_text("a\nb\nc\n")
    return tree


def git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], capture_output=True, text=True, check=True).stdout


def test_a_tarball_is_unpacked_once_and_named_by_checksum(tmp_path: Path) -> None:
    fake_tree(tmp_path / "pkg", "6.1.192")
    (tmp_path / "pkg" / "linux").rename(tmp_path / "pkg" / "linux-source-6.1")
    tarball = tmp_path / "linux-source-6.1.tar.xz"
    subprocess.run(["tar", "-cJf", str(tarball), "-C", str(tmp_path / "pkg"),
                    "linux-source-6.1"], check=True)
    cache = tmp_path / "cache"
    src = source.from_tree(str(tarball), cache)
    assert src.version == "6.1.192" and src.path.name == "linux-source-6.1"
    assert src.id.startswith("tarball:linux-source-6.1.tar.xz@sha256:")
    assert src.cache_key and source.from_tree(str(tarball), cache) == src


def test_debians_source_deb_is_taken_as_it_is(tmp_path: Path) -> None:
    root = tmp_path / "root"
    fake_tree(tmp_path / "pkg", "5.10.223")
    (tmp_path / "pkg" / "linux").rename(tmp_path / "pkg" / "linux-source-5.10")
    (root / "usr" / "src").mkdir(parents=True)
    subprocess.run(["tar", "-cJf", str(root / "usr/src/linux-source-5.10.tar.xz"), "-C",
                    str(tmp_path / "pkg"), "linux-source-5.10"], check=True)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        "Package: linux-source-5.10\nVersion: 5.10.223-1\nArchitecture: all\n"
        "Maintainer: t <t@t>\nDescription: test\n")
    deb = tmp_path / "linux-source-5.10_5.10.223-1_all.deb"
    subprocess.run(["dpkg-deb", "-Zxz", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    src = source.from_tree(str(deb), tmp_path / "cache")
    assert src.version == "5.10.223"
    assert src.id.startswith("deb:linux-source-5.10_5.10.223-1_all.deb@sha256:")
    # not a linux-source package: one line
    (tmp_path / "other.deb").write_bytes(b"!<arch>\nnot a deb")
    with pytest.raises(UserError, match="is not Debian's linux-source package"):
        source.from_tree(str(tmp_path / "other.deb"), tmp_path / "cache")


def test_a_tree_too_old_says_what_it_lacks_and_what_is_supported(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path, "5.4.0")
    (tree / "arch" / "x86" / "mm" / "pat" / "set_memory.c").unlink()
    (tree / "arch" / "x86" / "Kconfig.debug").write_text("config X86_PTDUMP\n")
    with pytest.raises(UserError) as e:
        source.check_tree(str(tree))
    line = e.value.line()
    assert "(Linux 5.4) is too old for the harness" in line
    assert "arch/x86/mm/pat/set_memory.c and no CONFIG_CPA_DEBUG" in line
    assert "supported kernels: 5.10 and later" in line and e.value.exit_code == 2


def test_a_half_checkout_is_named(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    git(tree, "init", "-q")
    git(tree, "add", ".")
    git(tree, "commit", "-qm", "base")
    (tree / "arch" / "x86" / "Kconfig").unlink()
    (tree / "arch" / "x86" / "Kconfig.debug").unlink()
    (tree / "arch" / "x86" / "Kconfig").write_text("")     # still looks like a tree
    with pytest.raises(UserError, match=r"half checkout: 1 tracked file\(s\) are missing from "
                                        r"the work tree, e.g. arch/x86/Kconfig.debug"):
        source.from_tree(str(tree))
    git(tree, "checkout", "--", ".")
    # a conflicted merge
    git(tree, "checkout", "-qb", "side")
    (tree / "Makefile").write_text((tree / "Makefile").read_text() + "# side\n")
    git(tree, "commit", "-qam", "side")
    git(tree, "checkout", "-q", "-")
    (tree / "Makefile").write_text((tree / "Makefile").read_text() + "# main\n")
    git(tree, "commit", "-qam", "main")
    subprocess.run(["git", "-C", str(tree), "merge", "-q", "side"], capture_output=True)
    with pytest.raises(UserError, match=r"1 unmerged file\(s\) \(a conflicted merge, rebase "
                                        r"or cherry-pick\), e.g. Makefile"):
        source.from_tree(str(tree))


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
