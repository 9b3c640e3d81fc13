"""Flush accounting on function-profiler output captured from real guests."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.probes import flush

DATA = Path(__file__).parent / "data" / "flush"
X86_64 = (DATA / "x86_64-trace_stat.txt").read_text()
I386_PAE = (DATA / "i386-pae-trace_stat.txt").read_text()


def test_hits_and_times_are_summed_over_cpus() -> None:
    hits, times = flush.parse_trace_stat(X86_64)
    # two CPUs' files: 543 + 295 calls of on_each_cpu_cond_mask
    assert hits["on_each_cpu_cond_mask"] == 543 + 295
    assert hits["flush_tlb_one_kernel"] == 3577 + 3577
    assert times["on_each_cpu_cond_mask"] == pytest.approx(113190.5 + 40307.78)
    assert set(hits) <= set(flush.FLUSH_PATHS)


def test_without_the_graph_tracer_there_are_hits_only() -> None:
    hits, times = flush.parse_trace_stat(I386_PAE)
    assert hits["__cpa_flush_tlb"] == 218 + 218 and times == {}


def test_groups() -> None:
    hits, _ = flush.parse_trace_stat(X86_64)
    g = flush.grouped(hits)
    assert g["cpa_tlb"] == hits["__cpa_flush_tlb"] + hits["flush_tlb_one_kernel"]
    assert g["full_flush"] == 0 and g["cache_range"] == 0    # the self-test changes no cache mode
    assert g["ipi"] == hits["on_each_cpu_cond_mask"] + hits.get("smp_call_function_single", 0)


class Guest:
    """The profiler's files as a tiny in-memory tracefs, for the setup logic."""

    def __init__(self, available: list[str], tracer: str = "nop", enabled: str = "0",
                 filt: str = flush.ALL_ENABLED, stat: str = I386_PAE) -> None:
        self.files = {"function_profile_enabled": enabled, "current_tracer": tracer,
                      "set_ftrace_filter": filt}
        self.available = available
        self.stat = stat
        self.log: list[str] = []

    def __call__(self, cmd: str) -> tuple[int, str]:
        self.log.append(cmd)
        t = flush.TRACEFS
        if cmd.startswith(f"test -e {t}/function_profile_enabled"):
            return 0, ""
        if cmd.startswith("for f in"):
            return 0, "".join(f"{n}\n" for n in flush.FLUSH_PATHS if n in self.available)
        if cmd.startswith(f"cat {t}/trace_stat"):
            return 0, self.stat
        if cmd.startswith("cat "):
            return 0, self.files[cmd.split("/")[-1]] + "\n"
        if cmd.startswith("echo "):
            return 0, ""
        raise AssertionError(cmd)


def test_untraceable_functions_are_named_not_counted_as_zero() -> None:
    g = Guest(available=["__cpa_flush_tlb", "flush_tlb_all", "on_each_cpu_cond_mask"])
    p = flush.Profiler(g, show_times=False)
    p.setup()
    assert p.traceable == ["__cpa_flush_tlb", "flush_tlb_all", "on_each_cpu_cond_mask"]
    assert "clflush_cache_range_opt" in p.untraceable
    w = p.stop("period")
    assert set(w.counts) == set(p.traceable)          # nothing invented for the others
    assert w.counts["__cpa_flush_tlb"] == 436 and w.time_us is None
    assert any(c.startswith("echo __cpa_flush_tlb flush_tlb_all on_each_cpu_cond_mask >")
               for c in g.log)


@pytest.mark.parametrize("busy", [dict(tracer="function"), dict(enabled="1"),
                                  dict(filt="schedule")])
def test_tracing_in_use_is_left_alone(busy: dict[str, str]) -> None:
    g = Guest(available=list(flush.FLUSH_PATHS), **busy)
    with pytest.raises(flush.Unavailable, match="already in use"):
        flush.Profiler(g, show_times=False).setup()
    assert not [c for c in g.log if c.startswith("echo")]      # nothing written


def test_a_kernel_without_the_profiler() -> None:
    def run(cmd: str) -> tuple[int, str]:
        return (1, "") if cmd.startswith("test -e") else (0, "")
    with pytest.raises(flush.Unavailable, match="flush-accounting fragment"):
        flush.Profiler(run, show_times=False).setup()


def test_times_only_when_asked() -> None:
    g = Guest(available=list(flush.FLUSH_PATHS), stat=X86_64)
    p = flush.Profiler(g, show_times=True)
    p.setup()
    w = p.stop("period")
    assert w.time_us is not None and w.time_us["flush_tlb_all"] == pytest.approx(
        89160.28 + 20360.87, abs=0.01)
