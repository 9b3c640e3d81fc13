"""Debian packages for the guest: download with apt, unpack with dpkg-deb.

Layout under the cache, per Debian architecture:

    debs/<arch>/<pkg>_<version>_<arch>.deb      as apt-get download names it
    debs/<arch>/root-<pkg>_<version>/           dpkg-deb -x of it, with .complete

A root is extracted into a temporary directory, stamped, then renamed, so a
crash never leaves a half-extracted root that looks finished. The apt index
may be partly stale here (on this project's machines `apt-get update` exits
100 because one i386 index fails), so nothing depends on that exit code: what
counts is whether the packages themselves can be had.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from harness import paths
from harness.errors import InfraError, UserError

APT_TIMEOUT = 300.0      # one apt-get download, seconds
DPKG_TIMEOUT = 120.0     # one dpkg-deb -x
QUERY_TIMEOUT = 60.0     # one apt-cache / dpkg query

COMPLETE_STAMP = ".complete"
_PKG_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_DEB_FILE = re.compile(r"^(?P<name>[^_]+)_(?P<version>[^_]+)_(?P<arch>[^_]+)\.deb$")
_APT_ERROR = re.compile(r"^E: (?P<msg>.*)$", re.MULTILINE)


@dataclass(frozen=True)
class DebFile:
    name: str
    version: str     # Debian version, with epoch ("1:1.35.0-4+deb12u1+b1")
    arch: str        # "amd64", "i386" or "all"
    path: Path


def debs_dir(cache: Path, debian_arch: str) -> Path:
    return cache / "debs" / debian_arch


def read_package_list(path: Path, debian_arch: str) -> list[str]:
    """Parse guest/packages.txt: one name a line, '#' comments, optional '[arch ...]'.

    `libfoo1 [amd64]` is needed on amd64 only; names keep the file's order.
    """
    names: list[str] = []
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"cannot read the guest package list {path}: {e.strerror}",
                        "restore guest/packages.txt from the checkout") from None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"(?P<name>\S+)(?:\s+\[(?P<arches>[^\]]*)\])?", line)
        if m is None or not _PKG_NAME.match(m["name"]):
            raise UserError(f"{path}:{lineno}: cannot parse {raw.strip()!r}",
                            "write one package name a line, optionally followed by [arch ...]")
        arches = m["arches"].split() if m["arches"] is not None else None
        if arches is None or debian_arch in arches:
            if m["name"] not in names:
                names.append(m["name"])
    return names


# --- subprocess helpers ------------------------------------------------------

def _run(argv: list[str], *, timeout: float, cwd: Path | None = None,
         what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, check=False,
                              env={**os.environ, "LC_ALL": "C"})
    except FileNotFoundError:
        raise InfraError(f"{argv[0]} not found ({what})",
                         "the guest userspace comes from Debian packages: "
                         "run the harness on a Debian or Ubuntu host") from None
    except subprocess.TimeoutExpired:
        raise InfraError(f"{what} timed out after {timeout:.0f} s",
                         "check that the Debian mirror in /etc/apt/sources.list is reachable"
                         ) from None


def _foreign_arch_missing(debian_arch: str) -> bool:
    native = _run(["dpkg", "--print-architecture"], timeout=QUERY_TIMEOUT,
                  what="dpkg --print-architecture").stdout.strip()
    if debian_arch == native:
        return False
    foreign = _run(["dpkg", "--print-foreign-architectures"], timeout=QUERY_TIMEOUT,
                   what="dpkg --print-foreign-architectures").stdout.split()
    return debian_arch not in foreign


def _apt_hint(debian_arch: str) -> str:
    if _foreign_arch_missing(debian_arch):
        return f"run: dpkg --add-architecture {debian_arch} && apt-get update"
    return "run: apt-get update (an exit code of 100 is fine if the package then downloads)"


def _compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian orders versions (dpkg knows epochs and '~')."""
    if a == b:
        return 0
    lt = _run(["dpkg", "--compare-versions", a, "lt", b], timeout=QUERY_TIMEOUT,
              what="dpkg --compare-versions")
    return -1 if lt.returncode == 0 else 1


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise harness processes that fill the same package directory."""
    with paths.locked(directory / ".lock"):
        # Whoever made these died holding the lock we now hold: not in use.
        for stale in directory.iterdir():
            if stale.name.startswith((".download-", ".extract-")) and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        yield


# --- download ---------------------------------------------------------------

def _cached_debs(directory: Path, name: str, debian_arch: str) -> list[DebFile]:
    found: list[DebFile] = []
    if not directory.is_dir():
        return found
    for entry in directory.iterdir():
        m = _DEB_FILE.match(entry.name)
        if m is None or unquote(m["name"]) != name or not entry.is_file():
            continue
        if m["arch"] not in (debian_arch, "all"):
            continue
        found.append(DebFile(name, unquote(m["version"]), m["arch"], entry))
    return found


def _newest(debs: list[DebFile]) -> DebFile:
    best = debs[0]
    for deb in debs[1:]:
        if _compare_versions(deb.version, best.version) > 0:
            best = deb
    return best


def _download(name: str, debian_arch: str, directory: Path) -> DebFile:
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
        proc = _run(["apt-get", "download", f"{name}:{debian_arch}"], cwd=Path(tmp),
                    timeout=APT_TIMEOUT, what=f"apt-get download {name}:{debian_arch}")
        got = _cached_debs(Path(tmp), name, debian_arch)
        if proc.returncode != 0 or len(got) != 1:
            errors = _APT_ERROR.findall(proc.stderr + proc.stdout)
            detail = errors[-1] if errors else (proc.stderr.strip().splitlines() or ["no .deb"])[-1]
            raise InfraError(f"apt cannot download {name}:{debian_arch}: {detail}",
                             _apt_hint(debian_arch))
        final = directory / got[0].path.name
        os.replace(got[0].path, final)
    return DebFile(name, got[0].version, got[0].arch, final)


def download_packages(names: list[str], debian_arch: str, cache: Path) -> dict[str, DebFile]:
    """The .deb of each package, downloading only those not already cached."""
    directory = debs_dir(cache, debian_arch)
    result: dict[str, DebFile] = {}
    bad = [n for n in names if not _PKG_NAME.match(n)]
    if bad:
        raise UserError(f"not a Debian package name: {bad[0]!r}", "check guest/packages.txt")
    with _locked(directory):
        for name in names:
            cached = _cached_debs(directory, name, debian_arch)
            result[name] = _newest(cached) if cached else _download(name, debian_arch, directory)
    return result


# --- extraction -------------------------------------------------------------

def root_dir(deb: DebFile, cache: Path, debian_arch: str) -> Path:
    safe_version = deb.version.replace(":", "%3a")
    return debs_dir(cache, debian_arch) / f"root-{deb.name}_{safe_version}"


def extract_package(deb: DebFile, cache: Path, debian_arch: str) -> Path:
    """dpkg-deb -x the package once; returns the root that holds its files."""
    final = root_dir(deb, cache, debian_arch)
    if (final / COMPLETE_STAMP).is_file():
        return final
    directory = final.parent
    with _locked(directory):
        if (final / COMPLETE_STAMP).is_file():
            return final
        if final.exists():
            shutil.rmtree(final)          # left over from an older layout: not trusted
        tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".extract-{deb.name}-"))
        try:
            proc = _run(["dpkg-deb", "-x", str(deb.path), str(tmp)], timeout=DPKG_TIMEOUT,
                        what=f"dpkg-deb -x {deb.path.name}")
            if proc.returncode != 0:
                deb.path.unlink(missing_ok=True)   # likely truncated: fetch it again next time
                detail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                raise InfraError(f"cannot unpack {deb.path.name}: {detail}",
                                 "it has been removed from the cache: run again to re-download")
            (tmp / COMPLETE_STAMP).write_text(f"{deb.name} {deb.version} {deb.arch}\n")
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def fetch_packages(names: list[str], debian_arch: str, cache: Path) -> dict[str, Path]:
    """Download (if needed) and unpack each package; name -> extracted root."""
    debs = download_packages(names, debian_arch, cache)
    return {name: extract_package(deb, cache, debian_arch) for name, deb in debs.items()}


# --- doctor -----------------------------------------------------------------

def candidate_versions(names: list[str], debian_arch: str) -> dict[str, str | None]:
    """apt's candidate version of each name:arch, None when apt cannot provide it.

    One apt-cache call for all names: each call costs a second or two here.
    """
    result: dict[str, str | None] = dict.fromkeys(names)
    if not names:
        return result
    proc = _run(["apt-cache", "policy", *(f"{n}:{debian_arch}" for n in names)],
                timeout=QUERY_TIMEOUT, what=f"apt-cache policy ({debian_arch})")
    if proc.returncode != 0:
        return result
    current: str | None = None
    for line in proc.stdout.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            # "libc6:" for the native arch, "libc6:i386:" for a foreign one.
            header = line[:-1]
            if header.endswith(f":{debian_arch}"):
                header = header[:-len(debian_arch) - 1]
            current = header if header in result else None
            continue
        m = re.match(r"^\s+Candidate:\s*(\S+)", line)
        if m and current is not None and m[1] != "(none)":
            result[current] = m[1]
    return result


def packages_reachable(names: list[str], debian_arch: str) -> list[str]:
    """The names apt cannot provide for the arch (empty when all can be had)."""
    versions = candidate_versions(names, debian_arch)
    return [n for n in names if versions[n] is None]
