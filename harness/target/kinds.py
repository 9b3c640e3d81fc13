"""Every kind of target, by the name its describe() gives: for reading back
what a run wrote about its machines (`cpa-harness ssh` into one still up)."""

from __future__ import annotations

from typing import Any

from harness.target.base import Target
from harness.target.box_target import BoxTarget
from harness.target.vm import QemuTarget

KINDS: dict[str, type[Target]] = {QemuTarget.kind: QemuTarget, BoxTarget.kind: BoxTarget}


def may_be_up(described: dict[str, Any]) -> bool:
    """False when the machine described is certainly gone; an unknown kind may be up."""
    kind = KINDS.get(str(described.get("kind")))
    return kind.may_be_up(described) if kind is not None else True
