"""Throughput and peak memory of the console parser on a generated ~200 MB log.

    python bench/parse_throughput.py [--size-mb 200] [--keep PATH] [--tracemalloc]

The log repeats realistic boots of a CPA_DEBUG kernel: firmware noise with
escape sequences, a banner, hundreds of `CPA  protect` lines, device messages,
the W^X WARNING every 6.12 x86_64 boot prints, a self-test pass, /proc/meminfo
lines, and, every tenth boot, a lockdep report and a panic after an oops; each
boot ends with kexec. Not a test: it prints MB/s and peak memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.console import parse_path  # noqa: E402


def stamp(t: float, text: str) -> str:
    return f"[{t:12.6f}] {text}\n"


def boot(n: int) -> str:
    out = ["\x1bc\x1b[2JSeaBIOS (version 1.16.3-debian-1.16.3-2)\r\n", "Booting from ROM..\r\n"]
    t = 0.0
    out.append(stamp(t, f"Linux version 6.12.117 (root@build) (gcc 14.2.0) #{n} SMP "
                        "PREEMPT_DYNAMIC"))
    out.append(stamp(t, "Command line: console=ttyS0 panic=-1 nokaslr"))
    out.append(stamp(0.004, "Using GB pages for direct mapping"))
    for i in range(400):
        t += 0.0001
        out.append(stamp(t, f"pci 0000:00:{i % 32:02x}.0: [8086:7000] type 00 class 0x060100 "
                            f"conventional PCI endpoint {i}"))
    for i in range(600):
        t += 0.0001
        out.append(stamp(t, "CPA  protect  Rodata RO: 0xffff888002a00000 - 0xffff888002bfffff "
                            f"PFN {0x2a00 + i:x} req 8000000000000063 prevent 0000000000000002"))
    out.append(stamp(t, "Testing CPA: undo ffffffff81000000-ffffffff82400000"))
    out.append(stamp(t, "------------[ cut here ]------------"))
    out.append(stamp(t, "CPA detected W^X violation: 8000000000000063 -> 0000000000000063 "
                        "range: 0xffffffff81000000 - 0xffffffff811fffff PFN 1000"))
    out.append(stamp(t, "WARNING: CPU: 0 PID: 1 at arch/x86/mm/pat/set_memory.c:665 "
                        "verify_rwx+0x8f/0xa0"))
    out.append(stamp(t, "Modules linked in:"))
    out.append(stamp(t, "RIP: 0010:verify_rwx+0x8f/0xa0"))
    out.append(stamp(t, "Call Trace:"))
    out.append(stamp(t, " <TASK>"))
    for frame in ("? __warn+0x89/0x130", "__change_page_attr_set_clr+0x5a9/0xb70",
                  "change_page_attr_set_clr+0x10f/0x1a0", "set_memory_rw+0x2b/0x40",
                  "mark_rodata_ro+0xd8/0x100", "kernel_init+0x59/0x1c0"):
        out.append(stamp(t, f" {frame}"))
    out.append(stamp(t, " </TASK>"))
    out.append(stamp(t, "---[ end trace 0000000000000000 ]---"))
    out.append(stamp(t, "x86/mm: Checked W+X mappings: passed, no W+X pages found."))
    for i in range(300):
        t += 0.01
        out.append(stamp(t, f"virtio_net virtio0 eth0: renamed from eth{i}; link is up, "
                            "100Mbps, full duplex"))
    if n % 10 == 5:
        out.append(stamp(t, "======================================================"))
        out.append(stamp(t, "WARNING: possible circular locking dependency detected"))
        out.append(stamp(t, "Call Trace:"))
        out.append(stamp(t, " <TASK>"))
        out.append(stamp(t, " __mutex_lock+0x9b/0x900"))
        out.append(stamp(t, " grab_b+0x12/0x30"))
        out.append(stamp(t, " </TASK>"))
    t = 31.0
    out.append(stamp(t, "CPA self-test:"))
    for k4 in (3072, 157664, 3072):
        out.append(stamp(t, f" 4k {k4} large 510 gb 3 x 2560[ffff888000000000-ffff8880bfffffff] "
                            "miss 0"))
    out.append(stamp(t, "ok."))
    out.append("DirectMap4k:      501760 kB\nDirectMap2M:     1595392 kB\n"
               "DirectMap1G:     2097152 kB\n")
    if n % 10 == 9:
        out.append(stamp(t, "BUG: kernel NULL pointer dereference, address: 0000000000000000"))
        out.append(stamp(t, "Oops: Oops: 0002 [#1] PREEMPT SMP NOPTI"))
        out.append(stamp(t, "RIP: 0010:foo_init+0x5/0x10"))
        out.append(stamp(t, "Call Trace:"))
        out.append(stamp(t, " do_one_initcall+0x56/0x2e0"))
        out.append(stamp(t, "---[ end trace 0000000000000000 ]---"))
        out.append(stamp(t, "Kernel panic - not syncing: Fatal exception"))
        out.append(stamp(t, "---[ end Kernel panic - not syncing: Fatal exception ]---"))
    else:
        out.append(stamp(35.0, "kexec_core: Starting new kernel"))
    return "".join(out)


def generate(path: Path, size_mb: int) -> int:
    target = size_mb * 1_000_000
    written = 0
    n = 0
    with path.open("w", encoding="utf-8") as f:
        while written < target:
            chunk = boot(n)
            f.write(chunk)
            written += len(chunk.encode())
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--keep", type=Path, help="write the log here and keep it")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="also trace Python allocations (much slower)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "console.log"
        t0 = time.perf_counter()
        boots = generate(path, args.size_mb)
        size = path.stat().st_size
        print(f"generated {size / 1e6:.1f} MB, {boots} boots in {time.perf_counter() - t0:.1f} s")

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if args.tracemalloc:
            tracemalloc.start()
        t0 = time.perf_counter()
        analysis = parse_path(path)
        elapsed = time.perf_counter() - t0
        peak_traced = tracemalloc.get_traced_memory()[1] if args.tracemalloc else None
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        failures = sum(len(b.failures) for b in analysis.boots)
        print(f"parsed {size / 1e6:.1f} MB in {elapsed:.1f} s: {size / 1e6 / elapsed:.1f} MB/s")
        print(f"{len(analysis.boots)} boots, {failures} failures, verdict {analysis.verdict}")
        print(f"peak RSS {rss_after / 1024:.0f} MB (before parsing {rss_before / 1024:.0f} MB)")
        if peak_traced is not None:
            print(f"peak traced Python memory {peak_traced / 1e6:.1f} MB")
        if args.keep is None:
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
