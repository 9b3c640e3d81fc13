"""Silent passes proven (harness/probes/passes.py) on captured /proc and debugfs files."""

from __future__ import annotations

from pathlib import Path

from harness.probes import stats
from harness.probes.passes import PeriodProof, prove

STATS = Path(__file__).parent / "data" / "stats"


def snapshot(when: str, arch: str = "i386", cpa_stats: bool = True) -> stats.Snapshot:
    def read(name: str) -> str:
        return (STATS / f"{arch}-{when}-{name}.txt").read_text()
    return stats.Snapshot(when, vmstat=stats.parse_vmstat(read("vmstat")),
                          cpa_stats=stats.parse_cpa_stats(read("cpa_stats")) if cpa_stats
                          else None)


def test_a_pass_moves_the_4k_counter() -> None:
    p = prove("period-2", snapshot("boot"), snapshot("selftest"), 35.2)
    assert p.ran is True and p.conclusive
    assert p.moved["cpa_stats.4k_set_checked"] == 31529 - 4045
    assert p.describe().startswith("cpa_stats.4k_set_checked +27484, ")
    assert p.describe().endswith(" in 35 s")


def test_nothing_moved_where_every_pass_would_is_proof_of_none() -> None:
    p = prove("period-2", snapshot("selftest"), snapshot("selftest"), 70.0)
    assert p.ran is False
    assert set(p.moved.values()) == {0}


def test_without_cpa_stats_a_quiet_period_proves_nothing() -> None:
    # The split counters move only when a pass splits a large page.
    before = snapshot("selftest", cpa_stats=False)
    p = prove("period-2", before, snapshot("selftest", cpa_stats=False), 35.0)
    assert p.ran is None and not p.conclusive
    moved = prove("period-2", snapshot("boot", cpa_stats=False), before, 35.0)
    assert moved.ran is True       # ...but when they move, a pass ran


def test_flush_calls_count_as_a_pass() -> None:
    quiet = stats.Snapshot("x")
    p = prove("period-2", quiet, quiet, 35.0, {"cpa_tlb": 12, "ipi": 3, "cache_range": 0})
    # only the CPA groups the window counted; the IPI group is not a CPA call's own
    assert p.ran is True and p.moved == {"flush.cache_range": 0, "flush.cpa_tlb": 12}


def test_json_round_trip() -> None:
    p = prove("period-3", snapshot("boot"), snapshot("selftest"), 35.0)
    assert PeriodProof.from_json(p.to_json()) == p
    assert p.to_json()["ran"] is True
