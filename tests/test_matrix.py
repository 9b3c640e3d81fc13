"""Matrix files, shards and merges: the nightly matrix loads, every mistake is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import matrix
from harness.cli import _select, main
from harness.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
NIGHTLY = ROOT / "ci" / "nightly.toml"


def test_the_nightly_matrix_covers_the_axes() -> None:
    m = matrix.load(NIGHTLY)
    cells = {c.name: c for c in m.cells}
    assert {c.arch for c in m.cells} == {"x86_64", "i386-pae", "i386"}
    # one build per arch (and the fast self-test's patched one): every cell of
    # an arch asks for the same fragments
    for arch in ("x86_64", "i386-pae", "i386"):
        assert len({c.fragments for c in m.cells if c.arch == arch}) == 1
    # many passes, and many under debug_pagealloc with a workload
    assert cells["x86_64-fast"].selftest_period_ms and cells["x86_64-fast"].passes >= 20
    stress = cells["x86_64-stress"]
    assert stress.passes >= cells["x86_64-fast"].passes and stress.workload
    assert stress.expect.debug_pagealloc and "debug_pagealloc=on" in stress.cmdline.split()
    assert cells["x86_64-gbpages-kexec"].expect.gbpages is True
    assert cells["x86_64-gbpages-kexec"].kexec == ("kexec_load", "kexec_file_load")
    assert cells["x86_64-gbpages-no-pdpe1gb"].expect.gbpages is False
    assert "nogbpages" in cells["x86_64-nogbpages"].cmdline.split()
    assert cells["x86_64-debug-pagealloc-workload"].workload
    # the exerciser, with and without CLFLUSH, and on 32-bit
    assert cells["x86_64-exercise-clflush"].exercise == ("cache", "concurrent", "alloc-fail")
    assert "-clflush" in cells["x86_64-exercise-no-clflush"].cpu_model.split(",")
    assert "cache" in cells["x86_64-exercise-no-clflush"].exercise
    assert cells["i386-pae-exercise"].exercise and cells["i386-pae-exercise"].arch == "i386-pae"
    assert cells["x86_64-numa2"].numa_nodes == 2
    assert {cells["x86_64-smp1"].smp, cells["x86_64-smp4"].smp} == {1, 4}
    assert cells["i386-lowmem"].memory_mb < 896 < cells["i386-highmem"].memory_mb
    assert cells["x86_64-mem3g"].memory_mb < 4096 < cells["x86_64-mem6g"].memory_mb
    words = " ".join(c.cmdline for c in m.cells).split()
    for axis in ("nokaslr", "pti=on", "pti=off", "nopat"):
        assert axis in words
    assert any(w.startswith("memmap=") for w in words)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "m.toml"
    p.write_text(text)
    return p


CELL = '[[cell]]\nname = "a"\narch = "x86_64"\n'


@pytest.mark.parametrize("text,where,problem", [
    ("nonsense = [", "", "not valid TOML"),
    ("colour = 1\n" + CELL, "key 'colour'", "unknown top-level key"),
    ("", "key 'cell'", "no [[cell]] tables"),
    (CELL + "memroy = 1024\n", "cell 'a': key 'memroy'", "unknown key"),
    (CELL + "memory = '2G'\n", "cell 'a': key 'memory'", "must be an integer, not '2G'"),
    (CELL + "smp = true\n", "cell 'a': key 'smp'", "must be an integer, not True"),
    (CELL + "smp = 0\n", "cell 'a': key 'smp'", "must be at least 1, not 0"),
    (CELL + "numa = 4\n", "cell 'a': key 'numa'", "4 nodes need a multiple of 4 CPUs"),
    (CELL + "fragments = ['no-such']\n", "cell 'a': key 'fragments'",
     "unknown config fragment 'no-such'"),
    (CELL + "scenario = 'boot'\n", "cell 'a': key 'scenario'", "unknown scenario 'boot'"),
    (CELL + "kexec = ['kexec_jump']\n", "cell 'a': key 'kexec'", "unknown method 'kexec_jump'"),
    (CELL + "expect = { gbpage = true }\n", "cell 'a': key 'expect.gbpage'", "unknown key"),
    (CELL + "expect = { gbpages = 'yes' }\n", "cell 'a': key 'expect.gbpages'",
     "must be true or false"),
    (CELL + "[[cell]]\nname = 'a'\narch = 'i386'\n", "cell 'a': key 'name'",
     "a second cell has this name"),
    ('[[cell]]\nname = "b"\narch = "arm64"\n', "cell 'b': key 'arch'", "unknown arch 'arm64'"),
    ('[[cell]]\narch = "i386"\n', "cell '#1': key 'name'", "missing"),
    ('[[cell]]\nname = "b b"\narch = "i386"\n', "cell 'b b': key 'name'", "use letters"),
    ('[[cell]]\nname = "g"\narch = "i386"\nexpect = { gbpages = true }\n',
     "cell 'g': key 'expect.gbpages'", "GB pages exist on x86_64 only"),
    ('[[cell]]\nname = "k"\narch = "i386-pae"\nkexec = ["kexec_file_load"]\n',
     "cell 'k': key 'kexec'", "needs CONFIG_KEXEC_FILE"),
    ("[defaults]\nname = 'x'\n" + CELL, "cell '[defaults]': key 'name'", "unknown key"),
    (CELL + "passes = 10\n", "cell 'a': key 'passes'", "counts the fast self-test's passes"),
    (CELL + "selftest_period_ms = 10\n", "cell 'a': key 'selftest_period_ms'",
     "must be at least 100, not 10"),
    (CELL + "selftest_period_ms = 1000\nperiods = 2\n", "cell 'a': key 'periods'",
     "a fast self-test counts passes, not periods"),
    (CELL + "cmdline = 'cpa_test.period_ms=5'\n", "cell 'a': key 'cmdline'",
     "cpa_test.period_ms is set by the cell's selftest_period_ms"),
    (CELL + "scenario = 'selfcheck'\nselftest_period_ms = 1000\n",
     "cell 'a': key 'selftest_period_ms'", "the selfcheck scenario watches no self-test"),
])
def test_mistakes_name_the_file_cell_and_key(tmp_path: Path, text: str, where: str,
                                             problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UserError) as e:
        matrix.load(path)
    msg = e.value.message
    assert msg.startswith(f"{path}: {where}".rstrip(": ")) and problem in msg, msg
    assert e.value.exit_code == 2 and "\n" not in e.value.line()


def test_defaults_apply_and_cells_override(tmp_path: Path) -> None:
    m = matrix.load(write(tmp_path, "[defaults]\nmemory = 1024\nperiods = 0\n" + CELL
                          + '[[cell]]\nname = "b"\narch = "i386"\nmemory = 512\n'))
    assert [(c.memory_mb, c.periods) for c in m.cells] == [(1024, 0), (512, 0)]


def test_a_fast_cell_boots_with_its_period_and_counts_passes(tmp_path: Path) -> None:
    m = matrix.load(write(tmp_path, "[defaults]\nperiods = 2\n" + CELL
                          + "cmdline = 'nokaslr'\nselftest_period_ms = 500\n"
                          + '[[cell]]\nname = "b"\narch = "i386"\n'))
    fast, stock = m.cells
    # the defaults' periods are the stock cell's; the fast one counts 20 passes
    assert (fast.selftest_period_ms, fast.passes, fast.periods) == (500, 20, 0)
    assert fast.cmdline == "nokaslr cpa_test.period_ms=500"
    assert (stock.selftest_period_ms, stock.passes, stock.periods) == (0, 0, 2)
    # and the other way round: fast by default, one cell stock with 0
    m = matrix.load(write(tmp_path, "[defaults]\nselftest_period_ms = 500\npasses = 5\n" + CELL
                          + '[[cell]]\nname = "b"\narch = "i386"\nselftest_period_ms = 0\n'
                          + "periods = 3\n"))
    fast, stock = m.cells
    assert (fast.selftest_period_ms, fast.passes, fast.periods) == (500, 5, 0)
    assert (stock.selftest_period_ms, stock.passes, stock.periods) == (0, 0, 3)
    assert "cpa_test" not in stock.cmdline


def test_shards_partition_the_cells() -> None:
    everything = [c.name for c in _select([], NIGHTLY)]
    parts = [[c.name for c in _select([], NIGHTLY, f"{i}/4")] for i in range(1, 5)]
    assert sorted(sum(parts, [])) == sorted(everything)
    assert all(parts) and max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == [[c.name for c in _select([], NIGHTLY, f"{i}/4")] for i in range(1, 5)]


@pytest.mark.parametrize("spec", ["3/2", "0/2", "1/0", "x/y", "1", "-1/2"])
def test_bad_shard_specs(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--list", f"--shard={spec}"]) == 2
    err = capsys.readouterr().err
    assert f"bad --shard {spec!r}" in err and len(err.strip().splitlines()) == 1


def _run_dir(base: Path, name: str, cells: dict[str, str], source: str = "tarball:x") -> Path:
    run = base / name
    for cell, verdict in cells.items():
        d = run / "cells" / cell
        d.mkdir(parents=True)
        (d / "serial.log").write_text(f"log of {cell}\n")
        (d / "result.json").write_text(json.dumps(
            {"name": cell, "arch": "x86_64", "verdict": verdict, "reason": "",
             "serial_log": str(d / "serial.log")}))
    (run / "summary.json").write_text(json.dumps(
        {"started": 1.0, "finished": 2.0, "host": "h", "tree": "debian", "source_id": source,
         "cells_requested": list(cells),
         "cells": [{"name": c, "arch": "x86_64", "verdict": v, "reason": "",
                    "result": f"cells/{c}/result.json"} for c, v in cells.items()]}))
    return run


def test_merge_joins_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _run_dir(tmp_path, "a", {"x1": "pass", "x2": "pass"})
    b = _run_dir(tmp_path, "b", {"x3": "fail"})
    out = tmp_path / "merged"
    assert main(["merge", str(out), str(a), str(b)]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [c["name"] for c in summary["cells"]] == ["x1", "x2", "x3"]
    assert summary["exit_code"] == 1 and summary["merged_from"] == [str(a), str(b)]
    r = json.loads((out / "cells" / "x3" / "result.json").read_text())
    assert Path(r["serial_log"]).read_text() == "log of x3\n"
    assert (out / "junit.xml").exists()
    assert main(["report", str(out)]) == 1
    assert "x3" in capsys.readouterr().out


def test_merge_refuses_overlap_and_mixed_sources(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    a = _run_dir(tmp_path, "a", {"x1": "pass"})
    b = _run_dir(tmp_path, "b", {"x1": "pass"})
    c = _run_dir(tmp_path, "c", {"x2": "pass"}, source="git:abc")
    assert main(["merge", str(tmp_path / "o1"), str(a), str(b)]) == 2
    assert "cell x1 is in both" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "o2"), str(a), str(c)]) == 2
    assert "different sources" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "o3"), str(tmp_path / "nope")]) == 2
    assert "nope is not a directory" in capsys.readouterr().err
    # nothing already there is overwritten
    assert main(["merge", str(a), str(c)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert json.loads((a / "summary.json").read_text())["cells"][0]["name"] == "x1"


def test_resume_refuses_another_matrix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import matrix_id
    run = _run_dir(tmp_path, "r", {"x86_64-cpa": "pass", "i386-cpa": "not-run"})
    summary = json.loads((run / "summary.json").read_text())
    summary.update(matrix_id(NIGHTLY))
    (run / "summary.json").write_text(json.dumps(summary))
    other = write(tmp_path, CELL)
    before = (run / "summary.json").read_text()
    assert main(["run", "--resume", str(run), "--matrix", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"{run} was made from another matrix" in err and len(err.strip().splitlines()) == 1
    assert (run / "summary.json").read_text() == before     # nothing touched
    assert main(["run", "--resume", str(tmp_path / "nope")]) == 2
    assert "nope is not a directory" in capsys.readouterr().err


def test_a_summary_never_chooses_what_else_is_read(tmp_path: Path) -> None:
    from harness.results.rundir import read_run
    run = _run_dir(tmp_path, "r", {"x1": "pass"})
    summary = json.loads((run / "summary.json").read_text())
    summary["cells"][0]["result"] = "../../../../etc/passwd"
    (run / "summary.json").write_text(json.dumps(summary))
    assert read_run(run)[1][0].name == "x1"          # cells/x1/result.json, not the path given
    summary["cells"][0]["name"] = "../../etc"
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(UserError, match="cannot be a directory"):
        read_run(run)
