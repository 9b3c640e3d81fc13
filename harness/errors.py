"""Typed errors raised by operations.

Each error says whose fault it is, so that orchestration can turn it into a
status and the CLI into an exit code, and a user reads one line that says what
went wrong and what to do.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base of every expected failure; never shown with a traceback."""

    exit_code = 3

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message


class UserError(HarnessError):
    """Bad arguments, bad files, a missing tree, an option Kconfig dropped."""

    exit_code = 2


class OptionsDropped(UserError):
    """Essential Kconfig options this tree cannot give (it lacks them, or their
    dependencies): the kernel would not be the one the cell asks for."""

    def __init__(self, message: str, hint: str = "", options: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint)
        self.options = options


class InfraError(HarnessError):
    """The host failed us: QEMU missing or crashed, no disk space, no packages."""

    exit_code = 3


class BuildError(HarnessError):
    """The kernel did not compile; the log path and first errors are attached."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "", log: str = "",
                 errors: list[str] | None = None) -> None:
        super().__init__(message, hint)
        self.log = log
        self.errors = errors or []
