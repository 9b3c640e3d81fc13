"""merge's accounting of shards, on real shard runs.

tests/data/runs/shards/ holds what `cpa-harness run --matrix
tests/data/matrices/ci-slice.toml --shard I/2` wrote here (summary, JUnit, and
each cell's result and console log; the ssh keys and reports left out):
shard 1/2, shard 2/2, and shard 1/2 run again (a retried job: a new attempt,
started later). Each test merges copies of them, so the data stays as it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from harness.cli import main

SHARDS = Path(__file__).parent / "data" / "runs" / "shards"
SLICE = Path(__file__).parent / "data" / "matrices" / "ci-slice.toml"
CELLS = ["x86_64-cpa", "x86_64-nokaslr"]


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CPA_HARNESS_DATA", str(tmp_path / "data"))   # the history store
    for run in SHARDS.iterdir():
        shutil.copytree(run, tmp_path / run.name)
    return tmp_path


def _merge(capsys: pytest.CaptureFixture[str], out: Path, *runs: Path) -> tuple[int, str, str]:
    code = main(["merge", str(out), *map(str, runs)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _summary(run: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run / "summary.json").read_text())
    return data


def _edit(run: Path, **changes: Any) -> None:
    summary = _summary(run)
    for key, value in changes.items():
        if key.startswith("shard_"):
            summary["shard"][key.removeprefix("shard_")] = value
        else:
            summary[key] = value
    (run / "summary.json").write_text(json.dumps(summary))


def _one_error(err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cpa-harness: error: ") and needle in lines[0], lines[0]


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def test_the_data_is_what_run_shard_records() -> None:
    """What the tests below rest on: each shard names its part, its attempt and
    the whole selection, beside the matrix's sha256 and the source id."""
    one, two, retry = (_summary(SHARDS / n) for n in
                       ("shard-1-of-2", "shard-2-of-2", "shard-1-of-2-retry"))
    for s, index, cells in ((one, 1, ["x86_64-cpa"]), (two, 2, ["x86_64-nokaslr"]),
                            (retry, 1, ["x86_64-cpa"])):
        assert (s["shard"]["index"], s["shard"]["count"], s["shard"]["cells"]) == (index, 2, cells)
        assert s["shard"]["selection"] == CELLS
        assert s["cells_requested"] == cells
        assert s["source_id"] == one["source_id"] and s["matrix_sha256"] == one["matrix_sha256"]
    assert retry["shard"]["attempt"] != one["shard"]["attempt"]
    assert retry["shard"]["started"] > one["shard"]["started"]


def test_both_shards_merge_into_one_run(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = runs / "merged"
    code, stdout, err = _merge(capsys, out, runs / "shard-1-of-2", runs / "shard-2-of-2")
    assert (code, err) == (0, "")
    s = _summary(out)
    assert [(c["name"], c["verdict"]) for c in s["cells"]] == [(c, "pass") for c in CELLS]
    assert s["cells_requested"] == CELLS and s["cells_not_run"] == [] and s["shards_missing"] == []
    assert [(r["index"], r["used"]) for r in s["shards"]] == [(1, True), (2, True)]
    assert s["matrix_sha256"] == _summary(runs / "shard-1-of-2")["matrix_sha256"]
    for name, shard in zip(CELLS, ("shard-1-of-2", "shard-2-of-2"), strict=True):
        r = json.loads((out / "cells" / name / "result.json").read_text())
        assert Path(r["serial_log"]) == out / "cells" / name / "serial.log"
        assert Path(r["serial_log"]).read_bytes() == \
            (runs / shard / "cells" / name / "serial.log").read_bytes()
    assert [s.get("name") for s in ET.parse(out / "junit.xml").getroot()] == CELLS
    assert (out / "kcidb.json").exists() and "not run" not in stdout
    assert main(["report", str(out)]) == 0


def test_a_missing_shard_is_named_and_its_cells_did_not_run(
        runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What a lost CI job gives: the merge is still written, so the shards that
    ran are seen, but it exits 1 and lists the cells that did not run."""
    out = runs / "merged"
    code, stdout, err = _merge(capsys, out, runs / "shard-1-of-2")
    assert code == 1
    _one_error(err, "shard 2/2 is missing: 1 cell did not run (x86_64-nokaslr); the rest is "
                    f"merged into {out}")
    s = _summary(out)
    assert s["shards_missing"] == ["2/2"]
    assert s["cells_not_run"] == [{"name": "x86_64-nokaslr", "shard": "2/2",
                                   "reason": "shard 2/2 is missing"}]
    assert [(c["name"], c["verdict"]) for c in s["cells"]] == [("x86_64-cpa", "pass"),
                                                               ("x86_64-nokaslr", "not-run")]
    assert "not run: x86_64-nokaslr" in stdout
    # JUnit and KCIDB say so too: a missing cell is not a quiet absence
    suite = [t for t in ET.parse(out / "junit.xml").getroot()
             if t.get("name") == "x86_64-nokaslr"]
    assert suite and suite[0].get("failures") != "0"
    kcidb = json.loads((out / "kcidb.json").read_text())
    assert {t["status"] for t in kcidb["tests"] if t["path"] == "cpa.x86_64-nokaslr"} == {"SKIP"}
    # the merge of what was missing, later, is whole
    code, _, err = _merge(capsys, runs / "whole", out, runs / "shard-2-of-2")
    assert (code, err) == (0, "")
    s = _summary(runs / "whole")
    assert s["shards_missing"] == [] and s["cells_not_run"] == []
    assert [(c["name"], c["verdict"]) for c in s["cells"]] == [(c, "pass") for c in CELLS]


def test_several_missing_shards_are_named_in_one_line(
        runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same two shards, as parts of a split in 4 of four cells: 3/4 and 4/4
    never came, and their cells are the selection's third and fourth."""
    selection = [*CELLS, "i386-cpa", "i386-pae-cpa"]
    arches = {"x86_64-cpa": "x86_64", "x86_64-nokaslr": "x86_64", "i386-cpa": "i386",
              "i386-pae-cpa": "i386-pae"}
    for run in ("shard-1-of-2", "shard-2-of-2"):
        _edit(runs / run, shard_count=4, shard_selection=selection, shard_arches=arches)
    code, _, err = _merge(capsys, runs / "merged", runs / "shard-1-of-2", runs / "shard-2-of-2")
    assert code == 1
    _one_error(err, "shards 3/4, 4/4 are missing: 2 cells did not run (i386-cpa, i386-pae-cpa)")
    s = _summary(runs / "merged")
    assert s["shards_missing"] == ["3/4", "4/4"]
    assert [(c["name"], c["shard"]) for c in s["cells_not_run"]] == [("i386-cpa", "3/4"),
                                                                     ("i386-pae-cpa", "4/4")]
    assert [(c["name"], c["arch"]) for c in s["cells"]] == list(arches.items())


def test_two_copies_of_one_shard_are_refused(runs: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(runs / "shard-1-of-2", runs / "copy")
    before = {n: _tree(runs / n) for n in ("shard-1-of-2", "copy")}
    code, _, err = _merge(capsys, runs / "merged", runs / "shard-1-of-2", runs / "copy",
                          runs / "shard-2-of-2")
    assert code == 1
    _one_error(err, f"shard 1/2 is given twice: {runs / 'shard-1-of-2'} and {runs / 'copy'} "
                    "are copies of one attempt")
    assert not (runs / "merged").exists()
    assert {n: _tree(runs / n) for n in before} == before


def test_a_rerun_shard_replaces_the_earlier_attempt_and_keeps_its_logs(
        runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, retry = runs / "shard-1-of-2", runs / "shard-1-of-2-retry"
    attempt = _summary(first)["shard"]["attempt"]
    # whatever order the engine hands the attempts over in
    for n, order in enumerate(([first, retry], [retry, first])):
        out = runs / f"merged-{n}"
        code, _, err = _merge(capsys, out, *order, runs / "shard-2-of-2")
        assert (code, err) == (0, "")
        log = (out / "cells" / "x86_64-cpa" / "serial.log").read_bytes()
        assert log == (retry / "cells" / "x86_64-cpa" / "serial.log").read_bytes()
        assert log != (first / "cells" / "x86_64-cpa" / "serial.log").read_bytes()
        kept = out / "superseded" / f"shard-1-of-2-{attempt}"
        assert (kept / "cells" / "x86_64-cpa" / "serial.log").read_bytes() == \
            (first / "cells" / "x86_64-cpa" / "serial.log").read_bytes()
        assert json.loads((kept / "shard.json").read_text())["cells_verdicts"] == \
            {"x86_64-cpa": "pass"}
        s = _summary(out)
        assert [(r["index"], r["attempt"], r["used"]) for r in s["shards"]] == [
            (1, _summary(retry)["shard"]["attempt"], True),
            (2, _summary(runs / "shard-2-of-2")["shard"]["attempt"], True),
            (1, attempt, False)]
        assert [c["name"] for c in s["cells"]] == CELLS
    # merged again, the superseded attempt and its logs come along
    code, _, err = _merge(capsys, runs / "again", runs / "merged-0")
    assert (code, err) == (0, "")
    assert (runs / "again" / "superseded" / f"shard-1-of-2-{attempt}" / "cells" / "x86_64-cpa"
            / "serial.log").exists()
    assert [r["used"] for r in _summary(runs / "again")["shards"]] == [True, True, False]


@pytest.mark.parametrize("change,code,needle", [
    ({"matrix_sha256": "0" * 64, "matrix": "/elsewhere/nightly.toml"}, 2,
     "is a shard of another matrix than"),
    ({"source_id": "git:0123abcd"}, 2, "the shards ran different sources"),
    ({"shard_count": 3, "shard_index": 2}, 2, "shards of different splits"),
    ({"shard_selection": ["x86_64-nokaslr"]}, 2, "different selections of the matrix's cells"),
    ({"shard": "2/2"}, 2, "shard is not an object"),
    ({"shard_attempt": 7}, 2, "shard attempt is not an id"),
])
def test_shards_that_do_not_belong_together_are_refused(
        change: dict[str, Any], code: int, needle: str, runs: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _edit(runs / "shard-2-of-2", **change)
    got, _, err = _merge(capsys, runs / "merged", runs / "shard-1-of-2", runs / "shard-2-of-2")
    assert got == code
    _one_error(err, needle)
    assert not (runs / "merged").exists()


@pytest.mark.parametrize("bad,needle", [
    ("empty-dir", "empty-dir/summary.json is missing"),
    ("a-file", "a-file is not a directory"),
    ("nowhere", "nowhere is not a directory"),
])
def test_something_that_is_not_a_run_is_refused(bad: str, needle: str, runs: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (runs / "empty-dir").mkdir()
    (runs / "a-file").write_text("x\n")
    code, _, err = _merge(capsys, runs / "merged", runs / "shard-1-of-2", runs / bad,
                          runs / "shard-2-of-2")
    assert code == 2
    _one_error(err, needle)
    assert not (runs / "merged").exists()


def test_nothing_already_merged_is_lost(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = runs / "merged"
    assert _merge(capsys, out, runs / "shard-1-of-2", runs / "shard-2-of-2")[0] == 0
    before = _tree(out)
    # a re-run merged into the same place, a copy of a shard, a shard of another matrix
    shutil.copytree(runs / "shard-2-of-2", runs / "copy")
    _edit(runs / "shard-1-of-2-retry", matrix_sha256="1" * 64)
    for inputs, code, needle in (
            ([runs / "shard-1-of-2-retry", runs / "shard-2-of-2"], 2, "another matrix"),
            ([runs / "shard-1-of-2", runs / "shard-2-of-2", runs / "copy"], 1, "given twice"),
            ([runs / "shard-1-of-2", runs / "shard-2-of-2"], 2, "is not empty")):
        got, _, err = _merge(capsys, out, *inputs)
        assert got == code
        _one_error(err, needle)
        assert _tree(out) == before


def test_a_shard_cut_short_lists_what_it_did_not_run(
        runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An interrupted shard: its summary lists the cell as not run (no result.json)."""
    two = runs / "shard-2-of-2"
    summary = _summary(two)
    summary["cells"][0].update(verdict="not-run", reason="interrupted")
    summary["interrupted"] = True
    (two / "summary.json").write_text(json.dumps(summary))
    shutil.rmtree(two / "cells")
    code, _, err = _merge(capsys, runs / "merged", runs / "shard-1-of-2", two)
    # as `run` says of cells it did not run: not a kernel failure, not complete (3)
    assert (code, err) == (3, "")
    s = _summary(runs / "merged")
    assert s["cells_not_run"] == [{"name": "x86_64-nokaslr", "shard": "2/2",
                                   "reason": "interrupted"}]
    assert s["interrupted"] is True and s["shards_missing"] == []


def test_run_shard_records_its_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """What `run --shard` hands the runner to write into the summary (the run
    itself is tests/test_ci_templates_gitlab_boot.py's), and what --resume keeps."""
    from harness import run
    from harness.cli import matrix_id
    seen: list[dict[str, Any]] = []

    def run_cells(cells: list[Any], opts: Any, run_dir: Path, cache: Path,
                  meta: dict[str, Any], **kw: Any) -> list[Any]:
        seen.append(meta)
        return []

    monkeypatch.setattr(run, "run_cells", run_cells)
    monkeypatch.setenv("CPA_HARNESS_DATA", str(tmp_path / "data"))
    for index in (1, 2):
        assert main(["run", "--matrix", str(SLICE), "--shard", f"{index}/2",
                     "--out", str(tmp_path / f"s{index}")]) == 0
    one, two = seen
    assert one["shard"]["cells"] == ["x86_64-cpa"] and two["shard"]["cells"] == ["x86_64-nokaslr"]
    assert one["shard"]["selection"] == two["shard"]["selection"] == CELLS
    assert one["shard"]["arches"] == {c: "x86_64" for c in CELLS}
    assert one["shard"]["attempt"] != two["shard"]["attempt"]
    assert one["matrix_sha256"] == matrix_id(SLICE)["matrix_sha256"]
    # --only narrows the selection every shard shares
    assert main(["run", "--matrix", str(SLICE), "--only", "*nokaslr", "--shard", "1/2",
                 "--out", str(tmp_path / "s3")]) == 0
    assert seen[-1]["shard"]["selection"] == ["x86_64-nokaslr"]
    # a resumed shard is the same attempt: the record is kept as it was
    shard = tmp_path / "resumed"
    shutil.copytree(SHARDS / "shard-1-of-2", shard)
    _edit(shard, **matrix_id(SLICE))
    assert main(["run", "--resume", str(shard)]) == 0
    assert seen[-1]["shard"] == _summary(SHARDS / "shard-1-of-2")["shard"]
    capsys.readouterr()
