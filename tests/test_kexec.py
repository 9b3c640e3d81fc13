"""kexec pieces that need no guest: targets checked before boot, methods, the command line.

The bzImage files here are the first KiB of real 6.12 builds (x86_64 and
i386): all check_target() reads of a bzImage is its boot-protocol header.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from harness.arches import get_arch
from harness.errors import UserError
from harness.image.initramfs import GUEST_BINARIES  # noqa: F401  (kexec-tools is in the guest)
from harness.scenarios import kexec
from harness.target.serial import new_nonce

DATA = Path(__file__).parent / "data" / "kexec"
X86_64, I386, I386_PAE = get_arch("x86_64"), get_arch("i386"), get_arch("i386-pae")


def test_kexec_tools_is_in_the_guest() -> None:
    assert "sbin/kexec" in GUEST_BINARIES["kexec-tools"]


@pytest.mark.parametrize("arch", [X86_64, I386, I386_PAE])
def test_a_bzimage_of_the_guest_arch_is_accepted(arch: object) -> None:
    name = "x86_64" if arch is X86_64 else "i386"
    head = DATA / f"{name}-bzImage.head"
    assert kexec.check_target(head, arch) == head  # type: ignore[arg-type]


@pytest.mark.parametrize(("image", "arch", "said"), [
    ("x86_64-bzImage.head", I386, "is a 64-bit kernel, but the guest is i386"),
    ("x86_64-bzImage.head", I386_PAE, "is a 64-bit kernel, but the guest is i386-pae"),
    ("i386-bzImage.head", X86_64, "is a 32-bit kernel, but the guest is x86_64"),
])
def test_a_bzimage_of_the_other_arch_is_refused(image: str, arch: object, said: str) -> None:
    with pytest.raises(UserError, match=said):
        kexec.check_target(DATA / image, arch)  # type: ignore[arg-type]


def test_a_missing_target_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist") as e:
        kexec.check_target(tmp_path / "nope", X86_64)
    assert e.value.exit_code == 2 and "\n" not in e.value.line()


def test_neither_bzimage_nor_elf_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(UserError, match="neither a bzImage nor an ELF vmlinux"):
        kexec.check_target(junk, X86_64)


def test_an_elf_of_the_other_arch_is_refused_by_pyelftools(tmp_path: Path) -> None:
    # a real ELF64 x86-64 executable stands in for a vmlinux
    elf64 = Path(shutil.which("true") or "/bin/true")
    assert kexec.check_target(elf64, X86_64) == elf64
    with pytest.raises(UserError, match="ELF64 EM_X86_64, but the i386 guest needs ELF32 EM_386"):
        kexec.check_target(elf64, I386)


def test_a_build_directory_needs_vmlinux_and_bzimage(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no vmlinux and arch/x86/boot/bzImage"):
        kexec.check_target(tmp_path, X86_64)
    (tmp_path / "arch/x86/boot").mkdir(parents=True)
    shutil.copy(DATA / "x86_64-bzImage.head", tmp_path / "arch/x86/boot/bzImage")
    shutil.copy(shutil.which("true") or "/bin/true", tmp_path / "vmlinux")
    assert kexec.check_target(tmp_path, X86_64) == tmp_path / "arch/x86/boot/bzImage"
    with pytest.raises(UserError, match="ELF64"):
        kexec.check_target(tmp_path, I386)


def test_kexec_file_load_is_refused_on_i386_before_boot() -> None:
    config = {"CONFIG_KEXEC": "y"}
    kexec.check_method("kexec_load", I386_PAE, config)
    with pytest.raises(UserError) as e:
        kexec.check_method("kexec_file_load", I386_PAE, config)
    assert e.value.line().endswith("kexec_file_load exists on x86_64 only; use kexec_load")
    with pytest.raises(UserError) as e:
        kexec.check_method("kexec_file_load", X86_64, config)
    assert "needs CONFIG_KEXEC_FILE" in e.value.line()
    assert e.value.line().endswith("build with CONFIG_KEXEC_FILE=y")
    with pytest.raises(UserError, match="unknown kexec method 'kexec_jump'"):
        kexec.check_method("kexec_jump", X86_64, config)


def test_the_nonce_replaces_an_earlier_one() -> None:
    a, b = new_nonce(), new_nonce()
    assert a != b and len(a) == 16
    first = kexec.next_cmdline("console=ttyS0,115200 panic=-1 nogbpages", a)
    assert first == f"console=ttyS0,115200 panic=-1 nogbpages cpa_harness.nonce={a}"
    second = kexec.next_cmdline(first, b)
    assert second.split().count(f"cpa_harness.nonce={b}") == 1 and a not in second


def test_the_load_command_quotes_the_command_line() -> None:
    hostile = "console=ttyS0 foo='a b'; rm -rf / $(reboot)"
    cmd = kexec.load_command("kexec_file_load", hostile)
    words = shlex.split(cmd)
    assert words[:5] == ["kexec", "-s", "-l", kexec.GUEST_IMAGE,
                         f"--initrd={kexec.GUEST_INITRD}"]
    assert words[5:] == [f"--command-line={hostile}"]
    assert shlex.split(kexec.load_command("kexec_load", "x"))[1] == "-l"
