"""Join the result directories of a sharded run into one.

CI runs `cpa-harness run --shard I/N` in N parallel jobs; `cpa-harness merge
OUT RUN...` puts their cells into OUT with one summary and one JUnit file, as
if one job had run them all. Shards of different sources, or two shards that
ran the same cell, are refused: a merged result must mean one thing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from harness.errors import InfraError, UserError
from harness.results.cell import CellResult, write_cell, write_summary
from harness.results.rundir import read_run, read_summary


def merge(out: Path, runs: list[Path]) -> list[CellResult]:
    if not runs:
        raise UserError("nothing to merge", "give the shards' result directories")
    summaries = [(run, read_summary(run)) for run in runs]
    sources = {s.get("source_id") for _, s in summaries}
    if len(sources) > 1:
        raise UserError(f"the shards ran different sources: {', '.join(map(str, sources))}",
                        "merge shards of one run only")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is not a directory", "merge into a new directory")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty", "merge into a new directory")
    cells: dict[str, CellResult] = {}
    origin: dict[str, Path] = {}
    for run, _ in summaries:
        for res in read_run(run)[1]:
            if res.name in cells:
                raise UserError(f"cell {res.name} is in both {origin[res.name]} and {run}",
                                "each cell belongs to one shard")
            cells[res.name] = res
            origin[res.name] = run
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror}", "merge into a new directory") \
            from None
    for name, res in cells.items():
        src = origin[name] / "cells" / name
        if src.is_dir():
            _copy_cell(src, out / "cells" / name)
        if res.serial_log:
            res.serial_log = str(out / "cells" / name / Path(res.serial_log).name)
        write_cell(out, res)
    meta: dict[str, Any] = {
        "started": min(s.get("started", 0) for _, s in summaries),
        "finished": max(s.get("finished", 0) for _, s in summaries),
        # a shard may itself be a merge, with a list of hosts
        "host": sorted({h for _, s in summaries
                        for h in ([s["host"]] if isinstance(s.get("host"), str)
                                  else s.get("host") or [])}),
        "tree": summaries[0][1].get("tree"),
        "source_id": summaries[0][1].get("source_id"),
        "kernel_version": summaries[0][1].get("kernel_version"),
        "cells_requested": [n for _, s in summaries for n in s.get("cells_requested", [])],
        "interrupted": any(s.get("interrupted") for _, s in summaries),
        "merged_from": [str(r) for r in runs],
    }
    write_summary(out, list(cells.values()), meta)
    return list(cells.values())


def _copy_cell(src: Path, dest: Path) -> None:
    """Copy a shard's cell directory whole or not at all: beside, then renamed."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp)
        tmp.rename(dest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        why = e.args[0][0][2] if isinstance(e, shutil.Error) and e.args and e.args[0] else e
        raise InfraError(f"cannot copy {src} into {dest.parent}: {why}",
                         "free disk space; the shards are untouched") from None
