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

from harness.console.known import version_tuple

FACTS_FILE = Path(__file__).parent.parent / "data" / "kernel-facts.toml"


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


@dataclass(frozen=True)
class Avoid:
    """Something the harness does not do to a kernel in this range: it breaks it."""

    name: str           # what is avoided: "flush-accounting"
    arches: tuple[str, ...]
    since: str
    until: str
    why: str

    def applies(self, arch: str, version: str) -> bool:
        v = version_tuple(version)
        since, until = version_tuple(self.since), version_tuple(self.until)
        return (arch in self.arches and v is not None and (since is None or v >= since)
                and (until is None or v < until))


def _range(entry: dict[str, object]) -> tuple[str, str]:
    return str(entry.get("since", "")), str(entry.get("until", ""))


def parse(text: str) -> tuple[Fact, ...]:
    return tuple(Fact(str(f["name"]), str(f["what"]), *_range(f), str(f["checks"]))
                 for f in tomllib.loads(text).get("fact", []))


def parse_avoid(text: str) -> tuple[Avoid, ...]:
    return tuple(Avoid(str(a["name"]), tuple(a.get("arches", [])), *_range(a),
                       " ".join(str(a["why"]).split()))
                 for a in tomllib.loads(text).get("avoid", []))


@functools.cache
def load() -> tuple[Fact, ...]:
    return parse(FACTS_FILE.read_text())


@functools.cache
def load_avoid() -> tuple[Avoid, ...]:
    return parse_avoid(FACTS_FILE.read_text())


def avoided(name: str, arch: str, version: str) -> str | None:
    """Why the harness must not do `name` on this kernel, or None."""
    for a in load_avoid():
        if a.name == name and a.applies(arch, version):
            return f"not done on {arch} {version}: {a.why}"
    return None


def unchecked(version: str, facts: tuple[Fact, ...] | None = None) -> list[str]:
    """What a cell on `version` cannot check, one line each (all of it for an
    unreadable version)."""
    return [f.unchecked(version) for f in (facts if facts is not None else load())
            if not f.holds_for(version)]
