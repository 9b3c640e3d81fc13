"""The ignore list: lines that look like failures and are not, one test each."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.console import ConsoleParser, parse_path
from harness.console.ignore import IGNORE_LIST, IgnoreEntry, ignore_entry, is_ignored

DATA = Path(__file__).parent / "data" / "console"
DOCS = Path(__file__).parent.parent / "docs" / "console.md"


def parse(text: str) -> ConsoleParser:
    p = ConsoleParser()
    p.feed(text)
    p.finish()
    return p


def timestamped(*lines: str) -> str:
    return "".join(f"[   10.{i:06d}] {line}\n" for i, line in enumerate(lines))


@pytest.mark.parametrize("entry", IGNORE_LIST, ids=lambda e: e.name)
def test_example_is_matched_by_its_own_entry(entry: IgnoreEntry) -> None:
    assert ignore_entry(entry.example) is entry
    assert entry.why


@pytest.mark.parametrize("entry", IGNORE_LIST, ids=lambda e: e.name)
def test_example_alone_is_no_failure(entry: IgnoreEntry) -> None:
    p = parse(timestamped(entry.example))
    analysis = p.analysis
    assert len(analysis.boots) == 1
    assert analysis.boots[0].failures == []
    assert analysis.verdict == "no-selftest"    # no failure; no self-test pass in an excerpt


@pytest.mark.parametrize("entry", IGNORE_LIST, ids=lambda e: e.name)
def test_every_entry_is_documented(entry: IgnoreEntry) -> None:
    assert f"`{entry.name}`" in DOCS.read_text()


@pytest.mark.parametrize(
    "text",
    [
        "**********************************************************",
        "**   NOTICE NOTICE NOTICE NOTICE NOTICE NOTICE NOTICE   **",
        "** This means that this is a DEBUG kernel and it is     **",
        "** unsafe for production use.                           **",
        "sh[123]: segfault at 0 ip 00000000004011d6 sp 00007ffc1d0b1ff0 error 6 in "
        "busybox[401000+9f000]",
        "traps: busybox[77] trap invalid opcode ip:4011d6 sp:7ffc1d0b1ff0 error:0 in "
        "busybox[401000+9f000]",
        "init[1]: potentially unexpected fatal signal 11.",
        "retbleed: WARNING: Spectre v2 mitigation leaves CPU vulnerable to RETBleed attacks, "
        "data leaks possible!",
        "WARNING: kernel not compiled with MITIGATION_SRSO.",
        "ACPI BIOS Error (bug): Could not resolve symbol [\\_SB.PCI0.LPCB.EC0], AE_NOT_FOUND",
        "ACPI Error: Aborting method \\_SB.PCI0.LPCB.EC0._REG due to previous error",
        "ODEBUG: selftest passed",
        "  Good, all 261 testcases passed! |",
        "lkdtm: attempting bad rodata write at ffffffff82a4c000",
        "CPA conflict Text NX: 0xffffffff81000000 - 0xffffffff811fffff PFN 1000 req "
        "8000000000000163 prevent 0000000000000000",
        "CPA   detect Rodata RO: 0xffff888002a00000 - 0xffff888002bfffff PFN 2a00 req "
        "8000000000000063 prevent 0000000000000002",
        "Testing CPA: Reverting c1000000-c1a00000",
        "Testing CPA: write protecting again",
    ],
)
def test_more_lookalikes_are_no_failure(text: str) -> None:
    assert is_ignored(text)
    assert parse(timestamped(text)).analysis.boots[0].failures == []


def test_lines_that_only_mention_failures_are_no_failure() -> None:
    p = parse(timestamped(
        "rcu: RCU CPU stall warnings timeout set to 100 (rcu_cpu_stall_timeout).",
        "watchdog: Delayed init of the lockup detector failed: -19",
        "Warning: unable to open an initial console.",
        "This architecture does not have kernel memory protection.",
        "x86/mm: Checked W+X mappings: passed, no W+X pages found.",
        "OOM killer enabled.",
        "Disabling lock debugging due to kernel taint",
        "---[ end trace 0000000000000000 ]---",
        "------------[ cut here ]------------",
        "Call Trace:",
        "kmemleak: Automatic memory scanning thread started",
    ))
    assert p.analysis.boots[0].failures == []
    assert p.analysis.boots[0].wx_check == "passed"


def test_amd_smp_notice_is_ignored_but_its_warning_is_reported() -> None:
    analysis = parse_path(DATA / "i386-amd-smp.log")
    boot = analysis.boots[0]
    assert [(f.kind, f.title) for f in boot.failures] == [("warning", "WARNING in init_amd")]
    assert "WARNING: This combination of AMD processors is not suitable for SMP." in (
        boot.failures[0].report)
    # A kernel without a reliable unwinder: every frame has "?", EIP names the function.
    assert boot.failures[0].call_trace == []
    assert boot.failures[0].rip is not None and boot.failures[0].rip.function == "init_amd"


def test_user_space_gpf_inside_a_kernel_report_is_left_out() -> None:
    p = parse(timestamped(
        "------------[ cut here ]------------",
        "WARNING: CPU: 0 PID: 1 at kernel/foo.c:10 foo+0x1/0x2",
        "traps: sh[123] general protection fault ip:7f1c2a0b1c2d sp:7ffd3c1e2f30 error:0",
        "Call Trace:",
        " bar+0x1/0x2",
        "---[ end trace 0000000000000000 ]---",
    ))
    failure = p.analysis.boots[0].failures[0]
    assert failure.title == "WARNING in foo"
    assert not any("traps:" in line for line in failure.report)


def test_cpa_flood_inside_a_report_is_left_out() -> None:
    protect = ("CPA  protect  Rodata RO: 0xffff888002a00000 - 0xffff888002bfffff PFN 2a00 "
               "req 8000000000000063 prevent 0000000000000002")
    p = parse(timestamped(
        "------------[ cut here ]------------",
        protect,
        "WARNING: CPU: 0 PID: 1 at kernel/foo.c:10 foo+0x1/0x2",
        protect,
        "Call Trace:",
        protect,
        " bar+0x1/0x2",
        protect,
        " baz+0x1/0x2",
        "---[ end trace 0000000000000000 ]---",
    ))
    failure = p.analysis.boots[0].failures[0]
    assert failure.call_trace == ["bar", "baz"]
    assert not any("protect" in line for line in failure.report)
    assert failure.completed_by == "end-marker"


def test_lkdtm_announcement_is_ignored_but_the_crash_it_provokes_is_not() -> None:
    p = parse(timestamped(
        "lkdtm: Performing direct entry WARNING",
        "------------[ cut here ]------------",
        "WARNING: CPU: 1 PID: 90 at drivers/misc/lkdtm/bugs.c:113 lkdtm_WARNING+0x9/0x10",
        "Call Trace:",
        " direct_entry+0xb9/0x110",
        "---[ end trace 0000000000000000 ]---",
    ))
    assert [f.title for f in p.analysis.boots[0].failures] == ["WARNING in lkdtm_WARNING"]


def test_cpa_wx_notice_alone_is_no_failure() -> None:
    p = parse(timestamped(
        "CPA detected W^X violation: 8000000000000063 -> 0000000000000063 range: "
        "0xffffffff81000000 - 0xffffffff811fffff PFN 1000",
        "Freeing unused kernel image (initmem) memory: 1234K",
    ))
    assert p.analysis.boots[0].failures == []
