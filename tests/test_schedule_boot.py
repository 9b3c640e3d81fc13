"""The scheduler's measurements of real guests: what each cell's QEMU used,
recorded in its result and in the demand history the next run starts from."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness import paths
from harness.cells import SMOKE
from harness.results.cell import Verdict
from harness.run import RunOptions, run_cells
from harness.schedule import History

pytestmark = pytest.mark.boot


def test_cells_by_demand_record_what_their_guests_used(tmp_path: Path) -> None:
    i386 = next(c for c in SMOKE if c.name == "i386")
    cells = [replace(i386, name=f"i386-schedule-{n}", periods=0) for n in (1, 2)]
    results = run_cells(cells, RunOptions(accel="tcg"), tmp_path, paths.cache_dir())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["schedule"]["jobs"] == "auto" and summary["schedule"]["pipeline"]
    history = History(paths.cache_dir() / "demand.json")
    for res in results:
        assert res.verdict == Verdict.PASS, res.reason
        cpu, wall = res.durations["guest_cpu"], res.durations["total"]
        # a TCG boot to user space is seconds of CPU; a guest of 2 vCPUs
        # cannot use more than two cores for the whole cell
        assert 1.0 < cpu < 2 * wall, (cpu, wall)
        known = history._read()[f"{res.name}|i386|tcg"]
        assert known[-1] == pytest.approx(cpu / wall, rel=0.25, abs=0.02)
