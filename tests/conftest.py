from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REGEN = os.environ.get("CPA_HARNESS_REGEN") == "1"

# Runs and history of the tests' own cells go to a directory of this session
# unless CPA_HARNESS_DATA names one, never the default store
# (~/.local/share/cpa-harness): a test must not find what an earlier test
# session, or the user, recorded there. Kernel builds stay in the shared
# cache, which is keyed by what was built.
_OWN_DATA = None
if "CPA_HARNESS_DATA" not in os.environ:
    _OWN_DATA = os.environ["CPA_HARNESS_DATA"] = tempfile.mkdtemp(prefix="cpa-harness-test-data-")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _OWN_DATA is not None:
        shutil.rmtree(_OWN_DATA, ignore_errors=True)


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


# The longest files, measured on a cold cache with two workers (labbox ~26 min,
# bisect ~13, versions ~9, selfcheck ~5): started first, so that neither
# worker is left alone with one of them at the end.
LONGEST_FIRST = ("test_labbox_boot.py", "test_bisect_boot.py", "test_versions_boot.py",
                 "test_selfcheck_boot.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest files first, then the other boot tests, then the rest: with a
    worker per file and no reordering by size (ci/test.sh), the short ones
    fill in at the end."""
    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        if name in LONGEST_FIRST:
            return 0, LONGEST_FIRST.index(name)
        return (1 if item.get_closest_marker("boot") else 2), 0
    items.sort(key=rank)
