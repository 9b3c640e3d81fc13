"""A run directory as one static HTML page: `report.html`.

The page is self-contained (inline CSS, inline SVG, no JavaScript, no network)
so it can be attached to a mail or a CI artifact and read offline.

Everything in a run directory is untrusted text: cell names and reasons come
from matrix files, failure reports straight from a guest kernel's console.
Every value is passed through html.escape before it reaches the page, and a
Content-Security-Policy that forbids scripts and fetches backs that up should
an escape ever be missed. No value is ever used as a path or a command.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.files import write_atomic
from harness.probes import flush
from harness.results import exercise, history
from harness.results.cell import CellResult
from harness.results.rundir import read_run

# Largest first: a bar reads as "how much is still in big pages" from the left.
PAGE_SIZES = ("1G", "2M", "4M", "4k")
SIZE_COLOURS = {"1G": "#2e7d32", "2M": "#1565c0", "4M": "#1565c0", "4k": "#c62828"}
SNAPSHOTS = (("boot", "boot"), ("after_selftest", "after self-test"))

# SVG geometry, in px.
LABEL_W, BAR_W, BAR_H, ROW_H = 120, 560, 22, 46

# Console lines may carry escape sequences and NULs; show them, do not emit them.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; margin-top: 1.5em; }
dl.run { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dl.run dt { font-weight: 600; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.name, td.verdict, td.duration { white-space: nowrap; }
.verdict { font-weight: 700; text-transform: uppercase; }
.v-pass { background: #c8e6c9; } .v-fail { background: #ffcdd2; }
.v-user-error { background: #ffe0b2; } .v-infra-error { background: #e1bee7; }
.v-not-run { background: #e0e0e0; }
.failure { border-left: 4px solid #c62828; padding-left: .8em; margin: 1em 0; }
.failure.known { border-left-color: #9e9e9e; }
pre { background: #f7f7f7; padding: .5em; overflow-x: auto; white-space: pre; }
.lost { color: #c62828; font-weight: 600; }
.no-stats { color: #666; font-style: italic; }
svg.directmap text { font: 12px system-ui, sans-serif; fill: #222; }
"""


def write_html(run_dir: Path, db: Path | None = None) -> Path:
    """Write run_dir/report.html from the run's summary and cells, with each
    cell's figures over its last runs in the history store `db` (when given
    and it has them); return its path."""
    summary, cells = read_run(run_dir)
    trends: dict[str, list[dict[str, Any]]] = {}
    try:
        if db is not None:
            trends = {c.name: history.cell_history(db, c.name, TREND_RUNS) for c in cells}
    except HarnessError:
        trends = {}     # a store that cannot be read costs the plots, not the report
    path = run_dir / "report.html"
    write_atomic(path, render(summary, cells, trends))
    return path


def render(summary: dict[str, Any], cells: list[CellResult],
           trends: dict[str, list[dict[str, Any]]] | None = None) -> str:
    title = f"cpa-harness run: {_text(summary.get('kernel_version'))}"
    # A meta CSP is defence in depth: no script runs and nothing is fetched,
    # even if some value slipped through unescaped.
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head><body>",
        _header(summary),
        _verdict_table(cells),
        _unavailable(cells),
        _failures(cells),
        _direct_maps(cells),
        _flush_section(cells),
        _exercise_section(cells),
        _trends_section(trends or {}),
        "</body></html>",
        "",
    ])


def _text(value: Any) -> str:
    """A value as display text: '-' for nothing, control characters made visible."""
    if value is None or value == "":
        return "-"
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def _e(value: Any) -> str:
    """Escaped display text, safe in element content and in quoted attributes."""
    return escape(_text(value), quote=True)


def _when(epoch: Any) -> str:
    if not isinstance(epoch, int | float) or isinstance(epoch, bool) or epoch <= 0:
        return "-"
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "-"


def _header(summary: dict[str, Any]) -> str:
    fields = [("source", "source_id", _text(summary.get("source_id"))),
              ("kernel", "kernel_version", _text(summary.get("kernel_version"))),
              ("host", "host", _text(summary.get("host"))),
              ("started", "started", _when(summary.get("started"))),
              ("exit code", "exit_code", _text(summary.get("exit_code")))]
    if summary.get("interrupted"):
        fields.append(("interrupted", "interrupted", "yes"))
    rows = "".join(f'<dt>{label}</dt><dd data-field="{key}">{escape(value)}</dd>'
                   for label, key, value in fields)
    return f'<header id="run"><h1>cpa-harness run</h1><dl class="run">{rows}</dl></header>'


# -- verdict table -----------------------------------------------------------

def _flush_cell(cell: CellResult) -> str:
    groups = cell.first_flush_groups()
    if groups is None:
        return "n/a" if cell.flush.get("unavailable") else "-"
    # One line per group, named as in flush.GROUPS, so the numbers need no legend.
    return "<br>".join(f'<span data-group="{g}">{g} {_e(groups.get(g, "?"))}</span>'
                       for g in flush.GROUPS)


def _duration(cell: CellResult) -> str:
    total = cell.durations.get("total")
    if not isinstance(total, int | float) or isinstance(total, bool):
        return "-"
    minutes, seconds = divmod(round(total), 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def _verdict_row(index: int, cell: CellResult) -> str:
    verdict = cell.verdict.value
    passes = ", ".join(_text(p.get("result", "?")) for p in cell.cpa_selftest) or "-"
    return (f'<tr class="cell" data-cell="{_e(cell.name)}" data-verdict="{escape(verdict)}">'
            f'<td class="name"><a href="#dm-{index}">{_e(cell.name)}</a></td>'
            f'<td class="verdict v-{escape(verdict)}">{escape(verdict)}</td>'
            f'<td class="accel">{_e(cell.machine())}</td>'
            f'<td class="selftest">{escape(passes)}</td>'
            f'<td class="kexec num">{cell.kexec_summary()}</td>'
            f'<td class="flush">{_flush_cell(cell)}</td>'
            f'<td class="duration num">{_duration(cell)}</td>'
            f'<td class="reason">{_e(cell.reason)}</td></tr>')


def _verdict_table(cells: list[CellResult]) -> str:
    head = ("<tr><th>cell</th><th>verdict</th><th>accel</th><th>self-test</th>"
            "<th>kexec proven/tried</th><th>flushes (first window)</th><th>time</th>"
            "<th>reason</th></tr>")
    rows = "".join(_verdict_row(i, c) for i, c in enumerate(cells, 1))
    return (f'<section id="verdicts"><h2>Verdicts</h2>'
            f'<table class="verdicts"><thead>{head}</thead><tbody>{rows}</tbody></table>'
            f"</section>")


def _unavailable(cells: list[CellResult]) -> str:
    """Wanted kernel features the trees could not give, and what the harness
    could not check on their versions, once per arch and line."""
    seen: dict[tuple[str, str], None] = {}
    for c in cells:
        for lines in (c.unavailable, c.unchecked):
            for line in lines if isinstance(lines, list) else []:
                seen[(c.arch, str(line))] = None
    if not seen:
        return ""
    items = "".join(f'<li class="unavailable"><b>{_e(arch)}</b>: {_e(line)}</li>'
                    for arch, line in seen)
    return (f'<section id="unavailable"><h2>Unavailable or not checked in these kernels</h2>'
            f"<ul>{items}</ul></section>")


# -- failures ----------------------------------------------------------------

def _failures(cells: list[CellResult]) -> str:
    parts = []
    for cell in cells:
        for f in cell.failures:
            known = bool(f.known)
            status = (f"known: {_e(f.known_reason)}" if known
                      else '<span class="lost">not known: a finding</span>')
            lines = f.failure.report
            report = "\n".join(_text(line) for line in lines) if lines else "(no report)"
            parts.append(
                f'<article class="failure{" known" if known else ""}" data-cell="{_e(cell.name)}"'
                f' data-kind="{_e(f.kind)}" data-known="{str(known).lower()}">'
                f'<h3 class="title">{_e(f.title)}</h3>'
                f"<p>cell <b>{_e(cell.name)}</b>, kind <b class=\"kind\">{_e(f.kind)}</b>, "
                f"console line {_e(f.line)}, boot {_e(f.boot)}{_e(f.failure.times())}</p>"
                f'<p class="known">{status}</p>'
                # Known failures are expected noise: their report is one click away.
                f'<details{"" if known else " open"}><summary>console report '
                f'({len(lines)} lines)</summary>'
                f'<pre class="report">{escape(report)}</pre></details></article>')
    body = "".join(parts) or "<p>No kernel failures.</p>"
    return f'<section id="failures"><h2>Failures</h2>{body}</section>'


# -- direct map --------------------------------------------------------------

def _ptdump(cell: CellResult, snapshot: str) -> dict[str, int] | None:
    """kB per page size ("2M" -> kB) from one snapshot's page-table dump, or None."""
    snap = cell.stats.get(snapshot) if isinstance(cell.stats, dict) else None
    dump = snap.get("ptdump") if isinstance(snap, dict) else None
    if not isinstance(dump, dict) or not dump:
        return None
    out = {}
    for size in PAGE_SIZES:
        kb = dump.get(f"DirectMap{size}")
        if isinstance(kb, int) and not isinstance(kb, bool) and kb >= 0:
            out[size] = kb
    return out or None


def _mib(kb: int) -> str:
    return f"{kb / 1024:,.1f} MiB"


def _bar(when: str, label: str, sizes: dict[str, int] | None, y: int, scale: float) -> str:
    parts = [f'<text x="0" y="{y + 16}">{escape(label)}</text>']
    if sizes is None:
        parts.append(f'<text x="{LABEL_W}" y="{y + 16}" class="no-stats">no statistics</text>')
        return "".join(parts)
    x = float(LABEL_W)
    for size, kb in sizes.items():
        w = kb * scale
        parts.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{BAR_H}" '
                     f'fill="{SIZE_COLOURS[size]}" data-size="{size}" data-when="{when}" '
                     f'data-kb="{kb}"><title>{size}: {kb} kB ({_mib(kb)})</title></rect>')
        x += w
    values = "  ·  ".join(f"{size} {_mib(kb)}" for size, kb in sizes.items())
    parts.append(f'<text x="{LABEL_W}" y="{y + BAR_H + 15}">{escape(values)}</text>')
    return "".join(parts)


def _svg(cell: CellResult, snaps: dict[str, dict[str, int] | None]) -> str:
    # One scale for both bars, so a shrinking total shows as a shorter bar.
    total = max(sum(s.values()) for s in snaps.values() if s is not None)
    scale = BAR_W / total if total else 0.0
    bars = "".join(_bar(when, label, snaps[when], 8 + i * ROW_H, scale)
                   for i, (when, label) in enumerate(SNAPSHOTS))
    sizes = [s for s in PAGE_SIZES if any(s in (v or {}) for v in snaps.values())]
    legend_y = 8 + len(SNAPSHOTS) * ROW_H
    legend = "".join(
        f'<rect x="{LABEL_W + i * 90}" y="{legend_y}" width="12" height="12" '
        f'fill="{SIZE_COLOURS[s]}"></rect>'
        f'<text x="{LABEL_W + i * 90 + 16}" y="{legend_y + 11}">{s} pages</text>'
        for i, s in enumerate(sizes))
    width, height = LABEL_W + BAR_W + 20, legend_y + 20
    return (f'<svg class="directmap" data-cell="{_e(cell.name)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="direct map by page size, boot and after self-test">'
            f'{bars}<g class="legend">{legend}</g></svg>')


def _change_table(snaps: dict[str, dict[str, int] | None]) -> str:
    """The exact numbers, and what the self-test changed: large pages lost to splits."""
    sizes = [s for s in PAGE_SIZES if any(s in (v or {}) for v in snaps.values())]
    head = "".join(f"<th>{s}</th>" for s in sizes)
    rows = []
    for when, label in SNAPSHOTS:
        snap = snaps[when] or {}
        tds = "".join(f'<td class="num">{snap[s]:,} kB<br>{_mib(snap[s])}</td>' if s in snap
                      else '<td class="num">-</td>' for s in sizes)
        rows.append(f"<tr><th>{escape(label)}</th>{tds}</tr>")
    before, after = snaps["boot"], snaps["after_selftest"]
    if before is not None and after is not None:
        tds = ""
        for s in sizes:
            if s not in before or s not in after:
                tds += '<td class="num">-</td>'
                continue
            d = after[s] - before[s]
            lost = d < 0 and s != "4k"      # large pages gone: what splits cost
            cls = "num lost" if lost else "num"
            tds += f'<td class="{cls}" data-size="{s}">{d:+,d} kB<br>{d / 1024:+,.1f} MiB</td>'
        rows.append(f"<tr><th>change</th>{tds}</tr>")
    return f'<table class="dm-values"><tr><th></th>{head}</tr>{"".join(rows)}</table>'


def _direct_map(index: int, cell: CellResult) -> str:
    snaps = {when: _ptdump(cell, when) for when, _ in SNAPSHOTS}
    heading = f"<h3>{_e(cell.name)}</h3>"
    if all(s is None for s in snaps.values()):
        body = f'<p class="no-stats" data-cell="{_e(cell.name)}">no statistics</p>'
    else:
        body = _svg(cell, snaps) + _change_table(snaps)
    return (f'<div class="cell-directmap" id="dm-{index}" data-cell="{_e(cell.name)}">'
            f"{heading}{body}</div>")


def _direct_maps(cells: list[CellResult]) -> str:
    parts = "".join(_direct_map(i, c) for i, c in enumerate(cells, 1))
    return ('<section id="directmap"><h2>Direct map by page size</h2>'
            "<p>From the kernel page-table dump, at boot and after the CPA self-test. "
            "Large pages (1G, 2M/4M) that turned into 4k pages were split.</p>"
            f"{parts}</section>")


def _flush_windows(cell: CellResult) -> str:
    """Calls per flush path in each window; times only where they mean something."""
    f = cell.flush if isinstance(cell.flush, dict) else {}
    windows = [w for w in f.get("windows") or [] if isinstance(w, dict)]
    head = f"<h3>{_e(cell.name)}</h3>"
    if not windows:
        why = f.get("unavailable") or "no counting window"
        return f'<div class="flush" data-cell="{_e(cell.name)}">{head}<p>{_e(why)}</p></div>'
    names = [n for n in (windows[0].get("counts") or {})]
    rows = []
    for n in names:
        cells_ = "".join(f"<td>{_e((w.get('counts') or {}).get(n, '?'))}"
                         + (f" ({_e((w.get('time_us') or {}).get(n))} us)"
                            if w.get("time_us") else "") + "</td>" for w in windows)
        rows.append(f'<tr data-function="{_e(n)}"><td>{_e(n)}</td>{cells_}</tr>')
    labels = "".join(f"<th>{_e(w.get('label'))}</th>" for w in windows)
    notes = [str(f.get("timing", ""))]
    if f.get("untraceable"):
        notes.append("not traceable in this build (inlined): " + ", ".join(
            str(x) for x in f["untraceable"]))
    return (f'<div class="flush" data-cell="{_e(cell.name)}">{head}'
            f"<table><tr><th>function</th>{labels}</tr>{''.join(rows)}</table>"
            + "".join(f'<p class="note">{_e(n)}</p>' for n in notes if n) + "</div>")


def _flush_section(cells: list[CellResult]) -> str:
    return ('<section id="flush"><h2>Flush accounting</h2>'
            "<p>Calls of the CPA and TLB flush paths counted by the function profiler, "
            "per window (a CPA self-test period).</p>"
            + "".join(_flush_windows(c) for c in cells) + "</section>")


def _exercise_cell(cell: CellResult) -> str:
    """Each exerciser mode: full write-backs and CLFLUSH ranges side by side."""
    rows = []
    for m in exercise.modes(cell.exercise):
        counted = m.get("flush")
        g: dict[str, Any] = counted if isinstance(counted, dict) else {}
        found = m.get("flush_window")
        w = found if isinstance(found, dict) else {}
        cols = []
        for group in ("full_flush", "cache_range"):
            us = exercise.per_call_us(w, group)
            cols.append(f"<td>{_e(g.get(group, '-'))}"
                        + (f" ({us:.1f} us/call)" if us else "") + "</td>")
        rows.append(f'<tr data-mode="{_e(m.get("mode"))}"><td>{_e(m.get("mode"))}</td>'
                    f"{''.join(cols)}<td>{_e(exercise.line(m))}</td></tr>")
    notes = exercise.lines(cell.exercise)[-1:] if rows else exercise.lines(cell.exercise)
    return (f'<div class="exercise" data-cell="{_e(cell.name)}"><h3>{_e(cell.name)}</h3>'
            + (f"<table><tr><th>mode</th><th>WBINVD (full_flush)</th>"
               f"<th>CLFLUSH ranges (cache_range)</th><th>what it did</th></tr>"
               f"{''.join(rows)}</table>" if rows else "")
            + "".join(f'<p class="note">{_e(n)}</p>' for n in notes) + "</div>")


def _exercise_section(cells: list[CellResult]) -> str:
    ran = [c for c in cells if c.exercise]
    if not ran:
        return ""
    return ('<section id="exercise"><h2>CPA exerciser</h2>'
            "<p>Cache-attribute changes, concurrent callers and injected allocation "
            "failures (guest/exerciser/cpa_exercise.c), after the self-test periods, "
            "each mode in its own flush-counting window.</p>"
            + "".join(_exercise_cell(c) for c in ran) + "</section>")


# --- each cell's figures over its last runs (the history store) -----------------

TREND_RUNS = 20
# metric (history.cell_metrics), what it is, how a value reads
TRENDS = (("boot:DirectMap1G", "1G pages at boot", lambda v: f"{v / 1024:.0f} MiB"),
          ("DirectMap4k", "4k after the self-test", lambda v: f"{v / 1024:.0f} MiB"),
          ("flush:full_flush", "WBINVD calls", lambda v: f"{v:.0f}"),
          ("tlb_total", "nr_tlb_* since boot", lambda v: f"{v:.0f}"),
          ("to_verdict", "time to verdict", lambda v: f"{v:.0f} s"))
TREND_W, TREND_H = 240, 60


def _trend(cell: str, key: str, label: str, fmt: Any, rows: list[dict[str, Any]]) -> str:
    """One figure run by run, oldest on the left: a line through its points,
    each point titled with its run and value; '' when no run has it."""
    points = [(r["run_id"], r["metrics"][key]) for r in reversed(rows) if key in r["metrics"]]
    if not points:
        return ""
    values = [v for _, v in points]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = (TREND_W - 20) / max(len(points) - 1, 1)
    xy = [(10 + i * step, TREND_H - 10 - (v - low) / span * (TREND_H - 20))
          for i, (_, v) in enumerate(points)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" data-run="{_e(run)}">'
                   f"<title>{_e(run)}: {_e(fmt(v))}</title></circle>"
                   for (x, y), (run, v) in zip(xy, points, strict=True))
    return (f'<figure class="trend" data-cell="{_e(cell)}" data-metric="{_e(key)}">'
            f'<svg width="{TREND_W}" height="{TREND_H}" viewBox="0 0 {TREND_W} {TREND_H}" '
            f'role="img" aria-label="{_e(label)} over the last {len(points)} runs">'
            f'<polyline fill="none" stroke="#36c" points="{line}"></polyline>{dots}</svg>'
            f"<figcaption>{_e(label)}: {_e(fmt(values[-1]))} now, "
            f"{_e(fmt(low))} to {_e(fmt(high))} over {len(points)} runs</figcaption></figure>")


def _trends_section(trends: dict[str, list[dict[str, Any]]]) -> str:
    shown = []
    for cell, rows in trends.items():
        figures = "".join(_trend(cell, k, label, fmt, rows) for k, label, fmt in TRENDS)
        if figures:
            shown.append(f'<div class="trends" data-cell="{_e(cell)}"><h3>{_e(cell)}</h3>'
                         f"{figures}</div>")
    if not shown:
        return ""
    return ('<section id="history"><h2>History</h2><p>Each cell\'s figures over its last '
            f"{TREND_RUNS} recorded runs, oldest on the left (the history store; "
            "`cpa-harness history --cell NAME` lists them).</p>" + "".join(shown)
            + "</section>")
