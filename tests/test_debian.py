"""harness/debian.py against the real apt: downloads, unpacking, the doctor check."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from harness.errors import InfraError, UserError
from harness.image import debian
from harness.image.debian import (
    COMPLETE_STAMP,
    DebFile,
    download_packages,
    extract_package,
    fetch_packages,
    packages_reachable,
    read_package_list,
    root_dir,
)
from harness.paths import GUEST_DIR


def _deb_cache() -> Path:
    env = os.environ.get("CPA_HARNESS_TEST_CACHE")
    return Path(env) if env else Path(tempfile.gettempdir()) / "cpa-harness-test-cache"


def _no_subprocess(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"unexpected subprocess: {args!r}")


# --- the package list -------------------------------------------------------

def test_read_package_list_honours_arch_qualifiers(tmp_path: Path) -> None:
    listing = tmp_path / "packages.txt"
    listing.write_text(
        "# comment\n"
        "\n"
        "busybox-static   # trailing comment\n"
        "libxenmisc4.17 [amd64]  # amd64 only\n"
        "libfoo1 [i386 amd64]\n"
        "libbar1 [arm64]\n"
        "busybox-static\n")
    assert read_package_list(listing, "amd64") == ["busybox-static", "libxenmisc4.17", "libfoo1"]
    assert read_package_list(listing, "i386") == ["busybox-static", "libfoo1"]


@pytest.mark.parametrize("line", ["Bad_Name", "pkg [amd64", "two names", "pkg [amd64] extra"])
def test_read_package_list_refuses_bad_lines(tmp_path: Path, line: str) -> None:
    listing = tmp_path / "packages.txt"
    listing.write_text(f"ok\n{line}\n")
    with pytest.raises(UserError, match=r"packages.txt:2: cannot parse"):
        read_package_list(listing, "amd64")


def test_shipped_package_list() -> None:
    amd64 = read_package_list(GUEST_DIR / "packages.txt", "amd64")
    i386 = read_package_list(GUEST_DIR / "packages.txt", "i386")
    for name in ("busybox-static", "dropbear-bin", "kexec-tools", "libc6"):
        assert name in amd64 and name in i386
    assert "libxenmisc4.17" in amd64 and "libxenmisc4.17" not in i386


# --- download and extract ---------------------------------------------------

@pytest.mark.parametrize("darch", ["amd64", "i386"])
def test_fetch_packages_downloads_and_unpacks(darch: str) -> None:
    roots = fetch_packages(["busybox-static", "libtommath1"], darch, _deb_cache())
    assert set(roots) == {"busybox-static", "libtommath1"}
    busybox_root = roots["busybox-static"]
    assert (busybox_root / "bin" / "busybox").is_file()
    assert (busybox_root / COMPLETE_STAMP).is_file()
    # The version, epoch included, is in the root's name with ':' kept out.
    assert busybox_root.name.startswith("root-busybox-static_1%3a")
    assert busybox_root.parent == _deb_cache() / "debs" / darch
    debs = download_packages(["busybox-static"], darch, _deb_cache())
    deb = debs["busybox-static"]
    assert deb.version.startswith("1:") and deb.arch == darch
    version = subprocess.run(["dpkg-deb", "-f", str(deb.path), "Version"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert version == deb.version


def test_cached_packages_need_no_apt(monkeypatch: pytest.MonkeyPatch) -> None:
    first = fetch_packages(["busybox-static"], "i386", _deb_cache())
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    assert fetch_packages(["busybox-static"], "i386", _deb_cache()) == first


def test_a_half_extracted_root_is_never_used(tmp_path: Path) -> None:
    deb = download_packages(["libtommath1"], "amd64", _deb_cache())["libtommath1"]
    cache = tmp_path / "cache"
    directory = cache / "debs" / "amd64"
    directory.mkdir(parents=True)
    local = DebFile(deb.name, deb.version, deb.arch, directory / deb.path.name)
    local.path.write_bytes(deb.path.read_bytes())
    # What a crash in the middle of an older, non-atomic extraction would leave.
    partial = root_dir(local, cache, "amd64")
    partial.mkdir()
    (partial / "junk").write_text("half")
    # ... and a temporary directory of a process killed mid-extraction.
    (directory / ".extract-libtommath1-dead").mkdir()
    root = extract_package(local, cache, "amd64")
    assert root == partial
    assert not (root / "junk").exists()
    assert (root / COMPLETE_STAMP).is_file()
    assert list(root.rglob("libtommath.so.1"))
    # No temporary directories are left behind.
    assert not [p for p in directory.iterdir() if p.name.startswith(".extract-")]


def test_a_corrupt_deb_is_removed_and_reported(tmp_path: Path) -> None:
    directory = tmp_path / "debs" / "amd64"
    directory.mkdir(parents=True)
    bad = DebFile("libbroken1", "1.0-1", "amd64", directory / "libbroken1_1.0-1_amd64.deb")
    bad.path.write_bytes(b"!<arch>\ntruncated")
    with pytest.raises(InfraError, match="cannot unpack libbroken1_1.0-1_amd64.deb"):
        extract_package(bad, tmp_path, "amd64")
    assert not bad.path.exists()
    assert not root_dir(bad, tmp_path, "amd64").exists()
    assert [p.name for p in directory.iterdir()] == [".lock"]


def test_the_newest_cached_deb_wins(tmp_path: Path) -> None:
    directory = tmp_path / "debs" / "amd64"
    directory.mkdir(parents=True)
    for name in ("libx1_1.9-1_amd64.deb", "libx1_1%3a1.0-1_amd64.deb", "libx1_1.10-1_amd64.deb",
                 "libx1_2.0-1_i386.deb", "libx10_9.0-1_amd64.deb"):
        (directory / name).write_bytes(b"")
    debs = download_packages(["libx1"], "amd64", tmp_path)
    assert debs["libx1"].version == "1:1.0-1"     # an epoch beats any upstream version


def test_an_unknown_package_is_an_infra_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(InfraError) as exc:
        fetch_packages(["cpa-harness-no-such-package"], "amd64", tmp_path)
    assert "apt cannot download cpa-harness-no-such-package:amd64" in exc.value.message
    assert exc.value.hint.startswith("run: ")
    assert not [p for p in (tmp_path / "debs" / "amd64").iterdir() if p.name != ".lock"]


def test_a_missing_foreign_arch_gets_the_add_architecture_hint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian, "_foreign_arch_missing", lambda darch: True)
    assert debian._apt_hint("i386") == (
        "run: dpkg --add-architecture i386 && apt-get update")


def test_a_bad_package_name_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a Debian package name"):
        fetch_packages(["../etc"], "amd64", tmp_path)


def test_an_apt_timeout_is_an_infra_error(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    def slow(argv: list[str], **kwargs: Any) -> Any:
        raise subprocess.TimeoutExpired(argv, kwargs.get("timeout", 0))
    monkeypatch.setattr(subprocess, "run", slow)
    with pytest.raises(InfraError, match="apt-get download busybox-static:amd64 timed out"):
        download_packages(["busybox-static"], "amd64", tmp_path)


# --- doctor -----------------------------------------------------------------

@pytest.mark.parametrize("darch", ["amd64", "i386"])
def test_packages_reachable_lists_what_apt_cannot_provide(darch: str) -> None:
    names = read_package_list(GUEST_DIR / "packages.txt", darch)
    assert packages_reachable(names, darch) == []
    assert packages_reachable(["busybox-static", "cpa-harness-no-such-package"], darch) == [
        "cpa-harness-no-such-package"]


def test_xen_libraries_do_not_exist_for_i386() -> None:
    # Why packages.txt limits them to [amd64].
    assert packages_reachable(["libxenmisc4.17"], "i386") == ["libxenmisc4.17"]
