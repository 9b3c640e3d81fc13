"""Flush accounting: calls of the CPA and TLB flush paths, counted in a window.

The split side of CPA shows in the self-test's lines and the direct map; the
flush side does not, yet it is where CPA's cost lives: a write-back of every
cache on every CPU (WBINVD) costs far more than flushing a range line by line
(CLFLUSH) or flushing TLB entries only. The kernel's function profiler
(FUNCTION_PROFILER, the `flush-accounting` fragment) counts calls per
function between `echo 1` and `echo 0` to function_profile_enabled; enabling
resets the counts, so a window is exactly that span.

Only functions the compiler kept out of line can be traced; the profiler's
filter list (available_filter_functions) says which of the wanted ones this
build has, and the rest are reported as not countable, never as zero.

Times per call come with FUNCTION_GRAPH_TRACER. Under TCG they measure the
emulator, not the hardware, so they are withheld there and the result says so.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.probes import Runner

TRACEFS = "/sys/kernel/tracing"

# function -> (group, what a call means). arch/x86/mm/pat/set_memory.c,
# arch/x86/mm/tlb.c, kernel/smp.c of 6.12.
FLUSH_PATHS: dict[str, tuple[str, str]] = {
    "__cpa_flush_all": ("full_flush", "TLB flush and WBINVD on one CPU (cpa_flush_all's IPI)"),
    "wbinvd_on_all_cpus": ("full_flush", "WBINVD on every CPU"),
    "clflush_cache_range_opt": ("cache_range", "CLFLUSH of one range (cpa_flush, per page)"),
    "clflush_cache_range": ("cache_range", "CLFLUSH of one range, with fences"),
    "__cpa_flush_tlb": ("cpa_tlb", "one CPU's TLB flush of a CPA range (IPI handler)"),
    "flush_tlb_one_kernel": ("cpa_tlb", "one kernel TLB entry"),
    "flush_tlb_all": ("global_tlb", "every CPU's whole TLB"),
    "do_flush_tlb_all": ("global_tlb", "one CPU's whole TLB (flush_tlb_all's IPI)"),
    "flush_tlb_kernel_range": ("global_tlb", "a kernel range on every CPU"),
    "do_kernel_range_flush": ("global_tlb", "a kernel range on one CPU (IPI handler)"),
    "on_each_cpu_cond_mask": ("ipi", "a function run on each (chosen) CPU: IPIs to the others"),
    "smp_call_function_single": ("ipi", "a function run on one other CPU: one IPI"),
}
GROUPS = ("full_flush", "cache_range", "cpa_tlb", "global_tlb", "ipi")

# "  __cpa_flush_tlb                     1234    5678 us     4.601 us    1.2 us"
STAT_LINE = re.compile(r"^\s+(\S+)\s+(\d+)(?:\s+([\d.]+) us)?")
ALL_ENABLED = "#### all functions enabled ####"


class Unavailable(Exception):
    """Flush accounting cannot run in this guest; the message says why."""


@dataclass
class Window:
    label: str
    counts: dict[str, int] = field(default_factory=dict)        # per function, all CPUs
    groups: dict[str, int] = field(default_factory=dict)
    time_us: dict[str, float] | None = None     # total per function; None when withheld

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_trace_stat(text: str) -> tuple[dict[str, int], dict[str, float]]:
    """Hits (and total microseconds, when shown) per function from one or more
    trace_stat/function<N> files, summed over CPUs."""
    hits: dict[str, int] = {}
    times: dict[str, float] = {}
    for line in text.splitlines():
        if line.lstrip().startswith(("Function", "--------")):
            continue
        m = STAT_LINE.match(line)
        if m is None:
            continue
        name = m.group(1)
        hits[name] = hits.get(name, 0) + int(m.group(2))
        if m.group(3) is not None:
            times[name] = times.get(name, 0.0) + float(m.group(3))
    return hits, times


def grouped(counts: dict[str, int]) -> dict[str, int]:
    out = dict.fromkeys(GROUPS, 0)
    for name, n in counts.items():
        if name in FLUSH_PATHS:
            out[FLUSH_PATHS[name][0]] += n
    return out


class Profiler:
    """The function profiler in one guest, limited to the flush paths it can trace."""

    def __init__(self, run: Runner, show_times: bool) -> None:
        self.run = run
        self.show_times = show_times
        self.traceable: list[str] = []
        self.untraceable: list[str] = []

    def _ok(self, cmd: str, what: str) -> str:
        status, out = self.run(cmd)
        if status != 0:
            raise Unavailable(f"{what} failed: {out.strip()[:200]}")
        return out

    def setup(self) -> None:
        """Check the profiler is there and idle, and filter it to the flush paths."""
        t = TRACEFS
        status, _ = self.run(f"test -e {t}/function_profile_enabled")
        if status != 0:
            raise Unavailable(f"the kernel has no {t}/function_profile_enabled: build it with "
                              "the flush-accounting fragment (FUNCTION_PROFILER)")
        enabled = self._ok(f"cat {t}/function_profile_enabled", "reading the profiler").strip()
        tracer = self._ok(f"cat {t}/current_tracer", "reading current_tracer").strip()
        flt = self._ok(f"cat {t}/set_ftrace_filter", "reading set_ftrace_filter").strip()
        if enabled != "0" or tracer != "nop" or (flt and flt != ALL_ENABLED):
            raise Unavailable(f"tracing is already in use in the guest (profiler {enabled}, "
                              f"tracer {tracer}, filter {flt[:60]!r}): not touching it")
        names = " ".join(shlex.quote(n) for n in FLUSH_PATHS)
        out = self._ok(f"for f in {names}; do grep -qx \"$f\" {t}/available_filter_functions "
                       f"&& echo \"$f\"; done; true", "reading available_filter_functions")
        found = set(out.split())
        self.traceable = [n for n in FLUSH_PATHS if n in found]
        self.untraceable = [n for n in FLUSH_PATHS if n not in found]
        if not self.traceable:
            raise Unavailable("none of the flush paths is traceable in this build")
        self._ok(f"echo {' '.join(self.traceable)} > {t}/set_ftrace_filter",
                 "setting set_ftrace_filter")

    def start(self) -> None:
        self._ok(f"echo 1 > {TRACEFS}/function_profile_enabled", "starting the profiler")

    def stop(self, label: str) -> Window:
        self._ok(f"echo 0 > {TRACEFS}/function_profile_enabled", "stopping the profiler")
        return self.read(label)

    def read(self, label: str) -> Window:
        text = self._ok(f"cat {TRACEFS}/trace_stat/function*", "reading trace_stat")
        hits, times = parse_trace_stat(text)
        counts = {n: hits.get(n, 0) for n in self.traceable}
        w = Window(label, counts, grouped(counts))
        if self.show_times and times:
            w.time_us = {n: round(times.get(n, 0.0), 3) for n in self.traceable}
        return w

    def teardown(self) -> None:
        self.run(f"echo 0 > {TRACEFS}/function_profile_enabled; "
                 f"echo > {TRACEFS}/set_ftrace_filter")
