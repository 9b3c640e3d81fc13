from __future__ import annotations

import os
from pathlib import Path

import pytest

REGEN = os.environ.get("CPA_HARNESS_REGEN") == "1"
GOLDEN = Path(__file__).parent / "golden"


def check_golden(name: str, text: str) -> None:
    """Compare with tests/golden/NAME; CPA_HARNESS_REGEN=1 rewrites it."""
    path = GOLDEN / name
    if REGEN:
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with CPA_HARNESS_REGEN=1"
    assert text == path.read_text()


@pytest.fixture
def golden() -> object:
    return check_golden
