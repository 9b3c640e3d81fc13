"""The `parse` subcommand's body; harness/cli.py owns argparse and exit codes."""

from __future__ import annotations

import json
from typing import TextIO

from harness.console.output import summary
from harness.console.parser import parse_path


def main_parse(path: str, as_json: bool, vmlinux: str | None, out: TextIO) -> int:
    """Parse one console log and print it; 0 for verdict pass, 1 for fail,
    no-selftest or incomplete.

    A missing or unreadable log (or a directory) raises UserError, which the
    CLI turns into one line and exit code 2. An empty or binary file is not
    an error: it has no boots and its verdict is "incomplete".
    """
    analysis = parse_path(path, vmlinux=vmlinux)
    if as_json:
        json.dump(analysis.to_json(), out, indent=2)
        out.write("\n")
    else:
        out.write(summary(analysis))
    return 0 if analysis.verdict == "pass" else 1
