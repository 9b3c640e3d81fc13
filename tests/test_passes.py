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


def test_cpa_flush_calls_count_as_a_pass() -> None:
    quiet = stats.Snapshot("x")
    # a real period-2 window of an x86_64 debug_pagealloc cell (6.12.117, TCG)
    counts = {"__cpa_flush_all": 0, "wbinvd_on_all_cpus": 0, "clflush_cache_range_opt": 0,
              "clflush_cache_range": 0, "__cpa_flush_tlb": 24, "flush_tlb_one_kernel": 452,
              "flush_tlb_all": 12, "do_flush_tlb_all": 24, "flush_tlb_kernel_range": 2,
              "do_kernel_range_flush": 4, "on_each_cpu_cond_mask": 26,
              "smp_call_function_single": 0}
    p = prove("period-2", quiet, quiet, 35.0, counts)
    # only set_memory.c's own flushes: flush_tlb_one_kernel and the rest have other callers
    assert p.ran is True and p.moved == {"flush.__cpa_flush_tlb": 24, "flush.__cpa_flush_all": 0,
                                         "flush.clflush_cache_range_opt": 0}
    others = {k: v for k, v in counts.items() if k != "__cpa_flush_tlb"}
    assert prove("period-2", quiet, quiet, 35.0, others).ran is None


def test_with_debug_pagealloc_the_4k_counter_is_no_evidence() -> None:
    # Page allocation moves it through __kernel_map_pages: not the self-test's.
    p = prove("period-2", snapshot("boot"), snapshot("selftest"), 35.0, debug_pagealloc=True)
    assert "cpa_stats.4k_set_checked" not in p.moved and not p.conclusive
    assert p.ran is True        # 2m_checked and the split counters moved: a pass split pages
    quiet = prove("period-2", snapshot("selftest"), snapshot("selftest"), 35.0,
                  debug_pagealloc=True)
    assert quiet.ran is None    # nothing here can tell: not a failure


def test_json_round_trip() -> None:
    p = prove("period-3", snapshot("boot"), snapshot("selftest"), 35.0)
    assert PeriodProof.from_json(p.to_json()) == p
    assert p.to_json()["ran"] is True
