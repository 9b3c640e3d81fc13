"""The fast self-test: a shipped kernel patch that sets the self-test's period.

Stock cpa-test.c sleeps 30 s between passes and prints only the first, so a
cell gets two passes a minute and must prove the silent ones from counters
(probes/passes.py). guest/patches/cpa-test-period.patch adds the boot
parameter cpa_test.period_ms=N: after its first pass (30 s after boot, as
ever, so what the harness reads before it is the map as booted) the kthread
sleeps N ms between passes, and every pass prints in full ("CPA self-test:",
three split lines, "ok."), so each pass is on the console with its split
counts. A cell with selftest_period_ms is built from the tree with this patch
applied (its source id says so) and boots with the parameter; the running
kernel shows it took the parameter in /sys/module/cpa_test/parameters/period_ms
(a built-in module_param).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from harness import paths
from harness.cells import Cell

PATCH = paths.GUEST_DIR / "patches" / "cpa-test-period.patch"
PARAM = "cpa_test.period_ms"
SYSFS = "/sys/module/cpa_test/parameters/period_ms"
# Below this the kthread hardly sleeps at all: the self-test's own work sets
# the rate anyway (a pass takes 0.6 to 5.5 s under TCG, docs/design.md).
MIN_PERIOD_MS = 100
DEFAULT_PASSES = 20     # passes seen after the first, when a cell does not say
DEFAULT_PERIOD_MS = 1000    # bisect --passes on a stock cell: ~30 passes a minute (TCG)
SOURCE = "arch/x86/mm/pat/cpa-test.c"


def cmdline_word(period_ms: int) -> str:
    return f"{PARAM}={period_ms}"


def make_fast(cell: Cell, period_ms: int, passes: int) -> Cell:
    """`cell` with the fast self-test: its period on the command line (once),
    `passes` counted after the first in place of periods watched."""
    words = [w for w in cell.cmdline.split() if not w.startswith(f"{PARAM}=")]
    return replace(cell, selftest_period_ms=period_ms, passes=passes, periods=0,
                   cmdline=" ".join([*words, cmdline_word(period_ms)]))


def applied(tree: Path) -> bool:
    """Whether the tree's self-test already takes the parameter (the patch is
    applied, in place by bisect, or the tree carries it): then it is not
    applied again."""
    try:
        return '"cpa_test."' in (tree / SOURCE).read_text(errors="replace")
    except OSError:
        return False
