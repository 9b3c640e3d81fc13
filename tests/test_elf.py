"""harness/elf.py on real binaries: the host's, Debian's for both guest arches,
and small ELF files assembled here in place of a vmlinux."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness.arches import get_arch
from harness.errors import InfraError, UserError
from harness.image.debian import fetch_packages, read_package_list
from harness.kernel.elf import (
    check_arch,
    check_vmlinux,
    elf_info,
    find_symbols,
    needed_closure,
    resolve_in_root,
)
from harness.paths import GUEST_DIR

HOST_LS = Path("/bin/ls")


def _deb_cache() -> Path:
    """Downloaded packages are kept between runs; the layout is crash-safe."""
    env = os.environ.get("CPA_HARNESS_TEST_CACHE")
    return Path(env) if env else Path(tempfile.gettempdir()) / "cpa-harness-test-cache"


@pytest.fixture(scope="module", params=["amd64", "i386"])
def guest_roots(request: pytest.FixtureRequest) -> tuple[str, dict[str, Path]]:
    darch: str = request.param
    names = read_package_list(GUEST_DIR / "packages.txt", darch)
    return darch, fetch_packages(names, darch, _deb_cache())


# --- elf_info / check_arch --------------------------------------------------

def test_host_ls_is_a_dynamic_64_bit_binary() -> None:
    info = elf_info(HOST_LS)
    assert info.elf_class == 64
    assert info.machine == "EM_X86_64"
    assert info.interp == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in info.needed
    assert not info.is_static
    assert info.soname is None


def test_debian_busybox_i386_is_static_32_bit(guest_roots: tuple[str, dict[str, Path]]
                                               ) -> None:
    darch, roots = guest_roots
    info = elf_info(roots["busybox-static"] / "bin/busybox")
    expected = {"amd64": (64, "EM_X86_64"), "i386": (32, "EM_386")}[darch]
    assert (info.elf_class, info.machine) == expected
    assert info.is_static
    assert info.interp is None and info.needed == ()


def test_shared_library_has_a_soname(guest_roots: tuple[str, dict[str, Path]]) -> None:
    darch, roots = guest_roots
    triplet = {"amd64": "x86_64-linux-gnu", "i386": "i386-linux-gnu"}[darch]
    info = elf_info(roots["libtommath1"] / "usr/lib" / triplet / "libtommath.so.1")
    assert info.soname == "libtommath.so.1"
    assert "libc.so.6" in info.needed


def test_check_arch_accepts_matching_binaries(guest_roots: tuple[str, dict[str, Path]]) -> None:
    darch, roots = guest_roots
    arch = get_arch({"amd64": "x86_64", "i386": "i386"}[darch])
    check_arch(roots["busybox-static"] / "bin/busybox", arch)
    check_arch(roots["dropbear-bin"] / "usr/sbin/dropbear", arch)
    if darch == "i386":
        check_arch(roots["busybox-static"] / "bin/busybox", get_arch("i386-pae"))


def test_check_arch_refuses_a_64_bit_binary_for_i386() -> None:
    with pytest.raises(UserError) as exc:
        check_arch(HOST_LS, get_arch("i386"))
    line = exc.value.line()
    assert str(HOST_LS) in line
    assert "ELF64" in line and "ELF32" in line
    assert "EM_386" in line


def test_check_arch_refuses_a_binary_of_the_other_word_size(
        guest_roots: tuple[str, dict[str, Path]]) -> None:
    darch, roots = guest_roots
    busybox = roots["busybox-static"] / "bin/busybox"
    if darch == "i386":
        with pytest.raises(UserError, match=r"busybox is ELF32 EM_386.*x86_64.*ELF64"):
            check_arch(busybox, get_arch("x86_64"))
    else:
        with pytest.raises(UserError, match=r"busybox is ELF64 EM_X86_64.*i386.*ELF32"):
            check_arch(busybox, get_arch("i386"))


def test_elf_info_refuses_non_elf_and_missing_files(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(UserError, match="not a valid ELF"):
        elf_info(script)
    with pytest.raises(UserError, match="cannot read"):
        elf_info(tmp_path / "missing")


# --- needed_closure ---------------------------------------------------------

def test_needed_closure_of_dropbear_finds_libc_and_the_interpreter(
        guest_roots: tuple[str, dict[str, Path]]) -> None:
    darch, roots = guest_roots
    dropbear = roots["dropbear-bin"] / "usr/sbin/dropbear"
    closure = needed_closure([dropbear], list(roots.values()))
    if darch == "amd64":
        interp, libc = "lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6"
        libdir = "usr/lib/x86_64-linux-gnu"
    else:
        interp, libc = "lib/ld-linux.so.2", "lib/i386-linux-gnu/libc.so.6"
        libdir = "usr/lib/i386-linux-gnu"
    assert interp in closure
    assert libc in closure
    for lib in ("libtomcrypt.so.1", "libtommath.so.1", "libgmp.so.10", "libz.so.1"):
        assert f"{libdir}/{lib}" in closure or f"lib/{libdir[8:]}/{lib}" in closure, lib
    arch = get_arch({"amd64": "x86_64", "i386": "i386"}[darch])
    for rel, host in closure.items():
        assert not rel.startswith("/")
        assert host.is_file() and not host.is_symlink()
        check_arch(host, arch)
    # The interpreter in lib64/ (or lib/) is a symlink in libc6: the closure
    # points at the file it resolves to, inside the libc6 root.
    assert closure[interp].resolve().is_relative_to(roots["libc6"].resolve())


def test_needed_closure_of_kexec(guest_roots: tuple[str, dict[str, Path]]) -> None:
    darch, roots = guest_roots
    closure = needed_closure([roots["kexec-tools"] / "sbin/kexec"], list(roots.values()))
    names = {Path(p).name for p in closure}
    assert "libc.so.6" in names
    # Debian builds kexec-tools with Xen support on amd64 only.
    assert ("libxenctrl.so.4.17" in names) == (darch == "amd64")


def test_needed_closure_names_the_missing_library_and_its_user(
        guest_roots: tuple[str, dict[str, Path]]) -> None:
    _, roots = guest_roots
    dropbear = roots["dropbear-bin"] / "usr/sbin/dropbear"
    with pytest.raises(InfraError) as exc:
        needed_closure([dropbear], [roots["libc6"], roots["dropbear-bin"]])
    assert "libtomcrypt.so.1" in exc.value.message
    assert str(dropbear) in exc.value.message
    assert "guest/packages.txt" in exc.value.hint


def test_needed_closure_skips_a_library_of_the_wrong_class(tmp_path: Path) -> None:
    # ld.so passes over a 32-bit libc.so.6 in a 64-bit search dir; so must we.
    libc32 = fetch_packages(["libc6"], "i386", _deb_cache())["libc6"]
    roots64 = fetch_packages(["dropbear-bin", "libc6", "libtomcrypt1", "libtommath1",
                              "libgmp10"], "amd64", _deb_cache())
    dropbearkey = roots64["dropbear-bin"] / "usr/bin/dropbearkey"
    lib_dir = tmp_path / "root" / "lib" / "x86_64-linux-gnu"
    lib_dir.mkdir(parents=True)
    shutil.copy(libc32 / "lib/i386-linux-gnu/libc.so.6", lib_dir / "libc.so.6")
    roots = [tmp_path / "root", *roots64.values()]
    closure = needed_closure([dropbearkey], roots)
    assert closure["lib/x86_64-linux-gnu/libc.so.6"].is_relative_to(roots64["libc6"].resolve())
    # Without the 64-bit libc, the 32-bit one is still not taken.
    (tmp_path / "root" / "lib64").mkdir()
    shutil.copy(closure["lib64/ld-linux-x86-64.so.2"],
                tmp_path / "root" / "lib64" / "ld-linux-x86-64.so.2")
    roots.remove(roots64["libc6"])
    with pytest.raises(InfraError, match="libc.so.6 needed by .*dropbearkey"):
        needed_closure([dropbearkey], roots)


def test_resolve_in_root_follows_links_inside_the_root_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "lib" / "real").mkdir(parents=True)
    (root / "lib" / "real" / "libx.so.1.2").write_bytes(b"x")
    (root / "lib" / "libx.so.1").symlink_to("real/libx.so.1.2")
    (root / "lib64").mkdir()
    (root / "lib64" / "abs.so").symlink_to("/lib/libx.so.1")   # absolute: inside the root
    (tmp_path / "outside.so").write_bytes(b"secret")
    (root / "lib" / "escape.so").symlink_to("../../outside.so")
    (root / "lib" / "escape_abs.so").symlink_to(str(tmp_path / "outside.so"))
    (root / "lib" / "loop.so").symlink_to("loop.so")
    (root / "lib" / "dirlink").symlink_to("/lib/real")

    real = (root / "lib" / "real" / "libx.so.1.2").resolve()
    assert resolve_in_root(root, "lib/libx.so.1") == real
    assert resolve_in_root(root, "/lib64/abs.so") == real
    assert resolve_in_root(root, "lib/dirlink/libx.so.1.2") == real
    assert resolve_in_root(root, "lib/escape.so") is None
    # An absolute target is re-rooted: the host's path does not exist in the root.
    assert resolve_in_root(root, "lib/escape_abs.so") is None
    assert resolve_in_root(root, "lib/loop.so") is None
    assert resolve_in_root(root, "lib/missing.so") is None
    assert resolve_in_root(root, "../outside.so") is None


# --- vmlinux checks ---------------------------------------------------------

_ASM = """
    .text
    .globl do_pageattr_test
do_pageattr_test:
    ret
    .globl _start
_start:
    ret
    .data
    .globl cpa_1g_checked
cpa_1g_checked:
    .long 0
"""


def _fake_vmlinux(tmp_path: Path, bits: int, strip: bool = False) -> Path:
    """A tiny ELF with kernel-like symbols, assembled and linked here."""
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("binutils (as, ld) not installed")
    src = tmp_path / "v.s"
    src.write_text(_ASM)
    obj = tmp_path / f"v{bits}.o"
    out = tmp_path / f"vmlinux{bits}"
    subprocess.run(["as", f"--{bits}", "-o", str(obj), str(src)], check=True)
    emulation = "elf_x86_64" if bits == 64 else "elf_i386"
    subprocess.run(["ld", "-m", emulation, "-o", str(out), str(obj)], check=True)
    if strip:
        subprocess.run(["strip", str(out)], check=True)
    return out


def test_find_symbols_returns_addresses(tmp_path: Path) -> None:
    vmlinux = _fake_vmlinux(tmp_path, 64)
    found = find_symbols(vmlinux, ["do_pageattr_test", "cpa_1g_checked", "nope"])
    assert set(found) == {"do_pageattr_test", "cpa_1g_checked"}
    nm = subprocess.run(["nm", str(vmlinux)], capture_output=True, text=True, check=True).stdout
    expected = {line.split()[2]: int(line.split()[0], 16) for line in nm.splitlines()}
    assert found["do_pageattr_test"] == expected["do_pageattr_test"]


@pytest.mark.parametrize("bits,arch_name", [(64, "x86_64"), (32, "i386"), (32, "i386-pae")])
def test_check_vmlinux_accepts_a_matching_kernel(tmp_path: Path, bits: int,
                                                 arch_name: str) -> None:
    check_vmlinux(_fake_vmlinux(tmp_path, bits), get_arch(arch_name), ["do_pageattr_test"])


def test_check_vmlinux_names_the_missing_symbol_and_option(tmp_path: Path) -> None:
    vmlinux = _fake_vmlinux(tmp_path, 64)
    with pytest.raises(UserError) as exc:
        check_vmlinux(vmlinux, get_arch("x86_64"), ["do_pageattr_test", "cpastats_show"])
    assert exc.value.line() == ("vmlinux lacks symbol cpastats_show: "
                                "CONFIG_X86_CPA_STATISTICS is not in effect")


def test_check_vmlinux_refuses_the_wrong_class(tmp_path: Path) -> None:
    vmlinux = _fake_vmlinux(tmp_path, 64)
    with pytest.raises(UserError, match=r"ELF64 EM_X86_64.*i386.*ELF32 EM_386"):
        check_vmlinux(vmlinux, get_arch("i386"), [])
    vmlinux32 = _fake_vmlinux(tmp_path, 32)
    with pytest.raises(UserError, match=r"ELF32 EM_386.*x86_64.*ELF64"):
        check_vmlinux(vmlinux32, get_arch("x86_64"), [])


def test_check_vmlinux_refuses_a_stripped_or_missing_file(tmp_path: Path) -> None:
    vmlinux = _fake_vmlinux(tmp_path, 64, strip=True)
    with pytest.raises(UserError, match="no symbol table"):
        check_vmlinux(vmlinux, get_arch("x86_64"), ["do_pageattr_test"])
    with pytest.raises(UserError, match="not found"):
        check_vmlinux(tmp_path / "nothing", get_arch("x86_64"), [])
