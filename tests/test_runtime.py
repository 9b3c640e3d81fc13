"""Runtime checks on files captured from real guests (tests/data/runtime)."""

from __future__ import annotations

from pathlib import Path

from harness.kernel.kconfig import parse_config
from harness.probes import runtime

DATA = Path(__file__).parent / "data" / "runtime"
CMDLINE = (DATA / "x86_64-proc-cmdline.txt").read_text()
CONFIG = (DATA / "x86_64-proc-config.txt").read_text()
OTHER = (DATA / "x86_64-other-build.config").read_text()
CPUINFO = (DATA / "x86_64-noacpi-smp2-cpuinfo.txt").read_text()


def fake_guest(files: dict[str, tuple[int, str]]) -> runtime.Runner:
    """A runner answering the commands read_view() sends with captured files."""
    def run(cmd: str) -> tuple[int, str]:
        for needle, answer in files.items():
            if needle in cmd:
                return answer
        raise AssertionError(f"unexpected command {cmd!r}")
    return run


GOOD = {"/proc/cmdline": (0, CMDLINE), "config.gz": (0, CONFIG),
        "/proc/cpuinfo": (0, CPUINFO), "dmesg": (0, "")}


def test_parse_config_reads_set_and_unset_options() -> None:
    c = parse_config(CONFIG)
    assert c["CONFIG_CPA_DEBUG"] == "y" and c["CONFIG_RELOCATABLE"] == "y"
    assert c["CONFIG_NUMA"] == "n"                      # "# CONFIG_NUMA is not set"
    assert c["CONFIG_NR_CPUS"] == "2"
    assert c["CONFIG_LOCALVERSION"] == '""'


def test_the_same_config_has_no_differences() -> None:
    assert runtime.config_differences(parse_config(CONFIG),
                                      parse_config(CONFIG)) == []


def test_another_build_is_told_apart() -> None:
    d = runtime.config_differences(parse_config(OTHER), parse_config(CONFIG))
    assert "CONFIG_RELOCATABLE: built n, running y" in d
    assert "CONFIG_FIRMWARE_MEMMAP: built n, running y" in d
    assert len(d) == 7


def test_cpuinfo() -> None:
    assert runtime.cpu_count(CPUINFO) == 1
    assert "pdpe1gb" in runtime.cpu_flags(CPUINFO) and "hypervisor" in runtime.cpu_flags(CPUINFO)
    assert runtime.cpu_model_name(CPUINFO) == "QEMU TCG CPU version 2.5+"


def test_what_was_asked_holds() -> None:
    v = runtime.read_view(fake_guest(GOOD), CONFIG)
    assert v.config_source == "/proc/config.gz" and v.hypervisor is None
    assert runtime.mismatches(v, "console=ttyS0,115200 panic=-1 nokaslr", "tcg", 1) == []


def test_each_difference_is_named() -> None:
    v = runtime.read_view(fake_guest(GOOD), OTHER)
    found = runtime.mismatches(v, "console=ttyS0,115200 panic=-1 nogbpages", "tcg", 2)
    assert found[0] == "the guest runs 1 CPU(s), QEMU was given 2"
    assert found[1].startswith("/proc/cmdline lacks nogbpages (it says 'console=")
    assert found[2].startswith("the running kernel's config differs from the build's in 7 "
                               "option(s): CONFIG_DYNAMIC_MEMORY_LAYOUT: built n, running y;")
    assert len(found) == 3


def test_the_accelerator_the_guest_detected() -> None:
    v = runtime.read_view(fake_guest(GOOD), CONFIG)
    assert runtime.mismatches(v, "", "kvm", 1) == [
        "QEMU ran with KVM but the guest detected no hypervisor"]
    # arch/x86/kernel/cpu/hypervisor.c prints this under KVM
    kvm = {**GOOD, "dmesg": (0, "[    0.000000][    T0] Hypervisor detected: KVM\n")}
    v = runtime.read_view(fake_guest(kvm), CONFIG)
    assert v.hypervisor == "KVM"
    assert runtime.mismatches(v, "", "kvm", 1) == []
    assert runtime.mismatches(v, "", "tcg", 1) == ["QEMU ran with TCG but the guest detected KVM"]


def test_a_kernel_without_ikconfig_is_held_to_its_build() -> None:
    v = runtime.read_view(fake_guest({**GOOD, "config.gz": (0, "NO-IKCONFIG\n")}), CONFIG)
    assert v.config_source.startswith("build .config") and v.config_differences == []


def test_unreadable_files_are_reported_not_guessed() -> None:
    broken = {**GOOD, "/proc/cmdline": (1, "cat: can't open '/proc/cmdline': No such file\n")}
    v = runtime.read_view(fake_guest(broken), CONFIG)
    found = runtime.mismatches(v, "nokaslr", "tcg", 1)
    assert found == ["could not read cmdline: cat: can't open '/proc/cmdline': No such file"]
