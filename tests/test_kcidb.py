"""The KCIDB export, checked against kcidb_io's real schema.

tests/data/runs/sample is a real run (x86_64-gbpages: three self-test passes,
two kexec round trips, known WARNINGs, verdict user-error because GB pages did
not back the direct map); the variants edit its JSON the way the harness would
have written it in the other cases.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.cells import SMOKE
from harness.errors import BuildError, InfraError, UserError
from harness.results import kcidb
from harness.run import _error_result

SAMPLE = Path(__file__).parent / "data" / "runs" / "sample"
CELL = "x86_64-gbpages"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A writable copy of the sample run, under a run-like directory name."""
    d = tmp_path / "20260101-120000-abcdef"
    shutil.copytree(SAMPLE, d)
    return d


def edit(run_dir: Path, cell: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Change one cell's result.json and keep the summary's verdict and reason in step."""
    path = run_dir / "cells" / cell / "result.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    summary = json.loads((run_dir / "summary.json").read_text())
    for entry in summary["cells"]:
        if entry["name"] == cell:
            entry.update(verdict=data["verdict"], reason=data["reason"])
    (run_dir / "summary.json").write_text(json.dumps(summary))


def add_cell(run_dir: Path, data: dict[str, Any], write_result: bool = True) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["cells"].append({"name": data["name"], "arch": data["arch"],
                             "verdict": data["verdict"], "reason": data["reason"],
                             "result": f"cells/{data['name']}/result.json"})
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if write_result:
        path = run_dir / "cells" / data["name"] / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(data))


def by_path(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["path"]: t for t in doc["tests"]}


def statuses(doc: dict[str, Any]) -> dict[str, str]:
    return {t["path"]: t["status"] for t in doc["tests"]}


def build_failure(name: str, arch: str) -> dict[str, Any]:
    """What harness/run.py records for a kernel that did not compile."""
    cell = next(c for c in SMOKE if c.name == name)
    assert cell.arch == arch
    err = BuildError(f"building {arch} (olddefconfig bzImage) failed; "
                     f"log: /cache/builds/{arch}-x/build.log", "the first errors are above",
                     errors=["arch/x86/mm/pat/set_memory.c:42:1: error: expected ';'"])
    return _error_result(cell, err).to_json()


def test_sample_validates_and_maps_the_real_run() -> None:
    doc = kcidb.to_kcidb(SAMPLE)
    kcidb.validate(doc)
    assert doc["version"] == {"major": 5, "minor": 3}
    (checkout,) = doc["checkouts"]
    assert checkout["origin"] == "cpa_harness"
    assert checkout["tree_name"] == "debian"
    assert checkout["valid"] is True
    assert checkout["start_time"].startswith("2026-11-25T20:59:25")
    assert "git_commit_hash" not in checkout     # a tarball has no commit
    (build,) = doc["builds"]
    assert build["architecture"] == "x86_64"
    assert build["status"] == "PASS"
    assert build["config_url"].endswith("-e612a40eb0eb/.config")
    # user-error: the cell's expectation (GB pages) failed; everything else passed.
    assert statuses(doc) == {
        f"cpa.{CELL}": "ERROR",
        f"cpa.{CELL}.boot": "PASS",
        f"cpa.{CELL}.selftest.1": "PASS",
        f"cpa.{CELL}.selftest.2": "PASS",
        f"cpa.{CELL}.selftest.3": "PASS",
        f"cpa.{CELL}.kexec.1": "PASS",
        f"cpa.{CELL}.kexec.2": "PASS",
        f"cpa.{CELL}.failures": "PASS",
    }
    cell = by_path(doc)[f"cpa.{CELL}"]
    assert "GB pages expected" in cell["log_excerpt"]
    env = cell["environment"]["misc"]
    assert (env["accel"], env["cpu"], env["memory_mb"], env["smp"]) == ("tcg", "max", 4096, 2)
    assert env["cmdline"] == "console=ttyS0,115200 panic=-1"
    dm = cell["misc"]["direct_map"]
    assert dm["boot"]["ptdump"]["DirectMap1G"] == 0
    assert dm["delta"]["ptdump"]["DirectMap4k"] == 944128


def test_known_failures_are_listed_but_do_not_fail() -> None:
    t = by_path(kcidb.to_kcidb(SAMPLE))[f"cpa.{CELL}.failures"]
    assert t["status"] == "PASS"
    assert [f["title"] for f in t["misc"]["failures"]] == ["WARNING in verify_rwx"] * 3
    assert all(f["known"] for f in t["misc"]["failures"])
    assert "warning: WARNING in verify_rwx (console line 172, boot 0) [known issue]" \
        in t["log_excerpt"]


def test_ids_are_unique_linked_and_stable(run: Path) -> None:
    add_cell(run, build_failure("i386", "i386"))
    first, second = kcidb.to_kcidb(run), kcidb.to_kcidb(run)
    assert first == second
    ids = [o["id"] for kind in ("checkouts", "builds", "tests") for o in first[kind]]
    assert len(ids) == len(set(ids))
    assert all(i.startswith("cpa_harness:20260101-120000-abcdef:") for i in ids)
    checkout_id = first["checkouts"][0]["id"]
    build_ids = {b["id"] for b in first["builds"]}
    assert {b["checkout_id"] for b in first["builds"]} == {checkout_id}
    assert {t["build_id"] for t in first["tests"]} == build_ids
    kcidb.validate(first)


def test_a_passing_cell(run: Path) -> None:
    edit(run, CELL, lambda d: d.update(verdict="pass", reason=""))
    doc = kcidb.to_kcidb(run)
    kcidb.validate(doc)
    assert set(statuses(doc).values()) == {"PASS"}


def test_a_failed_selftest_pass(run: Path) -> None:
    def fail_second_pass(d: dict[str, Any]) -> None:
        d["cpa_selftest"][1]["result"] = "fail"
        d["cpa_selftest"][1]["errors"] = [{"line": 1756,
                                           "message": "CPA ffff888000000000: bad pte"}]
        d.update(verdict="fail", reason="CPA self-test pass 2 failed")
    edit(run, CELL, fail_second_pass)
    doc = kcidb.to_kcidb(run)
    kcidb.validate(doc)
    s = statuses(doc)
    assert s[f"cpa.{CELL}"] == "FAIL"
    assert s[f"cpa.{CELL}.selftest.1"] == "PASS"
    assert s[f"cpa.{CELL}.selftest.2"] == "FAIL"
    assert by_path(doc)[f"cpa.{CELL}.selftest.2"]["log_excerpt"] \
        == "CPA ffff888000000000: bad pte"


def test_an_unfinished_selftest_pass_is_an_error(run: Path) -> None:
    edit(run, CELL, lambda d: d["cpa_selftest"][2].update(result="incomplete"))
    assert statuses(kcidb.to_kcidb(run))[f"cpa.{CELL}.selftest.3"] == "ERROR"


def test_a_build_failure(run: Path) -> None:
    data = build_failure(CELL, "x86_64")
    (run / "cells" / CELL / "result.json").write_text(json.dumps(data))
    edit(run, CELL, lambda d: None)
    doc = kcidb.to_kcidb(run)
    kcidb.validate(doc)
    (build,) = doc["builds"]
    assert build["status"] == "FAIL"
    assert build["architecture"] == "x86_64"
    assert build["log_url"] == "file:///cache/builds/x86_64-x/build.log"
    assert "error: expected ';'" in build["log_excerpt"]
    assert doc["checkouts"][0]["valid"] is False     # no cell got a kernel
    # Nothing booted: the cell's verdict is its only test.
    assert statuses(doc) == {f"cpa.{CELL}": "FAIL"}


def test_a_build_failure_beside_a_good_build(run: Path) -> None:
    add_cell(run, build_failure("i386-pae", "i386-pae"))
    doc = kcidb.to_kcidb(run)
    kcidb.validate(doc)
    assert doc["checkouts"][0]["valid"] is True
    by_arch = {b["misc"]["arch"]: b for b in doc["builds"]}
    assert by_arch["x86_64"]["status"] == "PASS"
    assert by_arch["i386-pae"]["status"] == "FAIL"
    assert by_arch["i386-pae"]["architecture"] == "i386"    # KCIDB names the ARCH


def test_an_infrastructure_error(run: Path) -> None:
    def qemu_died(d: dict[str, Any]) -> None:
        d.update(verdict="infra-error", reason="QEMU exited with status 1 and no kernel output",
                 boot_id="", cpa_selftest=[], kexec=[], failures=[], boots=[],
                 serial_tail=["qemu-system-x86_64: cannot set up guest memory 'pc.ram'"])
    edit(run, CELL, qemu_died)
    doc = kcidb.to_kcidb(run)
    kcidb.validate(doc)
    assert doc["builds"][0]["status"] == "PASS"
    assert statuses(doc) == {f"cpa.{CELL}": "ERROR", f"cpa.{CELL}.boot": "ERROR",
                             f"cpa.{CELL}.failures": "ERROR"}
    assert "cannot set up guest memory" in by_path(doc)[f"cpa.{CELL}.boot"]["log_excerpt"]


def test_a_cell_never_started_in_an_interrupted_run(run: Path) -> None:
    # Only finished cells get a result.json; the summary still lists the rest.
    add_cell(run, {"name": "i386", "arch": "i386", "verdict": "not-run", "reason": ""},
             write_result=False)
    doc = kcidb.to_kcidb(run)
    kcidb.validate(doc)
    assert statuses(doc)["cpa.i386"] == "SKIP"
    assert {b["misc"]["arch"]: b["status"] for b in doc["builds"]}["i386"] == "SKIP"


def test_kexec_round_trips_are_tests(run: Path) -> None:
    def lost_second_trip(d: dict[str, Any]) -> None:
        d["kexec"][1].update(verified=False, boot_id_after="", selftest="",
                             error="no ready marker within 300 s after 'Starting new kernel'")
    edit(run, CELL, lost_second_trip)
    doc = kcidb.to_kcidb(run)
    kcidb.validate(doc)
    tests = by_path(doc)
    first, second = tests[f"cpa.{CELL}.kexec.1"], tests[f"cpa.{CELL}.kexec.2"]
    assert first["status"] == "PASS"
    assert first["misc"]["method"] == "kexec_load"
    assert first["misc"]["nonce"] == "1a36f6d080c22aa7"
    assert first["duration"] == 8.0
    assert first["misc"]["direct_map"]["after"]["ptdump"]["DirectMap4k"] == 10112
    assert second["status"] == "FAIL"
    assert second["misc"]["method"] == "kexec_file_load"
    assert "no ready marker" in second["log_excerpt"]


def test_an_unknown_kernel_failure(run: Path) -> None:
    def oops(d: dict[str, Any]) -> None:
        d["failures"][1].update(known=False, known_reason="", title="BUG in __change_page_attr",
                                kind="bug", report=[f"line {i}" for i in range(5000)])
        d.update(verdict="fail", reason="bug: BUG in __change_page_attr")
    edit(run, CELL, oops)
    doc = kcidb.to_kcidb(run)
    kcidb.validate(doc)
    t = by_path(doc)[f"cpa.{CELL}.failures"]
    assert t["status"] == "FAIL"
    assert t["comment"] == "bug: BUG in __change_page_attr"
    assert "line 39\n" in t["log_excerpt"] and "line 40\n" not in t["log_excerpt"]


def test_log_excerpt_respects_the_schema_limit(run: Path) -> None:
    edit(run, CELL, lambda d: d.update(verdict="infra-error", reason="x" * 20000 + "\0"))
    doc = kcidb.to_kcidb(run)
    kcidb.validate(doc)
    assert len(by_path(doc)[f"cpa.{CELL}"]["log_excerpt"]) == kcidb.LOG_EXCERPT_MAX


@pytest.mark.parametrize("source_id, commit, patches, dirty", [
    ("git:" + "a" * 40, "a" * 40, None, None),
    ("git:" + "b" * 40 + "-dirty", "b" * 40, None, True),
    ("git:" + "c" * 40 + "+patches:0123456789abcdef", "c" * 40, "0123456789abcdef", None),
    ("dir:/src/linux", None, None, None),
])
def test_source_ids(run: Path, source_id: str, commit: str | None, patches: str | None,
                    dirty: bool | None) -> None:
    summary = json.loads((run / "summary.json").read_text())
    summary.update(source_id=source_id, tree="/src/linux")
    (run / "summary.json").write_text(json.dumps(summary))
    doc = kcidb.to_kcidb(run)
    kcidb.validate(doc)
    co = doc["checkouts"][0]
    assert co["tree_name"] == "linux"
    assert co.get("git_commit_hash") == commit
    assert co["misc"].get("patches") == patches
    assert co["misc"].get("dirty") == dirty


def test_serial_log_in_the_run_directory_wins(run: Path) -> None:
    # The run was moved since (the recorded path is /tmp/exp/r2/...).
    log = run / "cells" / CELL / "serial.log"
    log.write_text("console\n")
    t = by_path(kcidb.to_kcidb(run))[f"cpa.{CELL}.boot"]
    assert t["log_url"] == log.resolve().as_uri()


def test_write_kcidb(run: Path) -> None:
    path = kcidb.write_kcidb(run)
    assert path == run / "kcidb.json"
    doc = json.loads(path.read_text())
    assert doc == kcidb.to_kcidb(run)
    kcidb.validate(doc)


def test_validate_names_the_problem_in_one_line() -> None:
    doc = kcidb.to_kcidb(SAMPLE)
    doc["tests"][0]["status"] = "BROKEN"
    with pytest.raises(InfraError) as e:
        kcidb.validate(doc)
    assert "$.tests[0].status" in e.value.line()
    assert "\n" not in e.value.line()


def test_not_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "summary.json"
    f.write_text("{}")
    with pytest.raises(UserError, match="is not a directory"):
        kcidb.to_kcidb(f)


def test_missing_summary(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"{tmp_path / 'summary.json'} is missing"):
        kcidb.to_kcidb(tmp_path)


def test_summary_without_cells(run: Path) -> None:
    (run / "summary.json").write_text('{"started": 1}')
    with pytest.raises(UserError, match="summary.json is not a cpa-harness run summary"):
        kcidb.to_kcidb(run)


def test_unreadable_result(run: Path) -> None:
    path = run / "cells" / CELL / "result.json"
    path.write_text('{"name": "x86_64-gbpages", ')
    with pytest.raises(UserError, match=f"{path} is not valid JSON"):
        kcidb.to_kcidb(run)


def test_missing_result_of_a_finished_cell(run: Path) -> None:
    path = run / "cells" / CELL / "result.json"
    path.unlink()
    with pytest.raises(UserError, match=f"{path} is missing"):
        kcidb.to_kcidb(run)


def test_damaged_result(run: Path) -> None:
    edit(run, CELL, lambda d: d.update(kexec="none"))
    with pytest.raises(UserError, match="result.json is not a cell result: kexec"):
        kcidb.to_kcidb(run)
    edit(run, CELL, lambda d: d.update(kexec=[], verdict="maybe"))
    with pytest.raises(UserError, match="result.json is not a cell result"):
        kcidb.to_kcidb(run)


LABBOX = Path(__file__).parent / "data" / "runs" / "labbox"


def test_a_cell_on_a_lab_box_has_the_box_as_its_environment() -> None:
    """tests/data/runs/labbox: a real CPA cell kexec'd on the simulated box
    (ci/labbox.sh), whose console server restarted during the cell."""
    doc = kcidb.to_kcidb(LABBOX)
    kcidb.validate(doc)
    cell = by_path(doc)["cpa.x86_64-boot"]
    assert cell["status"] == "PASS"
    env = cell["environment"]
    assert env["comment"].startswith("lab box labbox: QEMU Standard PC (i440FX + PIIX, 1996), "
                                     "QEMU TCG CPU version 2.5+ (microcode 0x1000065), ")
    assert "booted by kexec_load" in env["comment"] and "QEMU tcg" not in env["comment"]
    misc = env["misc"]
    assert (misc["target"], misc["box"], misc["boot"]) == ("box", "labbox", "kexec_load")
    assert misc["box_kernel"] == misc["box_back"] == "6.1.0-50-amd64"
    assert misc["box_gbpages"] is True and misc["kexec_to_ready_s"] > 0
    assert "cpa_harness.nonce=" in misc["cmdline"]
    assert "accel" not in misc and "box_back_error" not in misc
