"""compare on two real runs of one cell: the second boots with GB pages
switched off (`nogbpages`, same cell name), so its kernel maps no 1G page at
boot; compare must exit 1 and name the lost 1G pages. The first run compared
with itself exits 0. A 4 GiB guest has one 1G-aligned range of RAM that a GB
page can map (4-5 GiB), and nokaslr keeps the kernel image out of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main

pytestmark = pytest.mark.boot

CELL = """
[[cell]]
name = "x86_64-gb"
arch = "x86_64"
cpu = "max"
memory = 4096
periods = 0
cmdline = "{cmdline}"
"""


def run(where: Path, name: str, cmdline: str, db: Path) -> Path:
    matrix = where / f"{name}.toml"
    matrix.write_text(CELL.format(cmdline=cmdline))
    out = where / name
    code = main(["run", "--matrix", str(matrix), "--out", str(out), "--db", str(db)])
    doc = json.loads((out / "cells" / "x86_64-gb" / "result.json").read_text())
    assert code == 0, (doc["verdict"], doc["reason"])
    return out


def test_gb_pages_lost_at_boot_are_a_regression(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "history.sqlite"
    a = run(tmp_path, "with-gbpages", "nokaslr", db)
    b = run(tmp_path, "nogbpages", "nokaslr nogbpages", db)
    booted = json.loads((a / "cells" / "x86_64-gb" / "result.json").read_text())
    assert booted["stats"]["boot"]["ptdump"]["DirectMap1G"] > 0
    capsys.readouterr()
    assert main(["compare", str(a), str(a), "--db", str(db)]) == 0
    assert main(["compare", str(a), str(b), "--db", str(db)]) == 1
    said = capsys.readouterr().out
    assert "x86_64-gb: large-pages-lost: DirectMap1G at boot (page-table dump) 1048576 -> 0 kB" \
        in said, said
