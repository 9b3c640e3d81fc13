"""What the harness knows about Kconfig options across kernel versions, read from
kernel-configs/options.toml: renamed options, menu gates, and wanted features.

Options are renamed every few releases (PAGE_TABLE_ISOLATION became
MITIGATION_PAGE_TABLE_ISOLATION in 6.9) and features appear (the buddy
hard-lockup detector in 6.5). Written down once here, the same fragments
configure every supported tree, and a bisect across releases builds every
revision it can.
"""

from __future__ import annotations

import functools
import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.paths import CONFIGS_DIR

OPTIONS_FILE = CONFIGS_DIR / "options.toml"


@dataclass(frozen=True)
class Feature:
    name: str                   # "lkdtm": what scenarios ask for
    title: str                  # "LKDTM": what a person reads
    options: tuple[str, ...]    # symbols without CONFIG_
    without: str                # what is lost when it is unavailable


@dataclass(frozen=True)
class Knowledge:
    renamed: dict[str, tuple[str, ...]]     # any name -> every name, current first
    gates: frozenset[str]
    features: dict[str, Feature]
    digest: str                             # of the file: part of every build's cache key

    def names(self, symbol: str) -> tuple[str, ...]:
        """Every name `symbol` (without CONFIG_) has had, current first."""
        return self.renamed.get(symbol, (symbol,))

    def is_gate(self, symbol: str) -> bool:
        return any(n in self.gates for n in self.names(symbol))

    def feature_of(self, symbol: str) -> Feature | None:
        names = set(self.names(symbol))
        for f in self.features.values():
            if names & set(f.options):
                return f
        return None


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UserError(f"{OPTIONS_FILE}: {where} must be a list of option names")
    return tuple(v.removeprefix("CONFIG_") for v in value)


def parse(text: str) -> Knowledge:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{OPTIONS_FILE} is not valid TOML: {e}") from None
    renamed: dict[str, tuple[str, ...]] = {}
    for current, older in data.get("renamed", {}).items():
        group = (current, *_strings(older, f"renamed.{current}"))
        for name in group:
            renamed[name] = group
    gates = frozenset(_strings(data.get("gates", {}).get("options", []), "gates.options"))
    features = {}
    for name, f in data.get("wanted", {}).items():
        if not isinstance(f, dict):
            raise UserError(f"{OPTIONS_FILE}: wanted.{name} must be a table")
        features[name] = Feature(name, str(f.get("title", name)),
                                 _strings(f.get("options"), f"wanted.{name}.options"),
                                 str(f.get("without", "")))
    return Knowledge(renamed, gates, features, hashlib.sha256(text.encode()).hexdigest())


@functools.cache
def load() -> Knowledge:
    return parse(Path(OPTIONS_FILE).read_text())
