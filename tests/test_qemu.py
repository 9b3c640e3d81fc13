from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.arches import ARCHES
from harness.target import qemu


@pytest.mark.parametrize("name", sorted(ARCHES))
def test_argv_golden(name: str, golden: Callable[[str, str], None]) -> None:
    arch = ARCHES[name]
    p = qemu.QemuParams(arch=arch, accel="tcg", cpu=arch.cpu, memory_mb=2048, smp=2,
                        cmdline="debug_pagealloc=on", kernel=Path("/k/bzImage"),
                        initrd=Path("/k/initramfs.cpio"))
    golden(f"qemu-{name}.argv", qemu.show_command(p) + "\n")


def test_argv_with_ssh_and_qmp(golden: Callable[[str, str], None]) -> None:
    arch = ARCHES["x86_64"]
    p = qemu.QemuParams(arch=arch, accel="kvm", cpu="host", memory_mb=4096, smp=4,
                        cmdline="nokaslr 'quoted; rm -rf /'", kernel=Path("/k/bzImage"),
                        initrd=Path("/k/i.cpio"), ssh_port=10022, qmp_socket=Path("/r/qmp.sock"))
    argv = qemu.qemu_argv(p)
    # one argument, never split or interpreted by a shell
    assert argv[argv.index("-append") + 1] == (
        "console=ttyS0,115200 panic=-1 nokaslr 'quoted; rm -rf /'")
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:10022-:22" in argv
    assert shlex.split(qemu.show_command(p)) == argv
    golden("qemu-x86_64-ssh-qmp.argv", qemu.show_command(p) + "\n")


def test_two_numa_nodes_split_memory_and_cpus(golden: Callable[[str, str], None]) -> None:
    arch = ARCHES["x86_64"]
    p = qemu.QemuParams(arch=arch, accel="tcg", cpu="max", memory_mb=3001, smp=4, cmdline="",
                        kernel=Path("/k/bzImage"), initrd=Path("/k/i.cpio"), numa_nodes=2)
    argv = qemu.qemu_argv(p)
    assert argv[argv.index("-m") + 1] == "3001"
    assert argv[argv.index("-smp") + 1] == "4,sockets=2,cores=2,threads=1"
    assert "memory-backend-ram,id=mem0,size=1500M" in argv
    assert "memory-backend-ram,id=mem1,size=1501M" in argv
    # a node is a socket: its CPUs share a last-level cache
    assert "node,nodeid=0,memdev=mem0,cpus=0,cpus=1" in argv
    assert "node,nodeid=1,memdev=mem1,cpus=2,cpus=3" in argv
    golden("qemu-x86_64-numa.argv", qemu.show_command(p) + "\n")


def test_tcg_probe_runs_guest_code() -> None:
    """The probe firmware really executes: TCG exits through isa-debug-exit."""
    assert qemu.run_probe("qemu-system-x86_64", "tcg", "max") is None
    assert qemu.run_probe("qemu-system-i386", "tcg", "qemu32") is None


def test_probe_reports_a_bad_cpu_model() -> None:
    problem = qemu.run_probe("qemu-system-x86_64", "tcg", "no-such-cpu")
    assert problem is not None and "exited 1" in problem


def test_choose_accel_remembers(tmp_path: Path) -> None:
    arch = ARCHES["x86_64"]
    first = qemu.choose_accel(arch, "max", tmp_path)
    assert first.accel in ("kvm", "tcg") and first.reason
    again = qemu.choose_accel(arch, "max", tmp_path)
    assert again.accel == first.accel
    if first.accel == "kvm":
        # Hosts differ: where KVM runs the firmware (some hosts whose KVM
        # still cannot run a kernel), that answer is not proof, and without a
        # kernel to boot it is asked again, never remembered.
        assert first.reason.endswith("a kernel boot will confirm it")
        assert again.reason == first.reason and not (tmp_path / "accel.json").exists()
    else:
        assert again.reason.endswith("(remembered)")
    assert qemu.choose_accel(arch, "max", tmp_path, want="tcg").accel == "tcg"
