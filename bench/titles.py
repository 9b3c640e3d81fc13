"""Recall and title agreement of the console parser on real reports it was not built from.

    python bench/titles.py [-v]

The corpus is tests/data/console/syzbot/: real syzbot reports, each with the
title the syzbot dashboard gave it (README.md's table). Recall: the reports in
which the parser finds a failure. Agreement: the reports whose first failure's
title is the dashboard's (its `(N)` suffix, a dashboard's count, removed).
Also over tests/data/logs: every failure the reviewed expected files list is
found with its title. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.console import parse_path  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
ROW = re.compile(r"^\|\s*`?(?P<file>[\w.-]+\.log)`?\s*\|\s*(?P<title>[^|]+?)\s*\|")
SUFFIX = re.compile(r" \(\d+\)$")


def corpus() -> list[tuple[Path, str]]:
    readme = (DATA / "console" / "syzbot" / "README.md").read_text()
    rows = [ROW.match(line) for line in readme.splitlines()]
    return [(DATA / "console" / "syzbot" / m["file"], SUFFIX.sub("", m["title"].strip()))
            for m in rows if m and m["file"] != "file"]


def syzbot(verbose: bool) -> None:
    found = agree = 0
    reports = corpus()
    for path, title in reports:
        titles = [f.title for b in parse_path(path).boots for f in b.failures]
        found += bool(titles)
        agree += bool(titles) and titles[0] == title
        if verbose and (not titles or titles[0] != title):
            print(f"  {path.name}: dashboard {title!r}, parser {titles[:2]}")
    n = len(reports)
    print(f"syzbot reports: {n}; recall {found}/{n} ({100 * found / n:.0f}%); "
          f"title agreement {agree}/{n} ({100 * agree / n:.0f}%)")


def golden(verbose: bool) -> None:
    expected = found = 0
    for exp in sorted((DATA / "logs").glob("*.expected.json")):
        log = exp.with_name(exp.name.replace(".expected.json", ".log"))
        want = [(f["kind"], f["title"]) for b in json.loads(exp.read_text())["boots"]
                for f in b["failures"]]
        got = [(f.kind, f.title) for b in parse_path(log).boots for f in b.failures]
        expected += len(want)
        found += sum(1 for w in want if w in got)
        if verbose and sorted(want) != sorted(got):
            print(f"  {log.name}: expected {want}, parsed {got}")
    print(f"captured boot logs (tests/data/logs, reviewed expected files): "
          f"{found}/{expected} failures found with their kind and title")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="show each disagreement")
    args = ap.parse_args()
    syzbot(args.verbose)
    golden(args.verbose)


if __name__ == "__main__":
    main()
