"""Console and dmesg analysis: boots, CPA self-test passes, failures.

    from harness.console import ConsoleParser, parse_path

    p = ConsoleParser()
    events = p.feed(chunk)      # bytes or str, any pieces of a serial stream
    events += p.flush()         # after a quiet period: complete pending reports
    analysis = p.finish()       # end of log
    analysis.to_json(), analysis.verdict

Modules, one job each: lines (line stream, prefix stripping), boots (boot
splitting and facts), selftest (the CPA self-test), headers/reports/titles
(failure reports and their titles), ignore (the ignore list), output (JSON
schema and the human summary), parser (the state machine tying them), cli.
"""

from harness.console.model import (
    ENDED_BY,
    FAILURE_KINDS,
    Analysis,
    Boot,
    BootEnded,
    BootStarted,
    CpaSelftest,
    DirectMap,
    Event,
    Failure,
    FailureFound,
    Frame,
    Panic,
    SelftestDone,
    SelftestError,
    Split,
)
from harness.console.parser import ConsoleParser, parse_path

__all__ = [
    "ENDED_BY",
    "FAILURE_KINDS",
    "Analysis",
    "Boot",
    "BootEnded",
    "BootStarted",
    "ConsoleParser",
    "CpaSelftest",
    "DirectMap",
    "Event",
    "Failure",
    "FailureFound",
    "Frame",
    "Panic",
    "SelftestDone",
    "SelftestError",
    "Split",
    "parse_path",
]
