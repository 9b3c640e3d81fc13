"""The CPA exerciser's modes in a report, one line each (compare's findings
on them: results/history.py). Each function takes a cell's exercise record
(CellResult.exercise) or one of its modes."""

from __future__ import annotations

from typing import Any

from harness.probes import flush


def modes(record: dict[str, Any]) -> list[dict[str, Any]]:
    found = (record or {}).get("modes")
    return [m for m in found if isinstance(m, dict)] if isinstance(found, list) else []


def per_call_us(w: dict[str, Any], group: str) -> float | None:
    """Mean microseconds per call of a flush group (None when withheld)."""
    times, counts = w.get("time_us"), w.get("counts") or {}
    if not isinstance(times, dict):
        return None
    names = [n for n, (g, _) in flush.FLUSH_PATHS.items() if g == group and counts.get(n)]
    calls = sum(counts[n] for n in names)
    return sum(times.get(n, 0.0) for n in names) / calls if calls else None


def flushes(m: dict[str, Any]) -> str:
    """Full write-backs next to CLFLUSH ranges, with their cost where it is the CPU's."""
    g = m.get("flush")
    if not isinstance(g, dict):
        return "flushes not counted" + (f" ({m['flush_unavailable']})"
                                        if m.get("flush_unavailable") else "")
    found = m.get("flush_window")
    w: dict[str, Any] = found if isinstance(found, dict) else {}
    parts = []
    for group, name in (("full_flush", "wbinvd"), ("cache_range", "clflush")):
        us = per_call_us(w, group)
        parts.append(f"{name} {g.get(group, 0)}" + (f" ({us:.1f} us/call)" if us else ""))
    return " ".join(parts)


def line(m: dict[str, Any]) -> str:
    mode = str(m.get("mode"))
    if m.get("unavailable"):
        return f"{mode}: unavailable: {m['unavailable']}"
    rows = [r for r in m.get("rows") or [] if isinstance(r, dict)]
    start = m.get("start") or {}
    clflush = {1: "CLFLUSH", 0: "no CLFLUSH"}.get(int(start.get("clflush", -1)), "CLFLUSH ?")
    bad = len(m.get("problems") or [])
    verdict = f"{bad} problem(s)" if bad else "every check passed"
    if mode == "alloc-fail":
        s = m.get("summary") or {}
        what = (f"{s.get('changes', 0)} changes, {s.get('injected', 0)} failures injected "
                f"({m.get('injected_reports', 0)} reported by the kernel), "
                f"{s.get('failed', 0)} calls failed, {s.get('partial', 0)} left a partial "
                f"change, {s.get('restored', 0)} restored")
    elif mode == "concurrent":
        what = ", ".join(_threads(r) for r in rows
                         if r.get("what") == "concurrent" and "skipped" not in r) or "no run"
    else:
        changes = sum(int(r.get("changes", 0)) for r in rows)
        checked = sum(int(r.get("checked", 0)) for r in rows)
        what = f"{changes} changes, {checked} page checks"
    skipped = [str(r["skipped"]) for r in rows if "skipped" in r]
    if skipped:
        what += f"; {len(skipped)} skipped ({', '.join(sorted(set(skipped)))})"
    return f"{mode} ({clflush}): {what}; {flushes(m)}; {verdict}"


def _threads(r: dict[str, Any]) -> str:
    shown = f"{r.get('threads')} threads: {r.get('changes')} changes"
    if r.get("ops_per_s"):
        shown += f" {r['ops_per_s']}/s"
        if r.get("efficiency") is not None:
            shown += f" (efficiency {r['efficiency']:.2f} against 1 thread)"
    return shown


def lines(record: dict[str, Any]) -> list[str]:
    if not record:
        return []
    if record.get("unavailable"):
        return [f"exerciser unavailable: {record['unavailable']}"]
    out = [line(m) for m in modes(record)]
    return out + ([str(record["timing"])] if out and record.get("timing") else [])
