"""Real syzbot reports the parser was not built from (tests/data/console/syzbot):
every x86_64 one is found, nothing raises, and where the titles are meant to
agree with the dashboard's they do. bench/titles.py prints the figures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.console import parse_path

DIR = Path(__file__).parent / "data" / "console" / "syzbot"
ROW = re.compile(r"^\| `(?P<file>[\w.-]+\.log)` \| (?P<title>[^|]+?) \|")
TITLES = {m["file"]: re.sub(r" \(\d+\)$", "", m["title"])
          for m in map(ROW.match, (DIR / "README.md").read_text().splitlines()) if m}
ARM64 = {name for name in TITLES if "arm64" in name}

# Where the title differs from the dashboard's, and why (the rest must agree).
DIFFERENT = {
    # A WARN in a subsystem's entry point: syzbot's skip list names the caller;
    # the parser names the function the WARNING line names.
    "04-warning-unregister_vlan_dev.log", "05-warning-sock_i_ino.log",
    "28-warning-new-cm109_urb_irq_callback.log",
    # The CPU (RIP) or first frame the parser names is not one syzbot skips;
    # for lockdep, syzbot names a frame of another of the report's stacks.
    "03-deadlock-btrfs_commit_inode_delayed_inode.log",
    "11-soft-lockup-mld_ifc_work.log", "12-rcu-stall-packet_release.log",
    "13-odebug-__mod_timer.log", "22-ubsan-shift-ntfs_read_inode_mount.log",
    "24-kmsan-nilfs_add_checksums_on_logs.log",
    # syz-executor's own "BUG: memory leak" line before kmemleak's report.
    "19-memleak-rtl8150_set_multicast.log",
}


def test_the_corpus_is_read() -> None:
    assert len(TITLES) == len(list(DIR.glob("*.log"))) == 36


@pytest.mark.parametrize("name", sorted(set(TITLES) - ARM64))
def test_every_x86_report_is_found(name: str) -> None:
    analysis = parse_path(DIR / name)
    titles = [f.title for b in analysis.boots for f in b.failures]
    assert titles and analysis.verdict == "fail"
    if name not in DIFFERENT:
        assert titles[0] == TITLES[name]


@pytest.mark.parametrize("name", sorted(ARM64))
def test_arm64_reports_raise_nothing(name: str) -> None:
    parse_path(DIR / name)


def test_symbolized_inline_frames_are_frames_but_never_titles() -> None:
    [f] = [f for b in parse_path(DIR / "02-hung-mpls_net_exit.log").boots
           for f in b.failures][:1]
    inline = [fr for fr in f.frames if fr.inline]
    assert inline[0].function == "context_switch"
    assert (inline[0].file, inline[0].line) == ("kernel/sched/core.c", 5408)
    named = next(fr for fr in f.frames if fr.function == "__schedule")
    assert (named.offset, named.file, named.line) == (0x1796, "kernel/sched/core.c", 6745)
    assert f.title == "INFO: task hung in mpls_net_exit"


def test_a_symbolizer_expanded_header_is_one_report() -> None:
    # `BUG: KASAN: null-ptr-deref in instrument_atomic_read ... [inline]` and three
    # more header lines, one per inlined function: one failure, named by the
    # line the kernel printed.
    found = [f for b in parse_path(DIR / "33-kasan-null-nsim_dev_trap_report_work.log").boots
             for f in b.failures]
    assert [f.title for f in found] == [
        "KASAN: null-ptr-deref Read in nsim_dev_trap_report_work"]
