"""The smoke matrix for real: Debian's kernel source, three builds, four boots.

These tests build real kernels and boot them in QEMU (TCG here); they take
minutes, and the builds are cached for every later test and run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import paths
from harness.arches import get_arch
from harness.cells import KERNEL_FRAGMENTS
from harness.cli import main
from harness.console.known import version_tuple
from harness.kernel import build as kbuild
from harness.kernel import source

pytestmark = pytest.mark.boot


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("smoke")
    code = main(["run", "--out", str(out), "--db", str(out / "history.sqlite")])
    return code, out


def cell(out: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "cells" / name / "result.json").read_text())
    return data


def test_run_passes(smoke: tuple[int, Path]) -> None:
    code, out = smoke
    summary = json.loads((out / "summary.json").read_text())
    verdicts = {c["name"]: (c["verdict"], c["reason"]) for c in summary["cells"]}
    assert verdicts == {n: ("pass", "") for n in
                        ("x86_64-gbpages", "x86_64-debug-pagealloc", "i386-pae", "i386")}
    assert code == 0 and summary["exit_code"] == 0
    assert (out / "junit.xml").exists()


@pytest.mark.parametrize("name", ["x86_64-gbpages", "x86_64-debug-pagealloc", "i386-pae", "i386"])
def test_each_cell_ran_the_selftest(smoke: tuple[int, Path], name: str) -> None:
    r = cell(smoke[1], name)
    assert r["accel"] in ("kvm", "tcg") and r["accel_reason"]
    assert r["source_id"].startswith("tarball:linux-source-6.12")
    assert r["kernel_version"].startswith("6.12")
    first = r["cpa_selftest"][0]
    assert first["result"] == "pass"
    assert len(first["splits"]) == 3
    if name == "x86_64-debug-pagealloc":
        # nothing large to split: debug_pagealloc maps everything with 4k pages
        assert all(s["large"] == 0 and s["gb"] == 0 and s["4k"] > 0 for s in first["splits"])
    else:
        # the self-test split large pages: fewer large, more 4k entries after
        before, after = first["splits"][0], first["splits"][-1]
        assert before["large"] > 0 and after["4k"] > before["4k"]
    assert r["periods_watched"] == 1
    log = Path(r["serial_log"]).read_text(errors="replace")
    assert "CPA self-test:" in log and "CPA-HARNESS-READY" in log


@pytest.mark.parametrize("name", ["x86_64-gbpages", "x86_64-debug-pagealloc", "i386-pae", "i386"])
def test_each_cell_was_checked_over_ssh(smoke: tuple[int, Path], name: str) -> None:
    r = cell(smoke[1], name)
    assert r["ssh"]["host_key"].startswith("ssh-ed25519 ") and r["ssh"]["port"] > 1024
    g = r["guest"]
    # what ran is what was asked: every word of the command line, the build's own config
    assert set(r["cmdline"].split()) <= set(g["cmdline"].split())
    assert g["config_source"] == "/proc/config.gz" and g["config_differences"] == []
    assert g["errors"] == {} and "pae" in g["cpu_flags"]
    assert g["hypervisor"] == ("KVM" if r["accel"] == "kvm" else None)
    labels = [s["label"] for s in r["stats"]["snapshots"]]
    assert labels == ["boot", "first-pass", "period-2"]
    assert all(s["errors"] == {} and s["absent"] == [] for s in r["stats"]["snapshots"])


def test_the_run_is_published(smoke: tuple[int, Path]) -> None:
    """KCIDB JSON that kcidb-io accepts, and the run in the history store."""
    from harness.results import history, kcidb
    out = smoke[1]
    doc = json.loads((out / "kcidb.json").read_text())
    kcidb.validate(doc)
    assert {t["path"] for t in doc["tests"]} >= {"cpa.x86_64-gbpages.kexec.1",
                                                  "cpa.i386.selftest.1"}
    runs = history.list_runs(out / "history.sqlite")
    assert [r["id"] for r in runs] == [out.name] and runs[0]["cells"] == 4
    same = history.compare(out / "history.sqlite", out.name, out.name)
    assert not same.has_regressions


def test_kexec_round_trips_are_proven(smoke: tuple[int, Path]) -> None:
    """Each trip: the fresh nonce is in the new kernel's command line, the boot id
    is new, and the new kernel ran its own CPA self-test to a pass."""
    trips = {name: cell(smoke[1], name)["kexec"] for name in ("x86_64-gbpages", "i386-pae")}
    assert [t["method"] for t in trips["x86_64-gbpages"]] == ["kexec_load", "kexec_file_load"]
    assert [t["method"] for t in trips["i386-pae"]] == ["kexec_load"]
    for name, ts in trips.items():
        r = cell(smoke[1], name)
        ids = [r["boot_id"]] + [t["boot_id_after"] for t in ts]
        assert len(set(ids)) == len(ids)
        for n, t in enumerate(ts, 1):
            assert t["verified"] and t["selftest"] == "pass" and t["error"] == ""
            assert t["boot_id_before"] == ids[n - 1]
            assert f"cpa_harness.nonce={t['nonce']}" in t["cmdline_after"].split()
            assert t["boot"] == n and 0 < t["seconds_to_ready"] < 300
            assert all(t["stats"][w]["ptdump"] for w in ("before", "after", "first_pass"))
        # the console kept the boots apart: each but the last ended by kexec
        assert [b["ended_by"] for b in r["boots"]][:-1] == ["kexec"] * len(ts)
        assert [p["boot"] for p in r["cpa_selftest"]] == list(range(len(ts) + 1))
    # GB pages back the direct map again in each kexec'd kernel as it boots
    for t in trips["x86_64-gbpages"]:
        assert t["stats"]["after"]["ptdump"]["DirectMap1G"] > 0


def mapped(r: dict[str, Any], when: str) -> dict[str, int]:
    """The direct map by page size, from the page-table dump (what is really mapped)."""
    dump: dict[str, int] = r["stats"][when]["ptdump"]
    return dump


def test_gbpages_cell_uses_gb_pages(smoke: tuple[int, Path]) -> None:
    r = cell(smoke[1], "x86_64-gbpages")
    assert r["gbpages"] is True
    assert mapped(r, "boot")["DirectMap1G"] > 0
    assert r["cpa_selftest"][0]["splits"][0]["gb"] > 0
    # the self-test split GB pages, and the kernel counted it
    assert r["stats"]["after_selftest"]["vmstat"]["direct_map_level3_splits"] > 0
    assert r["stats"]["delta"]["vmstat"]["direct_map_level2_splits"] > 0


def test_debug_pagealloc_cell_is_all_4k(smoke: tuple[int, Path]) -> None:
    r = cell(smoke[1], "x86_64-debug-pagealloc")
    assert r["debug_pagealloc"] is True
    for when in ("boot", "after_selftest"):
        dm = mapped(r, when)
        assert dm["DirectMap4k"] > 0 and dm["DirectMap2M"] == 0 and dm["DirectMap1G"] == 0
    assert r["direct_map"]["4k"] > 0 and r["direct_map"].get("2M", 0) == 0


def test_i386_direct_maps(smoke: tuple[int, Path]) -> None:
    assert mapped(cell(smoke[1], "i386"), "boot")["DirectMap4M"] > 0     # two-level tables
    assert mapped(cell(smoke[1], "i386-pae"), "boot")["DirectMap2M"] > 0


def warns_verify_rwx(r: dict[str, Any]) -> bool:
    """6.12 up to 6.12.117 WARNs in verify_rwx on every x86_64 boot (ci/known-issues.toml);
    6.12.118 does not."""
    return (version_tuple(str(r["kernel_version"])) or (0,)) < (6, 12, 118)


def test_known_issue_is_shown_not_hidden(smoke: tuple[int, Path]) -> None:
    r = cell(smoke[1], "x86_64-gbpages")
    known = [f for f in r["failures"] if f["known"]]
    # once in each boot: the cell's own and the two kexec'd kernels
    assert [(f["kind"], f["title"], f["boot"]) for f in known] == [
        ("warning", "WARNING in verify_rwx", n) for n in range(3 if warns_verify_rwx(r) else 0)]
    assert not [f for f in r["failures"] if not f["known"]]


def test_strict_fails_on_the_known_warning(tmp_path: Path) -> None:
    """Without the known-issues list the same kernel fails when it warns: the
    harness does see what the list lets pass."""
    code = main(["run", "--cell", "x86_64-gbpages", "--strict", "--periods", "0",
                 "--out", str(tmp_path)])
    r = cell(tmp_path, "x86_64-gbpages")
    if warns_verify_rwx(r):
        assert code == 1 and r["verdict"] == "fail"
        assert r["reason"] == "warning: WARNING in verify_rwx"
    else:
        assert code == 0 and r["verdict"] == "pass" and r["failures"] == []


def test_repeated_build_does_no_kernel_work(smoke: tuple[int, Path]) -> None:
    arch = get_arch("i386")
    src = source.resolve(None, paths.cache_dir())
    req = kbuild.BuildRequest(src, arch, kbuild.fragments_for(arch, list(KERNEL_FRAGMENTS["i386"])))
    b = kbuild.build(req, paths.cache_dir())
    assert b.cached
    assert b.image.exists()


def test_resume_runs_only_the_missing_cells(smoke: tuple[int, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A run interrupted after two cells: --resume keeps them and runs the other two
    (--show-command: what would run, without booting again)."""
    import shutil
    run = tmp_path / "interrupted"
    shutil.copytree(smoke[1], run, ignore=shutil.ignore_patterns("*.sqlite*"))
    summary = json.loads((run / "summary.json").read_text())
    for entry in summary["cells"]:
        if entry["name"].startswith("i386"):
            entry["verdict"] = "not-run"
            shutil.rmtree(run / "cells" / entry["name"])
    summary["interrupted"] = True
    (run / "summary.json").write_text(json.dumps(summary))
    assert main(["run", "--resume", str(run), "--show-command", "--db",
                 str(tmp_path / "h.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "2 cells kept, 2 to run" in out
    shown = [line.split(":")[0] for line in out.splitlines() if ": qemu-system-" in line]
    assert shown == ["i386-pae", "i386"]
    kept = json.loads((run / "cells" / "x86_64-gbpages" / "result.json").read_text())
    assert kept["verdict"] == "pass"            # finished cells are left alone
