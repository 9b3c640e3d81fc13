"""Report formats of kernels since 6.12, and logs the console itself damaged.

The excerpts are written from the kernel's printk format strings (none of
these formats is in a captured log yet); tests/data/console/README.md says
which function prints each. Whole-report excerpts are in
tests/data/console/kinds/ and checked by test_console_kinds.py; here are the
variants, the interplay with other reports, and cut or interleaved logs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.console import Analysis, ConsoleParser, Failure, FailureFound
from harness.console.headers import TRACE_FRAME

KINDS = Path(__file__).parent / "data" / "console" / "kinds"

# kernel/panic.c __warn() as 6.19 on prints it, `at 0x0` as after the x86 WARN
# rework (late 2025), with the RIP line show_regs() adds.
WARNING_6_19 = [
    "------------[ cut here ]------------",
    "WARNING: fs/ext4/xattr.c:1058 at 0x0, CPU#0: syz.0.17/5982",
    "Modules linked in:",
    "CPU: 0 UID: 0 PID: 5982 Comm: syz.0.17 Not tainted 6.19.0 #1 PREEMPT(full) ",
    "RIP: 0010:ext4_xattr_inode_update_ref+0x4dc/0x570",
    "Call Trace:",
    " <TASK>",
    " ext4_xattr_inode_dec_ref_all+0x6e0/0x980",
    " </TASK>",
    "---[ end trace 0000000000000000 ]---",
]


def ts(*lines: str, at: float = 10.0, caller: str | None = None) -> str:
    c = f"[{caller:>6}]" if caller else ""
    return "".join(f"[{at + i / 1e6:12.6f}]{c} {line}\n" for i, line in enumerate(lines))


def parse(*chunks: str) -> tuple[Analysis, list[Failure]]:
    p = ConsoleParser()
    events = []
    for chunk in chunks:
        events += p.feed(chunk)
    analysis = p.finish()
    events += p.finish_events
    found = [e.failure for e in events if isinstance(e, FailureFound)]
    assert found == [f for b in analysis.boots for f in b.failures]
    return analysis, found


def titles(*chunks: str) -> list[tuple[str, str]]:
    return [(f.kind, f.title) for f in parse(*chunks)[1]]


# 1. The WARNING line of 6.19 on.

@pytest.mark.parametrize("header, title", [
    # no function: the RIP line's
    ("WARNING: fs/ext4/xattr.c:1058 at 0x0, CPU#0: syz.0.17/5982",
     "WARNING in ext4_xattr_inode_update_ref"),
    # the function, as the line prints it
    ("WARNING: fs/ext4/xattr.c:1058 at ext4_xattr_inode_update_ref.isra.0+0x4dc/0x570, "
     "CPU#0: syz.0.17/5982", "WARNING in ext4_xattr_inode_update_ref"),
    # DEBUG_BUGVERBOSE_DETAILED: the WARN's condition before the file
    ("WARNING: [ref_count < 0] fs/ext4/xattr.c:1058 at ext4_xattr_inode_update_ref+0x4dc/0x570, "
     "CPU#0: syz.0.17/5982", "WARNING in ext4_xattr_inode_update_ref"),
    # no file (CONFIG_DEBUG_BUGVERBOSE off)
    ("WARNING: at ext4_xattr_inode_update_ref+0x4dc/0x570, CPU#0: syz.0.17/5982",
     "WARNING in ext4_xattr_inode_update_ref"),
    # the format before 6.19 is unchanged
    ("WARNING: CPU: 0 PID: 5982 at fs/ext4/xattr.c:1058 ext4_xattr_inode_update_ref+0x4dc/0x570",
     "WARNING in ext4_xattr_inode_update_ref"),
])
def test_warning_line_formats(header: str, title: str) -> None:
    lines = list(WARNING_6_19)
    lines[1] = header
    assert titles(ts(*lines)) == [("warning", title)]


def test_warning_without_function_cut_before_its_rip_names_the_file() -> None:
    # No function is known yet: the title says what the line says, nothing invented.
    assert titles(ts(*WARNING_6_19[:3])) == [("warning", "WARNING in fs/ext4/xattr.c")]


def test_old_warning_line_keeps_its_function_over_the_rip() -> None:
    assert titles(ts("------------[ cut here ]------------",
                     "WARNING: CPU: 0 PID: 1 at mm/foo.c:12 func+0x1/0x2",
                     "RIP: 0010:other+0x1/0x2",
                     "---[ end trace 0000000000000000 ]---")) == [("warning", "WARNING in func")]


# 2. Hung tasks in I/O wait.

@pytest.mark.parametrize("header", [
    "INFO: task udevd:5612 blocked in I/O wait for more than 143 seconds.",
    "INFO: task udevd:5612 blocked for more than 143 seconds.",
])
def test_hung_task_both_wordings_are_one_kind(header: str) -> None:
    assert titles(ts(header, "Call Trace:", " <TASK>", " __schedule+0x3c0/0xb70",
                     " frob_wait+0x1/0x2", " </TASK>")) == [
        ("hung_task", "INFO: task hung in frob_wait")]


# 3. Console markers inside a report.

def test_replayed_cut_lines_are_taken_back() -> None:
    analysis, [failure] = parse((KINDS / "warning-replayed.log").read_text())
    assert failure.call_trace == ["frob_test_run", "kunit_run_tests",
                                  "kunit_generic_run_threadfn_adapter", "kthread",
                                  "ret_from_fork", "ret_from_fork_asm"]
    assert failure.completed_by == "end-marker" and failure.first_line == 1
    assert failure.report[1].endswith("frob_check+0x2a/0x40")
    assert not any("replaying" in line or line.endswith(("fr", "kunit_run_"))
                   for line in failure.report)
    assert analysis.notes == []


def test_replay_without_caller_ids_does_not_end_a_trace() -> None:
    analysis, [failure] = parse((KINDS / "hung_task-replayed.log").read_text())
    assert failure.call_trace == ["__schedule", "schedule", "frob_worker", "process_one_work"]
    assert "  sched" not in failure.report and failure.completed_by == "trace-end"
    assert analysis.notes == ["the console dropped 3 printk messages (at line 11): reports "
                              "around there may be incomplete"]


def test_replay_marker_glued_to_the_cut_copy() -> None:
    # A console that does not end the cut line first: the copy is on the marker's line.
    glued = "[   10.000005]  Call Tr** replaying previous printk message **\n"
    text = ts(*WARNING_6_19[:5]) + glued + ts(*WARNING_6_19[5:], at=10.000005)
    [failure] = parse(text)[1]
    assert failure.title == "WARNING in ext4_xattr_inode_update_ref"
    assert failure.call_trace == ["ext4_xattr_inode_dec_ref_all"]
    assert failure.completed_by == "end-marker"


def test_a_replayed_header_is_one_failure() -> None:
    text = ts("------------[ cut here ]------------") + \
        "[   10.000001] BUG: KASAN: slab-use-after-free in fro\n" \
        "** replaying previous printk message **\n" + \
        ts("BUG: KASAN: slab-use-after-free in frob_list+0x8c/0xa0",
           "Read of size 8 at addr ffff888004a3c010 by task swapper/0/1",
           "==================================================================", at=10.000001)
    assert titles(text) == [("kasan", "KASAN: slab-use-after-free Read in frob_list")]


def test_a_line_after_a_replay_marker_that_is_no_copy_changes_nothing() -> None:
    # Taken over before it printed anything: the line before the marker is complete.
    text = ts(*WARNING_6_19[:8]) + "** replaying previous printk message **\n" \
        + ts(*WARNING_6_19[8:], at=10.000008)
    [failure] = parse(text)[1]
    assert failure.call_trace == ["ext4_xattr_inode_dec_ref_all"]
    assert failure.completed_by == "end-marker"


def test_dropped_marker_before_a_record_on_the_same_line() -> None:
    # Before 5.x the marker ended with a space, and the record followed it.
    text = ts(*WARNING_6_19[:6]) + "** 5 printk messages dropped ** " + ts(*WARNING_6_19[6:])
    analysis, [failure] = parse(text)
    assert failure.call_trace == ["ext4_xattr_inode_dec_ref_all"]
    assert failure.completed_by == "end-marker"
    assert analysis.notes == ["the console dropped 5 printk messages (at line 7): reports "
                              "around there may be incomplete"]


# 4. Lower-case "Call trace:" and frames marked with their source.

@pytest.mark.parametrize("line, function, module", [
    (" foo+0x10/0x20 (T)", "foo", None),
    (" __fortify_panic+0x10/0x20 (P)", "__fortify_panic", None),
    (" frob_work_fn+0x2c/0x90 [frob] (L)", "frob_work_fn", "frob"),
    (" show_stack+0x24/0x40 (C)", "show_stack", None),
])
def test_frame_source_marks_are_stripped(line: str, function: str, module: str | None) -> None:
    m = TRACE_FRAME.match(line)
    assert m is not None and (m.group("func"), m.group("module")) == (function, module)
    [failure] = parse(ts("INFO: task sh:90 blocked for more than 122 seconds.",
                         "Call trace:", line, " caller+0x1/0x2 (T)", "random: crng init done"))[1]
    assert [(f.function, f.module) for f in failure.frames] == [(function, module),
                                                               ("caller", None)]
    assert failure.completed_by == "trace-end"


# 5. WARNINGs titled by the facility that warned.

def test_refcount_warning_of_6_19_is_known_by_its_file() -> None:
    # The reworked x86 WARN prints the message after the WARNING line.
    assert titles(ts("------------[ cut here ]------------",
                     "WARNING: lib/refcount.c:28 at 0x0, CPU#1: frobd/3471",
                     "refcount_t: underflow; use-after-free.",
                     "CPU: 1 UID: 0 PID: 3471 Comm: frobd Not tainted 6.19.0 #1",
                     "RIP: 0010:refcount_warn_saturate+0xba/0x110",
                     "Call Trace:", " <TASK>", " ? refcount_warn_saturate+0xba/0x110",
                     " kref_put+0x1/0x2", " frob_put+0x4e/0x60", " </TASK>",
                     "---[ end trace 0000000000000000 ]---")) == [
        ("warning", "WARNING: refcount bug in frob_put")]


def test_message_after_the_warning_line_names_the_facility() -> None:
    assert titles(ts("------------[ cut here ]------------",
                     "WARNING: kernel/locking/mutex.c:587 at 0x0, CPU#1: kworker/1:2/215",
                     "DEBUG_LOCKS_WARN_ON(lock->magic != lock)",
                     "RIP: 0010:__mutex_lock+0x6a1/0x9d0",
                     "Call Trace:", " <TASK>", " mutex_lock_nested+0x1b/0x30",
                     " frob_work_fn+0x33/0x90", " </TASK>",
                     "---[ end trace 0000000000000000 ]---")) == [
        ("warning", "WARNING: locking bug in frob_work_fn")]


def test_a_warning_in_lockdep_is_a_locking_bug() -> None:
    assert titles(ts("------------[ cut here ]------------",
                     "WARNING: CPU: 0 PID: 1 at kernel/locking/lockdep.c:232 hlock_class+0x1/0x2",
                     "Call Trace:", " <TASK>", " __lock_acquire+0x1/0x2", " lock_acquire+0x1/0x2",
                     " _raw_spin_lock+0x1/0x2", " frob_poke+0x1/0x2", " </TASK>",
                     "---[ end trace 0000000000000000 ]---")) == [
        ("warning", "WARNING: locking bug in frob_poke")]


def test_vmalloc_internals_are_not_a_kmalloc_bug() -> None:
    assert titles((KINDS / "warning.log").read_text()) == [
        ("warning", "WARNING in __vmalloc_node_range_noprof")]


# 6. KCSAN.

def test_kcsan_assert_race() -> None:
    assert titles(ts("==================================================================",
                     "BUG: KCSAN: assert: race in frob_update+0x1c/0x40",
                     "==================================================================")) == [
        ("kcsan", "KCSAN: assert: race in frob_update")]


# 7. Both page-fault wordings.

@pytest.mark.parametrize("header", [
    "BUG: unable to handle page fault for address: ffffffff82a4c000",  # 4.17 on
    "BUG: unable to handle kernel paging request at ffffffff82a4c000",  # before
])
def test_page_fault_wordings_have_one_title(header: str) -> None:
    assert titles(ts(header, "#PF: supervisor write access in kernel mode",
                     "Oops: 0003 [#1] PREEMPT SMP NOPTI",
                     "RIP: 0010:lkdtm_WRITE_RO+0x1b/0x30",
                     "---[ end trace 0000000000000000 ]---")) == [
        ("page_fault", "BUG: unable to handle kernel paging request in lkdtm_WRITE_RO")]


# 8. unregister_netdevice.

def test_netdev_repeats_are_one_failure_and_do_not_end_a_report() -> None:
    wait = "unregister_netdevice: waiting for {} to become free. Usage count = 2"
    found = titles(ts(*WARNING_6_19[:6], wait.format("veth0"), *WARNING_6_19[6:],
                      wait.format("bond0")))
    assert found == [("netdev_refcount", "unregister_netdevice: waiting for DEV to become free"),
                     ("warning", "WARNING in ext4_xattr_inode_update_ref")]


# 9. The frame-pointer unwinder's bad stack value.

def test_bad_bp_inside_a_report_is_a_failure_and_leaves_the_report_whole() -> None:
    analysis, found = parse(ts(
        *WARNING_6_19[:7],
        "WARNING: kernel stack regs at 00000000a1b2c3d4 in syz.0.17:5982 has bad 'bp' value "
        "0000000000000001",
        "unwind stack type:0 next_sp:0000000000000000 mask:0x2 graph_idx:0",
        "ffffc90003a1f6e8: ffffc90003a1f7d0 (0xffffc90003a1f7d0)",
        *WARNING_6_19[7:]))
    assert [(f.title, f.completed_by) for f in found] == [
        ("WARNING: kernel stack regs has bad 'bp' value", "header"),
        ("WARNING in ext4_xattr_inode_update_ref", "end-marker")]
    assert found[1].call_trace == ["ext4_xattr_inode_dec_ref_all"]


@pytest.mark.parametrize("line, title", [
    ("kernel stack regs has bad 'bp' value", "WARNING: kernel stack regs has bad 'bp' value"),
    ("WARNING: kernel stack frame pointer at 00000000a1b2c3d4 in sh:90 has bad value "
     "0000000000000000", "WARNING: kernel stack frame pointer has bad value"),
])
def test_bad_stack_value_forms(line: str, title: str) -> None:
    assert titles(ts(line)) == [("warning", title)]


# 10. The CPA self-test's WARN in the 6.19 format, its message after it.

def test_cpa_selftest_warning_of_6_19_is_one_failure_and_one_failed_pass() -> None:
    analysis, found = parse(ts(
        "CPA 12 failed -22",
        "------------[ cut here ]------------",
        "WARNING: arch/x86/mm/pat/cpa-test.c:243 at 0x0, CPU#0: pageattr-test/24",
        "NOT PASSED. Please report.",
        "CPU: 0 UID: 0 PID: 24 Comm: pageattr-test Not tainted 6.19.0 #1",
        "RIP: 0010:pageattr_test+0x434/0x463",
        "Call Trace:", " <TASK>", " do_pageattr_test+0x1c/0x38", " </TASK>",
        "---[ end trace 0000000000000000 ]---"))
    assert [(f.kind, f.title) for f in found] == [("cpa_selftest", "WARNING in pageattr_test")]
    passes = analysis.boots[0].cpa_selftest
    assert [(p.result, p.notes) for p in passes] == [("fail", [
        "no 'CPA self-test:' line before this pass (a later pass prints only its errors, or "
        "the log starts mid-pass)"])]


def test_cpa_not_passed_flushed_before_its_warning_keeps_its_own_title() -> None:
    p = ConsoleParser()
    p.feed(ts("------------[ cut here ]------------", "NOT PASSED. Please report."))
    assert [e.failure.title for e in p.flush() if isinstance(e, FailureFound)] == [
        "CPA self-test NOT PASSED"]


# 11. Cut, interleaved and lossy logs.

@pytest.mark.parametrize("cut", range(2, len(WARNING_6_19) + 1))
def test_6_19_warning_cut_anywhere(cut: int) -> None:
    analysis, found = parse(ts(*WARNING_6_19[:cut]))
    assert [f.title for f in found] == [
        "WARNING in fs/ext4/xattr.c" if cut < 5 else "WARNING in ext4_xattr_inode_update_ref"]
    assert analysis.verdict == "fail"


@pytest.mark.parametrize("cut", range(1, 60, 7))
def test_6_19_warning_cut_mid_line(cut: int) -> None:
    text = ts(*WARNING_6_19)
    at = text.index("RIP:") + cut
    analysis, found = parse(text[:at])
    assert len(found) == 1 and analysis.verdict == "fail"
    assert found[0].title in ("WARNING in fs/ext4/xattr.c",
                              "WARNING in ext4_xattr_inode_update_ref")


def interleave(a: list[str], b: list[str]) -> list[str]:
    out: list[str] = []
    for x, y in zip(a, b, strict=True):
        out += [x, y]
    return out


def test_two_old_format_warnings_interleaved_line_by_line() -> None:
    def warning(func: str, pid: int) -> list[str]:
        return ["------------[ cut here ]------------",
                f"WARNING: CPU: {pid} PID: {pid} at kernel/{func}.c:1 {func}+0x1/0x2",
                f"CPU: {pid} UID: 0 PID: {pid} Comm: t{pid} Not tainted 6.12.0 #1",
                f"RIP: 0010:{func}+0x1/0x2", "Call Trace:", " <TASK>",
                f" {func}_caller+0x1/0x2", " </TASK>", "---[ end trace 0000000000000000 ]---"]
    analysis, found = parse(ts(*interleave(warning("alpha", 1), warning("beta", 2))))
    assert sorted(f.title for f in found) == ["WARNING in alpha", "WARNING in beta"]
    assert analysis.verdict == "fail"


def test_two_6_19_warnings_interleaved_line_by_line_invent_no_function() -> None:
    def warning(func: str, pid: int) -> list[str]:
        return ["------------[ cut here ]------------",
                f"WARNING: kernel/{func}.c:1 at 0x0, CPU#{pid}: t{pid}/{pid}",
                f"CPU: {pid} UID: 0 PID: {pid} Comm: t{pid} Not tainted 6.19.0 #1",
                f"RIP: 0010:{func}+0x1/0x2", "Call Trace:", " <TASK>",
                f" {func}_caller+0x1/0x2", " </TASK>", "---[ end trace 0000000000000000 ]---"]
    analysis, found = parse(ts(*interleave(warning("alpha", 1), warning("beta", 2))))
    # Without caller ids the lines cannot be told apart: the titles say only what
    # each WARNING line itself says, never the other report's function.
    assert [f.title for f in found] == ["WARNING in kernel/alpha.c", "WARNING in kernel/beta.c"]


def test_interleaved_with_caller_ids_each_keeps_its_rip() -> None:
    def warning(func: str, pid: int) -> list[str]:
        return ts("------------[ cut here ]------------",
                  f"WARNING: kernel/{func}.c:1 at 0x0, CPU#{pid}: t{pid}/{pid}",
                  f"RIP: 0010:{func}+0x1/0x2", "---[ end trace 0000000000000000 ]---",
                  caller=f"T{pid}").splitlines(keepends=True)
    found = parse("".join(interleave(warning("alpha", 1), warning("beta", 2))))[1]
    assert sorted(f.title for f in found) == ["WARNING in alpha", "WARNING in beta"]


def test_dropped_messages_that_took_the_end_marker() -> None:
    analysis, found = parse(ts(*WARNING_6_19[:8]) + "** 40 printk messages dropped **\n"
                            + ts("random: crng init done", at=30.0))
    assert [f.title for f in found] == ["WARNING in ext4_xattr_inode_update_ref"]
    assert analysis.verdict == "fail" and len(analysis.notes) == 1


# A trace that cannot be trusted names no frame: "(corrupted report)" instead.
# The real hung-task excerpt: its trace is __schedule, schedule,
# schedule_preempt_disabled, __mutex_lock (all generic), then frob_worker.
HUNG = (KINDS / "hung_task.log").read_text().splitlines(keepends=True)
FROB_AT = next(n for n, line in enumerate(HUNG) if "frob_worker" in line)


@pytest.mark.parametrize("cut", range(5, len(HUNG) + 1))
def test_a_trace_cut_short_names_a_frame_only_once_a_specific_one_was_seen(cut: int) -> None:
    analysis, found = parse("".join(HUNG[:cut]))
    frames = sum(1 for line in HUNG[:cut] if TRACE_FRAME.match(line.split("] ", 1)[1]))
    if frames == 0:
        expected = "INFO: task hung"        # nothing to name, nothing invented
    elif cut <= FROB_AT:
        expected = "INFO: task hung (corrupted report)"     # only generic frames so far
    else:
        expected = "INFO: task hung in frob_worker"
    assert [(f.title, f.count) for f in found] == [(expected, 1)]
    assert analysis.verdict == "fail"


@pytest.mark.parametrize("at", range(1, len(HUNG)))
def test_records_lost_before_the_guilty_frame_leave_it_unnamed(at: int) -> None:
    lines = [*HUNG[:at], "** 3 printk messages dropped **\n", *HUNG[at:]]
    analysis, found = parse("".join(lines))
    in_trace = 5 <= at <= len(HUNG) - 2         # after `Call Trace:`, before `</TASK>`
    lost_ahead = in_trace and at <= FROB_AT     # frob_worker (or a frame before it) lost
    assert [f.title for f in found] == [
        "INFO: task hung (corrupted report)" if lost_ahead else "INFO: task hung in frob_worker"]
    assert analysis.verdict == "fail"


def cut_at_trace(log: str, frames: int) -> tuple[str, str]:
    """The title of `log` whole, and cut `frames` frames into its call trace."""
    text = (KINDS / log).read_text().splitlines(keepends=True)
    trace = next(n for n, line in enumerate(text) if "Call Trace:" in line)
    [whole] = parse("".join(text))[1]
    [cut] = parse("".join(text[:trace + 2 + frames]))[1]     # `Call Trace:`, `<TASK>`
    return whole.title, cut.title


def test_a_cut_crash_keeps_a_specific_rip_function() -> None:
    # The RIP line names where the CPU was: a trace cut after it changes nothing.
    assert cut_at_trace("soft_lockup.log", 1) == ("BUG: soft lockup in spin_forever",) * 2


@pytest.mark.parametrize("frames", range(0, 6))
def test_a_cut_crash_in_a_string_helper_waits_for_its_caller(frames: int) -> None:
    whole, cut = cut_at_trace("soft_lockup-memcpy.log", frames)
    assert whole == "BUG: soft lockup in frob_fill_ring"
    text = (KINDS / "soft_lockup-memcpy.log").read_text()
    seen = text[text.index("Call Trace:"):].splitlines()[2:2 + frames]
    assert cut == (whole if any("frob_fill_ring" in line for line in seen)
                   else "BUG: soft lockup (corrupted report)")
