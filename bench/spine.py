"""Benchmark of the spine: builds, the build cache, boots and the CPA cell.

Prints, per arch:
- clean build time (with --clean: a fresh build directory, forced by a unique
  CONFIG_LOCALVERSION; otherwise the time recorded for the cached build is not
  a measurement and is not printed);
- cache-hit build time beside the kernel's own no-op `make` on the same build
  directory, as a ratio;
- boot-to-ready time (QEMU start to the guest init's ready marker);
- the CPA cell's time-to-verdict (QEMU start to the first self-test verdict)
  beside its floor: the kernel's own boot-to-init time (printk timestamp of
  "Run /init as init process") plus the 30 s the self-test thread sleeps before
  its first pass, as a ratio.

Usage: python bench/spine.py [--arch x86_64 --arch i386 ...] [--clean]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import paths
from harness.arches import ARCHES, get_arch
from harness.cells import KERNEL_FRAGMENTS, SMOKE
from harness.cli import main as cli_main
from harness.kernel import build as kbuild
from harness.kernel import source

INIT_RE = re.compile(r"\[\s*(\d+\.\d+)\](?:\[\s*[TC]\d+\])?\s+Run /init as init process")


def request(arch_name: str, sets: tuple[str, ...] = ()) -> kbuild.BuildRequest:
    arch = get_arch(arch_name)
    src = source.resolve(None, paths.cache_dir())
    return kbuild.BuildRequest(src, arch,
                               kbuild.fragments_for(arch, list(KERNEL_FRAGMENTS[arch_name])), sets)


def noop_make(b: kbuild.Build, req: kbuild.BuildRequest) -> float:
    argv = ["make", "-C", str(req.source.path), f"O={b.dir}", f"ARCH={req.arch.make_arch}",
            f"-j{req.jobs}", req.arch.image.rsplit("/", 1)[-1]]
    # The harness's own environment: another build user or host changes the
    # version string, and make would relink instead of doing nothing.
    env = dict(os.environ, KBUILD_BUILD_USER="cpa-harness", KBUILD_BUILD_HOST="cpa-harness")
    t = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, env=env)
    return time.monotonic() - t


def bench_build(arch_name: str, clean: bool) -> None:
    req = request(arch_name)
    b = kbuild.build(req, paths.cache_dir())          # make sure it exists
    if clean:
        creq = request(arch_name, (f'CONFIG_LOCALVERSION="-bench{secrets.token_hex(3)}"',))
        t = time.monotonic()
        kbuild.build(creq, paths.cache_dir())
        print(f"{arch_name}: clean build {time.monotonic() - t:.0f} s")
    t = time.monotonic()
    hit = kbuild.build(req, paths.cache_dir())
    hit_s = time.monotonic() - t
    assert hit.cached, "the second identical request was not a cache hit"
    make_s = noop_make(b, req)
    print(f"{arch_name}: cache-hit build {hit_s:.3f} s; kernel's no-op make {make_s:.2f} s; "
          f"ratio {hit_s / make_s:.4f}")


def bench_cells(arch_names: list[str]) -> None:
    names = [c.name for c in SMOKE if c.arch in arch_names]
    with tempfile.TemporaryDirectory(prefix="cpa-bench.") as tmp:
        argv = ["run", "--periods", "0", "--out", tmp]
        for n in names:
            argv += ["--cell", n]
        cli_main(argv)
        for n in names:
            r = json.loads((Path(tmp) / "cells" / n / "result.json").read_text())
            d = r["durations"]
            log = Path(r["serial_log"]).read_text(errors="replace")
            m = INIT_RE.search(log)
            if not m or "to_first_pass" not in d:
                print(f"{n}: {r['verdict']} ({r['reason']}); no timing")
                continue
            floor = float(m.group(1)) + 30.0
            print(f"{n} [{r['accel']}]: boot-to-ready {d['boot_to_ready']:.1f} s; "
                  f"time-to-verdict {d['to_first_pass']:.1f} s; floor {floor:.1f} s "
                  f"(kernel boot-to-init {float(m.group(1)):.1f} s + 30 s); "
                  f"ratio {d['to_first_pass'] / floor:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", choices=sorted(ARCHES))
    ap.add_argument("--clean", action="store_true", help="also time a clean build per arch")
    args = ap.parse_args()
    arches = args.arch or sorted(ARCHES)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), "?")
    print(f"host: {platform.node()}, {cpu}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")
    for a in arches:
        bench_build(a, args.clean)
    bench_cells(arches)
    return 0


if __name__ == "__main__":
    sys.exit(main())
