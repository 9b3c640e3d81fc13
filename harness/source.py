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

DEBIAN_TARBALLS = "/usr/src"
DEBIAN_PACKAGE = "linux-source-6.12"


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

    Cheap (no git), so the CLI calls it before any work: a typo in --tree must
    not leave a run directory behind.
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
        raise UserError(f"kernel tree {path_arg} is not a directory")
    version = kernel_version(path)
    if not version or not has_kconfig:
        raise UserError(f"{path_arg} is not a kernel source tree (no top-level Makefile "
                        "with VERSION, or no arch/x86/Kconfig)",
                        "point --tree at the top of a Linux source checkout")
    return path, version


def from_tree(path_arg: str) -> Source:
    path, version = check_tree(path_arg)
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
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f"{memo.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(known))
    tmp.replace(memo)
    return h.hexdigest()


def from_debian(cache: Path) -> Source:
    tarball = find_debian_tarball()
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
    return Source(tree, f"tarball:{tarball.name}@sha256:{digest[:16]}",
                  kernel_version(tree), f"deb-{digest[:16]}")


def _unpack(tarball: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():   # a half-unpacked tree from an interrupted run
        shutil.rmtree(dest)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    print(f"unpacking {tarball} into {dest} (once)", flush=True)
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
    return from_tree(tree) if tree else from_debian(cache)


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
        print(f"copying {src.path} to apply {len(patches)} patch(es)", flush=True)
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
