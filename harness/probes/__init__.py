"""What the harness reads from a running kernel: /proc statistics, flush
accounting, the runtime truth. Each probe runs commands through a Runner, so
it works over any target's command runner (ssh or the serial shell) and, in
tests, over captured files."""

from collections.abc import Callable

# How a probe runs one command on the machine: (exit status, output).
Runner = Callable[[str], tuple[int, str]]
