"""Silent passes proven: did the CPA self-test run a pass in a watched period?

After its first pass the self-test prints nothing while it passes
(cpa-test.c: `print` counts down to 0), so a stuck self-test thread looks
exactly like a passing one on the console. What a pass leaves behind:

- cpa_stats (X86_CPA_STATISTICS): every change_page_attr() on a 4k page counts
  in `4k_set_checked` (set_memory.c __change_page_attr, cpa_inc_4k_install),
  and every pass changes its test ranges' 4k pages: this one moves in every
  pass, so it alone can also show that none ran;
- the direct-map split counters (/proc/vmstat): a pass that splits a large page;
- the function profiler's calls of set_memory.c's own flush functions
  (cpa_flush's IPI handler `__cpa_flush_tlb`, `__cpa_flush_all`,
  `clflush_cache_range_opt`), where flush accounting runs.

With debug_pagealloc on, every page allocation and free maps or unmaps the
page through __change_page_attr, so the 4k counter moves without the
self-test: it is then neither evidence nor proof, and only the other signals
count.

The self-test sleeps 30 s between passes (do_pageattr_test:
schedule_timeout_interruptible(HZ*30)) and a pass takes under a second under
TCG (tests/data/logs), so a period of 35 s always holds CPA calls of a
running self-test; the scenario still watches one more period before it calls
a quiet one stuck.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.probes.stats import Snapshot

# (group, counter): what a pass moves; the first moves in every pass.
EVERY_PASS = ("cpa_stats", "4k_set_checked")
SOME_PASSES = (("cpa_stats", "2m_checked"), ("cpa_stats", "1g_checked"),
               ("vmstat", "direct_map_level2_splits"), ("vmstat", "direct_map_level3_splits"))
# Flush accounting's functions (probes/flush.py) that only change_page_attr's
# own flush calls (set_memory.c statics); flush_tlb_all and the like have other callers.
CPA_FLUSHES = ("__cpa_flush_tlb", "__cpa_flush_all", "clflush_cache_range_opt")


@dataclass
class PeriodProof:
    """What moved in one watched period, and so whether a self-test pass ran."""

    label: str
    seconds: float
    moved: dict[str, int] = field(default_factory=dict)     # "cpa_stats.4k_set_checked": n
    # A counter every pass moves was read at both ends: a quiet period is proof.
    conclusive: bool = False

    @property
    def ran(self) -> bool | None:
        """True: a pass ran; False: none ran (stuck); None: nothing here can tell."""
        if any(v > 0 for v in self.moved.values()):
            return True
        return False if self.conclusive else None

    def describe(self) -> str:
        """'cpa_stats.4k_set_checked +22970, ... in 36 s' or what was unchanged."""
        shown = ", ".join(f"{k} {v:+d}" for k, v in self.moved.items()) or "no counter read"
        return f"{shown} in {self.seconds:.0f} s"

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "seconds": round(self.seconds, 1), "moved": self.moved,
                "conclusive": self.conclusive, "ran": self.ran}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PeriodProof:
        return cls(str(d["label"]), float(d.get("seconds", 0.0)),
                   {str(k): int(v) for k, v in dict(d.get("moved", {})).items()},
                   bool(d.get("conclusive", False)))


def _counter(s: Snapshot, group: str, name: str) -> int | None:
    values = getattr(s, group)
    return values.get(name) if values else None


def prove(label: str, before: Snapshot, after: Snapshot, seconds: float,
          flush_counts: dict[str, int] | None = None,
          debug_pagealloc: bool = False) -> PeriodProof:
    """What moved between two snapshots (and in the period's flush window:
    calls per function)."""
    proof = PeriodProof(label, seconds)
    counters = SOME_PASSES if debug_pagealloc else (EVERY_PASS, *SOME_PASSES)
    for group, name in counters:
        b, a = _counter(before, group, name), _counter(after, group, name)
        if b is not None and a is not None:
            proof.moved[f"{group}.{name}"] = a - b
            if (group, name) == EVERY_PASS:
                proof.conclusive = True
    for name in CPA_FLUSHES:
        if flush_counts and name in flush_counts:
            proof.moved[f"flush.{name}"] = int(flush_counts[name])
    return proof
