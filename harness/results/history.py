"""A history of runs in SQLite, and the comparison of two runs.

`record_run()` copies what matters of a run directory (summary.json and each
cell's result.json) into a store, by default `data_dir()/history.sqlite`;
`list_runs()` lists the store; `compare()` says what changed between two runs,
cell by cell, and flags regressions past `Thresholds`.

The store is shared by harness processes that may end at the same moment, so
it runs in WAL mode (readers never block the writer), waits for locks instead
of failing (busy timeout), and writes each run in one `BEGIN IMMEDIATE`
transaction: the write lock is taken up front, so a transaction never has to
upgrade a read lock halfway, which SQLite may refuse without waiting.

What is kept per cell (the statistics after the self-test, from
`stats.after_selftest` and `stats.delta` of the cell's result):

- the direct map by page size, as the page-table dump shows it (kB): columns
  `dm_4k_kb`, `dm_2m_kb`, `dm_4m_kb`, `dm_1g_kb` (NULL when the kernel has no
  such line or no dump) — the dump, not meminfo, because meminfo overcounts
  (docs/design.md, Statistics);
- the vmstat split and `nr_tlb_*` counters after the self-test and their
  change since boot: JSON columns `vmstat_after`, `vmstat_delta`;
- the flush-accounting groups (full_flush, cache_range, cpa_tlb, global_tlb,
  ipi) summed over the cell's counting windows: JSON column `flush_groups`
  (NULL without flush accounting) and the number of windows;
- `boot_to_ready` and `to_verdict` in seconds, and every duration as JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import paths
from harness.errors import InfraError, UserError
from harness.probes import flush
from harness.results.cell import Verdict
from harness.results.rundir import read_json, read_run

SCHEMA_VERSION = 3
# What each version adds to the one before it; a store is brought up to date
# in one transaction when it is opened. v2: the machine a cell ran on; v3: the
# CPA exerciser's modes, the direct map each kernel booted with, the config hash.
MIGRATIONS = {2: ["ALTER TABLE cells ADD COLUMN target TEXT",
                  # schema 1 did not say which box: never the same one as another's
                  "UPDATE cells SET target = 'box:?' WHERE accel = 'box'"],
              3: ["ALTER TABLE cells ADD COLUMN exercise TEXT",
                  "ALTER TABLE cells ADD COLUMN dm_boot TEXT",
                  "ALTER TABLE cells ADD COLUMN config_hash TEXT"]}
BUSY_TIMEOUT_S = 60.0   # a writer holds the lock for milliseconds; a minute is generous

SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,            -- the run directory's name
    run_dir TEXT NOT NULL,
    started REAL,
    finished REAL,
    host TEXT,
    tree TEXT,
    source_id TEXT,
    kernel_version TEXT,
    exit_code INTEGER,
    interrupted INTEGER,
    recorded REAL NOT NULL
);
CREATE TABLE cells (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    arch TEXT,
    verdict TEXT NOT NULL,
    reason TEXT,
    scenario TEXT,
    accel TEXT,
    target TEXT,                    -- "box:NAME" for a lab box, NULL for a QEMU guest
    cpu TEXT,
    boot_to_ready REAL,
    to_verdict REAL,
    durations TEXT,                 -- JSON: every duration, seconds
    dm_4k_kb INTEGER,               -- direct map after the self-test (page-table dump)
    dm_2m_kb INTEGER,
    dm_4m_kb INTEGER,
    dm_1g_kb INTEGER,
    vmstat_after TEXT,              -- JSON: split and nr_tlb_* counters after the self-test
    vmstat_delta TEXT,              -- JSON: their change since boot
    flush_groups TEXT,              -- JSON: flush-accounting groups over all windows
    flush_windows INTEGER,
    exercise TEXT,                  -- JSON: per exerciser mode, its flush groups and problems
    config_hash TEXT,               -- the kernel's final .config (a noise band's runs share it)
    dm_boot TEXT,                   -- JSON: the direct map at boot (page-table dump), kB,
                                    -- of the cell's kernel ("boot") and each kexec'd one
    PRIMARY KEY (run_id, name)
);
CREATE INDEX runs_started ON runs (started);
"""
OUR_TABLES = {"schema_version", "runs", "cells"}

# Direct-map sizes: meminfo's names, the store's columns.
DIRECT_MAP_COLUMNS = {"DirectMap4k": "dm_4k_kb", "DirectMap2M": "dm_2m_kb",
                      "DirectMap4M": "dm_4m_kb", "DirectMap1G": "dm_1g_kb"}
LARGE_PAGES = ("DirectMap2M", "DirectMap4M", "DirectMap1G")
TIMES = ("boot_to_ready", "to_verdict")


def default_db() -> Path:
    return paths.data_dir() / "history.sqlite"


# --- the store ----------------------------------------------------------------

def _db_error(db: Path, e: sqlite3.Error) -> UserError | InfraError:
    """One line naming the file: whose fault it is decides the error type."""
    name = getattr(e, "sqlite_errorname", "")
    what = str(e).splitlines()[0] if str(e) else type(e).__name__
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return UserError(f"{db} is not a usable history store ({what})",
                         "move it away or pass another database path")
    if name in ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH"):
        return UserError(f"cannot open the history store {db} ({what})",
                         "check the path and its permissions")
    return InfraError(f"history store {db}: {what}",
                      "another process may hold it locked, or the disk is full")


SQLITE_HEADER = b"SQLite format 3\x00"


def _refuse_foreign_file(db: Path) -> None:
    """SQLite takes a file shorter than a page (a one-line note, say) for an empty
    database and writes its schema over it: a file that is not one is left alone."""
    try:
        with open(db, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except (FileNotFoundError, IsADirectoryError):
        return      # a new store, or a directory: sqlite's own error says it
    except OSError as e:
        raise UserError(f"cannot open the history store {db} ({e.strerror})",
                        "check the path and its permissions") from None
    if head and head != SQLITE_HEADER:
        raise UserError(f"{db} is not a usable history store (not a database: no SQLite "
                        "header)", "move it away or pass another database path")


@contextlib.contextmanager
def _open(db: Path) -> Iterator[sqlite3.Connection]:
    """A connection with the schema in place; sqlite errors become harness errors."""
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:     # exist_ok covers directories only
        raise UserError(f"cannot create the history store {db}: {db.parent} is a file") \
            from None
    except OSError as e:
        raise UserError(f"cannot create {db.parent}: {e.strerror}") from None
    _refuse_foreign_file(db)
    conn: sqlite3.Connection | None = None
    try:
        # isolation_level=None: no implicit transactions; each write says BEGIN IMMEDIATE.
        conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        _ensure_schema(conn, db)
        yield conn
    except sqlite3.Error as e:
        if conn is not None and conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
        raise _db_error(db, e) from None
    finally:
        if conn is not None:
            conn.close()


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def _version(conn: sqlite3.Connection, db: Path) -> int | None:
    """The store's schema version; None for an empty file. Refuses foreign databases."""
    tables = _tables(conn)
    if "schema_version" not in tables:
        if tables - OUR_TABLES:
            raise UserError(f"{db} is an SQLite database but not a cpa-harness history "
                            f"store (tables: {', '.join(sorted(tables)[:5])})",
                            "pass another database path")
        return None
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return None if row[0] is None else int(row[0])


def _ensure_schema(conn: sqlite3.Connection, db: Path) -> None:
    version = _version(conn, db)
    if version is None:
        # Two processes may both find the file empty: the second, once it has
        # the write lock, sees the first's schema and creates nothing.
        conn.execute("BEGIN IMMEDIATE")
        if _version(conn, db) is None:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
        version = _version(conn, db)
    if version is not None and version > SCHEMA_VERSION:
        raise UserError(f"{db} was written by a newer cpa-harness (history schema {version}, "
                        f"this one knows up to {SCHEMA_VERSION})",
                        "upgrade cpa-harness or use another database path")
    if version is not None and version < SCHEMA_VERSION:
        _migrate(conn, db)
    _add_missing_columns(conn)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Columns a migration adds that the store lacks, added (empty) now: a store
    written by a development build between two versions says the new version
    without all its columns, and would fail on its first read."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(cells)").fetchall()}
    wanted = [s for v in sorted(MIGRATIONS) for s in MIGRATIONS[v]
              if s.startswith("ALTER TABLE cells ADD COLUMN ")]
    missing = [s for s in wanted if s.split()[5] not in have]
    if not missing:
        return
    conn.execute("BEGIN IMMEDIATE")
    have = {r[1] for r in conn.execute("PRAGMA table_info(cells)").fetchall()}
    for statement in missing:
        if statement.split()[5] not in have:     # another process may have done it
            conn.execute(statement)
    conn.execute("COMMIT")


def _migrate(conn: sqlite3.Connection, db: Path) -> None:
    """An older store brought up to this version, all or nothing: what it
    recorded reads as it did (a cell without a target ran in QEMU)."""
    conn.execute("BEGIN IMMEDIATE")
    version = _version(conn, db) or SCHEMA_VERSION     # another process may have done it
    for v in range(version + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS[v]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (v,))
    conn.execute("COMMIT")


# --- reading a run directory --------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise UserError(f"{path} is not a JSON object")
    return doc


def _obj(value: object) -> dict[str, Any]:
    """A JSON object or, for anything else (absent, null), an empty one."""
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str | None:
    """A text column's value: what is not a string (a damaged file) is stored as NULL."""
    return value if isinstance(value, str) else None


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _counters(vmstat: object) -> dict[str, int]:
    """The split and nr_tlb_* counters of a vmstat group; other keys are not ours."""
    return {k: int(v) for k, v in _obj(vmstat).items()
            if isinstance(v, int) and (k.startswith("nr_tlb_") or k.startswith("direct_map_"))}


def _counters_json(vmstat: object) -> str | None:
    """NULL when the snapshot has no vmstat at all, so 'absent' stays apart from 'none'."""
    return None if vmstat is None else json.dumps(_counters(vmstat))


def _flush_groups(accounting: object) -> tuple[dict[str, int] | None, int]:
    """Flush-accounting groups summed over the windows, and the number of windows.

    Summed because the windows are consecutive spans of one cell (first pass,
    each period): together they are every flush the self-test caused.
    """
    windows = [w for w in _obj(accounting).get("windows") or [] if isinstance(w, dict)]
    if not windows:
        return None, 0
    total = dict.fromkeys(flush.GROUPS, 0)
    for w in windows:
        for k, v in _obj(w.get("groups")).items():
            if isinstance(v, int):
                total[k] = total.get(k, 0) + v
    return total, len(windows)


def _cell_row(run_id: str, entry: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """The cells row of one result.json (or of the summary's entry when it has none)."""
    st = _obj(doc.get("stats"))
    after, changed = _obj(st.get("after_selftest")), _obj(st.get("delta"))
    dump = _obj(after.get("ptdump"))
    durations = {k: v for k, v in _obj(doc.get("durations")).items() if _num(v) is not None}
    groups, windows = _flush_groups(doc.get("flush"))
    row: dict[str, Any] = {
        "run_id": run_id,
        "name": doc.get("name") or entry.get("name"),
        "arch": doc.get("arch") or entry.get("arch"),
        "verdict": doc.get("verdict") or entry.get("verdict") or Verdict.NOT_RUN.value,
        "reason": _text(doc.get("reason", entry.get("reason", ""))),
        "scenario": _text(doc.get("scenario")),
        "accel": _text(doc.get("accel")),
        "target": _target(doc.get("target")),
        "cpu": _text(doc.get("cpu")),
        "boot_to_ready": _num(durations.get("boot_to_ready")),
        "to_verdict": _num(durations.get("to_verdict")),
        "durations": json.dumps(durations),
        "vmstat_after": _counters_json(after.get("vmstat")),
        "vmstat_delta": _counters_json(changed.get("vmstat")),
        "flush_groups": None if groups is None else json.dumps(groups),
        "flush_windows": windows,
        "exercise": _exercise_json(doc.get("exercise")),
        "dm_boot": _boot_maps_json(st, doc.get("kexec")),
        "config_hash": _text(doc.get("config_hash")) or None,
    }
    for key, column in DIRECT_MAP_COLUMNS.items():
        row[column] = dump.get(key) if isinstance(dump.get(key), int) else None
    return row


def _boot_maps_json(st: dict[str, Any], trips: object) -> str | None:
    """The direct map as each kernel booted it: what the page-table dump shows
    before the self-test splits anything (the figures after it are what the
    self-test left, which on real GB-page runs is no 1G page at all)."""
    out: dict[str, dict[str, int]] = {}
    boots = [("boot", _obj(st.get("boot")))]
    for n, rt in enumerate(trips if isinstance(trips, list) else [], 1):
        boots.append((f"kexec{n}", _obj(_obj(_obj(rt).get("stats")).get("after"))))
    for name, snap in boots:
        dump = {k: v for k, v in _obj(snap.get("ptdump")).items()
                if k in DIRECT_MAP_COLUMNS and isinstance(v, int)}
        if dump:
            out[name] = dump
    return json.dumps(out) if out else None


def _exercise_json(record: object) -> str | None:
    """Per mode that ran: its flush groups' calls and its problems, counted."""
    modes = _obj(record).get("modes")
    out: dict[str, dict[str, int]] = {}
    for m in modes if isinstance(modes, list) else []:
        m = _obj(m)
        if m.get("unavailable") or not isinstance(m.get("mode"), str):
            continue
        counts = {k: v for k, v in _obj(m.get("flush")).items() if isinstance(v, int)}
        problems = m.get("problems")
        out[m["mode"]] = {**counts, "problems": len(problems) if isinstance(problems, list)
                          else 0}
    return json.dumps(out) if out else None


def _target(part: object) -> str | None:
    """The machine a cell ran on, where it is not a QEMU guest of this host."""
    part = _obj(part)
    return f"box:{part.get('box')}" if part.get("kind") == "box" else None


def _cell_rows(run_dir: Path, run_id: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for entry in summary["cells"]:     # read_run checked each entry and its result
        # cells/NAME/result.json as read_run reads it: a summary never chooses the path
        path = run_dir / "cells" / entry["name"] / "result.json"
        # A cell listed without its result (an interrupted run) keeps the summary's verdict.
        doc = _read_json(path) if path.exists() else {}
        rows.append(_cell_row(run_id, entry, doc))
    return rows


def _run_row(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    host = summary.get("host")
    return {
        "id": run_dir.name,
        "run_dir": str(run_dir),
        "started": _num(summary.get("started")),
        "finished": _num(summary.get("finished")),
        # a merged run ran on several hosts: one column holds them all
        "host": ", ".join(host) if isinstance(host, list) else host,
        "tree": summary.get("tree"),
        "source_id": summary.get("source_id"),
        "kernel_version": summary.get("kernel_version"),
        "exit_code": summary.get("exit_code"),
        "interrupted": int(bool(summary.get("interrupted"))),
        "recorded": time.time(),
    }


def _insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    names = ", ".join(row)
    marks = ", ".join(f":{k}" for k in row)
    # Table and column names are this module's own; the values go as parameters.
    conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", row)


# --- public: recording and listing --------------------------------------------

def record_run(db: Path, run_dir: Path) -> str:
    """Store the run in `run_dir` (replacing an earlier record of it); returns its id.

    The id is the run directory's name.
    """
    run_dir = run_dir.resolve()
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise UserError(f"{run_dir} is not a finished run directory (no summary.json)",
                        "runs are under ~/.local/share/cpa-harness/runs/ unless --out said")
    # The checks report, merge and resume apply: a damaged run is a UserError
    # naming its file, never an SQL error or a half-right record.
    summary, _ = read_run(run_dir)
    run = _run_row(run_dir, summary)
    cells = _cell_rows(run_dir, run["id"], summary)   # read everything before locking
    with _open(db) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM cells WHERE run_id = ?", (run["id"],))
        conn.execute("DELETE FROM runs WHERE id = ?", (run["id"],))
        _insert(conn, "runs", run)
        for row in cells:
            _insert(conn, "cells", row)
        conn.execute("COMMIT")
    return str(run["id"])


def list_runs(db: Path) -> list[dict[str, Any]]:
    """Every recorded run, newest first, each with `cells` (total) and `verdicts` (counts)."""
    if not db.exists():
        return []   # listing must not create a store as a side effect
    with _open(db) as conn:
        runs = [dict(r) for r in conn.execute(
            "SELECT * FROM runs ORDER BY started IS NULL, started DESC, id DESC")]
        counts = conn.execute(
            "SELECT run_id, verdict, count(*) FROM cells GROUP BY run_id, verdict").fetchall()
    by_run: dict[str, dict[str, int]] = {}
    for run_id, verdict, n in counts:
        by_run.setdefault(run_id, {})[verdict] = n
    for r in runs:
        r["verdicts"] = by_run.get(r["id"], {})
        r["cells"] = sum(r["verdicts"].values())
    return runs


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns; the last one is not padded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(v.ljust(w) for v, w in zip(r, widths, strict=False)), r[-1]])
                     .rstrip() for r in rows) + "\n"


def cell_history(db: Path, name: str, last: int = 20) -> list[dict[str, Any]]:
    """One cell's rows, newest run first (at most `last`), with their metrics."""
    if not db.exists():
        return []
    with _open(db) as conn:
        rows = conn.execute(
            "SELECT cells.*, runs.started AS run_started FROM cells JOIN runs "
            "ON runs.id = cells.run_id WHERE cells.name = ? "
            "ORDER BY runs.started IS NULL, runs.started DESC, runs.id DESC LIMIT ?",
            (name, last)).fetchall()
    return [{**dict(r), "metrics": cell_metrics(r)} for r in rows]


def format_cell_history(name: str, rows: list[dict[str, Any]]) -> str:
    """`history --cell NAME`: verdict, GB pages at boot, 4k after the self-test,
    flush counts and time to verdict, one run per line."""
    if not rows:
        return f"no run recorded cell {name}\n"
    table: list[tuple[str, ...]] = [("run", "started", "machine", "verdict", "1G at boot",
                                     "4k after", "wbinvd", "clflush", "tlb", "to verdict")]

    def kb(v: float | None) -> str:
        return "-" if v is None else f"{v / 1024:.0f}M"

    def n(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"
    for r in rows:
        m = r["metrics"]
        table.append((r["run_id"], _when(r.get("run_started")),
                      r.get("target") or r.get("accel") or "-", r["verdict"],
                      kb(m.get("boot:DirectMap1G")), kb(m.get("DirectMap4k")),
                      n(m.get("flush:full_flush")), n(m.get("flush:cache_range")),
                      n(m.get("tlb_total")),
                      "-" if m.get("to_verdict") is None else f"{m['to_verdict']:.0f}s"))
    widths = [max(len(t[i]) for t in table) for i in range(len(table[0]))]
    return f"cell {name}\n" + "".join("  ".join(v.ljust(w) for v, w in zip(t, widths,
                                                                         strict=True)).rstrip()
                                     + "\n" for t in table)


def format_runs(runs: list[dict[str, Any]]) -> str:
    """The `history` listing: one line per run, newest first as given."""
    if not runs:
        return "no runs recorded\n"
    rows: list[tuple[str, ...]] = [
        ("run", "started", "time", "host", "kernel", "exit", "cells", "source")]
    order = [v.value for v in Verdict]
    for r in runs:
        took = (f"{r['finished'] - r['started']:.0f}s"
                if r.get("started") is not None and r.get("finished") is not None else "-")
        verdicts = sorted(r["verdicts"].items(),
                          key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
        rows.append((r["id"], _when(r.get("started")), took, r.get("host") or "-",
                     r.get("kernel_version") or "-",
                     "-" if r.get("exit_code") is None else str(r["exit_code"]),
                     " ".join(f"{v} {n}" for v, n in verdicts) or "none",
                     r.get("source_id") or r.get("tree") or "-"))
    return _table(rows)


# --- comparing two runs ---------------------------------------------------------

@dataclass(frozen=True)
class Thresholds:
    """When a change between two runs is flagged.

    Percentages are of run A's value; a rise from 0 is an infinite percentage,
    so only the minimum absolute change holds it back.
    """

    # "large pages lost" (a regression): DirectMap2M/4M or 1G after the self-test
    # fell by more than this ...
    large_drop_pct: float = 10.0
    # ... or DirectMap4k rose by more than this (the test splits at random, so the
    # 4k figure, smaller and cumulative, moves more from run to run than the large ones),
    small_rise_pct: float = 25.0
    # and in either case by at least this much: a couple of 2M pages is noise.
    min_direct_map_kb: int = 4096
    # "more flushes" (a regression): the nr_tlb_* total since boot, or the
    # full_flush or global_tlb call counts, rose by more than this ...
    flush_rise_pct: float = 20.0
    # ... and by at least this many counts (nr_tlb_* run in thousands) ...
    min_tlb_rise: int = 100
    # ... or calls (WBINVD and global flushes are rare, and each is expensive).
    min_flush_call_rise: int = 10
    # "slower" (a warning only: TCG timings are noisy): boot_to_ready or
    # to_verdict more than this much longer, and by at least this many seconds.
    slower_pct: float = 50.0
    min_slower_s: float = 2.0
    # With this many earlier passing runs of the same cell, kernel configuration,
    # target and accelerator, a figure is judged against their noise band
    # instead: worse than the median by more than band_width spreads (1.4826 x
    # the median absolute deviation), and by the minimum absolute change above.
    band_runs: int = 5
    band_width: float = 3.0
    band_history: int = 20


DEFAULT_THRESHOLDS = Thresholds()


@dataclass
class Finding:
    cell: str
    kind: str       # verdict, large-pages-lost, more-flushes, slower, verdict-changed, ...
    severity: str   # "regression" or "warning"
    message: str
    metric: str = ""    # the metric judged (cell_metrics()), where one was


@dataclass
class CellComparison:
    name: str
    arch: str
    verdict_a: str | None       # None: the cell is not in run A
    verdict_b: str | None
    change: str                 # same, regression, fixed, changed, appeared, disappeared
    # metric -> (A, B) for every metric either side has; see cell_metrics().
    metrics: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    run_a: str
    run_b: str
    runs: dict[str, dict[str, Any]]     # id -> the runs row
    cells: list[CellComparison]
    findings: list[Finding]
    thresholds: Thresholds

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "regression"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def has_regressions(self) -> bool:
        return bool(self.regressions)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _load_json_col(value: str | None) -> dict[str, Any]:
    return _obj(json.loads(value)) if value else {}


def cell_metrics(row: sqlite3.Row | dict[str, Any]) -> dict[str, float]:
    """One stored cell as flat metrics, the names compare() and its report use:

    DirectMap4k/2M/4M/1G (kB after the self-test), boot:DirectMap* and
    kexecN:DirectMap* (kB as the cell's kernel and the N-th kexec'd one
    booted, page-table dump), after:COUNTER and
    delta:COUNTER (vmstat after the self-test, and since boot), tlb_total (the
    sum of every delta:nr_tlb_*), flush:GROUP (flush-accounting calls),
    boot_to_ready and to_verdict (s). A metric the cell does not have is absent.
    """
    out: dict[str, float] = {}
    for key, column in DIRECT_MAP_COLUMNS.items():
        if row[column] is not None:
            out[key] = row[column]
    for prefix, column in (("after", "vmstat_after"), ("delta", "vmstat_delta")):
        for k, v in _load_json_col(row[column]).items():
            out[f"{prefix}:{k}"] = v
    tlb = [v for k, v in out.items() if k.startswith("delta:nr_tlb_")]
    if tlb:
        out["tlb_total"] = sum(tlb)
    for k, v in _load_json_col(row["flush_groups"]).items():
        out[f"flush:{k}"] = v
    for k in TIMES:
        if row[k] is not None:
            out[k] = row[k]
    for kernel, dump in _load_json_col(row["dm_boot"]).items():
        for k, v in _obj(dump).items():
            out[f"{kernel}:{k}"] = v
    for mode, counts in _load_json_col(row["exercise"]).items():
        for k, v in _obj(counts).items():
            out[f"exercise:{mode}:{k}"] = v
    return out


def _is_run_dir(ref: str | Path) -> bool:
    return (Path(ref) / "summary.json").is_file()


def resolve_run(db: Path, ref: str | Path) -> str:
    """A run id from a run directory (recorded first) or an id already in the store."""
    if _is_run_dir(ref):
        return record_run(db, Path(ref))
    if db.exists():
        with _open(db) as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (str(ref),)).fetchone():
                return str(ref)
    if Path(ref).is_dir():
        raise UserError(f"{ref} is not a finished run directory (no summary.json)",
                        "give a run directory, or a run id from `cpa-harness history`")
    raise UserError(f"no run {ref} in {db}, and no run directory by that name",
                    "`cpa-harness history` lists the recorded runs")


def _load(conn: sqlite3.Connection, run_id: str) -> tuple[dict[str, Any], dict[str, sqlite3.Row]]:
    run = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    cells = conn.execute("SELECT * FROM cells WHERE run_id = ? ORDER BY rowid",
                         (run_id,)).fetchall()
    return dict(run), {c["name"]: c for c in cells}


def _pct(a: float, b: float) -> float:
    """The change from a to b in percent of a; a rise from 0 is infinite."""
    if a == 0:
        return 0.0 if b == 0 else math.copysign(math.inf, b)
    return (b - a) / abs(a) * 100


def _verdict_change(a: str | None, b: str | None) -> str:
    if a is None:
        return "appeared"
    if b is None:
        return "disappeared"
    if a == b:
        return "same"
    if a == Verdict.PASS:
        # Every lost pass: a failure, a user or infrastructure error, not run.
        return "regression"
    if a == Verdict.FAIL and b == Verdict.PASS:
        return "fixed"
    return "changed"


def _fmt_pct(p: float) -> str:
    return "new" if math.isinf(p) else f"{p:+.0f}%"


def _direct_map_findings(name: str, m: dict[str, tuple[float | None, float | None]],
                         t: Thresholds) -> list[Finding]:
    out = []
    for key in (*LARGE_PAGES, "DirectMap4k"):
        a, b = m.get(key, (None, None))
        if a is None or b is None:
            continue
        if key == "DirectMap4k":
            hit = b - a >= t.min_direct_map_kb and _pct(a, b) > t.small_rise_pct
            limit = f"+{t.small_rise_pct:g}%"
        else:
            hit = a - b >= t.min_direct_map_kb and -_pct(a, b) > t.large_drop_pct
            limit = f"-{t.large_drop_pct:g}%"
        if hit:
            out.append(Finding(name, "large-pages-lost", "regression",
                               f"{key} after the self-test {a:.0f} -> {b:.0f} kB "
                               f"({_fmt_pct(_pct(a, b))}, threshold {limit})", key))
    # The large pages each kernel booted with (its own, and each kexec'd one's):
    # what the self-test has to split, before it splits anything.
    for key, (a, b) in m.items():
        kernel, _, size = key.partition(":")
        if size not in LARGE_PAGES or not (kernel == "boot" or kernel.startswith("kexec")) \
                or a is None or b is None:
            continue
        if a - b >= t.min_direct_map_kb and -_pct(a, b) > t.large_drop_pct:
            who = "at boot" if kernel == "boot" else f"in kexec'd kernel {kernel[5:]} at boot"
            out.append(Finding(name, "large-pages-lost", "regression",
                               f"{size} {who} (page-table dump) {a:.0f} -> {b:.0f} kB "
                               f"({_fmt_pct(_pct(a, b))}, threshold -{t.large_drop_pct:g}%)",
                               key))
    return out


def _flush_findings(name: str, m: dict[str, tuple[float | None, float | None]],
                    t: Thresholds) -> list[Finding]:
    out = []
    checks = (("tlb_total", t.min_tlb_rise, "nr_tlb_* counts since boot"),
              ("flush:full_flush", t.min_flush_call_rise, "full_flush calls (WBINVD)"),
              ("flush:global_tlb", t.min_flush_call_rise, "global_tlb calls"))
    for key, minimum, what in checks:
        a, b = m.get(key, (None, None))
        if a is None or b is None:
            continue
        if b - a >= minimum and _pct(a, b) > t.flush_rise_pct:
            out.append(Finding(name, "more-flushes", "regression",
                               f"{what} {a:.0f} -> {b:.0f} ({_fmt_pct(_pct(a, b))}, "
                               f"threshold +{t.flush_rise_pct:g}% and +{minimum})", key))
    return out


def _exercise_findings(name: str, m: dict[str, tuple[float | None, float | None]],
                       t: Thresholds) -> list[Finding]:
    """A mode whose checks failed where they passed, or that does more full
    write-backs (WBINVD), on the same changes."""
    out = []
    for key, (a, b) in m.items():
        if not key.startswith("exercise:") or a is None or b is None:
            continue
        mode, what = key.split(":")[1:3]
        if what == "problems" and b > 0 == a:
            out.append(Finding(name, "exercise-check", "regression",
                               f"the CPA exerciser's {mode} mode: {b:.0f} problem(s), "
                               "none before"))
        elif what == "full_flush" and b - a >= t.min_flush_call_rise \
                and _pct(a, b) > t.flush_rise_pct:
            out.append(Finding(name, "more-flushes", "regression",
                               f"the CPA exerciser's {mode} mode: full_flush calls (WBINVD) "
                               f"{a:.0f} -> {b:.0f} ({_fmt_pct(_pct(a, b))}, threshold "
                               f"+{t.flush_rise_pct:g}% and +{t.min_flush_call_rise})", key))
    return out


def _time_findings(name: str, m: dict[str, tuple[float | None, float | None]],
                   t: Thresholds) -> list[Finding]:
    out = []
    for key in TIMES:
        a, b = m.get(key, (None, None))
        if a is None or b is None:
            continue
        if b - a >= t.min_slower_s and _pct(a, b) > t.slower_pct:
            out.append(Finding(name, "slower", "warning",
                               f"{key} {a:.1f}s -> {b:.1f}s ({_fmt_pct(_pct(a, b))}, "
                               f"threshold +{t.slower_pct:g}%)"))
    return out


# Figures a noise band judges, and which way is worse: +1 higher, -1 lower.
def _band_direction(key: str) -> int | None:
    kernel, _, size = key.partition(":")
    if size in LARGE_PAGES and (kernel == "boot" or kernel.startswith("kexec")):
        return -1
    if key in LARGE_PAGES:
        return -1
    if key in ("DirectMap4k", "tlb_total", "flush:full_flush", "flush:global_tlb") or \
            (key.startswith("exercise:") and key.endswith(":full_flush")):
        return 1
    return None


def _band_minimum(key: str, t: Thresholds) -> float:
    if "DirectMap" in key:
        return t.min_direct_map_kb
    return t.min_tlb_rise if key == "tlb_total" else t.min_flush_call_rise


@dataclass(frozen=True)
class Band:
    """What a figure was in earlier runs: its median, and its spread."""

    median: float
    spread: float           # 1.4826 x the median absolute deviation
    runs: int

    @classmethod
    def of(cls, values: list[float]) -> Band:
        med = statistics.median(values)
        return cls(med, 1.4826 * statistics.median(abs(v - med) for v in values), len(values))


def _bands(conn: sqlite3.Connection, b: sqlite3.Row, started: float | None,
           t: Thresholds) -> dict[str, Band]:
    """Noise bands of run B's cell from earlier passing runs of the same cell,
    configuration, target and accelerator; none without enough of them."""
    if not b["config_hash"]:
        return {}
    rows = conn.execute(
        "SELECT cells.* FROM cells JOIN runs ON runs.id = cells.run_id "
        "WHERE cells.name = ? AND cells.run_id != ? AND cells.verdict = ? "
        "AND cells.config_hash = ? AND cells.target IS ? AND cells.accel IS ? "
        "AND (? IS NULL OR runs.started < ?) ORDER BY runs.started DESC LIMIT ?",
        (b["name"], b["run_id"], Verdict.PASS.value, b["config_hash"], b["target"],
         b["accel"], started, started, t.band_history)).fetchall()
    if len(rows) < t.band_runs:
        return {}
    values: dict[str, list[float]] = {}
    for r in rows:
        for k, v in cell_metrics(r).items():
            if _band_direction(k) is not None:
                values.setdefault(k, []).append(v)
    return {k: Band.of(v) for k, v in values.items() if len(v) >= t.band_runs}


def _band_findings(name: str, m: dict[str, tuple[float | None, float | None]],
                   bands: dict[str, Band], t: Thresholds) -> list[Finding]:
    out = []
    for key, band in sorted(bands.items()):
        b = m.get(key, (None, None))[1]
        direction = _band_direction(key)
        if b is None or direction is None:
            continue
        worse = (b - band.median) * direction
        if worse >= _band_minimum(key, t) and worse > t.band_width * band.spread:
            kind = "large-pages-lost" if "DirectMap" in key else "more-flushes"
            out.append(Finding(name, kind, "regression",
                               f"{key} {b:.0f}, outside its band over {band.runs} runs: "
                               f"median {band.median:.0f}, spread {band.spread:.0f} "
                               f"(threshold {t.band_width:g} spreads and "
                               f"{_band_minimum(key, t):.0f})", key))
    return out


def _compare_cell(name: str, a: sqlite3.Row | None, b: sqlite3.Row | None,
                  t: Thresholds, bands: dict[str, Band] | None = None
                  ) -> tuple[CellComparison, list[Finding]]:
    either = b if b is not None else a
    assert either is not None
    c = CellComparison(name, either["arch"] or "", a["verdict"] if a else None,
                       b["verdict"] if b else None, "same")
    c.change = _verdict_change(c.verdict_a, c.verdict_b)
    findings: list[Finding] = []
    if c.change == "regression":
        findings.append(Finding(name, "verdict", "regression",
                                f"pass -> {c.verdict_b}: {b['reason'] if b else ''}"))
    elif c.change == "disappeared" and c.verdict_a == Verdict.PASS:
        findings.append(Finding(name, "disappeared", "regression",
                                "passed in run A, no result in run B"))
    elif c.change == "changed":
        findings.append(Finding(name, "verdict-changed", "warning",
                                f"{c.verdict_a} -> {c.verdict_b}: "
                                f"{b['reason'] if b else ''}"))
    elif c.change in ("appeared", "disappeared"):      # new, or gone but not passing
        findings.append(Finding(name, c.change, "warning",
                                f"only in run {'B' if c.change == 'appeared' else 'A'} "
                                f"({c.verdict_b or c.verdict_a})"))
    if a is None or b is None:
        return c, findings
    ma, mb = cell_metrics(a), cell_metrics(b)
    c.metrics = {k: (ma.get(k), mb.get(k)) for k in sorted(ma.keys() | mb.keys())}
    judged = [*_direct_map_findings(name, c.metrics, t), *_flush_findings(name, c.metrics, t),
              *_exercise_findings(name, c.metrics, t)]
    if bands:
        # A figure with a band is judged by it alone; the fixed thresholds hold the rest.
        judged = [f for f in judged if f.metric not in bands]
        judged += _band_findings(name, c.metrics, bands, t)
        c.notes.append(f"{len(bands)} figures judged against a noise band of "
                       f"{min(x.runs for x in bands.values())}+ earlier runs")
    findings += judged
    if a["target"] != b["target"]:
        # A lab box against a QEMU guest, or another box: different machines.
        c.notes.append(f"target {a['target'] or 'qemu'} -> {b['target'] or 'qemu'}: "
                       "times not compared")
    elif a["accel"] != b["accel"]:
        # KVM against TCG: the times measure different machines.
        c.notes.append(f"accel {a['accel']} -> {b['accel']}: times not compared")
    else:
        findings += _time_findings(name, c.metrics, t)
    if a["flush_windows"] != b["flush_windows"]:
        c.notes.append(f"flush windows {a['flush_windows']} -> {b['flush_windows']}")
    return c, findings


def compare(db: Path, run_a: str | Path, run_b: str | Path,
            thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Comparison:
    """What changed from run A to run B, each a run id in `db` or a run directory.

    Directories are recorded into `db` first. Two directories of the same name
    would be one id in the store, so that is refused.
    """
    id_a, id_b = resolve_run(db, run_a), resolve_run(db, run_b)
    if id_a == id_b and _is_run_dir(run_a) and _is_run_dir(run_b) \
            and Path(run_a).resolve() != Path(run_b).resolve():
        raise UserError(f"{run_a} and {run_b} have the same name {id_a!r}, which is the run "
                        "id in the history store", "rename one of the run directories")
    with _open(db) as conn:
        conn.execute("BEGIN")       # both runs from one consistent snapshot
        run_a_row, cells_a = _load(conn, id_a)
        run_b_row, cells_b = _load(conn, id_b)
        bands = {n: _bands(conn, row, run_b_row.get("started"), thresholds)
                 for n, row in cells_b.items()} if id_a != id_b else {}
        conn.execute("COMMIT")
    cells: list[CellComparison] = []
    findings: list[Finding] = []
    for name in [*cells_a, *(n for n in cells_b if n not in cells_a)]:
        c, f = _compare_cell(name, cells_a.get(name), cells_b.get(name), thresholds,
                             bands.get(name))
        cells.append(c)
        findings += f
    return Comparison(id_a, id_b, {id_a: run_a_row, id_b: run_b_row}, cells, findings,
                      thresholds)


# --- the comparison as text -----------------------------------------------------

# What a cell's line shows when it changed: metric, label, how to print a value.
def _mib(v: float) -> str:
    return f"{v / 1024:.0f}M"


def _count(v: float) -> str:
    return f"{v:.0f}"


def _secs(v: float) -> str:
    return f"{v:.1f}s"


NOTABLE = (
    ("DirectMap4k", "4k", _mib), ("DirectMap2M", "2M", _mib), ("DirectMap4M", "4M", _mib),
    ("DirectMap1G", "1G", _mib),
    ("delta:direct_map_level2_splits", "L2 splits", _count),
    ("delta:direct_map_level3_splits", "L3 splits", _count),
    ("tlb_total", "nr_tlb", _count),
    *((f"flush:{g}", g, _count) for g in flush.GROUPS),
    ("boot_to_ready", "boot", _secs), ("to_verdict", "verdict", _secs),
)
TIME_NOTABLE_PCT = 10.0     # times always differ a little; only a tenth is worth a mention


def _notable(c: CellComparison) -> str:
    parts = []
    for key, label, fmt in NOTABLE:
        a, b = c.metrics.get(key, (None, None))
        if a is None and b is None or a == b:
            continue
        if a is None or b is None:
            parts.append(f"{label} {'-' if a is None else fmt(a)}->{'-' if b is None else fmt(b)}")
            continue
        if key in TIMES and abs(_pct(a, b)) < TIME_NOTABLE_PCT:
            continue
        parts.append(f"{label} {fmt(a)}->{fmt(b)} ({_fmt_pct(_pct(a, b))})")
    return ", ".join(parts + c.notes) or ("no change" if c.metrics else "-")


def _run_line(tag: str, run: dict[str, Any]) -> str:
    return (f"{tag}: {run['id']}  {_when(run.get('started'))}  {run.get('host') or '-'}  "
            f"{run.get('kernel_version') or '-'}  {run.get('source_id') or run.get('tree') or '-'}")


def format_comparison(c: Comparison) -> str:
    """A plain-text report: the two runs, one line per cell, then what was flagged."""
    lines = [_run_line("A", c.runs[c.run_a]), _run_line("B", c.runs[c.run_b]), ""]
    rows: list[tuple[str, ...]] = [("cell", "verdict A -> B", "change", "notable deltas")]
    for cell in c.cells:
        rows.append((cell.name, f"{cell.verdict_a or '-'} -> {cell.verdict_b or '-'}",
                     cell.change, _notable(cell)))
    lines.append(_table(rows).rstrip("\n"))
    for title, found in (("regressions", c.regressions), ("warnings", c.warnings)):
        if found:
            lines += ["", f"{title.upper()} ({len(found)})"]
            lines += [f"  {f.cell}: {f.kind}: {f.message}" for f in found]
    lines += ["", f"{len(c.regressions)} regression(s), {len(c.warnings)} warning(s)"
              if c.findings else "no regressions"]
    return "\n".join(lines) + "\n"
