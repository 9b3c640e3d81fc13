"""Output of an Analysis: the JSON document's schema, and a short human summary."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from harness.console.model import Analysis, Boot, CpaSelftest

SCHEMA_RESOURCE = "parse.schema.json"


def load_schema() -> dict[str, Any]:
    """The JSON Schema of `Analysis.to_json()`, shipped in harness/data."""
    text = resources.files("harness").joinpath("data", SCHEMA_RESOURCE).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _pass_lines(number: int, p: CpaSelftest) -> list[str]:
    out = [f"  CPA self-test pass {number}: {p.result} (lines {p.first_line}-{p.last_line})"]
    for s in p.splits:
        gb = f" gb {s.gb}" if s.gb is not None else ""
        miss = f" miss {s.miss}" if s.miss is not None else ""
        out.append(f"      4k {s.pages_4k} large {s.large}{gb} x {s.x}"
                   f"[{s.x_range[0]:x}-{s.x_range[1]:x}]{miss}")
    for e in p.errors:
        out.append(f"      error at line {e.line}: {e.message}")
    for note in p.notes:
        out.append(f"      note: {note}")
    return out


def _boot_lines(boot: Boot) -> list[str]:
    kernel = boot.kernel or "unknown kernel (log starts mid-boot)"
    out = [f"boot {boot.index}: {kernel}, lines {boot.first_line}-{boot.last_line}"]
    out.append(f"  command line: {boot.cmdline if boot.cmdline is not None else '(not seen)'}")
    out.append(f"  gbpages: {_yes_no(boot.gbpages)}, debug_pagealloc: "
               f"{_yes_no(boot.debug_pagealloc)}, W+X check: {boot.wx_check or 'not seen'}")
    if not boot.cpa_selftest:
        out.append("  CPA self-test: no pass seen")
    for number, p in enumerate(boot.cpa_selftest, 1):
        out.extend(_pass_lines(number, p))
    for d in boot.direct_map:
        sizes = ", ".join(f"{k} {v} kB" for k, v in d.sizes.items())
        out.append(f"  direct map (line {d.line}): {sizes}")
    for f in boot.failures:
        out.append(f"  failure: {f.kind}: {f.title} (line {f.line})")
    if boot.panic is not None:
        cause = "" if boot.panic.caused_by is None else \
            f", after failure {boot.panic.caused_by + 1}"
        out.append(f"  panic: {boot.panic.message} (line {boot.panic.line}{cause})")
    out.append(f"  ended by: {boot.ended_by or 'still running'}")
    return out


def summary(analysis: Analysis) -> str:
    """A few lines per boot, then the verdict."""
    out: list[str] = []
    if not analysis.boots:
        out.append(f"no kernel output in {analysis.lines} lines")
    for boot in analysis.boots:
        out.extend(_boot_lines(boot))
    if analysis.symbolized is not None:
        note = f" ({analysis.symbolize_note})" if analysis.symbolize_note else ""
        out.append(f"symbolized: {_yes_no(analysis.symbolized)}{note}")
    out.append(f"verdict: {analysis.verdict}")
    return "\n".join(out) + "\n"
