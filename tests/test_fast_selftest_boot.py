"""The fast self-test for real: the x86_64 kernel built from Debian's 6.12
with guest/patches/cpa-test-period.patch, booted with cpa_test.period_ms=1000.

One run of two cells on that kernel, in parallel: the self-test alone, and
under debug_pagealloc with page-cache churn (the nightly stress cell's
shape). Each counts 20 printed passes after the first, every one with its
three split lines; the results say the kernel is patched and with what
period.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import run_passing_matrix

pytestmark = pytest.mark.boot

MATRIX = """
[[cell]]
name = "x86_64-fast"
arch = "x86_64"
selftest_period_ms = 1000
passes = 20

[[cell]]
name = "x86_64-stress"
arch = "x86_64"
cmdline = "debug_pagealloc=on"
workload = "while :; do dd if=/dev/zero of=/tmp/c bs=1M count=32 2>/dev/null; rm -f /tmp/c; done"
selftest_period_ms = 1000
passes = 20
expect = { debug_pagealloc = true, direct_map_all_4k = true }
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return run_passing_matrix(tmp_path_factory.mktemp("fast"), MATRIX)


@pytest.mark.parametrize("cell", ["x86_64-fast", "x86_64-stress"])
def test_each_pass_is_printed_and_counted(run: dict[str, dict[str, Any]], cell: str) -> None:
    res = run[cell]
    assert res["verdict"] == "pass" and not res["failures"]
    fast = res["fast_selftest"]
    assert (fast["patch"], fast["period_ms"], fast["passes_wanted"]) == (
        "cpa-test-period.patch", 1000, 20)
    assert fast["passes_seen"] >= 20 and fast["seconds"] > 0 and fast["per_minute"] > 0
    # every pass on the console, with its three split lines; no period watched
    done = [p for p in res["cpa_selftest"] if p["result"] == "pass"]
    assert len(done) >= 21 and all(len(p["splits"]) == 3 for p in done)
    assert res["periods"] == [] and res["passes_proven"] >= 21
    # the kernel says it is patched: its source id, and the parameter it took
    assert "+patches:" in res["source_id"]
    assert "cpa_test.period_ms=1000" in res["guest"]["cmdline"].split()


def test_under_debug_pagealloc_every_pass_finds_the_direct_map_all_4k(
        run: dict[str, dict[str, Any]]) -> None:
    res = run["x86_64-stress"]
    assert res["workload"]["pid"] > 0 and res["debug_pagealloc"] is True
    for p in res["cpa_selftest"]:
        assert all(s["large"] == 0 and s["gb"] == 0 for s in p["splits"]), p
    assert res["stats"]["pagealloc"]["all_4k_at_boot"]
    assert not res["stats"]["pagealloc"]["split"], res["stats"]["pagealloc"]
