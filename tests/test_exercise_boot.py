"""The CPA exerciser for real: the module built against each cell's kernel,
loaded in the booted guest, its lines and the flush profiler read back.

One run of three cells (the built-in kernels, two boots in parallel):
- x86_64 with CLFLUSH, every mode: the cache mode flushes range by range
  (CLFLUSH), never with a full write-back; two threads change attributes at
  once; injected allocation failures fail their calls cleanly;
- x86_64 without CLFLUSH (`-cpu max,-clflush`): the same changes take full
  write-backs (WBINVD) and no CLFLUSH;
- i386 PAE, every mode.
Every page the exerciser changed had the attribute it asked for, and no cell
saw a kernel failure. Then a module that does not compile is one line naming
its own source line.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import run_passing_matrix

from harness.errors import BuildError
from harness.kernel import exerciser
from harness.kernel.build import Build

pytestmark = pytest.mark.boot

MATRIX = """
[defaults]
periods = 0

[[cell]]
name = "x86_64-clflush"
arch = "x86_64"
cpu = "max"
exercise = ["cache", "concurrent", "alloc-fail"]

[[cell]]
name = "x86_64-no-clflush"
arch = "x86_64"
cpu = "max,-clflush"
exercise = ["cache"]

[[cell]]
name = "i386-pae"
arch = "i386-pae"
exercise = ["cache", "concurrent", "alloc-fail"]
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return run_passing_matrix(tmp_path_factory.mktemp("exercise"), MATRIX)


def mode(cell: dict[str, Any], name: str) -> dict[str, Any]:
    [m] = [m for m in cell["exercise"]["modes"] if m["mode"] == name]
    assert m["problems"] == [] and m["done"]["mismatches"] == 0, m
    return m


def test_with_clflush_the_cache_mode_flushes_range_by_range(
        run: dict[str, dict[str, Any]]) -> None:
    m = mode(run["x86_64-clflush"], "cache")
    assert m["start"]["clflush"] == 1
    assert m["flush"]["cache_range"] > 0 and m["flush"]["full_flush"] == 0
    assert sum(r["checked"] for r in m["rows"]) == 24976     # every page, after every change


def test_without_clflush_every_cache_flush_is_a_full_write_back(
        run: dict[str, dict[str, Any]]) -> None:
    m = mode(run["x86_64-no-clflush"], "cache")
    assert m["start"]["clflush"] == 0
    assert m["flush"]["full_flush"] > 0 and m["flush"]["cache_range"] == 0


@pytest.mark.parametrize("cell", ["x86_64-clflush", "i386-pae"])
def test_two_threads_change_attributes_at_once(run: dict[str, dict[str, Any]],
                                               cell: str) -> None:
    m = mode(run[cell], "concurrent")
    assert [(r["threads"], r["started"]) for r in m["rows"]] == [(1, 1), (2, 2)]
    if run[cell]["accel"] == "kvm":     # a real CPU: operations per second
        assert all(r.get("ops_per_s") for r in m["rows"])
        assert "withheld" not in run[cell]["exercise"]["timing"]
    else:                               # under TCG: counts and correctness only
        assert all("ns" not in r and "ops_per_s" not in r for r in m["rows"])
        assert "withheld" in run[cell]["exercise"]["timing"]


@pytest.mark.parametrize("cell", ["x86_64-clflush", "i386-pae"])
def test_injected_allocation_failures_fail_cleanly(run: dict[str, dict[str, Any]],
                                                   cell: str) -> None:
    m = mode(run[cell], "alloc-fail")
    s = m["summary"]
    assert s["injected"] > 0 and s["failed"] >= s["injected"] - s["absorbed"]
    assert s["uninjected"] == 0 and s["restored"] == s["changes"]
    # the kernel's own reports of them, counted, never failures
    assert m["injected_reports"] == s["injected"]
    assert run[cell]["failures"] == [] and run[cell]["verdict"] == "pass"


def test_a_module_that_does_not_compile_names_its_line(run: dict[str, dict[str, Any]],
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cell = run["x86_64-clflush"]
    bdir = Path(cell["build_dir"])
    broken = tmp_path / "exerciser"
    shutil.copytree(exerciser.SOURCE, broken)
    src = broken / "cpa_exercise.c"
    lines = src.read_text().splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("static int __init"))
    lines.insert(at, "static int broken(void) { return no_such_symbol; }")
    src.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(exerciser, "SOURCE", broken)
    build = Build("x86_64", bdir, bdir / "arch/x86/boot/bzImage", bdir / "vmlinux",
                  bdir / ".config", cell["source_id"], cell["config_hash"], True, 0.0,
                  bdir / "build.log")
    with pytest.raises(BuildError) as e:
        exerciser.build_module(build)
    assert f"guest/exerciser/cpa_exercise.c:{at + 1}:" in "\n".join(e.value.errors)
    assert "no_such_symbol" in "\n".join(e.value.errors)
    # and the shipped source builds again in the same directory
    monkeypatch.undo()
    assert exerciser.build_module(build).exists()
