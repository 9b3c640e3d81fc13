"""Golden files: every captured log in tests/data/logs/ against its expected JSON.

For each `tests/data/logs/NAME.log` there is `NAME.expected.json`, the
`parse_path(log).to_json()` document it must produce. After a deliberate
change of the parser, regenerate them with

    CPA_HARNESS_REGEN=1 pytest tests/test_console_golden.py

and review the diff. With no logs yet this module has no cases (pytest reports
the empty parameter set as skipped), rather than a pass that checks nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.console import parse_path

LOGS_DIR = Path(__file__).parent / "data" / "logs"
LOGS = sorted(LOGS_DIR.glob("*.log")) if LOGS_DIR.is_dir() else []
REGEN = os.environ.get("CPA_HARNESS_REGEN") == "1"


def expected_path(log: Path) -> Path:
    return log.with_name(log.name.removesuffix(".log") + ".expected.json")


@pytest.mark.parametrize("log", LOGS, ids=lambda p: p.name)
def test_golden(log: Path) -> None:
    doc = parse_path(log).to_json()
    expected = expected_path(log)
    if REGEN:
        expected.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return
    if not expected.exists():
        pytest.fail(f"{expected.name} is missing: run with CPA_HARNESS_REGEN=1 and review it")
    assert doc == json.loads(expected.read_text())
