"""The CPA exerciser's lines, read from real boots (tests/data/exerciser/README.md).

What a run proved, what it counted, and that the kernel's fault-injection
reports are expected there, never failures. The real boots that make these
logs, and their flush counts, are tests/test_exercise_boot.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from harness.console import ConsoleParser
from harness.errors import UserError
from harness.matrix import load
from harness.probes import exercise

DATA = Path(__file__).parent / "data" / "exerciser"
CLFLUSH = (DATA / "x86_64-6.12-clflush.log").read_text()
NO_CLFLUSH = (DATA / "x86_64-6.12-no-clflush.log").read_text()
STACKS = (DATA / "x86_64-6.12-injection-stacks.log").read_text()


def run_ids(text: str, mode: str) -> list[str]:
    return sorted({line.split("run=")[1].split()[0] for line in text.splitlines()
                   if f"cpa_exercise: run={mode}-" in line})


def test_a_cache_run_with_clflush_checked_every_page_it_changed() -> None:
    [rid] = run_ids(CLFLUSH, "cache")
    r = exercise.parse(CLFLUSH, rid)
    assert r.mode == "cache" and r.start["clflush"] == 1 and r.start["pat"] == 1
    assert [(row.get("pages"), row.get("array")) for row in r.rows] == [
        (1, None), (16, None), (512, None), (1024, None), (None, 16)]
    # uc, wb, wc, wb four times over: 16 changes per range, each page checked after each
    assert all(row["failed"] == 0 for row in r.rows)
    assert [row["checked"] for row in r.rows] == [16, 256, 8192, 16384, 128]
    assert r.done == {"mode": "cache", "ret": 0, "mismatches": 0, "unclean": 0}
    assert r.problems() == [] and r.injected_reports == 0
    assert exercise.ops_per_second(r.rows[0]) is not None


def test_concurrent_runs_one_thread_then_every_cpu() -> None:
    [rid] = run_ids(CLFLUSH, "concurrent")
    r = exercise.parse(CLFLUSH, rid)
    assert [(row["threads"], row["started"]) for row in r.rows] == [(1, 1), (2, 2)]
    assert [row["changes"] for row in r.rows] == [16, 32]
    assert r.problems() == []


@pytest.mark.parametrize("text", [CLFLUSH, NO_CLFLUSH], ids=["clflush", "no-clflush"])
def test_alloc_fail_counts_the_injected_failures_and_each_was_clean(text: str) -> None:
    [rid] = run_ids(text, "alloc-fail")
    r = exercise.parse(text, rid)
    s = r.summary()
    # every injection the kernel reported is one the exerciser counted
    assert s["injected"] == r.injected_reports == 3
    assert s["failed"] == 3 and s["uninjected"] == 0 and s["restored"] == s["changes"]
    # a failure on the second of two splits leaves the first page changed:
    # CPA does not roll back, a finding and not a failure
    assert s["partial"] == 1
    assert [row["ret"] for row in r.rows_of("alloc-fail") if "round" in row] == [-12] * 3
    assert r.problems() == []


def test_without_clflush_the_exerciser_says_so() -> None:
    [rid] = run_ids(NO_CLFLUSH, "cache")
    assert exercise.parse(NO_CLFLUSH, rid).start["clflush"] == 0


@pytest.mark.parametrize("text", [CLFLUSH, NO_CLFLUSH, STACKS],
                         ids=["clflush", "no-clflush", "stacks"])
def test_the_kernels_fault_injection_reports_are_not_failures(text: str) -> None:
    """With verbose=1 a line and its parameters; with verbose=2 a stack dump
    (dump_stack, no WARN): neither is a kernel failure."""
    assert "FAULT_INJECTION: forcing a failure." in text
    p = ConsoleParser()
    p.feed(text)
    analysis = p.finish()
    assert [f for b in analysis.boots for f in b.failures] == []
    r = exercise.parse(text, run_ids(text, "alloc-fail")[0] if "run=alloc-fail-" in text
                       else "t6")
    assert r.injected_reports == r.summary()["injected"] > 0


def test_a_mismatch_an_unclean_call_and_a_run_that_did_not_finish_are_problems() -> None:
    """The clflush log's cache run with lines the module prints when a check
    fails (its format, cpa_exercise.c's say() calls): no kernel here had one."""
    [rid] = run_ids(CLFLUSH, "cache")
    mismatch = (f"[   36.700000][  T127] cpa_exercise: run={rid} mismatch after=uc "
                "addr=0xffff888004a3c000 want=UC- found=WB level=4k entry=0x8000000004a3c163")
    error = (f"[   36.700001][  T127] cpa_exercise: run={rid} error call=set_memory_wb "
             "addr=0xffff888004a3c000 pages=1 ret=-12")
    lines = CLFLUSH.splitlines()
    at = next(i for i, ln in enumerate(lines) if f"run={rid} done" in ln)
    broken = "\n".join([*lines[:at], mismatch, error,
                        lines[at].replace("mismatches=0 unclean=0", "mismatches=1 unclean=1")])
    r = exercise.parse(broken, rid)
    assert r.mismatches == [{"after": "uc", "addr": "0xffff888004a3c000", "want": "UC-",
                             "found": "WB", "level": "4k", "entry": "0x8000000004a3c163"}]
    assert r.problems() == [
        "page 0xffff888004a3c000 is WB after uc, not UC- (4k entry 0x8000000004a3c163)",
        "set_memory_wb failed with -12 with nothing injected"]
    unfinished = exercise.parse("\n".join(lines[:at]), rid)
    assert unfinished.problems() == ["the exerciser did not finish (no 'done' line)"]
    assert exercise.parse(CLFLUSH, "no-such-run").problems() == [
        "the exerciser printed nothing for this run"]


def test_a_kernel_without_fault_injection_is_unavailable_not_failed() -> None:
    text = ("[    1.0][  T1] cpa_exercise: run=x start mode=alloc-fail rounds=4 cpus=1 "
            "clflush=1 pat=1\n[    1.1][  T1] cpa_exercise: run=x alloc-fail "
            "unavailable=no-fault-injection\n[    1.2][  T1] cpa_exercise: run=x done "
            "mode=alloc-fail ret=-95 mismatches=0 unclean=0\n")
    r = exercise.parse(text, "x")
    assert r.unavailable() == "no-fault-injection"
    assert r.problems() == []


@pytest.mark.parametrize(("value", "message"), [
    ('["cache", "flush"]', "unknown mode 'flush'"),
    ('"cache"', "must be a list"),
])
def test_a_matrix_exercise_key_is_checked(tmp_path: Path, value: str, message: str) -> None:
    m = tmp_path / "m.toml"
    m.write_text(f'[[cell]]\nname = "c"\narch = "x86_64"\nexercise = {value}\n')
    with pytest.raises(UserError, match=message):
        load(m)


def test_a_matrix_cell_takes_exercise_modes_and_threads(tmp_path: Path) -> None:
    m = tmp_path / "m.toml"
    m.write_text('[[cell]]\nname = "c"\narch = "x86_64"\nexercise = ["cache", "concurrent"]\n'
                 'exercise_threads = 4\n')
    [cell] = load(m).cells
    assert cell.exercise == ("cache", "concurrent") and cell.exercise_threads == 4


RUN = Path(__file__).parent / "data" / "runs" / "exercise"


def test_a_run_of_the_three_modes_reads_in_the_table_html_junit_and_kcidb(
        tmp_path: Path) -> None:
    """tests/data/runs/exercise: the real run that made x86_64-6.12-clflush.log."""
    from harness.results.cell import print_table, write_junit
    from harness.results.html import render
    from harness.results.kcidb import to_kcidb, validate
    from harness.results.rundir import read_run
    summary, cells = read_run(RUN)
    out = io.StringIO()
    print_table(cells, out)
    said = [ln for ln in out.getvalue().splitlines() if "exerciser" in ln]
    assert said == [
        "  x86_64-boot: exerciser cache (CLFLUSH): 72 changes, 24976 page checks; "
        "wbinvd 0 clflush 18700; every check passed",
        "  x86_64-boot: exerciser concurrent (CLFLUSH): 1 threads: 16 changes, 2 threads: "
        "32 changes; wbinvd 0 clflush 4132; every check passed",
        "  x86_64-boot: exerciser alloc-fail (CLFLUSH): 4 changes, 3 failures injected "
        "(3 reported by the kernel), 3 calls failed, 1 left a partial change, 4 restored; "
        "wbinvd 2 clflush 1; every check passed",
        "  x86_64-boot: exerciser times withheld: under TCG they measure the emulator, "
        "not the CPU"]
    html = render(summary, cells)
    assert '<tr data-mode="cache"><td>cache</td><td>0</td><td>18700</td>' in html
    assert '<tr data-mode="alloc-fail"><td>alloc-fail</td><td>2</td><td>1</td>' in html
    write_junit(tmp_path / "junit.xml", cells)
    junit = (tmp_path / "junit.xml").read_text()
    assert all(f'name="cpa_exercise {m}"' in junit for m in exercise.MODES)
    doc = to_kcidb(RUN)
    validate(doc)
    statuses = {t["path"].rsplit(".", 1)[-1]: t["status"] for t in doc["tests"]
                if ".exercise." in t["path"]}
    assert statuses == {"cache": "PASS", "concurrent": "PASS", "alloc-fail": "PASS"}


PAGEALLOC_RUN = Path(__file__).parent / "data" / "runs" / "exercise-pagealloc"


def test_under_debug_pagealloc_the_direct_map_is_all_4k_and_never_splits() -> None:
    """tests/data/runs/exercise-pagealloc: a real debug_pagealloc cell with the
    nightly's page-churning workload, then the cache and alloc-fail modes.
    There is no large page to split, so alloc-fail has nothing to inject into."""
    from harness.results.cell import pagealloc_line, print_table
    from harness.results.rundir import read_run
    _, [cell] = read_run(PAGEALLOC_RUN)
    p = cell.stats["pagealloc"]
    assert p["all_4k_at_boot"] is True and p["split"] is False and p["until"] == "end"
    assert p["splits"] == {"direct_map_level2_splits": 0, "direct_map_level3_splits": 0}
    assert pagealloc_line(p) == (
        "debug_pagealloc: direct map all 4k at boot (page tables), no split at run time "
        "(direct_map_level2_splits +0, direct_map_level3_splits +0)")
    # had one happened, it would be named with its counter
    assert pagealloc_line({**p, "split": True, "splits": {"direct_map_level2_splits": 2}}) == (
        "debug_pagealloc: direct map all 4k at boot (page tables), and split at run time: "
        "direct_map_level2_splits +2")
    out = io.StringIO()
    print_table([cell], out)
    assert "alloc-fail (CLFLUSH): 0 changes, 0 failures injected (0 reported by the " \
           "kernel), 0 calls failed, 0 left a partial change, 0 restored; 4 skipped " \
           "(no-large-page)" in out.getvalue()
