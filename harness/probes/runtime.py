"""Runtime truth: what the guest says it is running, held against what the cell asked for.

A harness that reports on the wrong kernel, or on the right kernel booted with
the wrong command line, would call a kernel good on evidence it never saw. So
after each boot the guest's own /proc/cmdline, /proc/config.gz and
/proc/cpuinfo are read back and compared; any difference fails the cell as a
user/harness error before its verdict could mislead anyone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.kernel.kconfig import parse_config
from harness.probes import Runner
from harness.records import Record

# arch/x86/kernel/cpu/hypervisor.c: "Hypervisor detected: KVM"
HYPERVISOR_RE = re.compile(r"Hypervisor detected: (.+?)\s*$", re.M)


def config_differences(built: dict[str, str], running: dict[str, str]) -> list[str]:
    """Each option whose value differs, as 'CONFIG_X: built y, running n'."""
    diffs = []
    for name in sorted(set(built) | set(running)):
        b, r = built.get(name, "n"), running.get(name, "n")
        if b != r:
            diffs.append(f"{name}: built {b}, running {r}")
    return diffs


def cpu_flags(cpuinfo: str) -> list[str]:
    """The first CPU's flags from /proc/cpuinfo."""
    m = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
    return m.group(1).split() if m else []


def cpu_count(cpuinfo: str) -> int:
    """Online CPUs: one 'processor : N' block each in /proc/cpuinfo."""
    return len(re.findall(r"^processor\s*:", cpuinfo, re.M))


def cpu_model_name(cpuinfo: str) -> str:
    m = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    return m.group(1).strip() if m else ""


@dataclass
class GuestView(Record):
    cmdline: str = ""
    config_source: str = ""             # /proc/config.gz, or the build's .config
    config_differences: list[str] = field(default_factory=list)
    cpu_model: str = ""
    cpus: int = 0
    cpu_flags: list[str] = field(default_factory=list)
    hypervisor: str | None = None       # what the kernel detected; None under TCG
    errors: dict[str, str] = field(default_factory=dict)


def read_view(run: Runner, built_config: str) -> GuestView:
    """Read what the guest is running through `run` (ssh or the serial shell)."""
    v = GuestView()
    status, out = run("cat /proc/cmdline")
    if status == 0:
        v.cmdline = out.strip()
    else:
        v.errors["cmdline"] = out.strip()[:200]
    status, out = run("if [ -e /proc/config.gz ]; then zcat /proc/config.gz; "
                      "else echo NO-IKCONFIG; fi")
    if status == 0 and out.strip() != "NO-IKCONFIG":
        v.config_source = "/proc/config.gz"
        v.config_differences = config_differences(parse_config(built_config),
                                                  parse_config(out))
    elif status == 0:
        v.config_source = "build .config (the kernel has no IKCONFIG_PROC)"
    else:
        v.errors["config"] = out.strip()[:200]
    status, out = run("cat /proc/cpuinfo")
    if status == 0:
        v.cpu_flags, v.cpu_model, v.cpus = cpu_flags(out), cpu_model_name(out), cpu_count(out)
    else:
        v.errors["cpuinfo"] = out.strip()[:200]
    status, out = run("dmesg | grep 'Hypervisor detected' || true")
    m = HYPERVISOR_RE.search(out) if status == 0 else None
    v.hypervisor = m.group(1) if m else None
    return v


def mismatches(v: GuestView, asked_cmdline: str, accel: str, smp: int) -> list[str]:
    """How what runs differs from what was asked; empty when it is what was asked."""
    found = [f"could not read {what}: {why}" for what, why in v.errors.items()]
    if smp and "cpuinfo" not in v.errors and v.cpus != smp:     # 0: not QEMU's to give
        # e.g. a kernel without ACPI enumerates only the boot CPU under QEMU
        found.append(f"the guest runs {v.cpus} CPU(s), QEMU was given {smp}")
    # /proc/cmdline is the string QEMU passed, quotes and all: compare words as given.
    running = set(v.cmdline.split())
    missing = [t for t in asked_cmdline.split() if t not in running]
    if missing and "cmdline" not in v.errors:
        found.append(f"/proc/cmdline lacks {' '.join(missing)} (it says {v.cmdline!r})")
    if v.config_differences:
        d = v.config_differences
        found.append(f"the running kernel's config differs from the build's in {len(d)} "
                     f"option(s): {'; '.join(d[:3])}{' ...' if len(d) > 3 else ''}")
    if accel == "kvm" and v.hypervisor != "KVM" and "cpuinfo" not in v.errors:
        found.append(f"QEMU ran with KVM but the guest detected {v.hypervisor or 'no hypervisor'}")
    if accel == "tcg" and v.hypervisor == "KVM":
        found.append("QEMU ran with TCG but the guest detected KVM")
    return found
