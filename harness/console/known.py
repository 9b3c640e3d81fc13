"""The known-issues list: failures shown in results but not failing a cell."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.files import read_toml


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
    data = read_toml(path, "known-issues file",
                     "give a TOML file of [[issue]] tables, or --strict to use none")
    entries = data.get("issue", [])
    if not isinstance(entries, list):
        raise UserError(f"{path}: 'issue' must be a list of [[issue]] tables")
    issues = []
    for n, entry in enumerate(entries, 1):
        where = f"{path}: issue #{n}"
        if not isinstance(entry, dict):
            raise UserError(f"{where} is not a table", "write each one as [[issue]]")
        arches = entry.get("arches", [])
        if not isinstance(arches, list) or not all(isinstance(a, str) for a in arches):
            # a bare string would be taken letter by letter and match no arch
            raise UserError(f"{where}: arches must be a list of strings, e.g. [\"x86_64\"]")
        for key in ("min_kernel", "max_kernel"):
            if key in entry and version_tuple(str(entry[key])) is None:
                # unreadable, it would bound nothing: the issue would match every kernel
                raise UserError(f"{where}: {key} must be a version like \"6.12\", "
                                f"not {str(entry[key])[:40]!r}")
        try:
            kind, title = str(entry["kind"]), str(entry["title"])
            issues.append(KnownIssue(
                kind=kind,
                title=re.compile(title),
                min_kernel=version_tuple(str(entry["min_kernel"])) if "min_kernel" in entry
                else None,
                max_kernel=version_tuple(str(entry["max_kernel"])) if "max_kernel" in entry
                else None,
                arches=tuple(arches),
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
