"""A run directory read back: its summary and each cell's result.

Results written by an older harness lack newer fields (the defaults fill them)
and a newer one may add some, so neither is an error; a damaged or foreign
file is a UserError naming it. Used by report, merge, resume, KCIDB and history.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.probes.passes import PeriodProof
from harness.probes.runtime import GuestView
from harness.results.cell import CellFailure, CellResult, RoundTrip, SshRecord, Verdict

# What run.py names cell directories by: the matrix's cell names (matrix.NAME_RE).
CELL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing", "give a complete cpa-harness run directory") \
            from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"cannot read {path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    except RecursionError:      # '[[[[...' a hundred thousand deep
        raise UserError(f"{path} is not a cpa-harness file: JSON nested too deeply") from None


def read_summary(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory",
                        "give a run directory (the path cpa-harness printed after 'results:')")
    path = run_dir / "summary.json"
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise UserError(f"{path} is not a cpa-harness run summary (no 'cells' list)")
    _check_summary_shapes(data, path)
    return data


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_summary_shapes(data: dict[str, Any], path: Path) -> None:
    """The fields merge, resume and history compute with, so a damaged summary
    is a UserError here rather than a crash (or an SQL error) there."""
    for key in ("source_id", "tree", "kernel_version", "matrix", "matrix_sha256"):
        if not isinstance(data.get(key, ""), str | None):
            raise UserError(f"{path} is not a run summary: {key} is not a string")
    for key in ("started", "finished"):
        value = data.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{path} is not a run summary: {key} is not a time")
    if not isinstance(data.get("exit_code", 0), int | None):
        raise UserError(f"{path} is not a run summary: exit_code is not a number")
    if not _is_strings(data.get("cells_requested", [])):
        raise UserError(f"{path} is not a run summary: cells_requested is not a list of names")
    host = data.get("host")
    if not isinstance(host, str | None) and not _is_strings(host):  # a merge has several
        raise UserError(f"{path} is not a run summary: host is not a name or a list of names")


def cell_from_json(data: Any, path: Path) -> CellResult:
    """A CellResult from its JSON; fields this version does not know are dropped.

    Results written by an older harness lack newer fields (the defaults fill
    them) and a newer one may add some, so neither is an error.
    """
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) \
            or not isinstance(data.get("arch"), str):
        raise UserError(f"{path} is not a cell result (no name or arch)")
    known = {f.name for f in dataclasses.fields(CellResult)}
    kw = {k: v for k, v in data.items() if k in known}
    _check_shapes(kw, path)
    # 0 marks a start time that was never recorded (the field's default is "now").
    kw.setdefault("started", 0.0)
    try:
        kw["verdict"] = Verdict(data.get("verdict", Verdict.NOT_RUN.value))
        kw["failures"] = [CellFailure.from_json(f) for f in data.get("failures") or []]
        kw["kexec"] = [RoundTrip.from_json(rt) for rt in data.get("kexec") or []]
        kw["periods"] = [PeriodProof.from_json(p) for p in data.get("periods") or []]
        kw["ssh"] = SshRecord.from_json(data["ssh"]) if data.get("ssh") else None
        kw["guest"] = GuestView.from_json(data["guest"]) if data.get("guest") else None
        return CellResult(**kw)
    except (ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{path} is not a cell result: {e}") from None


def _check_shapes(kw: dict[str, Any], path: Path) -> None:
    """The containers the conversion walks, so a damaged file is a UserError, not a crash."""
    for key in ("cpa_selftest", "kexec", "boots", "failures", "periods"):
        items = kw.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise UserError(f"{path} is not a cell result: {key} is not a list of objects")
    for key in ("stats", "durations", "guest", "ssh", "direct_map", "vmstat"):
        if not isinstance(kw.get(key, {}), dict):
            raise UserError(f"{path} is not a cell result: {key} is not an object")
    for key in ("reason", "build_dir", "config_hash", "serial_log", "boot_id"):
        if not isinstance(kw.get(key, ""), str):
            raise UserError(f"{path} is not a cell result: {key} is not a string")


def read_cell(run_dir: Path, entry: Any, summary_path: Path) -> CellResult:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise UserError(f"{summary_path} has a cell entry without a name")
    name = entry["name"]
    if not CELL_NAME_RE.fullmatch(name):
        raise UserError(f"{summary_path} names a cell {name[:60]!r} that cannot be a directory")
    # Always cells/NAME/result.json: a file's contents never choose what else is read.
    path = run_dir / "cells" / name / "result.json"
    if not path.exists() and entry.get("verdict") == Verdict.NOT_RUN.value:
        # An interrupted run (or one whose source failed) lists the cells it
        # never started, but only finished cells get a result.json.
        return cell_from_json({"name": entry["name"], "arch": entry.get("arch", ""),
                                "verdict": Verdict.NOT_RUN.value,
                                "reason": entry.get("reason", "")}, path)
    return cell_from_json(read_json(path), path)


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[CellResult]]:
    """The summary and every cell of a run directory, in the summary's order."""
    summary = read_summary(run_dir)
    path = run_dir / "summary.json"
    return summary, [read_cell(run_dir, e, path) for e in summary["cells"]]
