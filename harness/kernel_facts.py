"""What the harness expects of a kernel, by version (harness/data/kernel-facts.toml).

The harness reads what kernels print and the files they have; both change
across releases. Each expectation carries the version range it is known
for, so a cell on a kernel outside it says what it could not check instead
of silently checking nothing.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness.known_issues import version_tuple

FACTS_FILE = Path(__file__).parent / "data" / "kernel-facts.toml"


@dataclass(frozen=True)
class Fact:
    name: str
    what: str
    since: str
    until: str          # "" while still there
    checks: str

    def holds_for(self, version: str) -> bool | None:
        """Whether `version` is in the range; None when the version is unreadable."""
        v = version_tuple(version)
        if v is None:
            return None
        since, until = version_tuple(self.since), version_tuple(self.until)
        return (since is None or v >= since) and (until is None or v < until)

    def unchecked(self, version: str) -> str:
        span = f"{self.since} to before {self.until}" if self.until else f"{self.since} on"
        return (f"{self.checks}: not checked on {version or 'this kernel'} ({self.what} is "
                f"known for {span})")


def parse(text: str) -> tuple[Fact, ...]:
    facts = []
    for f in tomllib.loads(text).get("fact", []):
        facts.append(Fact(str(f["name"]), str(f["what"]), str(f.get("since", "")),
                          str(f.get("until", "")), str(f["checks"])))
    return tuple(facts)


@functools.cache
def load() -> tuple[Fact, ...]:
    return parse(FACTS_FILE.read_text())


def unchecked(version: str, facts: tuple[Fact, ...] | None = None) -> list[str]:
    """What a cell on `version` cannot check, one line each (all of it for an
    unreadable version)."""
    return [f.unchecked(version) for f in (facts if facts is not None else load())
            if not f.holds_for(version)]
