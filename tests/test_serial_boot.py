"""The serial shell against a real kernel that prints without pause.

A guest program writes to /dev/kmsg as fast as it can (printk_devkmsg=on
lifts the rate limit), so the kernel's records land in the middle of what
the shell echoes and prints, as on a busy guest. Commands typed meanwhile
must each run once and come back with their own output and status.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness import paths
from harness.arches import get_arch
from harness.cells import KERNEL_FRAGMENTS
from harness.image.initramfs import build_initramfs
from harness.kernel import build as kbuild
from harness.kernel import source
from harness.target.qemu import QemuParams
from harness.target.serial import new_nonce
from harness.target.vm import QemuTarget

pytestmark = pytest.mark.boot

FLOOD = ("echo on > /proc/sys/kernel/printk_devkmsg; "
         "(i=0; while :; do i=$((i+1)); echo \"flood record $i\" > /dev/kmsg; done) "
         "</dev/null >/dev/null 2>&1 &")


@pytest.mark.parametrize("arch_name", ["x86_64"])
def test_commands_survive_a_kernel_printing_meanwhile(tmp_path: Path, arch_name: str) -> None:
    cache = paths.cache_dir()
    arch = get_arch(arch_name)
    req = kbuild.BuildRequest(source.resolve(None, cache), arch,
                              kbuild.fragments_for(arch, list(KERNEL_FRAGMENTS[arch.name])))
    kernel = kbuild.build(req, cache).image
    params = QemuParams(arch=arch, accel="tcg", cpu=arch.cpu, memory_mb=1024, smp=2,
                        cmdline="", kernel=kernel, initrd=build_initramfs(arch, cache),
                        nonce=new_nonce())
    target = QemuTarget(params, tmp_path / "serial.log", is_fatal=lambda f, k: False)
    m = target.console
    try:
        target.start()
        ready = m.wait_ready(300)
        assert re.fullmatch(rb"[0-9a-f-]{36}", ready.group(1))
        status, _ = m.run(FLOOD, 90)
        assert status == 0
        for n in range(25):
            status, out = m.run(f"echo out-{n}-$((6*7)); test {n} -lt 20", 90)
            assert (status, out) == (0 if n < 20 else 1, f"out-{n}-42"), m.notes
    finally:
        target.power_off(10)
        target.release()
    log = m.serial_log.read_bytes()
    floods = log.count(b"flood record")
    # A kernel record began in the middle of the shell's lines...
    split = re.findall(rb"(?:@@CPA-\d+-(?:BEGIN|END-\d+)|out-\d+-\d*)[^\r\n@]*?\[\s*\d+\.\d{6}\]",
                       log)
    print(f"{floods} flood records, {len(split)} shell lines split by one, "
          f"retypes: {m.notes}")
    assert floods > 500
    assert split, "no shell line was split: the test did not provoke what it is for"
    # ...busybox's cursor query is on the line too, and nothing was typed twice
    assert b"\x1b[6n" in log
    assert len(m.notes) <= 2, m.notes
