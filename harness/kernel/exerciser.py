"""The CPA exerciser's module (guest/exerciser/), built against a cell's kernel.

An out-of-tree module built with kbuild's M= in the cell's own build
directory, so it matches that kernel exactly (its version magic, its
configuration). The source is copied into the build directory, under the
build's lock, only when it differs from the copy there: make then judges by
the copy's unchanged mtimes and builds the module once per kernel.

kbuild links an external module against the kernel's Module.symvers, which
the kernel build itself (bzImage) does not write: `make modules` writes it
once (a tinyconfig kernel has next to no modules of its own, so that is quick).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness import paths
from harness.arches import get_arch
from harness.errors import BuildError
from harness.kernel.build import ERROR_RE, Build, start_make
from harness.proc import kill_group

SOURCE = paths.GUEST_DIR / "exerciser"
NAME = "cpa_exercise"
SUBDIR = "cpa-exercise"     # in the build directory
FILES = ("cpa_exercise.c", "Kbuild")
MAKE_TIMEOUT = 1800


def module_path(build: Build) -> Path:
    return build.dir / SUBDIR / f"{NAME}.ko"


def build_module(build: Build) -> Path:
    """The module for `build`'s kernel (built if missing or stale); BuildError
    names the exerciser's own source lines when it does not compile."""
    bdir = build.dir
    with paths.locked(bdir.with_suffix(".lock")):
        where = bdir / SUBDIR
        where.mkdir(exist_ok=True)
        for name in FILES:
            text = (SOURCE / name).read_bytes()
            copy = where / name
            if not copy.exists() or copy.read_bytes() != text:
                copy.write_bytes(text)
        log = where / "build.log"
        log.write_text("")
        if not (bdir / "Module.symvers").exists():
            _make(build, [], log)
        _make(build, [f"M={where}"], log)
    return module_path(build)


def _make(build: Build, extra: list[str], log: Path) -> None:
    argv = ["make", "-C", str(build.dir), f"ARCH={get_arch(build.arch).make_arch}",
            f"-j{os.cpu_count() or 1}", *extra, "modules"]
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}\n")
        f.flush()
        # Like the kernel's own build: niced beside guests, and a session of
        # its own, so a Ctrl-C is the harness's to handle, never make's failure.
        proc = start_make(argv, f)
        try:
            rc = proc.wait(timeout=MAKE_TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            rc = -1
        except BaseException:
            kill_group(proc)
            raise
    if rc != 0:
        raise BuildError(f"building the CPA exerciser module for {build.arch} failed "
                         f"(log: {log})", "the first errors are above", log=str(log),
                         errors=first_errors(log.read_text(errors="replace"), log.parent))


def first_errors(text: str, copy_dir: Path) -> list[str]:
    """The compiler's first error lines, with the copy's paths given back as
    the shipped source's (guest/exerciser/cpa_exercise.c:LINE)."""
    lines = [ln for ln in text.splitlines() if ERROR_RE.search(ln)][:10]
    return [ln.replace(f"{copy_dir}/", "guest/exerciser/") for ln in lines]


