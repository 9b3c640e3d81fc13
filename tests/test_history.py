"""harness.history on a real run directory (tests/data/runs/history-a, from a
real x86_64-gbpages run) and runs derived from it by editing its JSON."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.errors import UserError
from harness.results import history

DATA = Path(__file__).parent / "data" / "runs" / "history-a"
CELL = "x86_64-gbpages"

Doc = dict[str, Any]


def derive(tmp: Path, name: str, edit: Callable[[Doc], None] | None = None,
           started: float | None = None) -> Path:
    """A copy of the sample run named `name`, its cell's result.json edited by `edit`."""
    run = tmp / name
    shutil.copytree(DATA, run)
    if edit is not None:
        path = run / "cells" / CELL / "result.json"
        doc = json.loads(path.read_text())
        edit(doc)
        path.write_text(json.dumps(doc))
        # Keep the summary's copy of the verdict in step, as write_summary() would.
        _edit_summary(run, lambda s: s["cells"][0].update(verdict=doc["verdict"],
                                                          reason=doc["reason"]))
    if started is not None:
        _edit_summary(run, lambda s: s.update(started=started, finished=started + 100))
    return run


def _edit_summary(run: Path, edit: Callable[[Doc], None]) -> None:
    path = run / "summary.json"
    summary = json.loads(path.read_text())
    edit(summary)
    path.write_text(json.dumps(summary))


def add_cell(run: Path, name: str, verdict: str) -> None:
    """Another cell in `run`: a copy of the sample cell under a new name and verdict."""
    doc = json.loads((run / "cells" / CELL / "result.json").read_text())
    doc.update(name=name, verdict=verdict, reason=f"{name} {verdict}")
    path = run / "cells" / name / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    _edit_summary(run, lambda s: s["cells"].append(
        {"name": name, "arch": doc["arch"], "verdict": verdict, "reason": doc["reason"],
         "result": f"cells/{name}/result.json"}))


def after(doc: Doc) -> Doc:
    return doc["stats"]["after_selftest"]   # type: ignore[no-any-return]


def set_flush(doc: Doc, full_flush: int, global_tlb: int) -> None:
    """Two flush-accounting windows, as the CPA scenario records them."""
    groups = {"full_flush": 0, "cache_range": 40, "cpa_tlb": 300, "global_tlb": 0, "ipi": 50}
    first = dict(groups, full_flush=full_flush // 2, global_tlb=global_tlb // 2)
    second = dict(groups, full_flush=full_flush - full_flush // 2,
                  global_tlb=global_tlb - global_tlb // 2)
    doc["flush"] = {"windows": [{"label": "first-pass", "counts": {}, "groups": first},
                                {"label": "period-2", "counts": {}, "groups": second}]}


def baseline(doc: Doc) -> None:
    """Run A of the comparisons: a passing cell with 1G pages left and flush counts."""
    doc.update(verdict="pass", reason="")
    after(doc)["ptdump"]["DirectMap1G"] = 1048576
    set_flush(doc, full_flush=2, global_tlb=40)


def scale_tlb(doc: Doc, factor: float) -> None:
    for k, v in list(doc["stats"]["delta"]["vmstat"].items()):
        if k.startswith("nr_tlb_"):
            doc["stats"]["delta"]["vmstat"][k] = round(v * factor)


def cell_row(db: Path, run_id: str) -> sqlite3.Row:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM cells WHERE run_id = ?", (run_id,)).fetchone()
    assert row is not None
    return row


def count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store" / "history.sqlite"


# --- recording ----------------------------------------------------------------

def test_record_stores_the_run(db: Path) -> None:
    assert history.record_run(db, DATA) == "history-a"
    runs = history.list_runs(db)
    assert len(runs) == 1
    r = runs[0]
    assert (r["id"], r["host"], r["tree"], r["exit_code"], r["kernel_version"]) == (
        "history-a", "vm", "debian", 2, "6.12.117")
    assert r["source_id"] == "tarball:linux-source-6.12.tar.xz@sha256:585a4a074597aefa"
    assert r["run_dir"] == str(DATA.resolve())
    assert r["started"] == pytest.approx(1795640365.2919734)
    assert r["finished"] == pytest.approx(1795640540.9282987)


def test_record_stores_the_cell_statistics(db: Path) -> None:
    history.record_run(db, DATA)
    row = cell_row(db, "history-a")
    assert (row["name"], row["arch"], row["verdict"], row["accel"]) == (
        CELL, "x86_64", "user-error", "tcg")
    assert row["reason"].startswith("cell expectation not met")
    # The page-table dump after the self-test, not meminfo (which claims 2 GiB of 1G pages).
    assert (row["dm_4k_kb"], row["dm_2m_kb"], row["dm_4m_kb"], row["dm_1g_kb"]) == (
        954240, 3239936, None, 0)
    assert json.loads(row["vmstat_after"]) == {
        "nr_tlb_remote_flush": 1078, "nr_tlb_remote_flush_received": 1080,
        "nr_tlb_local_flush_all": 95, "nr_tlb_local_flush_one": 47083,
        "direct_map_level2_splits": 462, "direct_map_level3_splits": 0}
    assert json.loads(row["vmstat_delta"])["nr_tlb_remote_flush"] == 1062
    assert row["boot_to_ready"] == pytest.approx(6.0754574)
    assert row["to_verdict"] == pytest.approx(80.2992623)
    assert json.loads(row["durations"])["total"] == pytest.approx(175.4302602)
    assert row["flush_groups"] is None     # this run had no flush accounting
    assert row["flush_windows"] == 0


def test_flush_groups_are_summed_over_windows(db: Path, tmp_path: Path) -> None:
    run = derive(tmp_path, "flushes", lambda d: set_flush(d, full_flush=5, global_tlb=41))
    history.record_run(db, run)
    row = cell_row(db, "flushes")
    assert json.loads(row["flush_groups"]) == {
        "full_flush": 5, "cache_range": 80, "cpa_tlb": 600, "global_tlb": 41, "ipi": 100}
    assert row["flush_windows"] == 2


def test_recording_twice_replaces(db: Path, tmp_path: Path) -> None:
    run = derive(tmp_path, "again")
    history.record_run(db, run)
    first = dict(cell_row(db, "again"))
    history.record_run(db, run)
    assert (count(db, "runs"), count(db, "cells")) == (1, 1)
    assert dict(cell_row(db, "again")) == first
    # A run directory that changed since (say, re-merged) replaces the old record.
    doc_path = run / "cells" / CELL / "result.json"
    doc = json.loads(doc_path.read_text())
    doc["verdict"] = "pass"
    doc_path.write_text(json.dumps(doc))
    history.record_run(db, run)
    assert (count(db, "runs"), count(db, "cells")) == (1, 1)
    assert cell_row(db, "again")["verdict"] == "pass"


def test_record_refuses_a_directory_that_is_no_run(db: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no summary.json"):
        history.record_run(db, tmp_path)


def test_record_names_a_broken_result_file(db: Path, tmp_path: Path) -> None:
    run = derive(tmp_path, "broken")
    (run / "cells" / CELL / "result.json").write_text("{not json")
    with pytest.raises(UserError, match=r"broken/cells/x86_64-gbpages/result\.json"):
        history.record_run(db, run)


# --- listing ------------------------------------------------------------------

def test_list_runs_newest_first_with_verdict_counts(db: Path, tmp_path: Path) -> None:
    old = derive(tmp_path, "old", started=1_700_000_000)
    new = derive(tmp_path, "new", lambda d: d.update(verdict="pass"), started=1_800_000_000)
    add_cell(new, "i386", "fail")
    add_cell(new, "i386-pae", "pass")
    mid = derive(tmp_path, "mid", started=1_750_000_000)
    for run in (old, new, mid):
        history.record_run(db, run)
    runs = history.list_runs(db)
    assert [r["id"] for r in runs] == ["new", "mid", "old"]
    assert runs[0]["verdicts"] == {"pass": 2, "fail": 1}
    assert runs[0]["cells"] == 3
    assert runs[2]["verdicts"] == {"user-error": 1}
    text = history.format_runs(runs)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["run", "started", "time"]
    assert lines[1].startswith("new ") and "pass 2 fail 1" in lines[1] and "100s" in lines[1]
    assert lines[3].startswith("old ") and "user-error 1" in lines[3]


def test_list_runs_of_no_store_creates_nothing(db: Path) -> None:
    assert history.list_runs(db) == []
    assert not db.exists()
    assert history.format_runs([]) == "no runs recorded\n"


# --- comparing ------------------------------------------------------------------

def regressed(doc: Doc) -> None:
    """Run B: fails, lost 15% of its 2M pages and its 1G page, flushes much more,
    and took longer to reach a verdict."""
    baseline(doc)
    doc.update(verdict="fail", reason="CPA self-test NOT PASSED")
    dump = after(doc)["ptdump"]
    dump["DirectMap2M"] = int(3239936 * 0.85)
    dump["DirectMap1G"] = 0
    scale_tlb(doc, 1.5)
    set_flush(doc, full_flush=30, global_tlb=45)     # global_tlb +12%: under the threshold
    doc["durations"]["to_verdict"] = 130.0           # +62%: slower, a warning only


def kinds(found: list[history.Finding]) -> list[tuple[str, str]]:
    return sorted((f.kind, f.message.split(" ")[0]) for f in found)


def test_compare_flags_exactly_the_regressions_made(db: Path, tmp_path: Path) -> None:
    a = derive(tmp_path, "a", baseline)
    b = derive(tmp_path, "b", regressed)
    c = history.compare(db, a, b)
    assert (c.run_a, c.run_b) == ("a", "b")
    assert c.has_regressions
    assert kinds(c.regressions) == [
        ("large-pages-lost", "DirectMap1G"),
        ("large-pages-lost", "DirectMap2M"),
        ("more-flushes", "full_flush"),
        ("more-flushes", "nr_tlb_*"),
        ("verdict", "pass"),
    ]
    assert kinds(c.warnings) == [("slower", "to_verdict")]
    [cell] = c.cells
    assert (cell.verdict_a, cell.verdict_b, cell.change) == ("pass", "fail", "regression")
    assert cell.metrics["DirectMap1G"] == (1048576, 0)
    assert cell.metrics["tlb_total"] == (26 + 6095 + 1062 + 1064,
                                         round(26 * 1.5) + round(6095 * 1.5)
                                         + round(1062 * 1.5) + round(1064 * 1.5))
    assert cell.metrics["flush:full_flush"] == (2, 30)


def test_compare_of_a_run_with_itself_finds_nothing(db: Path, tmp_path: Path) -> None:
    a = derive(tmp_path, "a", baseline)
    c = history.compare(db, a, "a")
    assert c.findings == [] and not c.has_regressions
    assert c.cells[0].change == "same"
    assert "no change" in history.format_comparison(c)


def below_thresholds(doc: Doc) -> None:
    """Changes each just under its default threshold."""
    baseline(doc)
    dump = after(doc)["ptdump"]
    dump["DirectMap2M"] = int(3239936 * 0.95)        # -5% (threshold -10%)
    dump["DirectMap4k"] = int(954240 * 1.2)          # +20% (threshold +25%)
    scale_tlb(doc, 1.15)                             # +15% (threshold +20%)
    set_flush(doc, full_flush=9, global_tlb=40)      # 2 -> 9: +350%, but +7 < 10 calls
    doc["durations"]["boot_to_ready"] = 7.9          # +30% (threshold +50%)
    doc["durations"]["to_verdict"] = 81.0


def test_changes_below_the_thresholds_are_not_flagged(db: Path, tmp_path: Path) -> None:
    a = derive(tmp_path, "a", baseline)
    b = derive(tmp_path, "b", below_thresholds)
    c = history.compare(db, a, b)
    assert c.findings == []
    assert not c.has_regressions
    assert history.format_comparison(c).endswith("no regressions\n")


def test_thresholds_are_a_parameter(db: Path, tmp_path: Path) -> None:
    a = derive(tmp_path, "a", baseline)
    b = derive(tmp_path, "b", below_thresholds)
    strict = history.Thresholds(large_drop_pct=1, small_rise_pct=1, flush_rise_pct=1,
                                min_flush_call_rise=1, slower_pct=10, min_slower_s=1)
    c = history.compare(db, a, b, strict)
    assert kinds(c.regressions) == [
        ("large-pages-lost", "DirectMap2M"),
        ("large-pages-lost", "DirectMap4k"),
        ("more-flushes", "full_flush"),
        ("more-flushes", "nr_tlb_*"),
    ]
    assert kinds(c.warnings) == [("slower", "boot_to_ready")]


def test_default_thresholds_are_frozen() -> None:
    t = history.DEFAULT_THRESHOLDS
    assert (t.large_drop_pct, t.small_rise_pct, t.flush_rise_pct, t.slower_pct) == (
        10.0, 25.0, 20.0, 50.0)
    with pytest.raises(AttributeError):
        t.large_drop_pct = 5.0  # type: ignore[misc]


def test_slower_is_not_judged_across_accelerators(db: Path, tmp_path: Path) -> None:
    a = derive(tmp_path, "a", baseline)
    b = derive(tmp_path, "b", lambda d: (baseline(d), d.update(accel="kvm"),
                                         d["durations"].update(to_verdict=500.0)))
    c = history.compare(db, a, b)
    assert c.findings == []
    assert "times not compared" in history.format_comparison(c)


def test_verdict_fixes_and_cells_that_come_and_go(db: Path, tmp_path: Path) -> None:
    a = derive(tmp_path, "a", lambda d: d.update(verdict="fail", reason="oops"))
    add_cell(a, "i386", "pass")
    add_cell(a, "i386-pae", "pass")
    b = derive(tmp_path, "b", lambda d: d.update(verdict="pass", reason=""))
    add_cell(b, "i386", "infra-error")
    add_cell(b, "x86_64-debug-pagealloc", "pass")
    c = history.compare(db, a, b)
    changes = {x.name: (x.verdict_a, x.verdict_b, x.change) for x in c.cells}
    assert changes == {
        CELL: ("fail", "pass", "fixed"),
        "i386": ("pass", "infra-error", "regression"),
        "i386-pae": ("pass", None, "disappeared"),
        "x86_64-debug-pagealloc": (None, "pass", "appeared"),
    }
    # Every lost pass is a regression, whatever took its place; a new cell is noted.
    assert sorted((f.cell, f.kind) for f in c.regressions) == [
        ("i386", "verdict"), ("i386-pae", "disappeared")]
    assert [f.message for f in c.regressions if f.cell == "i386"] == [
        "pass -> infra-error: i386 infra-error"]
    assert [(f.cell, f.kind) for f in c.warnings] == [("x86_64-debug-pagealloc", "appeared")]


def test_format_comparison(db: Path, tmp_path: Path) -> None:
    a = derive(tmp_path, "a", baseline)
    b = derive(tmp_path, "b", regressed)
    text = history.format_comparison(history.compare(db, a, b))
    lines = text.splitlines()
    assert lines[0].startswith("A: a ") and lines[1].startswith("B: b ")
    [row] = [ln for ln in lines if ln.startswith(CELL)]
    assert "pass -> fail" in row and "regression" in row
    assert "1G 1024M->0M (-100%)" in row
    assert "full_flush 2->30 (+1400%)" in row
    assert "REGRESSIONS (5)" in lines and "WARNINGS (1)" in lines
    assert f"  {CELL}: verdict: pass -> fail: CPA self-test NOT PASSED" in lines
    assert lines[-1] == "5 regression(s), 1 warning(s)"


def test_compare_records_directories_and_resolves_ids(db: Path, tmp_path: Path) -> None:
    a = derive(tmp_path, "a", baseline)
    b = derive(tmp_path, "b", regressed)
    history.compare(db, a, b)
    assert sorted(r["id"] for r in history.list_runs(db)) == ["a", "b"]
    assert history.compare(db, "a", "b").has_regressions    # now by id alone
    with pytest.raises(UserError, match="no run nosuch in"):
        history.compare(db, "a", "nosuch")


def test_compare_refuses_two_directories_with_one_name(db: Path, tmp_path: Path) -> None:
    a = derive(tmp_path / "x", "run")
    b = derive(tmp_path / "y", "run")
    with pytest.raises(UserError, match="same name 'run'"):
        history.compare(db, a, b)


# --- sharing the store ----------------------------------------------------------

def test_two_processes_record_concurrently(db: Path, tmp_path: Path) -> None:
    runs = [derive(tmp_path, f"run{i}", started=1_700_000_000 + i) for i in range(6)]
    # A fresh store: the processes also race to create the schema.
    jobs = [(db, run) for _ in range(4) for run in runs]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        ids = pool.starmap(history.record_run, jobs, chunksize=1)
    assert ids == [run.name for _ in range(4) for run in runs]
    assert [r["id"] for r in history.list_runs(db)] == [f"run{i}" for i in reversed(range(6))]
    assert (count(db, "runs"), count(db, "cells")) == (6, 6)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (history.SCHEMA_VERSION,)]


# --- stores that are not ours ---------------------------------------------------

def one_line(e: UserError) -> str:
    assert "\n" not in e.line()
    return e.line()


def test_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    bad = tmp_path / "history.sqlite"
    bad.write_text("this is not an SQLite database\n" * 40)
    with pytest.raises(UserError) as e:
        history.list_runs(bad)
    assert str(bad) in one_line(e.value) and "not a database" in e.value.line()
    with pytest.raises(UserError):
        history.record_run(bad, DATA)


def test_a_damaged_store(db: Path) -> None:
    history.record_run(db, DATA)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = bytearray(db.read_bytes())
    raw[100:] = b"\xab" * (len(raw) - 100)      # keep the header, ruin every page
    db.write_bytes(bytes(raw))
    with pytest.raises(UserError) as e:
        history.list_runs(db)
    assert str(db) in one_line(e.value)


def test_another_programs_database(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER)")
    with pytest.raises(UserError, match="not a cpa-harness history store"):
        history.record_run(other, DATA)


def test_a_store_from_a_newer_harness(db: Path) -> None:
    history.record_run(db, DATA)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (history.SCHEMA_VERSION + 1,))
    with pytest.raises(UserError, match="newer cpa-harness") as e:
        history.list_runs(db)
    assert str(db) in one_line(e.value)


OLD_STORE = Path(__file__).parent / "data" / "history" / "v1.sqlite"


def test_a_store_from_the_first_schema_is_migrated_and_reads_as_before(tmp_path: Path) -> None:
    """tests/data/history/v1.sqlite: written by the harness's history code of
    schema 1 (before cells had a target), recording tests/data/runs/sample."""
    db = tmp_path / "v1.sqlite"
    shutil.copyfile(OLD_STORE, db)
    with sqlite3.connect(OLD_STORE) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (1,)
        before = [tuple(r) for r in conn.execute("SELECT name, verdict, dm_1g_kb FROM cells")]
    [run] = history.list_runs(db)
    assert run["id"] == "sample"
    with sqlite3.connect(db) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version")]
        rows = [tuple(r) for r in conn.execute("SELECT name, verdict, dm_1g_kb FROM cells")]
        targets = {t for (t,) in conn.execute("SELECT target FROM cells")}
    assert versions == [1, 2, 3] and rows == before and targets == {None}   # QEMU cells
    # and it takes new runs, compared with the old one as ever
    history.record_run(db, DATA)
    c = history.compare(db, "sample", "sample")
    assert not [f for f in c.findings if f.severity == "regression"]



def test_a_store_that_says_the_version_without_its_columns_gets_them(tmp_path: Path) -> None:
    """A development build between two versions wrote "schema 3" with only the
    first of its columns; the HTML report's plots then failed on dm_boot. The
    columns are added, empty, and the store reads and takes runs."""
    db = tmp_path / "v1.sqlite"
    shutil.copyfile(OLD_STORE, db)
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE cells ADD COLUMN target TEXT")
        conn.execute("ALTER TABLE cells ADD COLUMN exercise TEXT")
        conn.executemany("INSERT INTO schema_version (version) VALUES (?)", [(2,), (3,)])
    [row] = history.cell_history(db, "x86_64-gbpages")
    assert row["verdict"] == "user-error" and row["metrics"]["DirectMap1G"] == 0
    with sqlite3.connect(db) as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(cells)")}
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version")]
    assert {"dm_boot", "config_hash"} <= columns and versions == [1, 2, 3]
    history.record_run(db, DATA)
    assert {r["id"] for r in history.list_runs(db)} == {"sample", "history-a"}


LABBOX = Path(__file__).parent / "data" / "runs" / "labbox"


def test_times_on_a_lab_box_are_never_compared_with_a_qemu_guests(tmp_path: Path) -> None:
    """The real box run, and the same cell as a QEMU guest would record it
    (target kind qemu, accelerator tcg), a minute slower."""
    db = tmp_path / "h.sqlite"
    qemu = tmp_path / "qemu-run"
    shutil.copytree(LABBOX, qemu)
    path = qemu / "cells" / "x86_64-boot" / "result.json"
    doc = json.loads(path.read_text())
    doc["accel"], doc["target"] = "tcg", {"kind": "qemu"}
    doc["durations"] = {k: v + 60 for k, v in doc["durations"].items()}
    path.write_text(json.dumps(doc))
    history.record_run(db, LABBOX)
    history.record_run(db, qemu)
    with sqlite3.connect(db) as conn:
        targets = dict(conn.execute("SELECT run_id, target FROM cells").fetchall())
    assert targets == {"labbox": "box:labbox", "qemu-run": None}
    c = history.compare(db, "labbox", "qemu-run")
    [cell] = c.cells
    assert "target box:labbox -> qemu: times not compared" in cell.notes
    assert not [f for f in c.findings if f.kind == "slower"]
    # the same box, run after run: its times are compared
    assert not [n for n in history.compare(db, "labbox", "labbox").cells[0].notes
                if "not compared" in n]


def test_box_cells_of_the_first_schema_are_on_an_unknown_box(tmp_path: Path) -> None:
    """Schema 1 recorded accel "box" but not which box: never taken for another
    box's, so their times are not compared."""
    db = tmp_path / "v1.sqlite"
    shutil.copyfile(OLD_STORE, db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE cells SET accel = 'box'")
    history.list_runs(db)
    with sqlite3.connect(db) as conn:
        assert {t for (t,) in conn.execute("SELECT target FROM cells")} == {"box:?"}


EXERCISE = Path(__file__).parent / "data" / "runs" / "exercise"


def test_the_exercisers_modes_are_compared(tmp_path: Path) -> None:
    """tests/data/runs/exercise: a real run of the three modes (x86_64, CLFLUSH).
    Against itself nothing changes; against a copy whose cache mode did full
    write-backs instead (as without CLFLUSH) and failed a check, both are
    regressions."""
    db = tmp_path / "h.sqlite"
    history.record_run(db, EXERCISE)
    worse = tmp_path / "worse"
    shutil.copytree(EXERCISE, worse)
    path = worse / "cells" / "x86_64-boot" / "result.json"
    doc = json.loads(path.read_text())
    cache = next(m for m in doc["exercise"]["modes"] if m["mode"] == "cache")
    assert cache["flush"]["full_flush"] == 0 and cache["problems"] == []
    cache["flush"]["full_flush"] = 104
    cache["problems"] = ["page 0xffff888004a3c000 is WB after uc, not UC- (4k entry 0x1)"]
    path.write_text(json.dumps(doc))
    same = history.compare(db, "exercise", "exercise")
    [cell] = same.cells
    assert cell.metrics["exercise:cache:cache_range"] == (18700, 18700)
    assert not same.findings
    found = history.compare(db, "exercise", worse)
    assert sorted((f.kind, f.severity) for f in found.findings) == [
        ("exercise-check", "regression"), ("more-flushes", "regression")]
    assert any("cache mode: full_flush calls (WBINVD) 0 -> 104" in f.message
               for f in found.findings)


def test_large_pages_each_kernel_booted_with_are_compared(db: Path, tmp_path: Path) -> None:
    """history-a's GB-page cell, a real run: its second kexec'd kernel booted
    with 1 GiB of its direct map in a 1G page (page-table dump), which the
    self-test split before the end. Only the boot figures can show it lost: a
    copy whose kernel booted without it is a regression, named."""
    doc = json.loads((DATA / "cells" / CELL / "result.json").read_text())
    boot_1g = [(rt["stats"]["after"]["ptdump"] or {}).get("DirectMap1G") for rt in doc["kexec"]]
    assert any(boot_1g), boot_1g
    n = next(i for i, v in enumerate(boot_1g) if v)

    def lost(d: Doc) -> None:
        dump = d["kexec"][n]["stats"]["after"]["ptdump"]
        dump["DirectMap2M"] += dump["DirectMap1G"]
        dump["DirectMap1G"] = 0
    a, b = derive(tmp_path, "a"), derive(tmp_path, "b", lost)
    assert not history.compare(db, a, a).findings
    c = history.compare(db, a, b)
    [f] = c.regressions
    assert f.kind == "large-pages-lost"
    assert f.message.startswith(f"DirectMap1G in kexec'd kernel {n + 1} at boot (page-table "
                                f"dump) {boot_1g[n]} -> 0 kB")


def test_history_of_one_cell_run_by_run(db: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Two real-run copies, the later one with GB pages lost at boot."""
    from harness.cli import main

    def lost(d: Doc) -> None:
        for rt in d["kexec"]:
            rt["stats"]["after"]["ptdump"]["DirectMap1G"] = 0
        d["stats"]["boot"]["ptdump"]["DirectMap1G"] = 0
    history.record_run(db, derive(tmp_path, "older", started=1000.0))
    history.record_run(db, derive(tmp_path, "newer", lost, started=2000.0))
    assert main(["history", "--db", str(db), "--cell", CELL]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"cell {CELL}"
    assert lines[1].split() == ["run", "started", "machine", "verdict", "1G", "at", "boot",
                                "4k", "after", "wbinvd", "clflush", "tlb", "to", "verdict"]
    assert [ln.split()[0] for ln in lines[2:]] == ["newer", "older"]
    assert main(["history", "--db", str(db), "--cell", "no-such-cell"]) == 0
    assert capsys.readouterr().out == "no run recorded cell no-such-cell\n"
    assert main(["history", "--db", str(db), "--cell", CELL, "--last", "0"]) == 2


def test_figures_with_enough_history_are_judged_against_their_noise_band(
        db: Path, tmp_path: Path) -> None:
    """history-a's cell, passing, with its 4k figure after the self-test spread
    as the self-test's random splits spread it. Against a low run A the fixed
    threshold (+25 %) calls a figure inside that spread a regression; with six
    earlier runs the band does not, and still flags one far outside it."""
    def at(kb: int) -> Callable[[Doc], None]:
        def edit(d: Doc) -> None:
            d.update(verdict="pass", reason="")
            d["stats"]["after_selftest"]["ptdump"]["DirectMap4k"] = kb
        return edit
    noise = [700_000, 950_000, 820_000, 1_000_000, 760_000, 900_000]
    runs = [derive(tmp_path, f"r{i}", at(kb), started=1000.0 + i) for i, kb in enumerate(noise)]
    for r in runs:
        history.record_run(db, r)
    inside = derive(tmp_path, "inside", at(980_000), started=2000.0)
    far = derive(tmp_path, "far", at(1_900_000), started=3000.0)
    # the fixed threshold alone, without the history: a false alarm
    alone = tmp_path / "alone.sqlite"
    assert [f.metric for f in history.compare(alone, runs[0], inside).regressions] == [
        "DirectMap4k"]
    c = history.compare(db, runs[0], inside)
    assert c.regressions == []
    [cell] = c.cells
    assert any("judged against a noise band of 6+ earlier runs" in n for n in cell.notes)
    # "inside", recorded by now, is one of far's earlier passing runs
    [f] = history.compare(db, runs[0], far).regressions
    assert (f.kind, f.metric) == ("large-pages-lost", "DirectMap4k")
    assert f.message.startswith("DirectMap4k 1900000, outside its band over 7 runs: "
                                "median 900000, spread 118608")
