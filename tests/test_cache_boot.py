"""The build cache under faults, for real: a kernel image corrupted in the
cache, a half-written request record, a module built in the kernel's build
directory, a build killed with SIGKILL mid-make,
and two harness processes filling one cache at once.

These work on the x86_64 kernel the other boot tests use (the first one here
builds it if the cache is cold), and leave it whole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import paths
from harness.arches import get_arch
from harness.cells import KERNEL_FRAGMENTS
from harness.image.initramfs import build_initramfs
from harness.kernel import build, exerciser, source

pytestmark = pytest.mark.boot

HARNESS = [sys.executable, "-m", "harness"]
ARCH = get_arch("x86_64")


def request() -> build.BuildRequest:
    src = source.resolve(None, paths.cache_dir())
    names = list(KERNEL_FRAGMENTS["x86_64"])
    return build.BuildRequest(src, ARCH, build.fragments_for(ARCH, names))


def record_of(b: build.Build) -> Path:
    rec = build.request_record(request(), paths.cache_dir())
    assert rec is not None and rec.exists(), "no request record for the build"
    return rec


def harness_build() -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, "build", "--arch", "x86_64"], capture_output=True,
                          text=True, timeout=3600)


def test_a_corrupted_kernel_image_is_detected_and_made_again() -> None:
    b = build.build(request(), paths.cache_dir())
    good = b.image.read_bytes()
    with open(b.image, "r+b") as f:           # half of it lost, as a full disk would
        f.truncate(len(good) // 2)
    again = build.build(request(), paths.cache_dir())
    assert not again.cached
    assert again.image.read_bytes()[:0x300] == good[:0x300]
    assert again.image.stat().st_size == len(good)
    # and once more: the new record is trusted
    assert build.build(request(), paths.cache_dir()).cached


def test_building_the_exerciser_module_leaves_the_kernel_as_recorded() -> None:
    # Its `make modules` once rewrote compile.h (who built it, where), and the
    # next kernel build relinked vmlinux into another image than the recorded.
    b = build.build(request(), paths.cache_dir())
    compile_h = b.dir / "include/generated/compile.h"
    before = compile_h.read_bytes(), b.vmlinux.read_bytes()
    (b.dir / "Module.symvers").unlink(missing_ok=True)     # its whole work, make modules too
    assert exerciser.build_module(b).exists()
    assert (compile_h.read_bytes(), b.vmlinux.read_bytes()) == before
    r = harness_build()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "changed since it was built" not in r.stdout
    assert b.vmlinux.read_bytes() == before[1]


def test_a_half_written_request_record_is_not_trusted() -> None:
    b = build.build(request(), paths.cache_dir())
    rec = record_of(b)
    text = rec.read_text()
    rec.write_text(text[: len(text) // 2])
    r = harness_build()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "built in" in r.stdout            # make ran (and had nothing to do)
    json.loads(rec.read_text())               # whole again
    assert "Traceback" not in r.stderr


def test_a_build_killed_mid_make_is_cleaned_and_completed() -> None:
    b = build.build(request(), paths.cache_dir())
    # Make real work for make: the page-attribute objects and the link.
    objs = sorted((b.dir / "arch/x86/mm/pat").glob("*.o"))
    assert objs
    for o in objs:
        o.unlink()
    b.vmlinux.unlink()
    log_start = b.log.stat().st_size
    proc = subprocess.Popen([*HARNESS, "build", "--arch", "x86_64"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while b"arch/x86/mm/pat/" not in b.log.read_bytes()[log_start:]:
        assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
        assert time.monotonic() < deadline, "make never reached arch/x86/mm/pat"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)            # compilers make started finish or die
    assert (b.dir / build.BUILDING).exists(), "the interrupted build left no marker"
    r = harness_build()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "was interrupted" in r.stdout, r.stdout
    assert not (b.dir / build.BUILDING).exists()
    for o in objs:
        assert o.stat().st_size > 0
    assert build.build(request(), paths.cache_dir()).cached


def test_two_processes_fill_one_cache_at_once(tmp_path: Path) -> None:
    b = build.build(request(), paths.cache_dir())
    record_of(b).unlink()             # both must configure and run make again
    procs = [subprocess.Popen([*HARNESS, "build", "--arch", "x86_64"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=3600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(str(b.image) in o for o in outs), outs
    json.loads(record_of(b).read_text())
    assert build.build(request(), paths.cache_dir()).cached
    # The guest's initramfs: two processes making the same image at once.
    image = build_initramfs(ARCH, paths.cache_dir())
    image.with_name(image.name + ".sha256").unlink()
    code = ("from harness import paths; from harness.arches import get_arch; "
            "from harness.image import initramfs; "
            "print(initramfs.build_initramfs(get_arch('x86_64'), paths.cache_dir()))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(str(image) in o for o in outs), outs


def test_a_corrupted_initramfs_is_detected_and_made_again() -> None:
    image = build_initramfs(ARCH, paths.cache_dir())
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 3])
    again = build_initramfs(ARCH, paths.cache_dir())
    assert again == image and image.read_bytes() == good
