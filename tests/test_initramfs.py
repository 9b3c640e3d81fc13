"""The cpio writer, read back by an independent reader and by the host's cpio,
and real initramfs builds for both guest arches from Debian's packages."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.arches import Arch, get_arch
from harness.errors import InfraError, UserError
from harness.image import debian, initramfs
from harness.image.debian import fetch_packages, read_package_list
from harness.image.initramfs import (
    CpioWriter,
    assemble,
    build_initramfs,
    busybox_applets,
)
from harness.kernel.elf import elf_info
from harness.paths import GUEST_DIR

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFGIGw03CGkaUjCGiJR4rxap16TBH0h46dgHyoSwG+Y8 test"


def _deb_cache() -> Path:
    env = os.environ.get("CPA_HARNESS_TEST_CACHE")
    return Path(env) if env else Path(tempfile.gettempdir()) / "cpa-harness-test-cache"


def _cache_with_shared_debs(tmp: Path) -> Path:
    """A fresh cache whose package downloads are shared with the other tests."""
    shared = _deb_cache() / "debs"
    shared.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "debs").symlink_to(shared)
    return tmp


# --- an independent newc reader ---------------------------------------------

@dataclass
class Entry:
    offset: int
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    rdev: tuple[int, int]
    dev: tuple[int, int]
    name: str
    data: bytes


def read_newc(blob: bytes) -> list[Entry]:
    entries: list[Entry] = []
    pos = 0
    while True:
        assert pos % 4 == 0, f"header at {pos} is not 4-byte aligned"
        assert blob[pos:pos + 6] == b"070701", f"bad magic at {pos}"
        f = [int(blob[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, dmaj, dmin, rmaj, rmin, namesize, check = f
        assert check == 0
        name_raw = blob[pos + 110:pos + 110 + namesize]
        assert name_raw.endswith(b"\0") and b"\0" not in name_raw[:-1]
        name = name_raw[:-1].decode()
        data_at = pos + 110 + namesize
        padding = -data_at % 4
        assert blob[data_at:data_at + padding] == b"\0" * padding
        data_at += padding
        data = blob[data_at:data_at + size]
        end = data_at + size
        padding = -end % 4
        assert blob[end:end + padding] == b"\0" * padding
        entries.append(Entry(pos, ino, mode, uid, gid, nlink, mtime, (rmaj, rmin), (dmaj, dmin),
                             name, data))
        pos = end + padding
        if name == "TRAILER!!!":
            assert pos == len(blob), "bytes after the trailer"
            return entries


def by_name(blob: bytes) -> dict[str, Entry]:
    return {e.name: e for e in read_newc(blob)[:-1]}


# --- the writer -------------------------------------------------------------

def _sample(tmp_path: Path) -> CpioWriter:
    tool = tmp_path / "tool"
    tool.write_bytes(b"#!/bin/sh\necho tool\n")
    tool.chmod(0o750)
    plain = tmp_path / "plain"
    plain.write_bytes(b"12345")
    plain.chmod(0o600)
    w = CpioWriter()
    w.add_file("/usr/bin/tool", tool)
    w.add_file("etc/plain", plain)
    w.add_file("etc/motd", b"hello\n")
    w.add_file("root/.ssh/authorized_keys", b"k\n", 0o600)
    w.add_dir("root", 0o700)           # after its child: the implicit parent takes this mode
    w.add_dir("tmp", 0o1777)
    w.add_symlink("bin/sh", "/bin/busybox")
    w.add_device("dev/console", "c", 5, 1)
    w.add_device("dev/null", "c", 1, 3, 0o666)
    w.add_device("dev/ttyS0", "c", 4, 64, 0o660)
    w.add_device("dev/sda", "b", 8, 0)
    return w


def test_newc_layout(tmp_path: Path) -> None:
    out = tmp_path / "a.cpio"
    _sample(tmp_path).write(out)
    blob = out.read_bytes()
    entries = read_newc(blob)
    names = [e.name for e in entries]
    assert names == sorted(names[:-1], key=lambda n: n.split("/")) + ["TRAILER!!!"]
    assert [e.ino for e in entries[:-1]] == list(range(1, len(entries)))
    trailer = entries[-1]
    assert (trailer.ino, trailer.mode, trailer.nlink, trailer.data) == (0, 0, 1, b"")
    for e in entries[:-1]:
        assert (e.uid, e.gid, e.mtime, e.dev) == (0, 0, 0, (0, 0))
        assert not e.name.startswith("/")
    got = by_name(blob)
    # Implicit parents are directories 0755; explicit ones keep their mode.
    for d in ("usr", "usr/bin", "etc", "bin", "dev", "root/.ssh"):
        assert got[d].mode == stat.S_IFDIR | 0o755, d
        assert got[d].nlink == 2
    assert got["root"].mode == stat.S_IFDIR | 0o700
    assert got["tmp"].mode == stat.S_IFDIR | 0o1777
    # Host files keep only whether they are executable.
    assert got["usr/bin/tool"].mode == stat.S_IFREG | 0o755
    assert got["usr/bin/tool"].data == b"#!/bin/sh\necho tool\n"
    assert got["etc/plain"].mode == stat.S_IFREG | 0o644
    assert got["etc/motd"].mode == stat.S_IFREG | 0o644
    assert got["root/.ssh/authorized_keys"].mode == stat.S_IFREG | 0o600
    assert got["bin/sh"].mode == stat.S_IFLNK | 0o777
    assert got["bin/sh"].data == b"/bin/busybox"
    assert got["dev/console"].mode == stat.S_IFCHR | 0o600
    assert got["dev/console"].rdev == (5, 1)
    assert got["dev/null"].rdev == (1, 3) and got["dev/null"].mode & 0o777 == 0o666
    assert got["dev/ttyS0"].rdev == (4, 64)
    assert got["dev/sda"].mode == stat.S_IFBLK | 0o600
    # The module's own reader agrees with this one.
    assert [(n, m, (a, b), d) for n, m, a, b, d in initramfs.iter_cpio(blob)] == [
        (e.name, e.mode, e.rdev, e.data) for e in entries[:-1]]


def test_the_write_is_atomic_and_leaves_no_temporary(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out" / "a.cpio"
    w = _sample(tmp_path)
    w.write(out)
    before = out.read_bytes()

    def boom(self: CpioWriter, f: Any) -> None:
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(CpioWriter, "write_to", boom)
    with pytest.raises(InfraError, match=r"cannot write .*a\.cpio: disk full"):
        w.write(out)
    assert out.read_bytes() == before
    assert [p.name for p in out.parent.iterdir()] == ["a.cpio"]


def test_host_cpio_reads_it(tmp_path: Path) -> None:
    if shutil.which("cpio") is None:
        pytest.skip("cpio not installed")
    archive = tmp_path / "a.cpio"
    _sample(tmp_path).write(archive)
    listing = subprocess.run(["cpio", "-it", "--quiet"], stdin=archive.open("rb"),
                             capture_output=True, text=True, check=True).stdout.split()
    assert "usr/bin/tool" in listing and "dev/ttyS0" in listing and "bin/sh" in listing
    verbose = subprocess.run(["cpio", "-itv", "--quiet"], stdin=archive.open("rb"),
                             capture_output=True, text=True, check=True).stdout
    ttys0 = next(line for line in verbose.splitlines() if line.endswith(" dev/ttyS0"))
    assert ttys0.startswith("crw-rw----") and "4,  64" in ttys0
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], cwd=dest,
                   stdin=archive.open("rb"), check=True)
    assert (dest / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    assert os.access(dest / "usr/bin/tool", os.X_OK)
    assert os.readlink(dest / "bin/sh") == "/bin/busybox"
    assert stat.S_IMODE((dest / "root").stat().st_mode) == 0o700
    if os.geteuid() == 0:
        assert os.major((dest / "dev/console").lstat().st_rdev) == 5


def test_writer_refuses_duplicates_and_bad_paths(tmp_path: Path) -> None:
    w = CpioWriter()
    w.add_file("etc/passwd", b"x")
    with pytest.raises(ValueError, match="already"):
        w.add_file("/etc/passwd", b"y")
    with pytest.raises(ValueError, match="already"):
        w.add_dir("etc/passwd")
    with pytest.raises(ValueError, match="not a directory"):
        w.add_file("etc/passwd/x", b"y")
    w.add_file("./usr//bin/x", b"")            # normalized, as cpio -i would
    assert "usr/bin/x" in w
    for bad in ("", "/", "a/../b", ".."):
        with pytest.raises(ValueError, match="bad archive path"):
            w.add_file(bad, b"")
    with pytest.raises(ValueError, match="kind"):
        w.add_device("dev/x", "p", 1, 1)
    assert "etc" in w and "/etc/passwd" in w and "etc/shadow" not in w


_names = st.lists(st.from_regex(r"[a-z0-9_.-]{1,12}", fullmatch=True)
                  .filter(lambda s: s not in (".", "..")), min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_names.map("/".join), st.binary(max_size=70), max_size=12))
def test_any_tree_reads_back(files: dict[str, bytes]) -> None:
    w = CpioWriter()
    expected: dict[str, bytes] = {}
    for path, data in files.items():
        try:
            w.add_file(path, data)
        except ValueError:
            continue    # a file where another path needs a directory
        expected[path] = data
    blob = w.getvalue()
    got = by_name(blob)
    assert {n: e.data for n, e in got.items() if stat.S_ISREG(e.mode)} == expected
    assert blob == w.getvalue()
    assert len(blob) % 4 == 0


# --- busybox applets --------------------------------------------------------

@pytest.fixture(scope="module", params=["amd64", "i386"])
def roots(request: pytest.FixtureRequest) -> tuple[Arch, dict[str, Path]]:
    arch = get_arch({"amd64": "x86_64", "i386": "i386"}[request.param])
    names = read_package_list(GUEST_DIR / "packages.txt", arch.debian_arch)
    return arch, fetch_packages(names, arch.debian_arch, _deb_cache())


def test_applets_read_from_the_binary_match_what_it_says(
        roots: tuple[Arch, dict[str, Path]]) -> None:
    _, r = roots
    busybox = r["busybox-static"] / "bin/busybox"
    applets = busybox_applets(busybox)
    for needed in ("sh", "mount", "ip", "setsid", "cttyhack", "hostname", "grep", "insmod"):
        assert needed in applets
    try:
        listed = subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                                check=True, timeout=30).stdout.split()
    except OSError:
        pytest.skip("the host cannot run this busybox")
    assert applets == listed


def test_applet_locations_cover_the_binary(roots: tuple[Arch, dict[str, Path]]) -> None:
    _, r = roots
    where = initramfs.applet_locations(GUEST_DIR / "busybox-applets.txt")
    applets = set(busybox_applets(r["busybox-static"] / "bin/busybox"))
    assert applets - set(where) == {"linuxrc"}
    assert where["mount"] == "bin" and where["ip"] == "sbin" and where["env"] == "usr/bin"


# --- real builds ------------------------------------------------------------

@pytest.fixture(scope="module", params=["x86_64", "i386"])
def built(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> tuple[Arch, Path, Path]:
    arch = get_arch(request.param)
    cache = _cache_with_shared_debs(tmp_path_factory.mktemp("cache") / request.param)
    return arch, cache, build_initramfs(arch, cache, authorized_key=KEY)


def test_build_contains_the_guest(built: tuple[Arch, Path, Path]) -> None:
    arch, cache, image = built
    assert image.parent == cache / "initramfs"
    assert image.name.startswith(f"{arch.name}-") and image.suffix == ".cpio"
    got = by_name(image.read_bytes())
    assert got["init"].mode == stat.S_IFREG | 0o755
    assert got["init"].data == (GUEST_DIR / "init").read_bytes()
    for binary in ("bin/busybox", "usr/sbin/dropbear", "usr/bin/dropbearkey", "sbin/kexec"):
        assert got[binary].mode == stat.S_IFREG | 0o755, binary
    triplet = "x86_64-linux-gnu" if arch.elf_class == 64 else "i386-linux-gnu"
    interp = "lib64/ld-linux-x86-64.so.2" if arch.elf_class == 64 else "lib/ld-linux.so.2"
    assert got[interp].mode & 0o111, "the kernel execs the interpreter"
    for lib in (f"lib/{triplet}/libc.so.6", f"lib/{triplet}/libcrypt.so.1",
                f"lib/{triplet}/libz.so.1", f"usr/lib/{triplet}/libtomcrypt.so.1",
                f"usr/lib/{triplet}/libtommath.so.1", f"usr/lib/{triplet}/libgmp.so.10"):
        assert stat.S_ISREG(got[lib].mode), lib
    assert (f"usr/lib/{triplet}/libxenctrl.so.4.17" in got) == (arch.name == "x86_64")
    assert got["bin/sh"].data == b"/bin/busybox"
    assert got["sbin/ip"].data == b"/bin/busybox"
    assert stat.S_ISREG(got["sbin/kexec"].mode)     # the real kexec, not an applet
    assert got["root"].mode == stat.S_IFDIR | 0o700
    assert got["root/.ssh"].mode == stat.S_IFDIR | 0o700
    ak = got["root/.ssh/authorized_keys"]
    assert ak.mode == stat.S_IFREG | 0o600 and ak.data == (KEY + "\n").encode()
    assert stat.S_ISDIR(got["etc/dropbear"].mode)
    assert got["etc/passwd"].data.decode().startswith("root:x:0:0:root:/root:/bin/sh")
    assert b"root:x:0:" in got["etc/group"].data
    assert got["dev/console"].rdev == (5, 1) and stat.S_ISCHR(got["dev/console"].mode)
    assert got["dev/null"].rdev == (1, 3)
    assert got["dev/ttyS0"].rdev == (4, 64)
    for d in ("proc", "sys", "dev/pts", "tmp", "run"):
        assert stat.S_ISDIR(got[d].mode), d


def test_every_elf_in_the_build_matches_the_arch(built: tuple[Arch, Path, Path],
                                                 tmp_path: Path) -> None:
    arch, _, image = built
    count = 0
    for name, entry in by_name(image.read_bytes()).items():
        if stat.S_ISREG(entry.mode) and entry.data.startswith(b"\x7fELF"):
            f = tmp_path / "elf"
            f.write_bytes(entry.data)
            info = elf_info(f)
            assert (info.elf_class, info.machine) == (arch.elf_class, arch.elf_machine), name
            count += 1
    assert count >= 10


def test_binaries_run_from_the_unpacked_image(built: tuple[Arch, Path, Path],
                                              tmp_path: Path) -> None:
    """Without an ld.so.cache, as in the guest: proves the libraries are where ld.so looks."""
    if os.geteuid() != 0 or shutil.which("chroot") is None or shutil.which("cpio") is None:
        pytest.skip("needs root, chroot and cpio")
    _, _, image = built
    dest = tmp_path / "root"
    dest.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], cwd=dest,
                   stdin=image.open("rb"), check=True)
    assert not (dest / "etc/ld.so.cache").exists()
    try:
        kexec = subprocess.run(["chroot", str(dest), "/sbin/kexec", "--version"],
                               capture_output=True, text=True, timeout=30)
    except OSError:
        pytest.skip("the host cannot run these binaries")
    if kexec.returncode == 126 or "Exec format error" in kexec.stderr:
        pytest.skip("the host cannot run these binaries")
    assert "kexec-tools" in kexec.stdout + kexec.stderr
    dropbear = subprocess.run(["chroot", str(dest), "/usr/sbin/dropbear", "-V"],
                              capture_output=True, text=True, timeout=30)
    assert "Dropbear v2022" in dropbear.stderr
    key = subprocess.run(["chroot", str(dest), "/usr/bin/dropbearkey", "-t", "ed25519",
                          "-f", "/tmp/k"], capture_output=True, text=True, timeout=30)
    assert key.returncode == 0 and "ssh-ed25519 " in key.stdout
    shell = subprocess.run(["chroot", str(dest), "/bin/sh", "-c", "echo $((6*7))"],
                           capture_output=True, text=True, timeout=30)
    assert shell.stdout.strip() == "42"


def test_builds_are_reproducible(built: tuple[Arch, Path, Path], tmp_path: Path) -> None:
    arch, _, image = built
    again = build_initramfs(arch, _cache_with_shared_debs(tmp_path / "other"), authorized_key=KEY)
    assert again != image
    assert again.name == image.name
    assert again.read_bytes() == image.read_bytes()


def test_a_cache_hit_does_no_work(built: tuple[Arch, Path, Path],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    arch, cache, image = built
    mtime = image.stat().st_mtime_ns

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("work done on a cache hit")
    monkeypatch.setattr(subprocess, "run", forbidden)
    monkeypatch.setattr(initramfs, "assemble", forbidden)
    monkeypatch.setattr(CpioWriter, "write", forbidden)
    monkeypatch.setattr(debian, "extract_package", forbidden)
    assert build_initramfs(arch, cache, authorized_key=KEY) == image
    assert image.stat().st_mtime_ns == mtime


def test_inputs_change_the_image(built: tuple[Arch, Path, Path], tmp_path: Path) -> None:
    arch, cache, image = built
    no_key = build_initramfs(arch, cache)
    assert no_key != image
    got = by_name(no_key.read_bytes())
    assert "root/.ssh/authorized_keys" not in got and "root" in got
    extra = build_initramfs(arch, cache, authorized_key=KEY,
                            extra_files={"usr/bin/cpa-hello": b"#!/bin/sh\necho hi\n",
                                         "etc/cpa.conf": b"x=1\n"})
    assert extra not in (image, no_key)
    got = by_name(extra.read_bytes())
    assert got["usr/bin/cpa-hello"].mode == stat.S_IFREG | 0o755
    assert got["etc/cpa.conf"].mode == stat.S_IFREG | 0o644
    # A change in guest/ makes a new image too.
    guest = tmp_path / "guest"
    shutil.copytree(GUEST_DIR, guest)
    with (guest / "init").open("a") as f:
        f.write("# changed\n")
    changed = build_initramfs(arch, cache, authorized_key=KEY, guest_dir=guest)
    assert changed != image
    assert by_name(changed.read_bytes())["init"].data.endswith(b"# changed\n")


def test_a_64_bit_binary_is_refused_in_an_i386_image(tmp_path: Path) -> None:
    arch = get_arch("i386")
    cache = _cache_with_shared_debs(tmp_path / "cache")
    with pytest.raises(UserError, match=r"usr/bin/ls is ELF64 EM_X86_64.*i386.*ELF32"):
        build_initramfs(arch, cache, extra_files={"usr/bin/ls": Path("/bin/ls").read_bytes()})


def test_a_64_bit_busybox_is_refused_in_an_i386_image() -> None:
    i386 = get_arch("i386")
    names = read_package_list(GUEST_DIR / "packages.txt", "i386")
    r = fetch_packages(names, "i386", _deb_cache())
    r["busybox-static"] = fetch_packages(["busybox-static"], "amd64",
                                         _deb_cache())["busybox-static"]
    with pytest.raises(UserError, match=r"bin/busybox is ELF64.*i386 guest needs ELF32"):
        assemble(i386, r, GUEST_DIR)


def test_a_multi_line_key_is_refused(tmp_path: Path) -> None:
    cache = _cache_with_shared_debs(tmp_path / "cache")
    with pytest.raises(UserError, match="one line"):
        build_initramfs(get_arch("x86_64"), cache, authorized_key=KEY + "\n" + KEY)


# --- guest/init -------------------------------------------------------------

def test_init_is_valid_sh_and_prints_the_markers() -> None:
    init = GUEST_DIR / "init"
    assert os.access(init, os.X_OK)
    text = init.read_text()
    assert text.startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(init)], check=True)
    bb = _deb_cache() / "debs" / "amd64"
    busyboxes = sorted(bb.glob("root-busybox-static_*/bin/busybox"))
    if busyboxes:
        subprocess.run([str(busyboxes[-1]), "sh", "-n", str(init)], check=True)
    assert 'mark "CPA-HARNESS-READY nonce=$nonce boot_id=' in text
    assert text.count("CPA-HARNESS-READY") == 2      # the comment and the one mark
    assert 'mark "CPA-HARNESS-HOSTKEY nonce=$nonce $line"' in text
    assert 'echo "<11>$*" > /dev/kmsg' in text
    assert "dropbear -R -s -E -p 22" in text
    # QEMU's user network by default, a lab box's own address when given
    assert "dev=eth0 addr=10.0.2.15/24 gw=10.0.2.2" in text
    assert 'ip addr add "$addr" dev "$dev"' in text and "cpa_harness.net=*" in text
    assert 'ip route add default via "$gw"' in text
    assert "set -e" not in text.replace("'set -e'", "")


def test_a_run_key_is_appended_as_a_second_archive(tmp_path: Path) -> None:
    base = tmp_path / "base.cpio"
    _sample(tmp_path).write(base)
    out = initramfs.with_authorized_key(base, KEY, tmp_path / "run" / "initrd.cpio")
    data = out.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    first = base.read_bytes()
    assert data.startswith(first)
    # the kernel skips the zero padding and needs the next archive 4-aligned
    second_at = len(first) + (-len(first) % 512)
    assert second_at % 4 == 0 and set(data[len(first):second_at]) <= {0}
    entries = {name: (mode, body) for name, mode, _, _, body in
               initramfs.iter_cpio(data[second_at:])}
    assert entries["root"][0] == stat.S_IFDIR | 0o700    # not widened by the second archive
    assert entries["root/.ssh"][0] == stat.S_IFDIR | 0o700
    assert entries["root/.ssh/authorized_keys"] == (stat.S_IFREG | 0o600, (KEY + "\n").encode())
    assert len(data) - len(first) < 1024
    with pytest.raises(UserError, match="one line"):
        initramfs.with_authorized_key(base, "a\nb", tmp_path / "x.cpio")
