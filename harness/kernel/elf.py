"""ELF checks with pyelftools: guest binaries, their shared libraries, vmlinux.

Every binary that goes into a guest must match the guest's ELF class and
machine (a 64-bit busybox in an i386 initramfs boots to "Kernel panic - not
syncing: No working init found"), and every vmlinux must carry the symbols
that prove the debug options the run depends on were built in.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from elftools.elf.segments import InterpSegment

from harness.arches import Arch
from harness.errors import InfraError, UserError

ELF_MAGIC = b"\x7fELF"

# Where Debian's dynamic loader looks when there is no ld.so.cache (an
# initramfs has none), per ELF class. Multiarch dirs first, as ld.so does.
LIB_DIRS: dict[int, tuple[str, ...]] = {
    64: ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64",
         "lib", "usr/lib"),
    32: ("lib/i386-linux-gnu", "usr/lib/i386-linux-gnu", "lib32", "usr/lib32",
         "lib", "usr/lib"),
}

# Symbols whose absence names the Kconfig option that is not in effect.
SYMBOL_CONFIG: dict[str, str] = {
    "do_pageattr_test": "CONFIG_CPA_DEBUG",
    "cpastats_show": "CONFIG_X86_CPA_STATISTICS",
    "machine_kexec": "CONFIG_KEXEC_CORE",
}

_MAX_SYMLINK_HOPS = 40


@dataclass(frozen=True)
class ElfInfo:
    elf_class: int                  # 32 or 64
    machine: str                    # pyelftools e_machine name, e.g. "EM_X86_64"
    interp: str | None              # PT_INTERP, e.g. "/lib/ld-linux.so.2"
    needed: tuple[str, ...]         # DT_NEEDED sonames, in file order
    is_static: bool                 # no interpreter and nothing needed
    soname: str | None              # DT_SONAME of a shared library
    runpath: tuple[str, ...] = ()   # DT_RUNPATH, else DT_RPATH, split on ':'


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def _open_elf(path: Path, f: IO[bytes]) -> ELFFile:
    try:
        return ELFFile(f)
    except ELFError as e:
        raise UserError(f"{path} is not a valid ELF file ({e})",
                        "check the path names a binary, not a script or an archive") from None


def _read_info(elf: ELFFile) -> ElfInfo:
    interp: str | None = None
    for seg in elf.iter_segments():
        if isinstance(seg, InterpSegment):
            interp = seg.get_interp_name()
    needed: list[str] = []
    soname: str | None = None
    runpath: list[str] = []
    rpath: list[str] = []
    for sec in elf.iter_sections():
        if not isinstance(sec, DynamicSection):
            continue
        for dyn_tag in sec.iter_tags():
            # pyelftools sets .needed/.soname/.runpath/.rpath per tag kind.
            tag: Any = dyn_tag
            kind = tag.entry.d_tag
            if kind == "DT_NEEDED":
                needed.append(tag.needed)
            elif kind == "DT_SONAME":
                soname = tag.soname
            elif kind == "DT_RUNPATH":
                runpath.extend(p for p in tag.runpath.split(":") if p)
            elif kind == "DT_RPATH":
                rpath.extend(p for p in tag.rpath.split(":") if p)
    return ElfInfo(
        elf_class=elf.elfclass,
        machine=str(elf["e_machine"]),
        interp=interp,
        needed=tuple(needed),
        is_static=interp is None and not needed,
        soname=soname,
        runpath=tuple(runpath or rpath),
    )


def elf_info(path: Path) -> ElfInfo:
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}", "check the path") from None
    with f:
        return _read_info(_open_elf(path, f))


def elf_info_data(data: bytes, name: str) -> ElfInfo:
    """elf_info of an in-memory file; name is what error messages call it."""
    return _read_info(_open_elf(Path(name), io.BytesIO(data)))


def _arch_mismatch(info: ElfInfo, arch: Arch) -> bool:
    return info.elf_class != arch.elf_class or info.machine != arch.elf_machine


def _require_arch(path: Path, info: ElfInfo, arch: Arch, hint: str) -> None:
    if _arch_mismatch(info, arch):
        raise UserError(
            f"{path} is ELF{info.elf_class} {info.machine}, but the {arch.name} guest "
            f"needs ELF{arch.elf_class} {arch.elf_machine}", hint)


def check_arch(path: Path, arch: Arch) -> None:
    """Refuse a binary whose ELF class or machine is not the guest's."""
    _require_arch(path, elf_info(path), arch, f"use the {arch.debian_arch} build of this binary")


# --- shared-library closure -------------------------------------------------

def resolve_in_root(root: Path, relpath: str | PurePosixPath) -> Path | None:
    """Resolve a path inside root as if root were '/', following symlinks.

    Absolute link targets are taken relative to root and '..' never climbs
    above it; a path that would leave the root, loops, or does not exist gives
    None. The result is a host path to a regular file or directory in root.
    """
    pending = [p for p in PurePosixPath(relpath).parts if p not in ("/", "", ".")]
    pending.reverse()
    done: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if not done:
                return None
            done.pop()
            continue
        candidate = root.joinpath(*done, part)
        try:
            st = os.lstat(candidate)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > _MAX_SYMLINK_HOPS:
                return None
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                done = []
            pending.extend(reversed([p for p in target.parts if p not in ("/", "", ".")]))
            continue
        if pending and not stat.S_ISDIR(st.st_mode):
            return None
        done.append(part)
    result = root.joinpath(*done)
    return result if result.exists() else None


@dataclass(frozen=True)
class _Found:
    archive: str   # path in the guest, without a leading '/'
    host: Path     # the regular file it resolves to


def _find_library(soname: str, elf_class: int, machine: str, runpath: Iterable[str],
                  roots: list[Path]) -> _Found | None:
    dirs = [p.lstrip("/") for p in runpath if not p.startswith("$")]
    dirs += LIB_DIRS[elf_class]
    for d in dirs:
        for root in roots:
            rel = f"{d}/{soname}"
            host = resolve_in_root(root, rel)
            if host is None or not host.is_file() or not is_elf(host):
                continue
            info = elf_info(host)
            # ld.so skips a library of the wrong class and goes on searching.
            if info.elf_class != elf_class or info.machine != machine:
                continue
            return _Found(rel, host)
    return None


def _find_interp(interp: str, roots: list[Path]) -> _Found | None:
    rel = interp.lstrip("/")
    # A merged-/usr package root ships /lib64/... as /usr/lib64/...
    for candidate in (rel, f"usr/{rel}"):
        for root in roots:
            host = resolve_in_root(root, candidate)
            if host is not None and host.is_file():
                return _Found(rel, host)
    return None


def needed_closure(binaries: list[Path], search_roots: list[Path]) -> dict[str, Path]:
    """Every shared library and interpreter the binaries need, recursively.

    Returns guest archive path (no leading '/') -> host regular file. A
    library is placed at the path ld.so finds it by soname, so symlinks in the
    package roots are followed and the target's content is used.
    """
    roots = [r.resolve() for r in search_roots]
    result: dict[str, Path] = {}
    seen: set[tuple[int, str]] = set()
    queue: list[tuple[Path, str]] = [(b, str(b)) for b in binaries]
    while queue:
        path, shown = queue.pop(0)
        info = elf_info(path)
        if info.interp is not None and info.interp.lstrip("/") not in result:
            found = _find_interp(info.interp, roots)
            if found is None:
                raise InfraError(
                    f"interpreter {info.interp} needed by {shown} is not in the package roots",
                    "add the package that ships it (libc6) to guest/packages.txt")
            result[found.archive] = found.host
        for soname in info.needed:
            key = (info.elf_class, soname)
            if key in seen:
                continue
            seen.add(key)
            lib = _find_library(soname, info.elf_class, info.machine, info.runpath, roots)
            if lib is None:
                raise InfraError(
                    f"{soname} needed by {shown} is not in the package roots",
                    f"find its package with: apt-file search {soname}; "
                    "then add it to guest/packages.txt")
            result[lib.archive] = lib.host
            queue.append((lib.host, soname))
    return result


# --- vmlinux ----------------------------------------------------------------

def find_symbols(path: Path, names: Iterable[str]) -> dict[str, int]:
    """Addresses of those names that are in the .symtab; missing ones are left out."""
    wanted = set(names)
    found: dict[str, int] = {}
    with open(path, "rb") as f:
        elf = _open_elf(path, f)
        symtab = elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            raise UserError(f"{path} has no symbol table",
                            "use the unstripped vmlinux from the build directory")
        for sym in symtab.iter_symbols():
            if sym.name in wanted and sym.name not in found:
                found[sym.name] = int(sym["st_value"])
    return found


def check_vmlinux(path: Path, arch: Arch, required_symbols: list[str]) -> None:
    """vmlinux matches the arch and has every symbol the run relies on."""
    if not path.is_file():
        raise UserError(f"vmlinux not found at {path}",
                        "build the kernel first, or pass the build directory")
    _require_arch(path, elf_info(path), arch,
                  f"build the kernel with ARCH={arch.make_arch} and the {arch.name} fragments")
    found = find_symbols(path, required_symbols)
    for name in required_symbols:
        if name not in found:
            config = SYMBOL_CONFIG.get(name)
            hint = (f"{config} is not in effect" if config
                    else "check that the kernel .config enables what defines it")
            raise UserError(f"vmlinux lacks symbol {name}", hint)
