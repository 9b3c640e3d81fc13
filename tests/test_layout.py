"""docs/design.md shows the house: every module of the package is named there,
under its stage, and the import contracts it describes are the ones checked."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = (ROOT / "docs" / "design.md").read_text()
TREE = DESIGN[DESIGN.index("```\nharness/"):DESIGN.index("```", DESIGN.index("```\nharness/") + 3)]


def test_every_module_is_named_under_its_stage() -> None:
    stages = {m.group(1): m.start() for m in re.finditer(r"^  (\w+)/", TREE, re.M)}
    missing = []
    for path in sorted((ROOT / "harness").rglob("*.py")):
        rel = path.relative_to(ROOT / "harness")
        if rel.name == "__init__.py" or rel.parts[0] in ("data",):
            continue
        if len(rel.parts) == 1:
            found = re.search(rf"^  {re.escape(rel.name)}\b", TREE, re.M)
        else:
            start = stages.get(rel.parts[0])
            later = [s for s in stages.values() if start is not None and s > start]
            section = TREE[start:min(later) if later else None] if start is not None else ""
            found = re.search(rf"\b{re.escape(rel.name)}\b", section)
        if not found:
            missing.append(str(rel))
    assert missing == [], f"modules docs/design.md does not name: {missing}"


def test_the_contracts_described_are_the_ones_checked() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    names = [c["name"] for c in contracts["contracts"]]
    assert len(names) == 4
    layers = contracts["contracts"][0]["layers"]
    assert layers[0] == "harness.cli" and layers[-1] == "harness.errors | harness.progress"
    for stage in ("scenarios", "target", "results", "probes", "image", "kernel", "console"):
        assert f"`{stage}/`" in DESIGN, stage
