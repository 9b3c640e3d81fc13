"""The KVM branches, on a host where KVM runs no kernel: the accelerator
probe's decision table fed what this host's QEMU printed (tests/data/qemu),
what is remembered, and what a KVM cell gets (its timeouts, flush times shown).
Where KVM works the real probe takes these branches; test_qemu.py runs it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_flush import X86_64, Guest

from harness.arches import ARCHES
from harness.cells import SMOKE
from harness.errors import InfraError
from harness.probes import flush
from harness.scenarios import cpa
from harness.target import qemu
from harness.target.base import Fleet, Timeouts
from harness.target.vm import QemuTargets

QEMU = Path(__file__).parent / "data" / "qemu"


def recorded(name: str) -> tuple[int, str]:
    """(exit code, output) of a QEMU run recorded on this host: '# qemu ARGS',
    '# exit N', then what QEMU printed."""
    head, code, *out = (QEMU / f"{name}.txt").read_text().split("\n")
    assert head.startswith("# qemu ") and code.startswith("# exit ")
    return int(code.removeprefix("# exit ")), "\n".join(out)


def test_the_firmware_probe_reads_this_hosts_qemu() -> None:
    # -cpu host: QEMU 7.2 aborts setting MSR 0x10a (IA32_ARCH_CAPABILITIES)
    assert qemu.firmware_problem(*recorded("kvm-firmware-cpu-host")) == (
        "the probe guest exited -6: qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: "
        "kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.")
    # -cpu qemu64: the real-mode firmware runs (and exits through the debug port)
    assert qemu.firmware_problem(*recorded("kvm-firmware-cpu-qemu64")) is None


def test_the_kernel_probe_reads_this_hosts_hang() -> None:
    """The kernel under KVM: nothing on its serial line in 30 s, QEMU's own
    CPUID warning the last output (said as QEMU's, not the kernel's); killed
    at the deadline."""
    code, out = recorded("kvm-kernel-cpu-qemu64")
    assert code == -9
    assert qemu.kernel_problem(None, out.encode(), 30.0) == (
        "the kernel did not reach user space in 30s (the kernel printed nothing; QEMU said "
        "\"qemu-system-x86_64: warning: host doesn't support requested feature: "
        "CPUID.01H:ECX.pni [bit 0]\")")
    # a kernel that printed and then stopped: its last line, QEMU's apart
    seen = b"[    0.000000] Linux version 6.12.57\r\n" + out.encode()
    assert qemu.kernel_problem(None, seen, 30.0).startswith(
        "the kernel did not reach user space in 30s (last output: "
        "'[    0.000000] Linux version 6.12.57'; QEMU said \"qemu-system-x86_64: warning")


HANG = qemu.kernel_problem(None, recorded("kvm-kernel-cpu-qemu64")[1].encode(), 30.0)
ABORT = qemu.firmware_problem(*recorded("kvm-firmware-cpu-host"))


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A host whose /dev/kvm, firmware probe and kernel probe answer as told."""
    h = SimpleNamespace(device=None, firmware={"host": ABORT}, kernel=HANG, probes=[])

    def run_probe(binary: str, accel: str, cpu: str) -> str | None:
        h.probes.append(("firmware", cpu))
        return h.firmware.get(cpu)

    def run_kernel_probe(arch: object, accel: str, cpu: str, kernel: Path,
                         initrd: Path) -> str | None:
        h.probes.append(("kernel", cpu))
        return h.kernel

    monkeypatch.setattr(qemu, "kvm_device_problem", lambda: h.device)
    monkeypatch.setattr(qemu, "run_probe", run_probe)
    monkeypatch.setattr(qemu, "run_kernel_probe", run_kernel_probe)
    monkeypatch.setattr(qemu, "qemu_version", lambda binary: "7.2.22")
    return h


X86_64_ARCH = ARCHES["x86_64"]


def test_the_kvm_device_checks(tmp_path: Path) -> None:
    assert qemu.kvm_device_problem(str(tmp_path / "kvm")) == f"no {tmp_path / 'kvm'}"
    assert qemu.kvm_device_problem(str(tmp_path)).startswith(   # a directory: EISDIR
        f"{tmp_path} cannot be opened (Is a directory)")
    plain = tmp_path / "dev"
    plain.write_text("")
    assert qemu.kvm_device_problem(str(plain)) is None


@pytest.mark.parametrize("device,cpu,kernel,accel,reason", [
    ("no /dev/kvm", "max", HANG, "tcg", "no /dev/kvm; using TCG"),
    ("/dev/kvm cannot be opened (Permission denied)", "max", HANG, "tcg",
     "/dev/kvm cannot be opened (Permission denied); using TCG"),
    # -cpu max asks KVM for -cpu host: this host's abort
    (None, "max", HANG, "tcg", f"KVM probe with -cpu host failed ({ABORT}); using TCG"),
    # firmware runs, the kernel hangs: this host
    (None, "qemu64", HANG, "tcg",
     f"KVM runs firmware but not a kernel with -cpu qemu64 ({HANG}); using TCG"),
    # a host where KVM works
    (None, "qemu64", None, "kvm", "KVM booted the kernel to user space with -cpu qemu64"),
])
def test_the_decision_table(host: SimpleNamespace, tmp_path: Path, device: str | None,
                            cpu: str, kernel: str | None, accel: str, reason: str) -> None:
    host.device, host.kernel = device, kernel
    choice = qemu.choose_accel(X86_64_ARCH, cpu, tmp_path, kernel=tmp_path / "bzImage",
                               initrd=tmp_path / "initrd")
    assert (choice.accel, choice.reason) == (accel, reason)
    # the answer of a kernel boot is remembered for this host, QEMU and CPU model
    [entry] = json.loads((tmp_path / "accel.json").read_text()).values()
    assert (entry["accel"], entry["reason"]) == (accel, reason)
    probes = list(host.probes)
    again = qemu.choose_accel(X86_64_ARCH, cpu, tmp_path, kernel=tmp_path / "bzImage",
                              initrd=tmp_path / "initrd")
    assert (again.accel, again.reason) == (accel, reason + " (remembered)")
    assert host.probes == probes                    # asked once
    if accel == "tcg":
        with pytest.raises(InfraError, match="KVM was requested but does not work here"):
            qemu.choose_accel(X86_64_ARCH, cpu, tmp_path, want="kvm")


def test_a_firmware_answer_alone_is_never_remembered(host: SimpleNamespace,
                                                     tmp_path: Path) -> None:
    choice = qemu.choose_accel(X86_64_ARCH, "qemu64", tmp_path)
    assert choice.accel == "kvm" and choice.reason.endswith("a kernel boot will confirm it")
    assert not (tmp_path / "accel.json").exists()


def test_a_kvm_cell_has_kvm_timeouts_and_shows_flush_times(tmp_path: Path) -> None:
    cell = next(c for c in SMOKE if c.arch == "x86_64")
    kvm = QemuTargets(cell, tmp_path / "bzImage", tmp_path / "initrd",
                      qemu.AccelChoice("kvm", "KVM booted the kernel"), Fleet())
    tcg = QemuTargets(cell, tmp_path / "bzImage", tmp_path / "initrd",
                      qemu.AccelChoice("tcg", "no /dev/kvm"), Fleet())
    assert kvm.timeouts == Timeouts.for_accel("kvm") != tcg.timeouts
    assert kvm.timeouts.boot < tcg.timeouts.boot
    # flush accounting: a time per call on KVM, withheld under TCG
    for accel, shown in (("kvm", True), ("tcg", False)):
        target = SimpleNamespace(shell=SimpleNamespace(run=Guest(list(flush.FLUSH_PATHS),
                                                                 stat=X86_64)),
                                 console=SimpleNamespace(kernel=lambda: "6.12.118"))
        prof, info = cpa.profiler(target, accel, "x86_64")   # type: ignore[arg-type]
        assert prof is not None
        window = prof.stop("period")
        assert (window.time_us is not None) is shown
        assert info["timing"] == ("time per call shown (KVM)" if shown else
                                  "time per call withheld: under TCG it measures the "
                                  "emulator, not the CPU")
