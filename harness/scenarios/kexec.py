"""kexec round trips: load a kernel from inside the guest, jump to it, prove it is running.

A round trip is proven by two things the new kernel cannot inherit by
accident: a fresh nonce appended to its command line (read back from the new
/proc/cmdline) and a boot id that differs from the old one. The gbpages
support once broke exactly this path, so it is exercised, not assumed.

Methods, named after the system calls: kexec_load (`kexec -l`, both arches)
and kexec_file_load (`kexec -s`, x86_64 only: KEXEC_FILE).
"""

from __future__ import annotations

import re
import shlex
import struct
from pathlib import Path

from harness.arches import Arch
from harness.errors import UserError
from harness.kernel import elf
from harness.target.serial import NONCE_PARAM

METHODS: dict[str, tuple[str, str]] = {
    # method: (kexec-tools flags, the option the kernel needs). -s only picks the
    # system call; without -l kexec-tools would load and then run shutdown(8).
    "kexec_load": ("-l", "CONFIG_KEXEC"),
    "kexec_file_load": ("-s -l", "CONFIG_KEXEC_FILE"),
}
# kernel/kexec_core.c kernel_kexec(): "Starting new kernel" (pr_notice)
STARTING_RE = re.compile(rb"Starting new kernel")
GUEST_IMAGE = "/tmp/kexec-image"
GUEST_INITRD = "/tmp/kexec-initrd"

# The x86 boot protocol (Documentation/arch/x86/boot.rst): "HdrS" at 0x202,
# the protocol version at 0x206, xloadflags at 0x236 from version 2.12 on.
_HDRS_OFFSET = 0x202
_VERSION_OFFSET = 0x206
_XLOADFLAGS_OFFSET = 0x236
_XLF_KERNEL_64 = 1 << 0


def next_cmdline(current: str, nonce: str) -> str:
    """The running command line with any earlier nonce replaced by this one."""
    words = [w for w in current.split() if not w.startswith(NONCE_PARAM + "=")]
    return " ".join([*words, f"{NONCE_PARAM}={nonce}"])


def load_command(method: str, cmdline: str) -> str:
    flag, _ = METHODS[method]
    return (f"kexec {flag} {GUEST_IMAGE} --initrd={GUEST_INITRD} "
            f"--command-line={shlex.quote(cmdline)}")


# `kexec -e` ends the ssh session with the kernel; run it from a detached
# shell a moment later so the ssh command itself returns cleanly first.
EXECUTE = "(sleep 1; kexec -e) </dev/null >/dev/null 2>&1 &"


def check_method(method: str, arch: Arch, config: dict[str, str] | None = None) -> None:
    """A method the kernel lacks is a user error, found before anything boots.

    Without a config (before the build) only what the arch rules out is checked.
    """
    if method not in METHODS:
        raise UserError(f"unknown kexec method {method!r}", f"choose from {', '.join(METHODS)}")
    _, option = METHODS[method]
    if config is None:
        config = {option: "n" if method == "kexec_file_load" and arch.elf_class == 32 else "y"}
    if config.get(option, "n") != "y":
        hint = ("kexec_file_load exists on x86_64 only; use kexec_load"
                if method == "kexec_file_load" and arch.elf_class == 32
                else f"build with {option}=y")
        raise UserError(f"kexec method {method} needs {option}, which the {arch.name} "
                        f"kernel does not have", hint)


def _bzimage_is_64bit(path: Path, data: bytes) -> bool:
    if len(data) < _XLOADFLAGS_OFFSET + 2 or data[_HDRS_OFFSET:_HDRS_OFFSET + 4] != b"HdrS":
        raise UserError(f"kexec target {path} is neither a bzImage nor an ELF vmlinux",
                        "give a kernel build directory, its bzImage, or its vmlinux")
    version = struct.unpack_from("<H", data, _VERSION_OFFSET)[0]
    if version < 0x020c:
        raise UserError(f"kexec target {path} uses boot protocol {version >> 8}.{version & 0xff}",
                        "a kernel from this decade (protocol 2.12 or later) is needed")
    flags: int = struct.unpack_from("<H", data, _XLOADFLAGS_OFFSET)[0]
    return bool(flags & _XLF_KERNEL_64)


def check_target(path: Path, arch: Arch) -> Path:
    """The kernel image to load from a build directory, bzImage or vmlinux, checked
    against the guest arch before anything boots."""
    if path.is_dir():
        vmlinux, image = path / "vmlinux", path / arch.image
        if not vmlinux.is_file() or not image.is_file():
            raise UserError(f"kexec target {path} has no vmlinux and {arch.image}",
                            "give a built kernel tree or build directory")
        elf.check_arch(vmlinux, arch)       # pyelftools: class and machine
        path = image
    if not path.is_file():
        raise UserError(f"kexec target {path} does not exist",
                        "give a kernel build directory, its bzImage, or its vmlinux")
    if elf.is_elf(path):
        elf.check_arch(path, arch)
        return path
    with open(path, "rb") as f:
        head = f.read(0x400)
    if _bzimage_is_64bit(path, head) != (arch.elf_class == 64):
        raise UserError(f"kexec target {path} is a "
                        f"{'64' if arch.elf_class == 32 else '32'}-bit kernel, but the guest "
                        f"is {arch.name}", "give a kernel built for the guest's arch")
    return path
