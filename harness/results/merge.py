"""Join the result directories of a sharded run into one.

CI runs `cpa-harness run --shard I/N` in N parallel jobs; `cpa-harness merge
OUT RUN...` puts their cells into OUT with one summary and one JUnit file, as
if one job had run them all. A merged result must mean one thing, and say
what it lacks:

- each shard's summary.json has a `shard` record (`shard_record`): its I/N,
  the cells it was given, the whole selection the N shards share, and its
  attempt: a random id and the time it first started. With the summary's own
  `matrix_sha256` and `source_id`, that is what merge holds the shards to;
- shards of different matrices, selections, splits or sources are refused
  (exit 2), and so is a cell two runs both ran;
- two copies of one attempt are refused (`ResultsMissing`, exit 1: which
  copy is the result?); nothing is written for any refused input;
- a later attempt of the same I/N (the CI engine retried the job) replaces
  the earlier one's cells; the earlier attempt's cells and logs are kept under
  `superseded/`;
- a shard no input has is missing: the merge is written all the same, with
  its cells as not run, and `merge` exits 1 naming it. The summary's
  `cells_not_run` lists every cell that did not run, and why.

A merged directory can be merged again: its `shards` records stand for the
shards it holds.
"""

from __future__ import annotations

import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, InfraError, UserError
from harness.files import write_json
from harness.results.cell import CellResult, Verdict, write_cell, write_summary
from harness.results.rundir import read_run

SUPERSEDED = "superseded"


class ResultsMissing(HarnessError):
    """A shard's results are missing or given twice: the merged result cannot
    say what the run found (exit 1, as a failed cell)."""

    exit_code = 1


def shard_record(index: int, count: int, cells: list[str],
                 selection: dict[str, str]) -> dict[str, Any]:
    """What a shard run writes in its summary as `shard`; `selection` is every
    cell of the N shards with its arch (a missing shard's cells are still
    results: not run, on that arch). The attempt id tells a retried job (a new
    id) from a second copy of the same results (the same id); the start time
    orders the attempts, and --resume keeps both."""
    return {"index": index, "count": count, "cells": cells, "selection": list(selection),
            "arches": selection, "attempt": secrets.token_hex(8), "started": time.time()}


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    cells: tuple[str, ...]
    selection: tuple[str, ...]
    attempt: str
    started: float
    arches: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count, "cells": list(self.cells),
                "selection": list(self.selection), "arches": self.arches,
                "attempt": self.attempt, "started": self.started}

    @classmethod
    def from_json(cls, data: Any, where: Path) -> Shard:
        def names(key: str) -> tuple[str, ...]:
            value = data.get(key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UserError(f"{where} is not a run summary: shard {key} is not a list "
                                "of names")
            return tuple(value)

        if not isinstance(data, dict):
            raise UserError(f"{where} is not a run summary: shard is not an object")
        index, count = data.get("index"), data.get("count")
        if not (isinstance(index, int) and isinstance(count, int)) or \
                isinstance(index, bool) or isinstance(count, bool) or not 1 <= index <= count:
            raise UserError(f"{where} is not a run summary: shard is not I/N")
        attempt, started = data.get("attempt"), data.get("started")
        if not isinstance(attempt, str) or not attempt:
            raise UserError(f"{where} is not a run summary: shard attempt is not an id")
        if isinstance(started, bool) or not isinstance(started, int | float):
            raise UserError(f"{where} is not a run summary: shard started is not a time")
        arches = data.get("arches", {})
        if not isinstance(arches, dict) or \
                not all(isinstance(v, str) for v in arches.values()):
            raise UserError(f"{where} is not a run summary: shard arches is not a table")
        return cls(index, count, names("cells"), names("selection"), attempt, float(started),
                   arches)


@dataclass
class _Piece:
    """Cells from one input that stand or fall together: one shard attempt, or
    the cells of a run made without --shard."""

    run: Path
    summary: dict[str, Any]
    shard: Shard | None
    cells: list[CellResult]


@dataclass
class Merged:
    cells: list[CellResult]
    missing: list[str] = field(default_factory=list)    # shards no input has: "2/4"
    not_run: list[dict[str, str]] = field(default_factory=list)

    def missing_line(self, out: Path) -> str:
        """One line: which shards are missing, and what that left unrun."""
        lost = [c["name"] for c in self.not_run if c.get("shard") in self.missing]
        shards = ", ".join(self.missing)
        return (f"shard{'s' if len(self.missing) > 1 else ''} {shards} "
                f"{'are' if len(self.missing) > 1 else 'is'} missing: {len(lost)} cell"
                f"{'s' if len(lost) != 1 else ''} did not run ({', '.join(lost[:8])}"
                f"{', ...' if len(lost) > 8 else ''}); the rest is merged into {out}: "
                "give every shard's results")


def _pieces(run: Path) -> tuple[list[_Piece], list[dict[str, Any]]]:
    """The pieces of one input, and the superseded attempts a merged input keeps."""
    summary, results = read_run(run)
    where = run / "summary.json"
    if "shard" in summary:
        return [_Piece(run, summary, Shard.from_json(summary["shard"], where), results)], []
    records = summary.get("shards")
    if records is None:
        return [_Piece(run, summary, None, results)], []
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise UserError(f"{where} is not a run summary: shards is not a list of objects")
    by_name = {r.name: r for r in results}
    pieces, superseded = [], []
    for rec in records:
        if rec.get("used") is False:
            kept = rec.get("kept_in")
            if not isinstance(kept, str) or Path(kept).name != kept:
                raise UserError(f"{where} is not a run summary: a superseded shard has no "
                                "kept_in directory")
            superseded.append({**rec, "from": run / SUPERSEDED / kept})
            continue
        shard = Shard.from_json(rec, where)
        pieces.append(_Piece(run, summary, shard,
                             [by_name[n] for n in shard.cells if n in by_name]))
    held = {n for p in pieces for n in (p.shard.cells if p.shard else ())}
    rest = [r for r in results if r.name not in held and r.verdict != Verdict.NOT_RUN]
    if rest:
        pieces.append(_Piece(run, summary, None, rest))
    return pieces, superseded


def _check_one_run(pieces: list[_Piece]) -> None:
    """Every piece of one source; every shard of one matrix, selection and split."""
    first = pieces[0]
    for p in pieces[1:]:
        if p.summary.get("source_id") != first.summary.get("source_id"):
            raise UserError(f"the shards ran different sources: {first.run} ran "
                            f"{first.summary.get('source_id')}, {p.run} ran "
                            f"{p.summary.get('source_id')}", "merge shards of one run only")
    shards = [p for p in pieces if p.shard]
    if not shards:
        return
    ref = shards[0]
    assert ref.shard is not None
    for p in shards[1:]:
        assert p.shard is not None
        if p.summary.get("matrix_sha256") != ref.summary.get("matrix_sha256"):
            raise UserError(
                f"{p.run} is a shard of another matrix than {ref.run} "
                f"({p.summary.get('matrix')} sha256 {str(p.summary.get('matrix_sha256'))[:12]},"
                f" not {ref.summary.get('matrix')} sha256 "
                f"{str(ref.summary.get('matrix_sha256'))[:12]})", "merge shards of one run only")
        if p.shard.count != ref.shard.count:
            raise UserError(f"{p.run} is shard {p.shard.label}, {ref.run} shard "
                            f"{ref.shard.label}: shards of different splits",
                            "merge shards of one run only")
        if p.shard.selection != ref.shard.selection:
            raise UserError(f"{p.run} and {ref.run} are shards of different selections of "
                            "the matrix's cells (--only)", "merge shards of one run only")


def _latest_attempts(pieces: list[_Piece]) -> tuple[list[_Piece], list[_Piece]]:
    """The pieces to merge and the earlier attempts they replace. Two copies of
    one attempt are refused: nothing tells which one is the result."""
    chosen: dict[int, _Piece] = {}
    superseded: list[_Piece] = []
    for p in pieces:
        if p.shard is None:
            continue
        other = chosen.get(p.shard.index)
        if other is None:
            chosen[p.shard.index] = p
            continue
        assert other.shard is not None
        if other.shard.attempt == p.shard.attempt:
            raise ResultsMissing(f"shard {p.shard.label} is given twice: {other.run} and "
                                 f"{p.run} are copies of one attempt ({p.shard.attempt})",
                                 "give each shard's results once")
        later, earlier = (p, other) if (p.shard.started, p.shard.attempt) > \
            (other.shard.started, other.shard.attempt) else (other, p)
        chosen[p.shard.index] = later
        superseded.append(earlier)
    plain = [p for p in pieces if p.shard is None]
    return [chosen[i] for i in sorted(chosen)] + plain, superseded


def merge(out: Path, runs: list[Path]) -> Merged:
    if not runs:
        raise UserError("nothing to merge", "give the shards' result directories")
    pieces: list[_Piece] = []
    carried: list[dict[str, Any]] = []
    for run in runs:
        got, held = _pieces(run)
        pieces += got
        carried += held
    if not pieces:
        raise UserError(f"{runs[0]} has no cells to merge", "give the shards' result directories")
    _check_one_run(pieces)
    used, superseded = _latest_attempts(pieces)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is not a directory", "merge into a new directory")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty", "merge into a new directory")

    cells: dict[str, CellResult] = {}
    origin: dict[str, Path] = {}
    for p in used:
        for res in p.cells:
            if res.name in cells:
                raise UserError(f"cell {res.name} is in both {origin[res.name]} and {p.run}",
                                "each cell belongs to one shard")
            cells[res.name] = res
            origin[res.name] = p.run

    # What did not run: the cells each shard was given but has no verdict for,
    # and every cell of the selection no shard was given (its shard is missing).
    not_run: list[dict[str, str]] = []
    shards = [p.shard for p in used if p.shard]
    missing: list[str] = []
    order: list[str] = []
    if shards:
        count = shards[0].count
        missing = [f"{i}/{count}" for i in range(1, count + 1)
                   if i not in {s.index for s in shards}]
        given = {n: s.label for s in shards for n in s.cells}
        order = list(shards[0].selection)
        for name in order:
            found = cells.get(name)
            if name not in given:
                # the round robin `run --shard` uses: cell n of the selection is in part n % N
                label = f"{order.index(name) % count + 1}/{count}"
                why = f"shard {label} is missing"
                cells[name] = CellResult(name=name, arch=shards[0].arches.get(name, ""),
                                         started=0.0, reason=why)
                not_run.append({"name": name, "shard": label, "reason": why})
            elif found is None:
                why = f"not in shard {given[name]}'s results"
                cells[name] = CellResult(name=name, arch=shards[0].arches.get(name, ""),
                                         started=0.0, reason=why)
                not_run.append({"name": name, "shard": given[name], "reason": why})
            elif found.verdict == Verdict.NOT_RUN:
                not_run.append({"name": name, "shard": given[name], "reason": found.reason})
    shard_of = {n: s.label for s in shards for n in s.cells}
    for name, res in cells.items():
        if name not in order and res.verdict == Verdict.NOT_RUN:
            not_run.append({"name": name, "shard": shard_of.get(name, ""), "reason": res.reason})
    ordered = [cells[n] for n in order] + [c for n, c in cells.items() if n not in order]

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror}", "merge into a new directory") \
            from None
    for res in ordered:
        src = origin.get(res.name, Path("/nonexistent")) / "cells" / res.name
        if src.is_dir():
            _copy_dir(src, out / "cells" / res.name)
        if res.serial_log:
            res.serial_log = str(out / "cells" / res.name / Path(res.serial_log).name)
        write_cell(out, res)

    records: list[dict[str, Any]] = []
    for p in used:
        if p.shard:
            records.append({**p.shard.to_json(), "run": str(p.run), "used": True})
    for p in superseded:
        assert p.shard is not None
        kept = f"shard-{p.shard.index}-of-{p.shard.count}-{p.shard.attempt}"
        for res in p.cells:
            src = p.run / "cells" / res.name
            if src.is_dir():
                _copy_dir(src, out / SUPERSEDED / kept / "cells" / res.name)
        # the earlier attempt's own account, beside its cells' logs
        write_json(out / SUPERSEDED / kept / "shard.json",
                   {**p.shard.to_json(), "run": str(p.run),
                    "cells_verdicts": {r.name: r.verdict.value for r in p.cells}})
        records.append({**p.shard.to_json(), "run": str(p.run), "used": False, "kept_in": kept})
    for rec in carried:
        src = rec.pop("from")
        if Path(src).is_dir():
            _copy_dir(Path(src), out / SUPERSEDED / rec["kept_in"])
        records.append(rec)

    summaries = [p.summary for p in pieces]
    first = summaries[0]
    meta: dict[str, Any] = {
        "started": min(s.get("started", 0) for s in summaries),
        "finished": max(s.get("finished", 0) for s in summaries),
        # a shard may itself be a merge, with a list of hosts
        "host": sorted({h for s in summaries
                        for h in ([s["host"]] if isinstance(s.get("host"), str)
                                  else s.get("host") or [])}),
        "tree": first.get("tree"),
        "source_id": first.get("source_id"),
        "kernel_version": first.get("kernel_version"),
        "matrix": first.get("matrix", ""),
        "matrix_sha256": first.get("matrix_sha256", ""),
        # what the run was meant to run: the whole selection when it was sharded,
        # so that `run --resume` of the merge runs what did not run
        "cells_requested": order or [n for p in used for n in
                                     p.summary.get("cells_requested", [])],
        "interrupted": any(s.get("interrupted") for s in summaries),
        "merged_from": [str(r) for r in runs],
        "shards": records,
        "shards_missing": missing,
        "cells_not_run": not_run,
    }
    write_summary(out, ordered, meta)
    return Merged(ordered, missing, not_run)


def _copy_dir(src: Path, dest: Path) -> None:
    """Copy a shard's directory whole or not at all: beside, then renamed."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, tmp)
        tmp.rename(dest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        why = e.args[0][0][2] if isinstance(e, shutil.Error) and e.args and e.args[0] else e
        raise InfraError(f"cannot copy {src} into {dest.parent}: {why}",
                         "free disk space; the shards are untouched") from None
