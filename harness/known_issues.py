"""The known-issues list: failures shown in results but not failing a cell."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError


@dataclass(frozen=True)
class KnownIssue:
    kind: str
    title: re.Pattern[str]
    min_kernel: tuple[int, ...] | None
    max_kernel: tuple[int, ...] | None
    arches: tuple[str, ...]
    reason: str
    evidence: str

    def matches(self, kind: str, title: str, kernel: str | None, arch: str) -> bool:
        if kind != self.kind or not self.title.fullmatch(title):
            return False
        if self.arches and arch not in self.arches:
            return False
        if self.min_kernel or self.max_kernel:
            v = version_tuple(kernel or "")
            if v is None:
                return False
            if self.min_kernel and v < self.min_kernel:
                return False
            if self.max_kernel and v >= self.max_kernel:
                return False
        return True


def version_tuple(text: str) -> tuple[int, ...] | None:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return tuple(int(x) for x in m.groups() if x is not None)


def load(path: Path) -> list[KnownIssue]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"known-issues file {path} does not exist",
                        "give an existing file, or --strict to use none") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"cannot read known-issues file {path}: {e}") from None
    issues = []
    for n, entry in enumerate(data.get("issue", []), 1):
        where = f"{path}: issue #{n}"
        try:
            kind, title = str(entry["kind"]), str(entry["title"])
            issues.append(KnownIssue(
                kind=kind,
                title=re.compile(title),
                min_kernel=version_tuple(str(entry["min_kernel"])) if "min_kernel" in entry
                else None,
                max_kernel=version_tuple(str(entry["max_kernel"])) if "max_kernel" in entry
                else None,
                arches=tuple(entry.get("arches", ())),
                reason=" ".join(str(entry.get("reason", "")).split()),
                evidence=str(entry.get("evidence", "")),
            ))
        except KeyError as e:
            raise UserError(f"{where} lacks the key {e.args[0]!r}") from None
        except re.error as e:
            raise UserError(f"{where}: title is not a regular expression: {e}") from None
    return issues


def match(issues: list[KnownIssue], kind: str, title: str, kernel: str | None,
          arch: str) -> KnownIssue | None:
    return next((i for i in issues if i.matches(kind, title, kernel, arch)), None)
