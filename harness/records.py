"""The JSON form of the flat records a result is made of.

Results are read back by later versions of the harness, and by earlier ones:
a record reads the fields it knows and drops the rest, so a field added or
retired is never an error.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Self


class Record:
    """Mixed into a dataclass whose fields are all plain JSON values."""

    def to_json(self) -> dict[str, Any]:
        # the mixin is only ever on dataclasses, which mypy cannot see from here
        d: dict[str, Any] = asdict(self)  # type: ignore[call-overload]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in names})
