"""The guest's initramfs: a newc cpio written in Python, cached by content.

The archive is reproducible: entries in path order, mtime 0, uid/gid 0,
inode numbers assigned in that order, so the same inputs give the same bytes
and the cache key can name the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from harness import paths
from harness.arches import Arch
from harness.errors import InfraError, UserError
from harness.files import atomic, write_atomic
from harness.image import debian
from harness.kernel import elf as elf_module
from harness.kernel.elf import ELF_MAGIC, check_arch, elf_info_data, needed_closure
from harness.paths import GUEST_DIR
from harness.progress import report

# Bump when the archive layout or assembly changes: it is part of the cache key.
WRITER_VERSION = 1

_NEWC_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"
_CHUNK = 1 << 20
_CODE = (__file__, elf_module.__file__)

# What the guest takes out of each package besides shared libraries.
GUEST_BINARIES: dict[str, tuple[str, ...]] = {
    "busybox-static": ("bin/busybox",),
    "dropbear-bin": ("usr/sbin/dropbear", "usr/bin/dropbearkey"),
    "kexec-tools": ("sbin/kexec",),
}

# Directories the init script and the tools expect, with their modes.
GUEST_DIRS: dict[str, int] = {
    "bin": 0o755, "sbin": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
    "lib": 0o755, "etc": 0o755, "etc/dropbear": 0o700, "proc": 0o555,
    "sys": 0o555, "dev": 0o755, "dev/pts": 0o755, "tmp": 0o1777, "run": 0o755,
    "var": 0o755, "var/log": 0o755, "mnt": 0o755, "root": 0o700,
}

# Nodes the kernel needs before devtmpfs is mounted: /init's first output
# goes to /dev/console, and without it the kernel warns and init runs mute.
GUEST_DEVICES: tuple[tuple[str, int, int, int], ...] = (
    ("dev/console", 5, 1, 0o600),
    ("dev/null", 1, 3, 0o666),
    ("dev/ttyS0", 4, 64, 0o660),
)

# Applets that make no sense in this guest.
SKIP_APPLETS = frozenset({"linuxrc"})


# --- the cpio writer --------------------------------------------------------

@dataclass(frozen=True)
class CpioEntry:
    path: str                   # no leading '/', e.g. "usr/sbin/dropbear"
    mode: int                   # full st_mode: file type and permissions
    data: bytes | None = None   # file content, or the symlink target
    source: Path | None = None  # a host file to copy instead of data
    rdev: tuple[int, int] = (0, 0)
    implicit: bool = False      # a parent directory nobody asked for


def _normalize(path: str) -> str:
    parts = PurePosixPath("/" + path).parts[1:]
    if not parts or any(p in ("..", ".") for p in parts):
        raise ValueError(f"bad archive path {path!r}")
    return "/".join(parts)


def _exec_mode(host_mode: int) -> int:
    """Keep only whether a host file is executable: 0755 or 0644."""
    return 0o755 if host_mode & 0o111 else 0o644


class CpioWriter:
    """Collects entries, then writes one reproducible newc archive."""

    def __init__(self) -> None:
        self._entries: dict[str, CpioEntry] = {}

    def __contains__(self, path: str) -> bool:
        return _normalize(path) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[CpioEntry]:
        """In archive order: sorted by path components, so parents come first."""
        return [self._entries[p] for p in sorted(self._entries, key=lambda p: p.split("/"))]

    def _parents(self, path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            existing = self._entries.get(parent)
            if existing is None:
                self._entries[parent] = CpioEntry(parent, stat.S_IFDIR | 0o755, implicit=True)
            elif not stat.S_ISDIR(existing.mode):
                raise ValueError(f"{path}: parent {parent} is not a directory")

    def _add(self, entry: CpioEntry) -> None:
        existing = self._entries.get(entry.path)
        if existing is not None:
            if not (existing.implicit and stat.S_ISDIR(entry.mode)):
                raise ValueError(f"{entry.path} is already in the archive")
        self._parents(entry.path)
        self._entries[entry.path] = entry

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self._add(CpioEntry(_normalize(path), stat.S_IFDIR | (mode & 0o7777)))

    def add_file(self, path: str, content: bytes | Path, mode: int | None = None) -> None:
        """A regular file from bytes (default 0644) or a host file (0755 if executable)."""
        if isinstance(content, Path):
            st = os.stat(content)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{content} is not a regular file")
            perm = _exec_mode(st.st_mode) if mode is None else mode
            self._add(CpioEntry(_normalize(path), stat.S_IFREG | (perm & 0o7777),
                                source=content))
        else:
            perm = 0o644 if mode is None else mode
            self._add(CpioEntry(_normalize(path), stat.S_IFREG | (perm & 0o7777),
                                data=bytes(content)))

    def add_symlink(self, path: str, target: str) -> None:
        self._add(CpioEntry(_normalize(path), stat.S_IFLNK | 0o777, data=target.encode()))

    def add_device(self, path: str, kind: str, major: int, minor: int,
                   mode: int = 0o600) -> None:
        if kind not in ("c", "b"):
            raise ValueError(f"device kind must be 'c' or 'b', not {kind!r}")
        ftype = stat.S_IFCHR if kind == "c" else stat.S_IFBLK
        self._add(CpioEntry(_normalize(path), ftype | (mode & 0o7777), rdev=(major, minor)))

    # -- output --

    @staticmethod
    def _header(ino: int, mode: int, nlink: int, size: int, rdev: tuple[int, int],
                name: str) -> bytes:
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(encoded), 0)
        head = _NEWC_MAGIC + b"".join(b"%08X" % f for f in fields) + encoded
        return head + b"\0" * (-len(head) % 4)

    def _write_entry(self, out: IO[bytes], ino: int, entry: CpioEntry) -> None:
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        if entry.source is not None:
            with open(entry.source, "rb") as src:
                size = os.fstat(src.fileno()).st_size
                out.write(self._header(ino, entry.mode, nlink, size, entry.rdev, entry.path))
                copied = 0
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    copied += len(chunk)
                if copied != size:
                    raise InfraError(f"{entry.source} changed while it was archived",
                                     "run again")
        else:
            data = entry.data or b""
            size = len(data)
            out.write(self._header(ino, entry.mode, nlink, size, entry.rdev, entry.path))
            out.write(data)
        out.write(b"\0" * (-size % 4))

    def write_to(self, out: IO[bytes]) -> None:
        for ino, entry in enumerate(self.entries(), 1):
            self._write_entry(out, ino, entry)
        out.write(self._header(0, 0, 1, 0, (0, 0), _TRAILER))

    def getvalue(self) -> bytes:
        buf = io.BytesIO()
        self.write_to(buf)
        return buf.getvalue()

    def write(self, path: Path) -> None:
        with atomic(path) as out:
            self.write_to(out)


# --- busybox applets --------------------------------------------------------

def busybox_applets(busybox: Path) -> list[str]:
    """Applet names from the binary's applet_names table, without running it.

    busybox keeps its applet names as one sorted, NUL-separated string that
    starts with "[" (test) and ends with an empty name.
    """
    data = busybox.read_bytes()
    start = data.find(b"\0[\0[[\0")
    if start < 0:
        start = data.find(b"\0[\0a")
    if start < 0:
        raise InfraError(f"no applet table found in {busybox}",
                         "busybox-static changed its layout: update busybox_applets()")
    end = data.find(b"\0\0", start + 1)
    names = [n.decode("ascii", "replace") for n in data[start + 1:end].split(b"\0")]
    if len(names) < 10 or names != sorted(names):
        raise InfraError(f"the applet table in {busybox} does not parse",
                         "busybox-static changed its layout: update busybox_applets()")
    return names


def applet_locations(listing: Path) -> dict[str, str]:
    """guest/busybox-applets.txt: applet name -> directory, e.g. 'mount' -> 'bin'."""
    where: dict[str, str] = {}
    for raw in listing.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path = PurePosixPath(line)
        where[path.name] = str(path.parent) if str(path.parent) != "." else "bin"
    return where


# --- assembly ---------------------------------------------------------------

def _guest_files(guest_dir: Path) -> list[tuple[str, Path]]:
    """Every file under guest/, as (relative path, host path), in a fixed order."""
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(guest_dir):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith((".pyc", "~")):
                continue
            host = Path(dirpath) / name
            files.append((host.relative_to(guest_dir).as_posix(), host))
    return sorted(files)


def _cache_key(arch: Arch, debs: dict[str, debian.DebFile], guest_dir: Path,
               authorized_key: str | None, extra_files: dict[str, bytes]) -> str:
    guest: list[tuple[str, bool, str]] = []
    for rel, host in _guest_files(guest_dir):
        mode = host.stat().st_mode
        guest.append((rel, bool(mode & 0o111), hashlib.sha256(host.read_bytes()).hexdigest()))
    doc = {
        "writer": WRITER_VERSION,
        # Any change to how the archive is assembled must make a new file.
        "code": [hashlib.sha256(Path(m).read_bytes()).hexdigest() for m in _CODE],
        "arch": [arch.name, arch.debian_arch, arch.elf_class, arch.elf_machine],
        "packages": sorted([d.name, d.version, d.arch] for d in debs.values()),
        "guest": guest,
        "authorized_key": authorized_key,
        "extra": sorted([_normalize(p), hashlib.sha256(b).hexdigest()]
                        for p, b in extra_files.items()),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def initramfs_path(arch: Arch, cache: Path, key: str) -> Path:
    return cache / "initramfs" / f"{arch.name}-{key[:20]}.cpio"


def _check_data(data: bytes, name: str, arch: Arch) -> None:
    if not data.startswith(ELF_MAGIC):
        return
    info = elf_info_data(data, name)
    if info.elf_class != arch.elf_class or info.machine != arch.elf_machine:
        raise UserError(
            f"{name} is ELF{info.elf_class} {info.machine}, but the {arch.name} guest "
            f"needs ELF{arch.elf_class} {arch.elf_machine}",
            f"use the {arch.debian_arch} build of this binary")


def _package_file(roots: dict[str, Path], package: str, rel: str) -> Path:
    host = roots[package] / rel
    if not host.is_file():
        raise InfraError(f"{package} has no {rel}",
                         "the Debian package changed: update GUEST_BINARIES in "
                         "harness/initramfs.py")
    return host


def assemble(arch: Arch, roots: dict[str, Path], guest_dir: Path, *,
             authorized_key: str | None = None,
             extra_files: dict[str, bytes] | None = None) -> CpioWriter:
    """Everything the guest needs, laid out in a CpioWriter (nothing written yet)."""
    w = CpioWriter()
    for d, mode in GUEST_DIRS.items():
        w.add_dir(d, mode)
    w.add_symlink("var/run", "../run")
    for path, major, minor, mode in GUEST_DEVICES:
        w.add_device(path, "c", major, minor, mode)

    # The init script and the overlay (etc/passwd, etc/group, etc/profile, ...).
    init = guest_dir / "init"
    if not init.is_file():
        raise InfraError(f"{init} is missing", "restore guest/init from the checkout")
    w.add_file("init", init, 0o755)
    overlay = guest_dir / "overlay"
    if overlay.is_dir():
        for rel, host in _guest_files(overlay):
            if host.read_bytes().startswith(ELF_MAGIC):
                check_arch(host, arch)
            w.add_file(rel, host)

    # Binaries from the packages, then the libraries they need.
    binaries: list[Path] = []
    for package, files in GUEST_BINARIES.items():
        if package not in roots:
            raise InfraError(f"package {package} is not in guest/packages.txt",
                             f"add {package} to guest/packages.txt")
        for rel in files:
            host = _package_file(roots, package, rel)
            check_arch(host, arch)
            w.add_file(rel, host, 0o755)
            binaries.append(host)
    for rel, host in sorted(needed_closure(binaries, list(roots.values())).items()):
        check_arch(host, arch)
        if rel not in w:
            w.add_file(rel, host)

    if authorized_key is not None:
        _add_authorized_key(w, authorized_key)

    for path, data in sorted((extra_files or {}).items()):
        _check_data(data, path, arch)
        mode = 0o755 if data.startswith((b"#!", ELF_MAGIC)) else 0o644
        w.add_file(path, data, mode)

    # One link per applet, wherever nothing else already sits.
    busybox = _package_file(roots, "busybox-static", "bin/busybox")
    where = applet_locations(guest_dir / "busybox-applets.txt")
    for applet in busybox_applets(busybox):
        if applet in SKIP_APPLETS:
            continue
        link = f"{where.get(applet, 'bin')}/{applet}"
        if link not in w:
            w.add_symlink(link, "/bin/busybox")
    return w


def build_initramfs(arch: Arch, cache: Path, *, authorized_key: str | None = None,
                    extra_files: dict[str, bytes] | None = None,
                    guest_dir: Path | None = None) -> Path:
    """The initramfs for arch, built once per distinct input and then reused."""
    guest = guest_dir if guest_dir is not None else GUEST_DIR
    extra = dict(extra_files or {})
    names = debian.read_package_list(guest / "packages.txt", arch.debian_arch)
    debs = debian.download_packages(names, arch.debian_arch, cache)
    out = initramfs_path(arch, cache, _cache_key(arch, debs, guest, authorized_key, extra))
    digest = out.with_name(out.name + ".sha256")
    with paths.locked(out.with_name(out.name + ".lock")):
        if out.is_file() and digest.is_file():
            if _sha256(out) == digest.read_text().strip():
                return out
            report(f"initramfs {out} changed since it was written (corrupted?); making it "
                   "again")
        roots = {name: debian.extract_package(deb, cache, arch.debian_arch)
                 for name, deb in debs.items()}
        writer = assemble(arch, roots, guest, authorized_key=authorized_key, extra_files=extra)
        writer.write(out)
        # Written after the image: an image without its digest is a half-made one.
        write_atomic(digest, _sha256(out) + "\n")
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _add_authorized_key(w: CpioWriter, authorized_key: str) -> None:
    key = authorized_key.strip()
    if not key or "\n" in key:
        raise UserError("the authorized key must be one line of an OpenSSH public key",
                        "pass the contents of a .pub file")
    if "root" not in w:
        # unpacking a directory entry sets the mode of one that exists
        w.add_dir("root", GUEST_DIRS["root"])
    w.add_dir("root/.ssh", 0o700)
    w.add_file("root/.ssh/authorized_keys", (key + "\n").encode(), 0o600)


def with_authorized_key(base: Path, authorized_key: str, out: Path) -> Path:
    """base with root's authorized_keys appended as a second cpio archive.

    The kernel unpacks concatenated archives in order, so a run's key costs a
    few hundred bytes on top of the cached image instead of a new 7 MB image
    in the cache for every run. Written 0600: it is the run's own file.
    """
    w = CpioWriter()
    _add_authorized_key(w, authorized_key)
    data = base.read_bytes()
    # The second archive must start 4-aligned; pad to a 512-byte block like cpio(1).
    data += b"\0" * (-len(data) % 512) + w.getvalue()
    write_atomic(out, data, mode=0o600)
    return out


def iter_cpio(data: bytes) -> Iterator[tuple[str, int, int, int, bytes]]:
    """(name, mode, rdevmajor, rdevminor, content) of each newc entry, for checks."""
    pos = 0
    while True:
        if data[pos:pos + 6] != _NEWC_MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        pos = name_start + namesize
        pos += -pos % 4
        if name == _TRAILER:
            return
        content = data[pos:pos + filesize]
        pos += filesize
        pos += -pos % 4
        yield name, fields[1], fields[9], fields[10], content
