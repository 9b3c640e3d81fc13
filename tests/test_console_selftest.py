"""The CPA self-test: both formats, errors, later passes, interleaving, truncation."""

from __future__ import annotations

import re
from pathlib import Path

from harness.console import Analysis, ConsoleParser, SelftestDone

SPLIT = " 4k 3072 large 510 gb 3 x 2560[ffff888000000000-ffff8880bfffffff] miss 0"
SPLIT_MID = " 4k 157664 large 201 gb 2 x 2560[ffff888000000000-ffff8880bfffffff] miss 0"


def run(text: str) -> tuple[Analysis, list[SelftestDone]]:
    p = ConsoleParser()
    events = p.feed(text)
    analysis = p.finish()
    events += p.finish_events
    return analysis, [e for e in events if isinstance(e, SelftestDone)]


def ts(*lines: str, start: int = 0) -> str:
    return "".join(f"[   {31 + (start + i) / 1000:.6f}] {line}\n" for i, line in enumerate(lines))


def test_current_format_pass() -> None:
    analysis, done = run(ts("Linux version 6.12.0 (x) #1", start=-31000)
                         + ts("CPA self-test:", SPLIT, SPLIT_MID, SPLIT, "ok."))
    passes = analysis.boots[0].cpa_selftest
    assert [p.result for p in passes] == ["pass"]
    split = passes[0].splits[1]
    assert (split.pages_4k, split.large, split.gb, split.x, split.miss) == (157664, 201, 2, 2560, 0)
    assert split.x_range == (0xffff888000000000, 0xffff8880bfffffff)
    assert [d.selftest for d in done] == passes
    assert analysis.verdict == "pass"
    assert passes[0].to_json()["splits"][0]["4k"] == 3072


def test_i386_split_line_without_gb_pages() -> None:
    split = " 4k 4096 large 222 gb 0 x 128[c0000000-c07fffff] miss 0"
    analysis, _ = run(ts("CPA self-test:", split, split, split, "ok."))
    p = analysis.boots[0].cpa_selftest[0]
    assert p.result == "pass" and p.splits[0].gb == 0


def test_lines_of_other_messages_interleave_with_a_pass() -> None:
    analysis, done = run(ts(
        "CPA self-test:", SPLIT, "virtio_net virtio0 eth0: link up", SPLIT_MID,
        "CPA  protect  Text NX: 0xffffffff81000000 - 0xffffffff811fffff PFN 1000 req "
        "8000000000000163 prevent 0000000000000000",
        "random: crng init done", SPLIT, "ok."))
    p = analysis.boots[0].cpa_selftest[0]
    assert p.result == "pass" and len(p.splits) == 3 and len(done) == 1
    assert analysis.boots[0].failures == []


def test_failed_first_pass_is_one_failure() -> None:
    analysis, done = run(ts(
        "CPA self-test:", SPLIT,
        "CPA 12 failed -22",
        "CPA ffff888004a3c000: bad pte 8000000004a3c163",
        "ffff888004a00000 level 2 but not PSE 8000000004a001e3",
        SPLIT_MID,
        "CPA lookup of ffff888004a3c000 failed",
        "CPA reverting failed: -22",
        "CPA ffff888004a3d000: bad pte after revert 8000000004a3d163",
        "CPA ffff888004a3e000: unexpected level 2",
        "CPA max_pfn_mapped 1048576 but expected 1048575",
        SPLIT,
        "------------[ cut here ]------------",
        "NOT PASSED. Please report.",
        "WARNING: CPU: 1 PID: 40 at arch/x86/mm/pat/cpa-test.c:231 pageattr_test+0x4a5/0x5e0",
        "Call Trace:",
        " do_pageattr_test+0x2a/0x60",
        "---[ end trace 0000000000000000 ]---",
    ))
    boot = analysis.boots[0]
    p = boot.cpa_selftest[0]
    assert p.result == "fail"
    assert len(p.errors) == 8
    assert p.errors[0].message == "CPA 12 failed -22"
    assert [(f.kind, f.title) for f in boot.failures] == [
        ("cpa_selftest", "WARNING in pageattr_test")]
    assert len(done) == 1 and done[0].selftest is p
    assert analysis.verdict == "fail"


def test_later_pass_prints_only_its_errors() -> None:
    analysis, done = run(ts("CPA self-test:", SPLIT, SPLIT_MID, SPLIT, "ok.")
                         + ts("CPA 7 failed -12", "------------[ cut here ]------------",
                              "NOT PASSED. Please report.",
                              "WARNING: CPU: 0 PID: 40 at arch/x86/mm/pat/cpa-test.c:231 "
                              "pageattr_test+0x4a5/0x5e0",
                              "---[ end trace 0000000000000000 ]---", start=30000))
    passes = analysis.boots[0].cpa_selftest
    assert [p.result for p in passes] == ["pass", "fail"]
    assert passes[1].splits == [] and passes[1].notes
    assert len(done) == 2
    assert len(analysis.boots[0].failures) == 1


def test_warning_of_the_self_test_without_its_message_line() -> None:
    analysis, _ = run(ts(
        "------------[ cut here ]------------",
        "WARNING: CPU: 0 PID: 40 at arch/x86/mm/pat/cpa-test.c:231 pageattr_test+0x4a5/0x5e0",
        "---[ end trace 0000000000000000 ]---"))
    boot = analysis.boots[0]
    assert [p.result for p in boot.cpa_selftest] == ["fail"]
    assert [(f.kind, f.title) for f in boot.failures] == [
        ("cpa_selftest", "WARNING in pageattr_test")]


def test_old_format_pass_and_fail() -> None:
    old_split = "CPA mapping 4k 2048 large 510 gb 0 x 1[ffff810000000000-ffff8100001fffff] miss 0"
    analysis, done = run(ts(old_split, old_split, "CPA selftests PASSED"))
    p = analysis.boots[0].cpa_selftest[0]
    assert (p.result, p.format, len(p.splits)) == ("pass", "2.6", 2)
    assert len(done) == 1

    analysis, done = run(ts(old_split, "CPA ffff810000200000: bad pte 163", old_split,
                            "CPA selftests NOT PASSED. Please report.", "ACPI: Core revision"))
    boot = analysis.boots[0]
    assert [p.result for p in boot.cpa_selftest] == ["fail"]
    assert [(f.kind, f.title) for f in boot.failures] == [
        ("cpa_selftest", "CPA self-test NOT PASSED")]
    assert boot.failures[0].report == ("CPA selftests NOT PASSED. Please report.",)


def test_old_not_passed_followed_by_its_warning_is_one_failure() -> None:
    analysis, _ = run(ts(
        "CPA selftests NOT PASSED. Please report.",
        "------------[ cut here ]------------",
        "WARNING: at arch/x86/mm/pageattr-test.c:227 pageattr_test+0x1a5/0x2a0()",
        "Pid: 1, comm: swapper Not tainted 2.6.25 #1",
        "---[ end trace 4eaa2a86a8e2da22 ]---"))
    assert [f.kind for f in analysis.boots[0].failures] == ["cpa_selftest"]


def test_truncated_pass_is_incomplete_and_not_a_failure() -> None:
    analysis, done = run(ts("CPA self-test:", SPLIT))
    p = analysis.boots[0].cpa_selftest[0]
    assert p.result == "incomplete" and done == []
    assert analysis.boots[0].failures == [] and analysis.verdict == "no-selftest"


def test_truncated_pass_with_errors_is_a_fail() -> None:
    analysis, done = run(ts("CPA self-test:", SPLIT, "CPA 12 failed -22"))
    assert analysis.boots[0].cpa_selftest[0].result == "fail"
    assert len(done) == 1
    assert analysis.verdict == "fail"


def test_ok_with_fewer_split_lines_is_noted() -> None:
    analysis, _ = run(ts("CPA self-test:", SPLIT, "ok."))
    p = analysis.boots[0].cpa_selftest[0]
    assert p.result == "pass" and p.notes == ["1 of 3 split lines seen before ok."]


def test_ok_from_another_caller_does_not_end_the_pass() -> None:
    lines = [
        "[   31.000000][   T40] CPA self-test:",
        f"[   31.000001][   T40] {SPLIT}",
        "[   31.000002][   T77] ok.",
        f"[   31.000003][   T40] {SPLIT_MID}",
        f"[   31.000004][   T40] {SPLIT}",
        "[   31.000005][   T40] ok.",
    ]
    analysis, _ = run("\n".join(lines) + "\n")
    p = analysis.boots[0].cpa_selftest[0]
    assert p.result == "pass" and len(p.splits) == 3 and p.last_line == 6


def test_a_new_pass_header_closes_an_unfinished_one() -> None:
    analysis, _ = run(ts("CPA self-test:", SPLIT, "CPA self-test:", SPLIT, SPLIT_MID, SPLIT,
                         "ok."))
    assert [p.result for p in analysis.boots[0].cpa_selftest] == ["incomplete", "pass"]


def test_selftest_json() -> None:
    analysis, _ = run(ts("CPA self-test:", SPLIT, "CPA 12 failed -22"))
    doc = analysis.to_json()["boots"][0]["cpa_selftest"][0]
    assert doc["result"] == "fail"
    assert doc["errors"] == [{"line": 3, "message": "CPA 12 failed -22"}]
    assert doc["splits"][0] == {"4k": 3072, "large": 510, "gb": 3, "x": 2560,
                                "x_range": [0xffff888000000000, 0xffff8880bfffffff],
                                "miss": 0, "line": 2}


def test_the_warning_of_not_passed_printed_seconds_later_is_the_same_failure() -> None:
    """tests/data/logs/x86_64-cpa-selftest-not-passed.log, as a loaded host can
    print it: WARN's printk of "NOT PASSED." printed a backlog of other lines
    to the console first, so the WARNING line after it is stamped 3 s later.
    The failure's title must not depend on that delay (a bisect compares it)."""
    text = (Path(__file__).parent / "data" / "logs"
            / "x86_64-cpa-selftest-not-passed.log").read_text()
    head, tail = text.split("NOT PASSED. Please report.\n", 1)
    late = re.sub(r"^\[\s*(\d+\.\d+)\]", lambda m: f"[{float(m[1]) + 3:12.6f}]", tail,
                  flags=re.M)
    assert late != tail
    for log in (text, head + "NOT PASSED. Please report.\n" + late):
        analysis, _ = run(log)
        titles = [f.title for f in analysis.boots[0].failures if f.kind == "cpa_selftest"]
        assert titles == ["WARNING in pageattr_test"], titles
