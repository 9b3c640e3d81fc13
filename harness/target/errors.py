"""How waiting on a target can end other than with what was waited for.

These are not HarnessErrors: each is evidence about the kernel (a failure
report, no progress, the machine stopping), and the scenario decides what it
means for the verdict. Only CellDeadline, the backstop, is the host's fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.console import Failure
from harness.errors import InfraError


@dataclass(frozen=True)
class Ending:
    """Why a target stopped: the guest's doing (`kind` names the failure) or the host's."""

    kind: str           # "reset", "shutdown", "panic"; "" when the host ended it
    infra: bool         # True: not the kernel's fault
    text: str
    status: int | None = None   # the process's exit status, where there is one

    @property
    def guest(self) -> bool:
        return bool(self.kind)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "infra": self.infra, "text": self.text,
                "status": self.status}


class GuestHang(Exception):
    """The guest made no progress towards `what` before its deadline."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"no {what} within {seconds:.0f}s")
        self.what = what
        self.seconds = seconds


class GuestExited(Exception):
    """The target stopped while the harness was waiting for something; `ending` says why."""

    def __init__(self, what: str, ending: Ending) -> None:
        super().__init__(f"{ending.text}, while waiting for {what}")
        self.what = what
        self.ending = ending


class FailureSeen(Exception):
    """The console showed a kernel failure the cell does not tolerate."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.kind}: {failure.title}")
        self.failure = failure


class CellDeadline(InfraError):
    """The cell as a whole ran out of time: a backstop behind every wait's own
    deadline. The host was too slow (or something waited without one), not
    proof against the kernel, so it is an infrastructure error."""
