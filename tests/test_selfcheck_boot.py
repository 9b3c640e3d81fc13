"""The harness's own eyes: every provoked failure is caught with the right kind.

Boots the smoke kernels once per provocation (a few seconds each under TCG),
triggers one failure through LKDTM and checks the analysis of the live console.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.scenarios.selfcheck import PROVOCATIONS

pytestmark = pytest.mark.boot


@pytest.mark.parametrize("cell", ["selfcheck-x86_64", "selfcheck-i386"])
def test_selfcheck_catches_every_kind(tmp_path: Path, cell: str) -> None:
    code = main(["run", "--cell", cell, "--out", str(tmp_path)])
    r = json.loads((tmp_path / "cells" / cell / "result.json").read_text())
    results = {c["crash"]: (c["result"], [f["kind"] for f in c["found"]]) for c in r["selfcheck"]}
    assert results == {p.crash: ("caught", results[p.crash][1]) for p in PROVOCATIONS}
    for p in PROVOCATIONS:
        assert p.kind in results[p.crash][1], p.crash
    assert r["verdict"] == "pass" and code == 0
