"""What the harness knows about each guest architecture, kept as data."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import UserError


@dataclass(frozen=True)
class Arch:
    name: str
    make_arch: str          # ARCH= for the kernel's make
    qemu: str               # QEMU system emulator binary
    machine: str            # -machine
    cpu: str                # default -cpu: a model real hardware has
    image: str              # boot image, relative to the build directory
    fragments: tuple[str, ...]  # kernel-configs/*.config that define the arch
    debian_arch: str        # Debian architecture of the guest userspace
    elf_class: int          # 32 or 64: every guest binary and vmlinux must match
    elf_machine: str        # pyelftools e_machine name


X86_64 = Arch(
    name="x86_64",
    make_arch="x86_64",
    qemu="qemu-system-x86_64",
    machine="pc",
    cpu="max",
    image="arch/x86/boot/bzImage",
    fragments=("x86_64.config",),
    debian_arch="amd64",
    elf_class=64,
    elf_machine="EM_X86_64",
)

# i386 guests run on a 32-bit Intel model with PAE and NX (Core Duo): TCG's "max"
# reports AMD and the kernel then WARNs in init_amd ("not suitable for SMP") on a
# good kernel; 64-bit models make qemu-system-i386 warn about lm and syscall.
# QEMU's coreduo lacks two features the real Core Duo has: PSE36 and PAT.
# Without PSE36 QEMU gives the CPU 32 physical address bits while a PAE
# kernel assumes 36, so a guest with RAM above 4 GiB faults on its own page
# tables (seen: "unable to handle page fault ... error_code(0x000a)", a
# reserved-bit fault, unpacking the initramfs into a highmem page); without
# PAT the kernel runs CPA with no PAT at all, unlike the hardware.
I386_CPU = "coreduo,+pse36,+pat"

I386_PAE = Arch(
    name="i386-pae",
    make_arch="i386",
    qemu="qemu-system-i386",
    machine="pc",
    cpu=I386_CPU,
    image="arch/x86/boot/bzImage",
    fragments=("i386.config", "i386-pae.config"),
    debian_arch="i386",
    elf_class=32,
    elf_machine="EM_386",
)

I386 = Arch(
    name="i386",
    make_arch="i386",
    qemu="qemu-system-i386",
    machine="pc",
    cpu=I386_CPU,
    image="arch/x86/boot/bzImage",
    fragments=("i386.config", "i386-nopae.config"),
    debian_arch="i386",
    elf_class=32,
    elf_machine="EM_386",
)

ARCHES: dict[str, Arch] = {a.name: a for a in (X86_64, I386_PAE, I386)}


def get_arch(name: str) -> Arch:
    try:
        return ARCHES[name]
    except KeyError:
        raise UserError(f"unknown arch {name!r}",
                        f"choose one of: {', '.join(ARCHES)}") from None
