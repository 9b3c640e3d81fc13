"""Failure reports: completion, events, chunking, flush, interleaving, consequences."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.console import (
    Analysis,
    BootEnded,
    BootStarted,
    ConsoleParser,
    Event,
    FailureFound,
    SelftestDone,
)
from harness.console.reports import MAX_FULL_FAILURES, MAX_REPEAT_LINES, MAX_REPORT_LINES

DATA = Path(__file__).parent / "data" / "console"
SAMPLE = (DATA / "x86_64-wx-warning.log").read_bytes()
ALL_LOGS = sorted(DATA.glob("*.log")) + sorted((DATA / "kinds").glob("*.log"))

WARNING = [
    "------------[ cut here ]------------",
    "WARNING: CPU: 0 PID: 1 at kernel/foo.c:10 foo+0x1/0x2",
    "Modules linked in:",
    "RIP: 0010:foo+0x1/0x2",
    "Call Trace:",
    " <TASK>",
    " bar+0x1/0x2",
    " </TASK>",
    "---[ end trace 0000000000000000 ]---",
]


def ts(*lines: str, at: float = 10.0) -> str:
    return "".join(f"[{at + i / 1e6:12.6f}] {line}\n" for i, line in enumerate(lines))


def run_all(*chunks: bytes | str) -> tuple[Analysis, list[Event]]:
    p = ConsoleParser()
    events: list[Event] = []
    for chunk in chunks:
        events += p.feed(chunk)
    analysis = p.finish()
    return analysis, events + p.finish_events


def failures(events: list[Event]) -> list[str]:
    return [e.failure.title for e in events if isinstance(e, FailureFound)]


@pytest.mark.parametrize("path", ALL_LOGS, ids=lambda p: p.name)
@pytest.mark.parametrize("size", [1, 3, 64, 4096])
def test_chunked_feeding_equals_whole_feeding(path: Path, size: int) -> None:
    data = path.read_bytes()
    whole, whole_events = run_all(data)
    chunked, chunked_events = run_all(*(data[i:i + size] for i in range(0, len(data), size)))
    assert chunked.to_json() == whole.to_json()
    assert chunked_events == whole_events


@pytest.mark.parametrize("path", ALL_LOGS, ids=lambda p: p.name)
def test_each_failure_is_emitted_once(path: Path) -> None:
    analysis, events = run_all(path.read_bytes())
    found = [e.failure for e in events if isinstance(e, FailureFound)]
    recorded = [f for b in analysis.boots for f in b.failures]
    assert found == recorded
    assert len({id(f) for f in found}) == len(found)
    boots = [e.boot for e in events if isinstance(e, BootStarted)]
    assert boots == list(range(len(analysis.boots)))
    assert [e.boot for e in events if isinstance(e, BootEnded)] == boots


def test_failure_is_emitted_at_its_end_marker() -> None:
    p = ConsoleParser()
    text = ts(*WARNING)
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        events = p.feed(line)
        found = [e for e in events if isinstance(e, FailureFound)]
        if i < len(lines) - 1:
            assert found == []
        else:
            assert [e.failure.completed_by for e in found] == ["end-marker"]


def test_trace_end_report_is_emitted_at_its_closing_task_marker() -> None:
    p = ConsoleParser()
    p.feed(ts("INFO: task kworker/0:1:12 blocked for more than 122 seconds.",
              "task:kworker/0:1     state:D stack:0     pid:12",
              "Call Trace:", " <TASK>", " __schedule+0x3c0/0xb70", " frob+0x1/0x2"))
    events = p.feed(ts(" </TASK>", at=11))
    assert failures(events) == ["INFO: task hung in frob"]


def test_flush_completes_a_warning_without_end_marker_once() -> None:
    p = ConsoleParser()
    assert failures(p.feed(ts(*WARNING[:7]))) == []
    flushed = p.flush()
    assert [e.failure.completed_by for e in flushed if isinstance(e, FailureFound)] == ["flush"]
    assert p.flush() == []
    later = p.feed(ts(" baz+0x1/0x2", "---[ end trace 0000000000000000 ]---", at=10.5))
    assert failures(later) == []
    p.finish()
    assert failures(p.finish_events) == []
    assert len(p.analysis.boots[0].failures) == 1
    assert p.analysis.boots[0].ended_by == "end-of-log"


def test_flush_does_not_end_the_boot() -> None:
    p = ConsoleParser()
    p.feed(ts("Linux version 6.12.0 (x) #1", at=0.0))
    assert p.flush() == []
    assert p.analysis.boots[0].ended_by is None


def test_flushed_prelude_does_not_double_its_warning() -> None:
    p = ConsoleParser()
    p.feed(ts("------------[ cut here ]------------", "NOT PASSED. Please report."))
    assert failures(p.flush()) == ["CPA self-test NOT PASSED"]
    later = p.feed(ts("WARNING: CPU: 1 PID: 40 at arch/x86/mm/pat/cpa-test.c:231 "
                      "pageattr_test+0x4a5/0x5e0", "---[ end trace 0000000000000000 ]---",
                      at=10.5))
    assert failures(later) == []
    analysis = p.finish()
    assert len(analysis.boots[0].failures) == 1


@pytest.mark.parametrize("cut", range(1, len(WARNING)))
def test_truncation_mid_report(cut: int) -> None:
    analysis, events = run_all(ts(*WARNING[:cut]))
    titles = failures(events)
    if cut >= 2:
        assert titles == ["WARNING in foo"]
        assert analysis.boots[0].failures[0].completed_by == "end-of-log"
        assert analysis.verdict == "fail"
    else:
        assert titles == []


def test_report_cut_mid_line() -> None:
    analysis, events = run_all(ts(*WARNING)[:120])
    assert failures(events) == ["WARNING in foo"]


def test_interleaved_reports_with_caller_ids() -> None:
    lines = [
        "[    1.0][    T1] ------------[ cut here ]------------",
        "[    1.0][    T1] WARNING: CPU: 0 PID: 1 at kernel/a.c:1 alpha+0x1/0x2",
        "[    1.0][  C1] ------------[ cut here ]------------",
        "[    1.0][  C1] WARNING: CPU: 1 PID: 0 at kernel/b.c:2 beta+0x1/0x2",
        "[    1.0][    T1] Call Trace:",
        "[    1.0][  C1] Call Trace:",
        "[    1.0][    T1]  alpha_caller+0x1/0x2",
        "[    1.0][  C1]  <IRQ>",
        "[    1.0][  C1]  beta_caller+0x1/0x2",
        "[    1.0][  C1]  </IRQ>",
        "[    1.0][  C1] ---[ end trace 0000000000000000 ]---",
        "[    1.0][    T1] ---[ end trace 0000000000000000 ]---",
    ]
    analysis, events = run_all("\n".join(lines) + "\n")
    got = {f.title: (f.caller, f.call_trace, len(f.report)) for f in analysis.boots[0].failures}
    assert got == {
        "WARNING in alpha": ("T1", ["alpha_caller"], 5),
        "WARNING in beta": ("C1", ["beta_caller"], 7),
    }
    assert failures(events) == ["WARNING in beta", "WARNING in alpha"]
    beta = next(f for f in analysis.boots[0].failures if f.caller == "C1")
    assert beta.frames[0].context == "IRQ"


def test_a_new_header_closes_an_open_report() -> None:
    other = [ln.replace("foo", "frob") for ln in WARNING]
    analysis, _ = run_all(ts(*WARNING[:6], *other))
    assert [f.completed_by for f in analysis.boots[0].failures] == ["next-line", "end-marker"]


def test_the_same_failure_again_is_one_failure_with_a_count() -> None:
    """A hung task every 120 s, a soft lockup that keeps firing: one failure,
    counted, with the line of each repeat; a different failure stays apart."""
    other = [ln.replace("foo", "frob") for ln in WARNING]
    analysis, events = run_all(ts(*WARNING, *other, *WARNING, *WARNING))
    fs = analysis.boots[0].failures
    assert [(f.title, f.count) for f in fs] == [("WARNING in foo", 3), ("WARNING in frob", 1)]
    assert fs[0].repeat_lines == (2 + 2 * len(WARNING), 2 + 3 * len(WARNING))
    assert fs[0].to_json()["count"] == 3
    found = [e for e in events if isinstance(e, FailureFound)]
    assert [e.failure.title for e in found] == ["WARNING in foo", "WARNING in frob"]


def test_a_far_timestamp_closes_an_open_report() -> None:
    analysis, _ = run_all(ts(*WARNING[:5]) + ts("random: crng init done", at=20.0))
    failure = analysis.boots[0].failures[0]
    assert failure.completed_by == "next-line"
    assert "random: crng init done" not in failure.report


def test_warning_then_unrelated_panic_are_two_failures() -> None:
    analysis, _ = run_all(ts(*WARNING) + ts(
        "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100", at=30))
    boot = analysis.boots[0]
    assert [f.kind for f in boot.failures] == ["warning", "panic"]
    assert boot.panic is not None and boot.panic.caused_by is None


def test_panic_on_warn_is_part_of_the_warning() -> None:
    panic = "Kernel panic - not syncing: kernel: panic_on_warn set ..."
    analysis, _ = run_all(ts(*WARNING[:5], panic, "Call Trace:", " panic+0x1/0x2",
                             f"---[ end {panic} ]---"))
    boot = analysis.boots[0]
    assert [f.title for f in boot.failures] == ["WARNING in foo"]
    assert boot.panic is not None and boot.panic.caused_by == 0
    assert boot.ended_by == "panic"


def test_soft_lockup_panic_is_part_of_the_lockup() -> None:
    analysis, _ = run_all((DATA / "kinds" / "soft_lockup.log").read_text()
                          + ts("Kernel panic - not syncing: softlockup: hung tasks", at=60.1))
    boot = analysis.boots[0]
    assert [f.kind for f in boot.failures] == ["soft_lockup"]
    assert boot.panic is not None and boot.panic.caused_by == 0


def test_fatal_exception_without_an_oops_is_a_panic() -> None:
    analysis, _ = run_all(ts("Kernel panic - not syncing: Fatal exception"))
    assert [f.title for f in analysis.boots[0].failures] == ["kernel panic: Fatal exception"]


def test_wx_violation_warning_without_cut_here_is_one_failure() -> None:
    analysis, _ = run_all(ts(
        "Testing CPA: undo ffffffff81000000-ffffffff82400000",
        "CPA detected W^X violation: 8000000000000063 -> 0000000000000063 range: "
        "0xffffffff81000000 - 0xffffffff811fffff PFN 1000",
        "WARNING: CPU: 0 PID: 1 at arch/x86/mm/pat/set_memory.c:665 verify_rwx+0x8f/0xa0",
        "Call Trace:", " ? verify_rwx+0x8f/0xa0", "---[ end trace 0000000000000000 ]---"))
    failure = analysis.boots[0].failures[0]
    assert (failure.kind, failure.title) == ("warning", "WARNING in verify_rwx")
    assert failure.report[0].startswith("CPA detected W^X violation")
    assert failure.unreliable_frames == ["verify_rwx"]


def test_sample_log_has_the_known_wx_warning() -> None:
    analysis, events = run_all(SAMPLE)
    assert failures(events) == ["WARNING in verify_rwx"]
    assert [type(e).__name__ for e in events] == [
        "BootStarted", "FailureFound", "SelftestDone", "BootEnded", "BootStarted", "BootEnded"]
    done = next(e for e in events if isinstance(e, SelftestDone))
    assert done.selftest.result == "pass"


def test_warn_storm_keeps_memory_bounded() -> None:
    storm = ts(*(ln.replace("foo", f"foo{i}") for i in range(MAX_FULL_FAILURES + 20)
                 for ln in WARNING))
    analysis, _ = run_all(storm)
    fs = analysis.boots[0].failures
    assert len(fs) == MAX_FULL_FAILURES + 20
    assert len(fs[-1].report) == 1 and fs[-1].report_lines_dropped == len(WARNING) - 1
    assert fs[-1].title == f"WARNING in foo{MAX_FULL_FAILURES + 19}"
    # the same WARNING over and over: one failure, every repeat counted, lines capped
    analysis, _ = run_all(ts(*(WARNING * 500)))
    [f] = analysis.boots[0].failures
    assert f.count == 500 and len(f.repeat_lines) == MAX_REPEAT_LINES


def test_endless_report_keeps_its_line_count_bounded() -> None:
    text = ts("------------[ cut here ]------------",
              "WARNING: CPU: 0 PID: 1 at kernel/foo.c:10 foo+0x1/0x2",
              *(f"stuff {i}" for i in range(150)))
    analysis, _ = run_all(text)
    failure = analysis.boots[0].failures[0]
    assert len(failure.report) <= MAX_REPORT_LINES


def test_frames_without_reliable_unwinder() -> None:
    analysis, _ = run_all(ts(
        "------------[ cut here ]------------",
        "WARNING: CPU: 0 PID: 1 at mm/foo.c:10 foo+0x1/0x2",
        "EIP: foo+0x1/0x2",
        "Call Trace:",
        " [<c10abcde>] ? show_regs+0x50/0x5c",
        " [<c10abcdf>] ? caller+0x7e/0x130 [frobmod]",
        "---[ end trace 0000000000000000 ]---"))
    failure = analysis.boots[0].failures[0]
    assert failure.call_trace == []
    assert failure.unreliable_frames == ["show_regs", "caller"]
    assert failure.frames[1].module == "frobmod"
    assert failure.rip is not None and failure.rip.text == "foo+0x1/0x2"


def test_report_title_from_rip_when_all_frames_unreliable() -> None:
    analysis, _ = run_all(ts(
        "BUG: unable to handle page fault for address: ffffffff82a4c000",
        "Oops: 0003 [#1] SMP",
        "EIP: 0060:[<c10e1b5a>] EFLAGS: 00010246 CPU: 0",
        "EIP is at write_ro+0x1b/0x30",
        "Call Trace:",
        " [<c1234567>] ? do_one_initcall+0x56/0x2e0",
        "---[ end trace 1234567890abcdef ]---"))
    assert analysis.boots[0].failures[0].title == (
        "BUG: unable to handle kernel paging request in write_ro")


def test_a_report_of_another_caller_keeps_this_callers_cut_here() -> None:
    lines = [
        "[    1.0][    T1] ------------[ cut here ]------------",
        "[    1.0][    T1] CPA detected W^X violation: 8000000000000063 -> 0000000000000063 "
        "range: 0xffffffff81000000 - 0xffffffff811fffff PFN 1000",
        "[    1.0][  C1] ------------[ cut here ]------------",
        "[    1.0][  C1] WARNING: CPU: 1 PID: 0 at kernel/b.c:2 beta+0x1/0x2",
        "[    1.0][  C1] ---[ end trace 0000000000000000 ]---",
        "[    1.0][    T1] WARNING: CPU: 0 PID: 1 at arch/x86/mm/pat/set_memory.c:665 "
        "verify_rwx+0x8f/0xa0",
        "[    1.0][    T1] ---[ end trace 0000000000000000 ]---",
    ]
    analysis, _ = run_all("\n".join(lines) + "\n")
    alpha = next(f for f in analysis.boots[0].failures if f.caller == "T1")
    assert alpha.title == "WARNING in verify_rwx"
    assert alpha.first_line == 1 and alpha.report[1].startswith("CPA detected W^X")


@pytest.mark.parametrize("prompt", ["/ # ", "~ # ", "root@guest:~# ", "$ ", "buildroot login: "])
def test_report_glued_to_a_shell_prompt(prompt: str) -> None:
    analysis, _ = run_all("Linux version 6.12.0 (x) #1\n"
                          f"{prompt}watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [sh:90]\n"
                          "RIP: 0010:spin_forever+0x4/0x10\n"
                          "Call Trace:\n <TASK>\n stuck+0x9/0x20\n </TASK>\n")
    assert [f.title for f in analysis.boots[0].failures] == ["BUG: soft lockup in spin_forever"]


def test_cut_here_glued_to_a_shell_prompt_stays_with_its_report() -> None:
    analysis, _ = run_all("Linux version 6.12.0 (x) #1\n"
                          "/ # ------------[ cut here ]------------\n"
                          "NOT PASSED. Please report.\n"
                          "WARNING: CPU: 0 PID: 40 at arch/x86/mm/pat/cpa-test.c:231 "
                          "pageattr_test+0x4a5/0x5e0\n"
                          "---[ end trace 0000000000000000 ]---\n")
    failure = analysis.boots[0].failures[0]
    assert failure.title == "WARNING in pageattr_test"
    assert failure.first_line == 2


def test_ordinary_shell_lines_are_left_alone() -> None:
    analysis, _ = run_all("Linux version 6.12.0 (x) #1\n/ # echo hello\nhello\n/ # \n")
    assert analysis.boots[0].failures == [] and analysis.verdict == "no-selftest"
