"""The selfcheck scenario's judgement, with provocations scripted (no QEMU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.cells import SELFCHECK
from harness.kernel.build import Build
from harness.results.cell import Verdict
from harness.scenarios import selfcheck
from harness.scenarios.context import CellContext
from harness.target.base import Fleet
from harness.target.qemu import AccelChoice
from harness.target.vm import QemuTargets

NO_LKDTM = {"feature": "lkdtm", "title": "LKDTM", "options": ["CONFIG_LKDTM"],
            "why": ["depends on RUNTIME_TESTING_MENU [=n]"],
            "without": "the selfcheck scenario cannot provoke failures"}
NO_LOCKUPS = {"feature": "lockup-detectors", "title": "the lockup detectors",
              "options": ["CONFIG_SOFTLOCKUP_DETECTOR"], "why": ["not defined"],
              "without": "soft lockups are not reported"}


def context(tmp_path: Path, *unavailable: dict[str, Any]) -> CellContext:
    b = Build("x86_64", tmp_path, tmp_path / "bzImage", tmp_path / "vmlinux",
              tmp_path / ".config", "tarball:x", "0" * 64, True, 0.0, tmp_path / "log",
              "6.1.192", tuple(unavailable))
    targets = QemuTargets(SELFCHECK[0], b.image, tmp_path / "initrd", AccelChoice("tcg", "test"),
                          Fleet())
    return CellContext(b, targets, tmp_path / "initrd", tmp_path, [], "tcg")


def scripted(monkeypatch: pytest.MonkeyPatch, results: dict[str, list[str]]) -> list[str]:
    """provoke() answers from `results` (crash -> results in order); the calls made."""
    calls: list[str] = []

    def provoke(p: selfcheck.Provocation, *_: Any) -> dict[str, Any]:
        calls.append(p.crash)
        queue = results.get(p.crash)
        got = queue.pop(0) if queue else "caught"
        return {"crash": p.crash, "expected_kind": p.kind, "result": got,
                "reason": "scripted", "found": [{"kind": p.kind}] if got == "caught" else []}
    monkeypatch.setattr(selfcheck, "provoke", provoke)
    return calls


def test_every_provocation_caught_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = scripted(monkeypatch, {})
    res = selfcheck.run(SELFCHECK[0], context(tmp_path))
    assert res.verdict == Verdict.PASS and len(calls) == len(selfcheck.PROVOCATIONS)


def test_a_provocation_never_delivered_is_the_harness_and_is_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = scripted(monkeypatch, {"SOFTLOCKUP": ["not-delivered", "caught"]})
    res = selfcheck.run(SELFCHECK[0], context(tmp_path))
    assert res.verdict == Verdict.PASS and calls.count("SOFTLOCKUP") == 2
    [soft] = [c for c in res.selfcheck if c["crash"] == "SOFTLOCKUP"]
    assert soft["retried_after"].startswith("not-delivered")
    # twice not delivered: an infrastructure error, never "the harness is blind"
    scripted(monkeypatch, {"SOFTLOCKUP": ["not-delivered", "not-delivered"]})
    res = selfcheck.run(SELFCHECK[0], context(tmp_path))
    assert res.verdict == Verdict.INFRA_ERROR
    assert "SOFTLOCKUP: not-delivered" in res.reason
    # delivered and unseen is the harness's eyes failing
    scripted(monkeypatch, {"SOFTLOCKUP": ["missed"]})
    assert selfcheck.run(SELFCHECK[0], context(tmp_path)).verdict == Verdict.FAIL


def test_unavailable_features_leave_out_what_needs_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = scripted(monkeypatch, {})
    res = selfcheck.run(SELFCHECK[0], context(tmp_path, NO_LOCKUPS))
    assert res.verdict == Verdict.PASS
    assert "SOFTLOCKUP" not in calls and "HUNG_TASK" not in calls and "WARNING" in calls
    assert "not provoked: SOFTLOCKUP, HUNG_TASK (the lockup detectors unavailable on " \
           "6.1.192" in res.reason
    # without LKDTM there is nothing to provoke: said, and not a pass
    calls = scripted(monkeypatch, {})
    res = selfcheck.run(SELFCHECK[0], context(tmp_path, NO_LKDTM))
    assert calls == [] and res.verdict == Verdict.USER_ERROR
    assert res.reason.startswith("nothing to provoke: LKDTM unavailable on 6.1.192: CONFIG_LKDTM")
