"""The whole CPA scenario on a fake target (tests/fake_target.py): every way a
cell can end, in seconds and without QEMU. The console output is real captured
kernel output; the verdicts come from the real parser, scenario and judge()."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fake_target import NOT_PASSED, FakeTargets, Script

from harness.cells import SMOKE, Cell
from harness.kernel.build import Build
from harness.results.cell import CellResult, Verdict
from harness.scenarios import cpa
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
