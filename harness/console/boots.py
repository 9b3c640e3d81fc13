"""Boots: where a kernel starts and ends, and the facts each one states.

A `Linux version X ...` banner starts a boot; kexec, reboot, panic and
power-off messages end one (kernel/kexec_core.c, kernel/reboot.c,
kernel/panic.c). Facts: the command line, GB pages for the direct map
(arch/x86/mm/init.c), the W+X checker's verdict
(arch/x86/mm/dump_pagetables.c), DirectMap lines of /proc/meminfo, and the
evidence for DEBUG_PAGEALLOC.
"""

from __future__ import annotations

import re

from harness.console.lines import Line
from harness.console.model import Boot, DirectMap

BANNER = re.compile(r"Linux version (?P<version>\S+)")
COMMAND_LINE = re.compile(r"(?:Kernel )?[Cc]ommand line: (?P<cmdline>.*)")
GB_PAGES = re.compile(r"Using GB pages for direct mapping")
WX_CHECKED = re.compile(
    r"x86/mm: Checked W\+X mappings: "
    r"(?:(?P<passed>passed)|(?P<failed>FAILED), \d+ W\+X pages found)"
)
DIRECT_MAP = re.compile(r"DirectMap(?P<size>4k|2M|4M|1G):\s+(?P<kb>\d+) kB\s*$")
DEBUG_PAGEALLOC_PARAM = re.compile(r"(?:^|\s)debug_pagealloc=(?P<value>\S*)")
# The die() header lists the debug options in effect (arch/x86/kernel/dumpstack.c).
OOPS_FLAGS = re.compile(r".*: [0-9a-f]{4} \[#\d+\](?P<flags>.*)$")

KEXEC = re.compile(r"(?:kexec_core: |kexec: )?Starting new kernel")
REBOOT = re.compile(r"(?:reboot: )?Restarting system")
POWEROFF = re.compile(
    r"(?:reboot: )?(?:Power down|System halted|Power off not available: System halted instead)"
)
PANIC = re.compile(r"Kernel panic - not syncing")
PANIC_END = re.compile(r"---\[ end Kernel panic - not syncing")
# With panic=N the kernel reboots after this line, without the end marker.
PANIC_REBOOTING = re.compile(r"Rebooting in \d+ seconds\.\.")

# The printk clock starts at zero in every kernel: a line this early after a
# much later one is a new kernel that printed no banner (a quiet boot).
CLOCK_RESTART_BELOW = 1.0
CLOCK_RESTART_GAP = 5.0


def banner_version(line: Line, boot: Boot | None, boot_had_timestamps: bool) -> str | None:
    """The version of a boot banner on this line, or None if it is not one.

    `cat /proc/version` prints the same text from user space: without a
    printk prefix in a log that has them, or with a printk time well after
    boot, it is not a banner.
    """
    if not line.text.startswith("Linux version "):
        return None
    m = BANNER.match(line.text)
    if m is None:
        return None
    if line.timestamp is not None and line.timestamp > CLOCK_RESTART_BELOW:
        return None
    if boot is not None and boot_had_timestamps and line.timestamp is None:
        return None
    return m.group("version")


def end_of_boot(text: str, panicked: bool) -> str | None:
    """How the boot ends if this message ends it: kexec, reboot, panic, poweroff."""
    first = text[:1]
    if first in "kS" and KEXEC.match(text):
        return "kexec"
    if first in "rRPS":
        if REBOOT.match(text):
            return "reboot"
        if POWEROFF.match(text):
            return "poweroff"
        if panicked and PANIC_REBOOTING.match(text):
            return "panic"
    if first == "-" and PANIC_END.match(text):
        return "panic"
    return None


class BootFacts:
    """Collects the facts of one boot; `observe` says whether the line was one."""

    def __init__(self, boot: Boot) -> None:
        self.boot = boot
        self._direct_map: DirectMap | None = None

    def observe(self, line: Line) -> bool:
        text = line.text
        boot = self.boot
        if self._direct_map is not None and not text.startswith("DirectMap") \
                and not line.prefixed:
            self._direct_map = None
        first = text[:1]
        if first == "D":
            m = DIRECT_MAP.match(text)
            if m is not None:
                self._add_direct_map(line, m.group("size"), int(m.group("kb")))
                return True
            return False
        if first in "CK":
            m = COMMAND_LINE.match(text)
            if m is not None:
                if boot.cmdline is None:
                    boot.cmdline = m.group("cmdline").strip()
                    self._cmdline_debug_pagealloc(boot.cmdline)
                return True
            return False
        if first == "U" and GB_PAGES.match(text):
            boot.gbpages_seen = True
            return True
        if first == "x":
            m = WX_CHECKED.match(text)
            if m is not None:
                passed = m.group("passed") is not None
                boot.wx_checks.append("passed" if passed else "failed")
                return passed  # FAILED is also a failure header
            return False
        if "[#" in text:
            m = OOPS_FLAGS.match(text)
            if m is not None:
                boot.debug_pagealloc_oops = "DEBUG_PAGEALLOC" in m.group("flags").split()
        return False

    def _add_direct_map(self, line: Line, size: str, kb: int) -> None:
        snap = self._direct_map
        if snap is None or size in snap.sizes:
            snap = DirectMap(line=line.number)
            self.boot.direct_map.append(snap)
            self._direct_map = snap
        snap.sizes[size] = kb

    def _cmdline_debug_pagealloc(self, cmdline: str) -> None:
        value: bool | None = None
        for m in DEBUG_PAGEALLOC_PARAM.finditer(cmdline):
            value = parse_kernel_bool(m.group("value"))
        self.boot.debug_pagealloc_cmdline = value


def parse_kernel_bool(value: str) -> bool | None:
    """kstrtobool() as the kernel reads `debug_pagealloc=` (lib/kstrtox.c)."""
    if not value:
        return None
    first = value[0].lower()
    if first in "y1":
        return True
    if first in "n0":
        return False
    if first == "o" and len(value) > 1:
        second = value[1].lower()
        if second == "n":
            return True
        if second == "f":
            return False
    return None
