"""Cell verdicts from real analyses: the strongest finding decides."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

from harness.cells import SMOKE, Cell
from harness.console import Analysis
from harness.console import known as known_issues
from harness.console.parser import parse_path
from harness.paths import KNOWN_ISSUES
from harness.results.cell import CellResult, Verdict, print_table, run_exit_code, write_junit
from harness.scenarios.judge import Outcome, judge, read_console

LOGS = Path(__file__).parent / "data" / "logs"
PASSED = Outcome(Verdict.PASS)


def analysis(name: str) -> Analysis:
    return parse_path(LOGS / f"{name}.log")


def cell(name: str) -> Cell:
    return next(c for c in SMOKE if c.name == name)


def judged_from(a: Analysis, c: Cell, steps: Outcome = PASSED,
                direct_map: dict[str, int] | None = None, strict: bool = False) -> CellResult:
    """The cell's result as the CPA scenario assembles it, judged."""
    res = CellResult(name=c.name, arch=c.arch)
    last = a.boots[-1].direct_map[-1] if a.boots and a.boots[-1].direct_map else None
    res.direct_map = direct_map if direct_map is not None else {
        k: v for k, v in (last.sizes if last else {}).items() if v is not None}
    read_console(a, [] if strict else known_issues.load(KNOWN_ISSUES), c.arch).fill(res)
    verdict = judge(steps, res, c.expect)
    res.verdict, res.reason = verdict.verdict, verdict.reason
    return res


def judged(name: str, direct_map: dict[str, int] | None = None,
           strict: bool = False) -> CellResult:
    return judged_from(analysis(name), cell(name), direct_map=direct_map, strict=strict)


def test_real_smoke_logs_pass_with_the_known_issue() -> None:
    for name in ("x86_64-gbpages", "x86_64-debug-pagealloc", "i386-pae", "i386"):
        res = judged(name)
        assert res.verdict == Verdict.PASS, (name, res.reason)


def test_strict_fails_the_x86_64_log() -> None:
    res = judged("x86_64-gbpages", strict=True)
    assert (res.verdict, res.reason) == (Verdict.FAIL, "warning: WARNING in verify_rwx")


def test_gbpages_expectation_is_checked() -> None:
    res = judged("x86_64-gbpages", direct_map={"4k": 1000, "2M": 4000})
    assert res.verdict == Verdict.USER_ERROR
    assert "GB pages expected" in res.reason


def test_all_4k_expectation_is_checked() -> None:
    res = judged("x86_64-debug-pagealloc", direct_map={"4k": 1000, "2M": 2048})
    assert res.verdict == Verdict.USER_ERROR and "all 4k" in res.reason


def test_no_selftest_pass_fails() -> None:
    a = analysis("i386")
    a.boots[0].cpa_selftest = []
    res = judged_from(a, cell("i386"), strict=True)
    assert (res.verdict, res.reason) == (Verdict.FAIL, "no CPA self-test pass completed")


def test_failed_pass_fails() -> None:
    a = analysis("i386")
    a.boots[0].cpa_selftest[0].result = "fail"
    res = judged_from(a, cell("i386"), strict=True)
    assert res.verdict == Verdict.FAIL


def test_qemu_dying_before_the_kernel_is_infrastructure() -> None:
    res = judged_from(Analysis(), cell("i386"), Outcome(Verdict.FAIL, "QEMU ended early"))
    assert res.verdict == Verdict.INFRA_ERROR


def test_exit_code_precedence() -> None:
    assert run_exit_code([Verdict.PASS, Verdict.PASS]) == 0
    assert run_exit_code([Verdict.INFRA_ERROR, Verdict.FAIL, Verdict.USER_ERROR]) == 1
    assert run_exit_code([Verdict.INFRA_ERROR, Verdict.USER_ERROR]) == 2
    assert run_exit_code([Verdict.PASS, Verdict.INFRA_ERROR]) == 3
    assert run_exit_code([Verdict.NOT_RUN]) == 3


def test_junit_lists_the_failure(tmp_path: Path) -> None:
    res = judged("x86_64-gbpages", strict=True)
    res.build_dir, res.boot_id = "/b", "id"
    write_junit(tmp_path / "j.xml", [res])
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    failure = suite.find("testcase[@name='no kernel failures']/failure")
    assert failure is not None and "WARNING in verify_rwx" in failure.get("message", "")


def test_a_repeated_failure_is_one_failure_with_its_count_everywhere(tmp_path: Path) -> None:
    """A hung task reported twice in one boot (tests/data/console/kinds/hung_task.log,
    then again): one failure, 2 times, in the result, the table and JUnit."""
    import io

    from harness.console import ConsoleParser
    excerpt = (Path(__file__).parent / "data" / "console" / "kinds" / "hung_task.log").read_text()
    p = ConsoleParser()
    p.feed(excerpt + excerpt)
    res = judged_from(p.finish(), cell("i386"), strict=True)
    [f] = res.failures
    assert (f.kind, f.failure.count, len(f.failure.repeat_lines)) == ("hung_task", 2, 1)
    assert res.verdict == Verdict.FAIL
    table = io.StringIO()
    print_table([res], table)
    assert f"{f.title} (line {f.line}, 2 times)" in table.getvalue()
    write_junit(tmp_path / "j.xml", [res])
    failure = ET.parse(tmp_path / "j.xml").getroot().find(
        "testsuite/testcase[@name='no kernel failures']/failure")
    assert failure is not None
    assert f"(2 times, lines {f.line}, {f.failure.repeat_lines[0]})" in failure.get("message", "")
