"""judge() on its own: one table row per rule, strongest finding first."""

from __future__ import annotations

from typing import Any

import pytest

from harness.cells import Expect
from harness.console.model import Failure
from harness.results.cell import CellFailure, CellResult, Verdict
from harness.scenarios.judge import Outcome, judge

PASS = Outcome(Verdict.PASS)
BOOTED = [{"boot": 0, "kernel": "6.12.117", "ended_by": None, "failures": 0}]
GOOD_PASS = [{"result": "pass", "boot": 0}]
WARNING = Failure("warning", "WARNING in verify_rwx", 9, 9, 9, ())
WARN = CellFailure(WARNING, boot=0)
KNOWN = CellFailure(WARNING, boot=0, known=True, known_reason="a known issue")
HANG = CellFailure.seen_by_harness("hang", "no CPA self-test verdict within 180s", 0, [])
GB_STATS = {"boot": {"ptdump": {"DirectMap4k": 4096, "DirectMap2M": 2048,
                                "DirectMap1G": 3145728}}}


def result(**kw: Any) -> CellResult:
    base: dict[str, Any] = {"boots": BOOTED, "cpa_selftest": GOOD_PASS}
    return CellResult(name="c", arch="x86_64", **{**base, **kw})


ROWS: list[tuple[str, Outcome, dict[str, Any], Expect | None, bool, Verdict, str]] = [
    ("all steps done, one pass", PASS, {}, None, False, Verdict.PASS, ""),
    ("an unknown failure fails", PASS, {"failures": [WARN]}, None, False, Verdict.FAIL,
     "warning: WARNING in verify_rwx"),
    ("a known failure does not", PASS, {"failures": [KNOWN]}, None, False, Verdict.PASS, ""),
    ("a failed pass fails", PASS, {"cpa_selftest": [{"result": "fail", "boot": 0}]}, None,
     False, Verdict.FAIL, "CPA self-test NOT PASSED"),
    ("no pass completed fails", PASS, {"cpa_selftest": []}, None, False, Verdict.FAIL,
     "no CPA self-test pass completed"),
    ("a session without a pass was not run", PASS, {"cpa_selftest": []}, None, True,
     Verdict.NOT_RUN, "the session ended before"),
    ("the steps' failure stands", Outcome(Verdict.FAIL, "hang: " + HANG.title),
     {"failures": [HANG]}, None, False, Verdict.FAIL, "hang: " + HANG.title),
    ("a kernel failure outranks an infrastructure error",
     Outcome(Verdict.INFRA_ERROR, "ssh died"), {"failures": [WARN]}, None, False,
     Verdict.FAIL, "warning: WARNING in verify_rwx"),
    ("a failed pass outranks a user error", Outcome(Verdict.USER_ERROR, "runtime check"),
     {"cpa_selftest": [{"result": "fail", "boot": 0}]}, None, False, Verdict.FAIL,
     "CPA self-test NOT PASSED"),
    ("an infrastructure error without kernel evidence stands",
     Outcome(Verdict.INFRA_ERROR, "ssh died"), {}, None, False, Verdict.INFRA_ERROR,
     "ssh died"),
    ("the machine gone before the kernel printed is the host's",
     Outcome(Verdict.FAIL, "QEMU ended"), {"boots": [], "cpa_selftest": [],
                                           "serial_log": "/s.log"}, None, False,
     Verdict.INFRA_ERROR, "QEMU ended; no kernel output (see /s.log)"),
    ("GB pages expected and seen", PASS, {"gbpages": True, "stats": GB_STATS},
     Expect(gbpages=True), False, Verdict.PASS, ""),
    ("GB pages expected, not used", PASS, {"gbpages": False}, Expect(gbpages=True), False,
     Verdict.USER_ERROR, "cell expectation not met: GB pages expected"),
    ("GB pages used where none are expected", PASS, {"gbpages": True, "stats": GB_STATS},
     Expect(gbpages=False), False, Verdict.USER_ERROR, "cell expectation not met: GB pages"),
    ("debug_pagealloc expected on, off", PASS, {"debug_pagealloc": False},
     Expect(debug_pagealloc=True), False, Verdict.USER_ERROR,
     "cell expectation not met: debug_pagealloc expected on"),
    ("all 4k expected, large pages left", PASS,
     {"stats": {"after_selftest": {"ptdump": {"DirectMap4k": 4, "DirectMap2M": 2048}}}},
     Expect(direct_map_all_4k=True), False, Verdict.USER_ERROR, "cell expectation not met: "
     "direct map expected all 4k"),
    ("expectations are not checked on a failed cell", Outcome(Verdict.FAIL, "hang: x"),
     {"gbpages": False, "failures": [HANG]}, Expect(gbpages=True), False, Verdict.FAIL,
     "hang: " + HANG.title),
]


@pytest.mark.parametrize("steps,fields,expect,session,verdict,reason",
                         [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_judge(steps: Outcome, fields: dict[str, Any], expect: Expect | None, session: bool,
               verdict: Verdict, reason: str) -> None:
    res = result(**fields)
    before = res.to_json()
    got = judge(steps, res, expect, session=session)
    assert got.verdict == verdict and got.reason.startswith(reason), got
    assert res.to_json() == before      # pure: it reads the result, never changes it


def check(result: str, kind: str = "warning", found: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"crash": result.upper(), "expected_kind": kind, "result": result,
            "reason": "r", "found": [{"kind": k} for k in found]}


SELFCHECK_ROWS = [
    ("every provocation caught", [check("caught", found=("warning",))], Verdict.PASS),
    ("one missed: the harness is blind", [check("caught"), check("missed")], Verdict.FAIL),
    ("no trigger is blindness too", [check("no-trigger")], Verdict.FAIL),
    ("not delivered is the harness's infrastructure", [check("not-delivered")],
     Verdict.INFRA_ERROR),
    ("nothing provocable is a user error", [check("unavailable")], Verdict.USER_ERROR),
    ("nothing run at all", [], Verdict.NOT_RUN),
]


@pytest.mark.parametrize("checks,verdict", [r[1:] for r in SELFCHECK_ROWS],
                         ids=[r[0] for r in SELFCHECK_ROWS])
def test_judge_selfcheck(checks: list[dict[str, Any]], verdict: Verdict) -> None:
    res = CellResult(name="selfcheck-x86_64", arch="x86_64", scenario="selfcheck",
                     selfcheck=checks)
    assert judge(PASS, res).verdict == verdict
