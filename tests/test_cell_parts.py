"""A cell result's typed parts (failures, kexec round trips, ssh, what ran) to the
files and back."""

from __future__ import annotations

import json
from pathlib import Path

from harness.console import ConsoleParser
from harness.console.model import Failure
from harness.results.cell import CellFailure, CellResult, write_cell
from harness.results.rundir import cell_from_json

DATA = Path(__file__).parent / "data"


def found(log: str) -> Failure:
    p = ConsoleParser()
    p.feed((DATA / "console" / "kinds" / log).read_text())
    [f] = [f for b in p.finish().boots for f in b.failures]
    return f


def test_a_found_failure_is_written_and_read_back_as_found(tmp_path: Path) -> None:
    f = found("soft_lockup-memcpy.log")
    assert f.frames and f.rip is not None        # the log is worth the round trip
    res = CellResult(name="c", arch="x86_64",
                     failures=[CellFailure(f, boot=0, known=True, known_reason="why")])
    path = write_cell(tmp_path, res)
    back = cell_from_json(json.loads(path.read_text()), path)
    assert back.failures == res.failures
    assert back.failures[0].failure is not f and back.failures[0].failure == f


def test_a_result_from_before_frames_were_kept_still_reads() -> None:
    path = DATA / "runs" / "sample" / "cells" / "x86_64-gbpages" / "result.json"
    data = json.loads(path.read_text())
    assert data["failures"] and not any("frames" in old for old in data["failures"])
    read = cell_from_json(data, path).failures
    assert len(read) == len(data["failures"])
    for f, old in zip(read, data["failures"], strict=True):
        assert (f.kind, f.title, f.line, f.boot, f.known) == (
            old["kind"], old["title"], old["line"], old["boot"], old["known"])
        assert f.failure.call_trace == old["call_trace"]
        assert list(f.failure.report) == old["report"]


def test_the_harness_account_has_no_console_line() -> None:
    f = CellFailure.seen_by_harness("hang", "no CPA self-test verdict within 180s", 1,
                                    ["[   31.2] CPA self-test:"])
    j = f.to_json()
    assert (j["kind"], j["line"], j["boot"], j["report"]) == (
        "hang", 0, 1, ["[   31.2] CPA self-test:"])
    assert CellFailure.from_json(j) == f


def test_typed_parts_read_back_as_written(tmp_path: Path) -> None:
    path = DATA / "runs" / "sample" / "cells" / "x86_64-gbpages" / "result.json"
    res = cell_from_json(json.loads(path.read_text()), path)
    assert len(res.kexec) == 2 and all(rt.passed() for rt in res.kexec)
    again = write_cell(tmp_path, res)
    back = cell_from_json(json.loads(again.read_text()), again)
    assert back.kexec == res.kexec and back.failures == res.failures
    assert res.ssh is not None and res.ssh.port == 57207 and res.ssh.host_key
    assert res.guest is not None and "pdpe1gb" in res.guest.cpu_flags
    assert back.ssh == res.ssh and back.guest == res.guest


def test_a_cell_never_up_says_so_as_it_always_did(tmp_path: Path) -> None:
    path = write_cell(tmp_path, CellResult(name="c", arch="i386"))
    data = json.loads(path.read_text())
    assert data["ssh"] == {} and data["guest"] == {}
    back = cell_from_json(data, path)
    assert back.ssh is None and back.guest is None
