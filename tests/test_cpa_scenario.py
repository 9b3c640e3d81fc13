"""The whole CPA scenario on a fake target (tests/fake_target.py): every way a
cell can end, in seconds and without QEMU. The console output is real captured
kernel output; the verdicts come from the real parser, scenario and judge()."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fake_target import NOT_PASSED, FakeTargets, Script

from harness.cells import SMOKE, Cell
from harness.errors import BuildError
from harness.kernel.build import Build
from harness.results.cell import CellResult, Verdict
from harness.scenarios import cpa, exercise
from harness.scenarios.context import CellContext
from harness.target import console

I386 = next(c for c in SMOKE if c.name == "i386")


@pytest.fixture(autouse=True)
def short_periods(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kthread's 30 s sleep, scaled down: the fake kernel runs on the fake's clock.
    monkeypatch.setattr(cpa, "SELFTEST_PERIOD", 1.0)
    monkeypatch.setattr(cpa, "PERIOD_SLACK", 0.5)
    # A report (or a pass) the kernel ends without a following line counts as
    # complete after this much silence.
    monkeypatch.setattr(console, "QUIET_FLUSH", 0.5)


def run_cell(tmp_path: Path, script: Script, cell: Cell = I386) -> tuple[CellResult, FakeTargets]:
    config = tmp_path / ".config"
    config.write_text("CONFIG_CPA_DEBUG=y\n")
    b = Build("i386", tmp_path, tmp_path / "bzImage", tmp_path / "vmlinux", config,
              "tarball:fake", "0" * 64, True, 0.0, tmp_path / "build.log", "6.12.117")
    targets = FakeTargets(script)
    ctx = CellContext(b, targets, tmp_path / "initrd", tmp_path / "cell", [], "tcg", "test")
    return cpa.run(cell, ctx), targets


def test_a_first_pass_and_a_silent_period_pass(tmp_path: Path) -> None:
    res, targets = run_cell(tmp_path, Script())
    assert (res.verdict, res.reason) == (Verdict.PASS, "")
    assert res.periods_watched == 1 and res.kernel_version == "6.12.117"
    assert [p["result"] for p in res.cpa_selftest] == ["pass"]
    assert res.stats["boot"]["meminfo"]["DirectMap4k"] > 0
    assert res.target == {"kind": "fake"}
    machine = targets.made[0].machine
    assert "cat /proc/cmdline" in machine.commands and machine.ssh_commands > 5
    # the silent pass of the watched period, proven by cpa_stats
    [period] = res.periods
    assert period.ran and period.moved["cpa_stats.4k_set_checked"] > 0
    assert res.passes_proven() == 2 and res.selftest_summary() == "pass +1 silent"


def test_a_stuck_self_test_fails_after_one_period_more(tmp_path: Path) -> None:
    res, _ = run_cell(tmp_path, Script(stuck=True))
    assert (res.verdict, res.reason) == (Verdict.FAIL, "cpa_selftest: CPA self-test ran no pass")
    [period] = res.periods
    assert period.ran is False and period.moved["cpa_stats.4k_set_checked"] == 0
    # watched twice as long as a period before it was called stuck
    assert [s["label"] for s in res.stats["snapshots"]][-2:] == ["period-2", "period-2-longer"]
    assert period.seconds >= 2 * (cpa.SELFTEST_PERIOD + cpa.PERIOD_SLACK)
    [f] = res.failures
    assert f.failure.report[0].startswith("period-2: cpa_stats.4k_set_checked +0")
    assert res.passes_proven() == 1 and res.selftest_summary() == "pass stuck"


def test_a_pass_late_under_load_is_not_taken_for_none(tmp_path: Path) -> None:
    # The next pass comes only after the period (the kernel slowed down): the
    # longer watch sees it, and the cell passes.
    period = cpa.SELFTEST_PERIOD + cpa.PERIOD_SLACK
    res, _ = run_cell(tmp_path, Script(pass_every=period * 2.2))
    assert (res.verdict, res.reason) == (Verdict.PASS, "")
    [p] = res.periods
    assert p.ran and p.seconds > 2 * period
    assert [s["label"] for s in res.stats["snapshots"]][-2:] == ["period-2", "period-2-longer"]


def test_not_passed_in_a_later_period_fails(tmp_path: Path) -> None:
    res, _ = run_cell(tmp_path, Script(later=[(1.0, NOT_PASSED)]))
    assert res.verdict == Verdict.FAIL
    assert "pageattr_test" in res.reason or "NOT PASSED" in res.reason, res.reason
    assert any(f.kind == "cpa_selftest" for f in res.failures), res.failures


def test_a_guest_that_stops_answering_is_a_hang(tmp_path: Path) -> None:
    res, _ = run_cell(tmp_path, Script(hang_after=0.8))
    assert res.verdict == Verdict.FAIL and res.reason.startswith("hang: "), res.reason
    assert [f.kind for f in res.failures] == ["hang"]



FAST_I386 = replace(I386, selftest_period_ms=100, passes=5, periods=0,
                    cmdline="cpa_test.period_ms=100")


def test_a_fast_self_test_counts_its_printed_passes(tmp_path: Path) -> None:
    res, _ = run_cell(tmp_path, Script(period_ms=100, printed_passes=8, pass_every=0.2),
                      FAST_I386)
    assert (res.verdict, res.reason) == (Verdict.PASS, "")
    assert res.periods == [] and res.periods_watched == 0
    f = res.fast_selftest
    # counted from the first pass: those printed while the harness read its
    # statistics count too, so there may be more than wanted
    assert (f["patch"], f["period_ms"], f["passes_wanted"]) == ("cpa-test-period.patch", 100, 5)
    assert 5 <= f["passes_seen"] <= 8
    # passes 0.2 s apart: 300 a minute, give or take the console's reading
    assert 200 <= f["per_minute"] <= 375, f
    # each pass is proof of itself, split lines and all
    assert res.passes_proven() >= 6 and res.selftest_summary().endswith(" pass")
    assert all(len(p["splits"]) == 3 for p in res.cpa_selftest)
    assert [s["label"] for s in res.stats["snapshots"]][-1] == "passes"


def test_a_fast_self_test_that_stops_printing_passes_is_stuck(tmp_path: Path) -> None:
    res, _ = run_cell(tmp_path, Script(period_ms=100, printed_passes=2, pass_every=0.2),
                      FAST_I386)
    assert (res.verdict, res.reason) == (Verdict.FAIL, "cpa_selftest: CPA self-test ran no pass")
    [f] = res.failures
    assert f.failure.report[0].startswith("2 of 5 passes after the first, none in the last "), \
        f.failure.report
    assert res.fast_selftest["passes_seen"] == 2


def test_a_fast_cell_on_a_stock_kernel_is_refused(tmp_path: Path) -> None:
    res, _ = run_cell(tmp_path, Script(period_ms=None), FAST_I386)
    assert res.verdict == Verdict.USER_ERROR
    assert res.reason.startswith("the kernel does not run the fast self-test "
                                 "(/sys/module/cpa_test/parameters/period_ms: cat: can't open"), \
        res.reason

def test_a_kexec_that_never_arrives_fails_the_kernel(tmp_path: Path) -> None:
    cell = replace(I386, kexec=("kexec_load",))
    res, _ = run_cell(tmp_path, Script(kexec_arrives=False), cell)
    assert res.verdict == Verdict.FAIL
    assert res.reason.startswith("kexec: no 'Starting new kernel'"), res.reason
    assert len(res.kexec) == 1 and not res.kexec[0].verified


def test_a_kexec_round_trip_is_proven(tmp_path: Path) -> None:
    cell = replace(I386, kexec=("kexec_load",))
    res, _ = run_cell(tmp_path, Script(), cell)
    assert (res.verdict, res.reason) == (Verdict.PASS, "")
    [rt] = res.kexec
    assert rt.verified and rt.selftest == "pass" and rt.boot == 1
    assert rt.boot_id_after != rt.boot_id_before


def test_a_guest_that_resets_fails_with_the_targets_account(tmp_path: Path) -> None:
    res, _ = run_cell(tmp_path, Script(reset_after=0.8))
    assert res.verdict == Verdict.FAIL and res.reason.startswith("reset: "), res.reason
    assert res.target["ended"]["kind"] == "reset"
    assert [f.kind for f in res.failures] == ["reset"]


def test_ssh_dying_mid_command_while_the_serial_shell_answers_is_infrastructure(
        tmp_path: Path) -> None:
    res, _ = run_cell(tmp_path, Script(ssh_dies_after=3))
    assert res.verdict == Verdict.INFRA_ERROR, res.reason
    assert "ssh to the guest failed" in res.reason and "the serial shell answers" in res.reason


def test_ssh_dying_with_the_whole_guest_is_a_hang(tmp_path: Path) -> None:
    res, _ = run_cell(tmp_path, Script(ssh_dies_after=3, dies_with_ssh=True))
    assert res.verdict == Verdict.FAIL and res.reason.startswith("hang: "), res.reason


def exercise_lines(mode: str) -> list[str]:
    """A mode's kernel log lines from the real run in tests/data/exerciser."""
    text = (Path(__file__).parent / "data" / "exerciser" / "x86_64-6.12-clflush.log").read_text()
    return [ln for ln in text.splitlines() if f"cpa_exercise: run={mode}-" in ln
            or (mode == "alloc-fail" and "FAULT_INJECTION" in ln)]


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ko = tmp_path / "cpa_exercise.ko"
    ko.write_bytes(b"\x7fELF")
    monkeypatch.setattr(exercise.exerciser, "build_module", lambda build: ko)
    return ko


def test_the_exerciser_runs_each_mode_after_the_periods(tmp_path: Path, module: Path) -> None:
    script = Script(exercise_lines={m: exercise_lines(m) for m in ("cache", "alloc-fail")})
    res, targets = run_cell(tmp_path, script, replace(I386, exercise=("cache", "alloc-fail")))
    assert (res.verdict, res.reason) == (Verdict.PASS, "")
    [cache, fail] = res.exercise["modes"]
    assert [m["mode"] for m in (cache, fail)] == ["cache", "alloc-fail"]
    assert cache["problems"] == [] and cache["done"]["mismatches"] == 0
    assert fail["summary"]["injected"] == fail["injected_reports"] == 3
    machine = targets.made[0].machine
    # one insmod per mode, each with its own run id, after the self-test's period
    assert [mode for mode, _ in machine.exercise_runs] == ["cache", "alloc-fail"]
    assert len({run for _, run in machine.exercise_runs}) == 2
    first = next(i for i, c in enumerate(machine.commands) if "insmod" in c)
    assert res.periods_watched == 1 and first > len(machine.commands) // 2
    assert any("fail_page_alloc/ignore-gfp-wait" in c for c in machine.commands)


def test_an_exerciser_that_never_ends_is_the_kernels_hang(tmp_path: Path, module: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setattr(exercise, "POLL", 0.05)
    script = Script(exercise_lines={"cache": exercise_lines("cache")}, exercise_stuck=True)
    res, _ = run_cell(tmp_path, script, replace(I386, exercise=("cache",)))
    assert res.verdict == Verdict.FAIL and res.reason.startswith("hang: "), res.reason
    assert "CPA exerciser" in res.reason


def test_a_page_with_another_attribute_fails_the_cell(tmp_path: Path, module: Path) -> None:
    lines = exercise_lines("cache")
    rid = lines[0].split("run=")[1].split()[0]
    lines.insert(-1, f"[   36.700000][  T127] cpa_exercise: run={rid} mismatch after=uc "
                     "addr=0xffff888004a3c000 want=UC- found=WB level=4k entry=0x8000000004a3c163")
    res, _ = run_cell(tmp_path, Script(exercise_lines={"cache": lines}),
                      replace(I386, exercise=("cache",)))
    assert (res.verdict, res.reason) == (Verdict.FAIL, "cpa_exercise: cache: page attribute "
                                                       "mismatch")
    [f] = res.failures
    assert "page 0xffff888004a3c000 is WB after uc, not UC-" in f.failure.report[0]


def test_without_ssh_or_a_module_the_modes_are_unavailable(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    def broken(build: Build) -> Path:
        raise BuildError("building the CPA exerciser module for i386 failed (log: x)",
                         errors=["guest/exerciser/cpa_exercise.c:12:1: error: expected ';'"])
    monkeypatch.setattr(exercise.exerciser, "build_module", broken)
    res, _ = run_cell(tmp_path, Script(), replace(I386, exercise=("cache",)))
    assert res.verdict == Verdict.PASS
    assert res.exercise["unavailable"].endswith("cpa_exercise.c:12:1: error: expected ';'")
    (tmp_path / "b").mkdir()
    res, _ = run_cell(tmp_path / "b", Script(), replace(I386, exercise=("cache",), ssh=False))
    assert res.exercise["unavailable"] == "the exerciser needs ssh into the guest"
