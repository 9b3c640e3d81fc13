"""The fast self-test's console (tests/data/logs/x86_64-fast-selftest.log: a
real x86_64 6.12 guest built with guest/patches/cpa-test-period.patch and
booted with cpa_test.period_ms=1000, powered off by the harness after 20
passes after the first, the first 30 s after boot)."""

from __future__ import annotations

import re
from pathlib import Path

from harness.console import parse_path
from harness.kernel import fast_selftest

LOG = Path(__file__).parent / "data" / "logs" / "x86_64-fast-selftest.log"


def test_every_pass_is_printed_in_full_and_read_as_one() -> None:
    [boot] = parse_path(LOG).boots
    assert fast_selftest.cmdline_word(1000) in boot.cmdline.split()
    passes = boot.cpa_selftest
    # 21 passes in full (its split lines and "ok."), the 22nd cut by the power-off
    assert [p.result for p in passes] == ["pass"] * 21 + ["incomplete"]
    assert all(len(p.splits) == 3 and not p.errors for p in passes[:-1])
    assert not boot.failures
    # the first pass 30 s after boot, as stock; the next ones a second or two apart
    lines = LOG.read_bytes().decode(errors="replace").split("\n")
    # (a line may start after the shell's prompt: the stamp is found, not cut out)
    at = [float(re.search(r"\[ *(\d+\.\d+)\]", lines[p.first_line - 1]).group(1))  # type: ignore[union-attr]
          for p in passes]
    assert 30 < at[0] < 40 and all(0.5 < b - a < 10 for a, b in zip(at, at[1:], strict=False))
    # each pass's split counts are kept: the direct map goes on splitting
    # under the self-test's random changes, pass after pass, towards all 4k
    last_4k = [p.splits[-1].pages_4k for p in passes[:-1]]
    assert last_4k == sorted(last_4k) and last_4k[0] == 142304 and last_4k[-1] == 524256
