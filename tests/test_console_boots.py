"""Boots: banners, kexec, reboot, panic, power-off, mid-boot logs, and per-boot facts."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.console import Analysis, BootEnded, BootStarted, ConsoleParser, parse_path
from harness.console.boots import parse_kernel_bool

DATA = Path(__file__).parent / "data" / "console"
LOGS = Path(__file__).parent / "data" / "logs"
BANNER = "[    0.000000] Linux version {v} (root@build) (gcc 14.2.0) #1 SMP PREEMPT_DYNAMIC\n"


def run(text: str) -> Analysis:
    p = ConsoleParser()
    p.feed(text)
    return p.finish()


@pytest.mark.parametrize(
    ("end_line", "ended_by"),
    [
        ("[   35.000000] kexec_core: Starting new kernel", "kexec"),
        ("[   35.000000] kexec: Starting new kernel", "kexec"),
        ("[   35.000000] reboot: Restarting system", "reboot"),
        ("[   35.000000] reboot: Restarting system with command 'kexec'", "reboot"),
        ("[   35.000000] reboot: Power down", "poweroff"),
        ("[   35.000000] reboot: System halted", "poweroff"),
        ("[   35.000000] ---[ end Kernel panic - not syncing: Attempted to kill init! "
         "exitcode=0x00000100 ]---", "panic"),
    ],
)
def test_boot_end_messages(end_line: str, ended_by: str) -> None:
    analysis = run(BANNER.format(v="6.12.117") + end_line + "\n" + BANNER.format(v="6.13.0"))
    assert [b.kernel for b in analysis.boots] == ["6.12.117", "6.13.0"]
    assert [b.ended_by for b in analysis.boots] == [ended_by, "end-of-log"]
    assert analysis.boots[0].last_line == 2
    assert analysis.boots[1].first_line == 3


def test_events_of_a_kexec_round_trip() -> None:
    text = (BANNER.format(v="6.12.117") + "[   35.0] kexec_core: Starting new kernel\n"
            + BANNER.format(v="6.12.117") + "[    3.0] reboot: Power down\n")
    p = ConsoleParser()
    events = p.feed(text)
    p.finish()
    assert events == [BootStarted(0), BootEnded(0, "kexec"), BootStarted(1),
                      BootEnded(1, "poweroff")]
    assert p.finish_events == []


def test_panic_with_reboot_timeout_ends_the_boot() -> None:
    analysis = run(BANNER.format(v="6.12.117")
                   + "[    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs on "
                     "unknown-block(0,0)\n"
                   + "[    1.1] Rebooting in 10 seconds..\n"
                   + "SeaBIOS (version 1.16.3)\n" + BANNER.format(v="6.12.117"))
    assert [b.ended_by for b in analysis.boots] == ["panic", "end-of-log"]
    assert analysis.boots[0].failures[0].kind == "panic"


def test_panic_line_without_end_marker_still_ends_by_panic() -> None:
    analysis = run(BANNER.format(v="6.12.117")
                   + "[    1.0] Kernel panic - not syncing: Fatal exception\n")
    assert analysis.boots[0].ended_by == "panic"
    assert analysis.boots[0].failures[0].completed_by == "end-of-log"


def test_banner_without_end_message_means_reset() -> None:
    analysis = run(BANNER.format(v="6.12.117") + "[    5.0] random: crng init done\n"
                   + "SeaBIOS (version 1.16.3)\n" + BANNER.format(v="6.12.117"))
    assert [b.ended_by for b in analysis.boots] == ["reset", "end-of-log"]


def test_log_that_starts_mid_boot() -> None:
    analysis = run("[   12.000000] virtio_net virtio0 eth0: link up\n"
                   "[   13.000000] reboot: Power down\n")
    boot = analysis.boots[0]
    assert (boot.kernel, boot.first_line, boot.ended_by) == (None, 1, "poweroff")
    assert analysis.verdict == "no-selftest"     # nothing failed, nothing proven either
    assert analysis.to_json()["boots"][0]["kernel"] is None


def test_kernel_output_before_the_first_banner_counts() -> None:
    analysis = run("[   40.000000] BUG: spinlock bad magic on CPU#0, swapper/0/1\n"
                   + BANNER.format(v="6.12.117"))
    assert [b.kernel for b in analysis.boots] == [None, "6.12.117"]
    assert analysis.boots[0].failures[0].title == "BUG: spinlock bad magic"
    assert analysis.verdict == "fail"


def test_firmware_output_before_the_banner_is_not_a_boot() -> None:
    analysis = run("\x1bc\x1b[2JSeaBIOS (version 1.16.3-debian-1.16.3-2)\r\n"
                   "iPXE (https://ipxe.org) 00:03.0 CA00 PCI2.10 PnP PMM+BEFCAF60+BEF0AF60 CA00\r\n"
                   "Booting from ROM..\r\n"
                   "Decompressing Linux... Parsing ELF... done.\r\n"
                   "Linux version 6.12.117 (root@build) #1 SMP\r\n")
    assert [(b.kernel, b.first_line) for b in analysis.boots] == [("6.12.117", 5)]


def test_quiet_kernel_after_kexec_is_a_new_boot() -> None:
    analysis = run(BANNER.format(v="6.12.117") + "[   35.0] kexec_core: Starting new kernel\n"
                   "[    0.5] WARNING: CPU: 0 PID: 1 at kernel/foo.c:1 foo+0x1/0x2\n")
    assert [b.kernel for b in analysis.boots] == ["6.12.117", None]
    assert analysis.boots[1].failures[0].title == "WARNING in foo"


def test_printk_clock_restart_is_a_new_boot() -> None:
    analysis = run(BANNER.format(v="6.12.117") + "[   35.000000] random: crng init done\n"
                   "[    0.200000] x86/fpu: x87 FPU will use FXSAVE\n")
    assert [b.ended_by for b in analysis.boots] == ["reset", "end-of-log"]


def test_proc_version_from_user_space_is_not_a_banner() -> None:
    analysis = run(BANNER.format(v="6.12.117") + "[    2.0] Run /init as init process\n"
                   "Linux version 6.12.117 (root@build) (gcc 14.2.0) #1 SMP PREEMPT_DYNAMIC\n"
                   "[   40.0] Linux version 6.12.117 (root@build) #1 SMP\n")
    assert len(analysis.boots) == 1


def test_output_after_power_down_is_not_kernel_output() -> None:
    analysis = run(BANNER.format(v="6.12.117") + "[    2.0] reboot: Power down\n"
                   "qemu-system-x86_64: terminating on signal 15\n")
    assert len(analysis.boots) == 1 and analysis.boots[0].ended_by == "poweroff"


def test_other_cpus_after_a_panic_stay_in_the_panicked_boot() -> None:
    analysis = run(BANNER.format(v="6.12.117")
                   + "[    1.0] Kernel panic - not syncing: Fatal exception\n"
                   + "[    1.0] ---[ end Kernel panic - not syncing: Fatal exception ]---\n"
                   + "[    1.1] BUG: spinlock lockup suspected on CPU#1, swapper/1/0\n")
    assert len(analysis.boots) == 1
    assert [f.kind for f in analysis.boots[0].failures] == ["panic", "bug"]


def test_boot_facts_of_a_real_looking_log() -> None:
    analysis = parse_path(DATA / "x86_64-wx-warning.log")
    first, second = analysis.boots
    assert first.kernel == "6.12.117"
    assert first.cmdline == "console=ttyS0 panic=-1 nokaslr"
    assert (first.gbpages, first.debug_pagealloc, first.wx_check) == (True, False, "passed")
    assert [d.sizes for d in first.direct_map] == [{"4k": 12288, "2M": 2084864, "1G": 2097152}]
    assert first.ended_by == "kexec"
    assert second.cmdline == "console=ttyS0 debug_pagealloc=on nonce=1234"
    assert (second.gbpages, second.debug_pagealloc) == (False, True)
    assert second.ended_by == "poweroff"


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        ("console=ttyS0 debug_pagealloc=on", True),
        ("console=ttyS0 debug_pagealloc=1", True),
        ("debug_pagealloc=off console=ttyS0", False),
        ("debug_pagealloc=on debug_pagealloc=off", False),
        ("console=ttyS0", None),
    ],
)
def test_debug_pagealloc_from_the_command_line(cmdline: str, expected: bool | None) -> None:
    analysis = run(BANNER.format(v="6.12.117") + f"[    0.0] Command line: {cmdline}\n")
    assert analysis.boots[0].debug_pagealloc is expected


def test_debug_pagealloc_evidence() -> None:
    oops = "[    5.0] Oops: general protection fault: 0000 [#1] PREEMPT SMP DEBUG_PAGEALLOC NOPTI\n"
    assert run(BANNER.format(v="6.12.117") + oops).boots[0].debug_pagealloc is True
    oops_off = "[    5.0] Oops: general protection fault: 0000 [#1] PREEMPT SMP NOPTI\n"
    analysis = run(BANNER.format(v="6.12.117") + "[    0.0] Command line: debug_pagealloc=on\n"
                   + oops_off)
    assert analysis.boots[0].debug_pagealloc is False
    large = "[   31.0]  4k 3072 large 510 gb 0 x 2560[ffff888000000000-ffff8880bfffffff] miss 0\n"
    analysis = run(BANNER.format(v="6.12.117") + "[    0.0] Command line: console=ttyS0\n"
                   + "[   31.0] CPA self-test:\n" + large)
    assert analysis.boots[0].debug_pagealloc is False
    assert analysis.boots[0].gbpages is False


def test_gbpages_unknown_without_banner() -> None:
    assert run("[   12.0] random: crng init done\n").boots[0].gbpages is None


def test_direct_map_snapshots() -> None:
    analysis = run(BANNER.format(v="6.12.117")
                   + "DirectMap4k:       12288 kB\nDirectMap2M:     2084864 kB\n"
                   + "DirectMap1G:     2097152 kB\n~ # cat /proc/meminfo\n"
                   + "DirectMap4k:      501760 kB\nDirectMap2M:     1595392 kB\n"
                   + "DirectMap1G:     2097152 kB\nDirectMap4k:      501760 kB\n")
    snaps = analysis.boots[0].direct_map
    assert [s.sizes.get("4k") for s in snaps] == [12288, 501760, 501760]
    assert snaps[0].to_json() == {"4k": 12288, "2M": 2084864, "4M": None, "1G": 2097152,
                                  "line": 2}


def test_kernel_lines_between_direct_map_lines_keep_one_snapshot() -> None:
    analysis = run(BANNER.format(v="6.12.117") + "DirectMap4k:       12288 kB\n"
                   + "[   40.0] random: crng init done\nDirectMap2M:     2084864 kB\n")
    assert [s.sizes for s in analysis.boots[0].direct_map] == [{"4k": 12288, "2M": 2084864}]


def test_wx_check_of_both_page_table_walks() -> None:
    analysis = run(BANNER.format(v="6.12.117")
                   + "[    1.2] x86/mm: Checked W+X mappings: passed, no W+X pages found.\n"
                   + "[    1.3] x86/mm: Checking user space page tables\n"
                   + "[    1.4] x86/mm: Checked W+X mappings: passed, no W+X pages found.\n")
    assert analysis.boots[0].wx_check == "passed"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("on", True), ("On", True), ("y", True), ("1", True), ("off", False), ("n", False),
     ("0", False), ("", None), ("x", None), ("o", None)],
)
def test_kstrtobool(value: str, expected: bool | None) -> None:
    assert parse_kernel_bool(value) is expected


def test_panic_end_marker_without_its_first_line_is_still_a_panic() -> None:
    analysis = run(BANNER.format(v="6.12.117")
                   + "[    1.0] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs "
                     "on unknown-block(0,0) ]---\n")
    boot = analysis.boots[0]
    assert [f.title for f in boot.failures] == ["kernel panic: VFS: Unable to mount root fs"]
    assert boot.ended_by == "panic" and analysis.verdict == "fail"


def test_a_log_cut_before_the_first_selftest_pass_is_not_a_pass(tmp_path: Path) -> None:
    """A real 6.12 i386 boot up to init (tests/data/logs/i386.log, lines 1-435):
    nothing failed, but no self-test pass either: no-selftest, and parse exits 1."""
    import io

    from harness.console.cli import main_parse
    lines = (LOGS / "i386.log").read_bytes().split(b"\n")[:435]
    cut = tmp_path / "cut.log"
    cut.write_bytes(b"\n".join(lines) + b"\n")
    out = io.StringIO()
    assert main_parse(str(cut), True, None, out) == 1
    assert '"verdict": "no-selftest"' in out.getvalue()
    whole = io.StringIO()
    assert main_parse(str(LOGS / "i386.log"), True, None, whole) == 0
