"""A cell's start on a box that is a labgrid place (box_target.BoxTarget with
labgrid_place.held()): the place is held while the box is brought up, its power
is the place's, and it is released when the cell gives up."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_labgrid import Lab, harness_identity, labgrid  # noqa: F401  (fixtures)

from harness.errors import InfraError
from harness.target.base import Timeouts
from harness.target.box_target import BoxTarget, Health


def test_a_box_that_does_not_answer_is_power_cycled_through_its_place(
        labgrid: Lab, tmp_path: Path) -> None:  # noqa: F811
    # the lab file's box has ssh on 127.0.0.1:2, where nothing answers
    labgrid.power.calls.clear()
    health = Health()
    target = BoxTarget(labgrid.box(), tmp_path / "bzImage", tmp_path / "initrd", "",
                       tmp_path / "serial.log", None,
                       Timeouts(boot=5, first_pass=5, command=5, ssh=3), health)
    with pytest.raises(InfraError, match="^box 'lgbox': ssh to root@127.0.0.1:2"):
        target.start()
    assert labgrid.power.calls == ["/outlet/3/0", "/outlet/3/1"]   # once, off then on
    assert "lgbox" in health.unhealthy
    assert labgrid.holder() is None         # released when the cell gave up
    assert any("power cycle" in n for n in target.console.notes)
