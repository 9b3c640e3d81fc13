"""Lines that look like failures, or flood the log, and are not failures.

This is the one place such lines are listed; docs/console.md explains each
entry and tests/test_console_ignore.py feeds every one of them. A line matched
here never opens a failure report and is not added to one, but it still
reaches the boot and self-test trackers. The message of a WARN() that is
listed here (the AMD SMP notice, the W^X notice) is kept in that WARNING's
report: only `flood` entries are left out of reports altogether.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class IgnoreEntry:
    name: str
    pattern: re.Pattern[str]
    why: str
    example: str
    # Printed hundreds of times by CPA_DEBUG: never part of a report.
    flood: bool = False


IGNORE_LIST: tuple[IgnoreEntry, ...] = (
    IgnoreEntry(
        "cpa_debug",
        re.compile(r"CPA +(?:protect|conflict|detect) "),
        "set_memory.c check_conflict() prints every static-protection adjustment when "
        "CPA_DEBUG is set; a real conflict is reported by the WARN_ON_ONCE that follows it",
        "CPA  protect  Rodata RO: 0xffff888002a00000 - 0xffff888002bfffff PFN 2a00 "
        "req 8000000000000063 prevent 0000000000000002",
        flood=True,
    ),
    IgnoreEntry(
        "cpa_rodata_test",
        re.compile(r"Testing CPA: "),
        "mark_rodata_ro() announces its boot-time CPA round trip (init_64.c, init_32.c)",
        "Testing CPA: undo ffffffff81000000-ffffffff82a00000",
        flood=True,
    ),
    IgnoreEntry(
        "cpa_wx_notice",
        re.compile(r"CPA detected W\^X violation: "),
        "verify_rwx() prints it alone (pr_warn_once) while kernel text is still RWX during "
        "boot and calls that a possible false positive; when it is the message of the "
        "WARN_ONCE, the WARNING that follows is the failure and keeps this line",
        "CPA detected W^X violation: 8000000000000063 -> 0000000000000063 range: "
        "0xffffffff81000000 - 0xffffffff811fffff PFN 1000",
    ),
    IgnoreEntry(
        "trace_printk_banner",
        re.compile(r"\*{3,}\s*$|\*\*.*\*\*\s*$"),
        "the asterisk banner trace_printk() users get (kernel/trace/trace.c): "
        "'NOTICE NOTICE NOTICE', 'this is a DEBUG kernel'",
        "**   NOTICE NOTICE NOTICE NOTICE NOTICE NOTICE NOTICE   **",
    ),
    IgnoreEntry(
        "debug_kernel_notice",
        re.compile(r".*\b[Dd](?:ebug|EBUG) kernel\b"),
        "announcements that the kernel carries debug options, not reports of a problem",
        "This is a debug kernel: do not use it in production",
    ),
    IgnoreEntry(
        "debug_facility_banner",
        re.compile(
            r"(?:kasan: KernelAddressSanitizer initialized|kfence: initialized"
            r"|kmemleak: Kernel memory leak detector|kmemleak: Automatic memory scanning"
            r"|Lock dependency validator|ODEBUG: selftest passed"
            r"|ODEBUG: \d+ of \d+ active objects replaced|.*Good, all \d+ testcases passed)"
        ),
        "start-up lines of KASAN, KFENCE, kmemleak, lockdep and debugobjects, whose names "
        "alone can look alarming in a log",
        "kmemleak: Kernel memory leak detector initialized (mem pool available: 15706)",
    ),
    IgnoreEntry(
        "user_space_fault",
        re.compile(
            r"(?:traps: )?[^\s\[]+\[\d+\]:? (?:general protection fault |"
            r"segment-related general protection fault |trap |segfault at "
            r"|potentially unexpected fatal signal|attempts to use CLI/STI)"
        ),
        "show_signal() / show_signal_msg() report a user-space process killed by a signal "
        "(arch/x86/kernel/traps.c, arch/x86/mm/fault.c): the kernel is fine",
        "traps: sh[123] general protection fault ip:7f1c2a0b1c2d sp:7ffd3c1e2f30 error:0 "
        "in libc.so.6[7f1c2a000000+155000]",
    ),
    IgnoreEntry(
        "config_warning_notice",
        re.compile(
            r"WARNING: (?:This combination of AMD processors is not suitable for SMP"
            r"|kernel not compiled with|CPU does not support|BIOS bug:|retbleed="
            r"|Spectre-v2 mitigation is off|ITS mitigation|bogus zero IO-APIC"
            r"|mapping \d+ kB @|'bootconfig' found|Your 'console=|Flushing system-wide)"
        ),
        "boot notices that start with 'WARNING:' but are about the CPU, firmware or "
        "configuration; the AMD SMP one is the message of a WARN_ONCE in init_amd, whose "
        "'WARNING: CPU: ... init_amd' line is reported as a real WARNING",
        "WARNING: This combination of AMD processors is not suitable for SMP.",
    ),
    IgnoreEntry(
        "subsystem_warning_notice",
        re.compile(r"[A-Za-z][\w /.()-]{0,40}?\s?: WARNING: "),
        "mitigation and subsystem notices with their own prefix ('Spectre V2 : WARNING: "
        "...', 'retbleed: WARNING: ...'); kernel failure reports never carry a prefix "
        "before 'WARNING:'",
        "Spectre V2 : WARNING: Unprivileged eBPF is enabled with eIBRS on, data leaks "
        "possible via Spectre v2 BHB attacks!",
    ),
    IgnoreEntry(
        "acpi_firmware",
        re.compile(r"ACPI(?: BIOS)? (?:Warning|Error)\b|ACPI: .*\b[Ww]arning\b"),
        "ACPICA complaints about the firmware's tables and AML, not kernel failures",
        "ACPI Warning: SystemIO range 0x0000000000000B00-0x0000000000000B08 conflicts "
        "with OpRegion 0x0000000000000B00-0x0000000000000B0F (\\_SB.PCI0.SMB0)",
    ),
    IgnoreEntry(
        "lkdtm_announcement",
        re.compile(r"lkdtm: (?!FAIL)"),
        "LKDTM says what it is about to provoke ('Performing direct entry WARNING'); the "
        "WARNING, BUG or Oops it provokes is the failure. 'lkdtm: FAIL:' (a protection "
        "that did not trigger) is not ignored",
        "lkdtm: Performing direct entry EXEC_RODATA",
    ),
    IgnoreEntry(
        "pci_bios_wx",
        re.compile(r"x86/mm: PCI BIOS W\+X mapping \d+ pages"),
        "note_wx() reports the PCI BIOS area, which must be W+X, instead of warning "
        "(arch/x86/mm/dump_pagetables.c); it is not counted as a W+X failure",
        "x86/mm: PCI BIOS W+X mapping 16 pages",
    ),
    IgnoreEntry(
        "bad_page_suppressed",
        re.compile(r"BUG: Bad page (?:state|map): \d+ messages suppressed"),
        "bad_page() rate-limit summary; the first bad page reports were already found",
        "BUG: Bad page state: 12 messages suppressed",
    ),
)

# One alternation for speed: most lines match nothing here.
_ANY = re.compile("|".join(f"(?:{e.pattern.pattern})" for e in IGNORE_LIST))
_FLOOD = re.compile("|".join(f"(?:{e.pattern.pattern})" for e in IGNORE_LIST if e.flood))
# Both flood entries start with a fixed word.
_FLOOD_FIRST = "CT"


def is_ignored(text: str) -> bool:
    """True when the message looks like a failure (or floods the log) but is not one."""
    return _ANY.match(text) is not None


def is_flood(text: str) -> bool:
    """True for the CPA_DEBUG flood lines, which are never part of any report."""
    return text[:1] in _FLOOD_FIRST and _FLOOD.match(text) is not None


def ignore_entry(text: str) -> IgnoreEntry | None:
    """The entry that ignores this message, for tests and explanations."""
    for entry in IGNORE_LIST:
        if entry.pattern.match(text):
            return entry
    return None
