"""Kernel sources: a tree the user names, or Debian's linux-source tarball.

Every source has an id that results record: the commit and a dirty flag for a
git tree, the tarball's checksum for Debian's package. `cache_key` is what the
build cache may trust to mean "same content"; a dirty tree or a plain
directory has none, so its builds always go through the kernel's own make.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness import paths
from harness.errors import InfraError, UserError
from harness.files import write_json
from harness.progress import report

DEBIAN_TARBALLS = "/usr/src"
DEBIAN_PACKAGE = "linux-source-6.12"
# The oldest kernels the harness is tested on; older ones lack what it needs.
SUPPORTED = "5.10 and later (tested: 5.10, 6.1, 6.12)"
# What a tree must have: the CPA code where the harness reads it, and its self-test.
CPA_CODE = Path("arch/x86/mm/pat/set_memory.c")
CPA_DEBUG_RE = re.compile(r"^config CPA_DEBUG\b", re.M)
ARCHIVE_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar.zst", ".tar", ".deb")


def is_archive(path: Path) -> bool:
    """A Debian linux-source package or a source tarball, given as --tree."""
    return path.name.endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class Source:
    path: Path
    id: str                 # recorded in results
    version: str            # from the Makefile: 6.12.117
    cache_key: str | None   # None: content not pinned (dirty tree, plain dir)


def kernel_version(tree: Path) -> str:
    fields: dict[str, str] = {}
    try:
        # errors="replace": a binary Makefile is "not a kernel tree", not a crash
        with open(tree / "Makefile", errors="replace") as f:
            for line in f:
                m = re.match(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(\S*)", line)
                if m:
                    fields[m.group(1)] = m.group(2)
                if len(fields) == 4:
                    break
    except OSError:
        return ""
    if "VERSION" not in fields:
        return ""
    v = f"{fields['VERSION']}.{fields.get('PATCHLEVEL', '0')}"
    if fields.get("SUBLEVEL", "0") not in ("", "0"):
        v += f".{fields['SUBLEVEL']}"
    return v + fields.get("EXTRAVERSION", "")


def check_tree(path_arg: str) -> tuple[Path, str]:
    """The tree's resolved path and kernel version, or a UserError saying why it is none.

    Cheap (for a git tree, two `git ls-files`), so the CLI calls it before any
    work: a typo in --tree must not leave a run directory behind. An archive's
    version is known only once it is unpacked ("" here).
    """
    try:
        path = Path(path_arg).expanduser().resolve()
        exists, is_dir = path.exists(), path.is_dir()
        has_kconfig = (path / "arch" / "x86" / "Kconfig").exists()
    except (OSError, RuntimeError) as e:    # a name too long, a symlink loop
        raise UserError(f"kernel tree {path_arg[:200]}: {getattr(e, 'strerror', None) or e}",
                        "give --tree a kernel source directory") from None
    if not exists:
        raise UserError(f"kernel tree {path_arg} does not exist",
                        "give --tree a kernel source directory, or omit it for Debian's "
                        f"{DEBIAN_PACKAGE}")
    if not is_dir:
        if is_archive(path) and path.is_file():
            if not os.access(path, os.R_OK):
                raise UserError(f"cannot read {path_arg}", "give a readable file")
            return path, ""
        raise UserError(f"kernel tree {path_arg} is not a directory",
                        "give a kernel source directory, a source tarball (.tar.xz, ...) "
                        "or Debian's linux-source .deb")
    version = kernel_version(path)
    if not version or not has_kconfig:
        raise UserError(f"{path_arg} is not a kernel source tree (no top-level Makefile "
                        "with VERSION, or no arch/x86/Kconfig)",
                        "point --tree at the top of a Linux source checkout")
    if (path / ".git").exists():
        check_checkout(path)     # before the rest: missing files can look like an old tree
    check_supported(path, version)
    return path, version


def check_supported(tree: Path, version: str) -> None:
    """A tree too old for the harness gets one line: what is missing, what is supported."""
    missing = []
    if not (tree / CPA_CODE).is_file():
        missing.append(str(CPA_CODE))
    try:
        kconfig_debug = (tree / "arch/x86/Kconfig.debug").read_text(errors="replace")
    except OSError:
        kconfig_debug = ""
    if not CPA_DEBUG_RE.search(kconfig_debug):
        missing.append("CONFIG_CPA_DEBUG in arch/x86/Kconfig.debug")
    if missing:
        raise UserError(f"{tree} (Linux {version}) is too old for the harness: it has no "
                        f"{' and no '.join(missing)}",
                        f"supported kernels: {SUPPORTED}")


def from_tree(path_arg: str, cache: Path | None = None) -> Source:
    path, version = check_tree(path_arg)
    if is_archive(path) and path.is_file():
        return from_archive(path, cache or paths.cache_dir())
    if (path / ".git").exists():
        return _git_source(path, version)
    return Source(path, f"dir:{path}", version, None)


def _git(path: Path, *args: str) -> str:
    r = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed in {path}: {r.stderr.strip()}")
    return r.stdout


def _git_source(path: Path, version: str) -> Source:
    head = _git(path, "rev-parse", "HEAD").strip()
    dirty = _git(path, "status", "--porcelain", "--untracked-files=no").strip() != ""
    if dirty:
        return Source(path, f"git:{head}-dirty", version, None)
    return Source(path, f"git:{head}", version, f"git-{head}")


def check_checkout(path: Path) -> None:
    """A half-done checkout (a conflicted merge, files missing from the work tree)
    builds something no commit holds: named as such, not built."""
    unmerged = _git(path, "ls-files", "--unmerged").splitlines()
    if unmerged:
        names = sorted({ln.split("\t", 1)[-1] for ln in unmerged})
        raise UserError(f"kernel tree {path} has {len(names)} unmerged file(s) (a conflicted "
                        f"merge, rebase or cherry-pick), e.g. {names[0]}",
                        "resolve and commit, or abort it (git merge --abort, ...)")
    deleted = _git(path, "ls-files", "--deleted").splitlines()
    if deleted:
        raise UserError(f"kernel tree {path} is a half checkout: {len(deleted)} tracked "
                        f"file(s) are missing from the work tree, e.g. {deleted[0]}",
                        f"restore them (git -C {path} checkout -- .) or commit the deletion")


def find_debian_tarball() -> Path:
    found = sorted(Path(DEBIAN_TARBALLS).glob("linux-source-*.tar.xz"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)])
    if not found:
        raise UserError(f"no kernel tree given and Debian's {DEBIAN_PACKAGE} is not installed",
                        f"apt-get install {DEBIAN_PACKAGE}, or give --tree PATH")
    return found[-1]


def _sha256(path: Path, cache: Path) -> str:
    """The tarball's checksum, remembered by (path, size, mtime): hashing 150 MB is not free."""
    st = path.stat()
    memo = cache / "checksums.json"
    key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return str(known[key])
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    known[key] = h.hexdigest()
    write_json(memo, known)
    return h.hexdigest()


def from_debian(cache: Path) -> Source:
    return from_archive(find_debian_tarball(), cache)


def from_archive(archive: Path, cache: Path) -> Source:
    """A source tarball, or Debian's linux-source .deb (the tarball inside it),
    unpacked once into the cache and named by its checksum."""
    if archive.name.endswith(".deb"):
        return _from_deb(archive, cache)
    tarball = archive
    digest = _sha256(tarball, cache)
    dest = cache / "src" / digest[:16]
    stamp = dest / ".cpa-harness-unpacked"
    # Another harness process sharing the cache may be unpacking it right now.
    with paths.locked(dest.with_name(dest.name + ".lock")):
        if not stamp.exists():
            _unpack(tarball, dest)
            stamp.write_text(f"{tarball}\n{digest}\n")
    trees = [p for p in dest.iterdir() if p.is_dir()]
    if len(trees) != 1:
        raise InfraError(f"unpacked {tarball} in {dest} holds {len(trees)} directories, not one",
                         f"delete {dest} and run again")
    tree = trees[0]
    version = kernel_version(tree)
    if not version or not (tree / "arch" / "x86" / "Kconfig").exists():
        raise UserError(f"{tarball} does not hold a kernel source tree",
                        "give a Linux source tarball or Debian's linux-source package")
    check_supported(tree, version)
    return Source(tree, f"tarball:{tarball.name}@sha256:{digest[:16]}",
                  version, f"deb-{digest[:16]}")


def _from_deb(deb: Path, cache: Path) -> Source:
    """Debian's linux-source-X.Y_*.deb holds usr/src/linux-source-X.Y.tar.xz."""
    digest = _sha256(deb, cache)
    dest = cache / "debs-src" / digest[:16]
    with paths.locked(dest.with_name(dest.name + ".lock")):
        found = sorted(dest.glob("usr/src/linux-source-*.tar.*")) if dest.exists() else []
        if not found:
            shutil.rmtree(dest, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=_mkdirs(dest.parent)))
            report(f"extracting the source tarball from {deb} (once)")
            # dpkg-deb --fsys-tarfile | tar: no root, no dpkg database touched
            with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) as dpkg:
                r = subprocess.run(["tar", "-x", "-C", str(tmp), "--wildcards",
                                    "./usr/src/linux-source-*.tar.*"],
                                   stdin=dpkg.stdout, capture_output=True, text=True,
                                   timeout=1800)
                err = dpkg.stderr.read().decode(errors="replace") if dpkg.stderr else ""
            if dpkg.returncode != 0 or r.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                why = (err.strip() or r.stderr.strip() or "no usr/src/linux-source-*.tar.* in it")
                raise UserError(f"{deb} is not Debian's linux-source package: "
                                f"{why.splitlines()[-1][:200]}",
                                "give linux-source-X.Y_*.deb, a source tarball or a tree")
            tmp.rename(dest)
            found = sorted(dest.glob("usr/src/linux-source-*.tar.*"))
    tarball = found[-1]
    src = from_archive(tarball, cache)
    return Source(src.path, f"deb:{deb.name}@sha256:{digest[:16]}", src.version, src.cache_key)


def _mkdirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _unpack(tarball: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():   # a half-unpacked tree from an interrupted run
        shutil.rmtree(dest)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    report(f"unpacking {tarball} into {dest} (once)")
    r = subprocess.run(["tar", "-xf", str(tarball), "-C", str(tmp)],
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        msg = r.stderr.strip().splitlines()[-1:] or ["tar failed"]
        if "No space left" in r.stderr:
            raise InfraError(f"no disk space to unpack {tarball}", f"free space in {dest.parent}")
        raise InfraError(f"unpacking {tarball} failed: {msg[0]}")
    tmp.rename(dest)


def resolve(tree: str | None, cache: Path) -> Source:
    return from_tree(tree, cache) if tree else from_debian(cache)


def patch_files(args: list[str]) -> list[Path]:
    """--patch arguments: files, or directories holding a series (a `series` file
    giving the order, else every *.patch and *.diff in name order)."""
    files: list[Path] = []
    for a in args:
        p = Path(a).expanduser()
        if p.is_dir():
            series = p / "series"
            if series.exists():
                try:
                    lines = series.read_text().splitlines()
                except (OSError, UnicodeDecodeError) as e:
                    why = getattr(e, "strerror", None) or "not text (not UTF-8)"
                    raise UserError(f"cannot read the patch series {series}: {why}",
                                    "one patch file name a line") from None
                names = [ln.split("#")[0].strip() for ln in lines]
                files += [p / n for n in names if n]
            else:
                files += sorted([*p.glob("*.patch"), *p.glob("*.diff")])
        else:
            files.append(p)
    for f in files:
        if not f.is_file():
            raise UserError(f"patch {f} does not exist", "give --patch a patch file or a "
                                                         "directory holding a series")
    return files


def with_patches(src: Source, patches: list[Path], cache: Path) -> Source:
    """A copy of `src` with the patches applied, cached by (source, patch contents).

    The id records the patches, so results and build caches tell a patched
    kernel from the tree it came from.
    """
    if not patches:
        return src
    digest = hashlib.sha256(src.id.encode())
    for p in patches:
        digest.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    tag = digest.hexdigest()[:16]
    dest = cache / "patched" / tag
    stamp = dest / ".cpa-harness-patched"
    tree = dest / "tree"
    if not stamp.exists():
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        tmp = dest / "tree.tmp"
        report(f"copying {src.path} to apply {len(patches)} patch(es)")
        r = subprocess.run(["cp", "-a", "--reflink=auto", str(src.path), str(tmp)],
                           capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            shutil.rmtree(dest, ignore_errors=True)
            raise InfraError(f"copying {src.path} failed: {r.stderr.strip()[-200:]}",
                             f"free space under {cache}")
        for p in patches:
            r = subprocess.run(["git", "apply", "--verbose", str(p.resolve())], cwd=tmp,
                               capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                shutil.rmtree(dest, ignore_errors=True)
                where = re.search(r"error: (?:patch failed: )?(\S+?)(?::\d+)?: ", r.stderr)
                raise UserError(f"patch {p} does not apply"
                                + (f" to {where.group(1)}" if where else "")
                                + f" in {src.id}",
                                (r.stderr.strip().splitlines() or ["git apply failed"])[-1])
        tmp.rename(tree)
        stamp.write_text("\n".join(str(p) for p in patches) + "\n")
    key = f"{src.cache_key}-p{tag}" if src.cache_key else None
    return Source(tree, f"{src.id}+patches:{tag}", src.version, key)
