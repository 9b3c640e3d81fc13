"""A kernel whose CPA self-test really fails is called broken, with the right kind.

tests/data/patches/break-cpa-selftest.patch makes the self-test revert its
attribute change with an empty mask, so the bit it set stays set. The harness
applies it to a copy of Debian's source (--patch), builds, boots, and must
fail the cell on the kernel's own "NOT PASSED. Please report.".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main

pytestmark = pytest.mark.boot

PATCH = Path(__file__).parent / "data" / "patches" / "break-cpa-selftest.patch"


def test_broken_selftest_fails_the_cell(tmp_path: Path) -> None:
    code = main(["run", "--cell", "x86_64-gbpages", "--patch", str(PATCH), "--periods", "0",
                 "--out", str(tmp_path)])
    r = json.loads((tmp_path / "cells" / "x86_64-gbpages" / "result.json").read_text())
    assert code == 1
    assert r["verdict"] == "fail"
    assert "+patches:" in r["source_id"]
    assert r["reason"] == "cpa_selftest: CPA self-test NOT PASSED"
    assert [p["result"] for p in r["cpa_selftest"]] == ["fail"]
    assert any("bad pte after revert" in e["message"] for e in r["cpa_selftest"][0]["errors"])
    junit = (tmp_path / "junit.xml").read_text()
    assert "bad pte after revert" in junit and "CPA self-test NOT PASSED" in junit
    kinds = [(f["kind"], f["known"]) for f in r["failures"]]
    assert ("cpa_selftest", False) in kinds
