"""report.html, checked as a reader sees it: rendered by a real browser.

tests/data/runs/sample is a real run (x86_64-gbpages: three self-test passes,
two kexec round trips, three known WARNINGs, verdict user-error); the variant
edits a copy of its JSON: a finding whose console report is hostile HTML, a
cell without statistics, an i386 cell with one snapshot and no 1G key.

The browser is Debian's `chromium`, headless; its --dump-dom output (the DOM
after parsing, so what escaping really produced) is read back with
html.parser. A missing chromium is a failure, not a skip: CI installs it.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from harness.results.html import write_html

SAMPLE = Path(__file__).parent / "data" / "runs" / "sample"
CELL = "x86_64-gbpages"
BROWSER_TIMEOUT = 120

HOSTILE_TITLE = "<img src=x onerror=alert(1)> BUG & friends"
HOSTILE_REPORT = ["BUG: <script>alert(1)</script>", "a & b < c > d \"q\" 'q'",
                  "\x1b[31mcoloured\x1b[0m"]
HOSTILE_REASON = "</td></tr></table><script>alert(2)</script>"
NOSTATS = "no-stats"    # (cell names are checked: letters, digits, '.', '_', '-')
PARTIAL = "i386-partial"


# -- a light DOM, enough to find elements and their text ---------------------

@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def iter(self) -> Iterator[Node]:
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        """Elements with this tag and these attribute values (class matches one class)."""
        def ok(n: Node) -> bool:
            for k, v in attrs.items():
                k = k.rstrip("_").replace("_", "-")
                have = n.attrs.get(k)
                if have is None or (v not in have.split() if k == "class" else have != v):
                    return False
            return True
        return [n for n in self.iter() if n.tag == tag and ok(n)]

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)


class TreeBuilder(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


UNAVAILABLE = ("the buddy hard-lockup detector unavailable on 6.1.192: "
               "CONFIG_HARDLOCKUP_DETECTOR_BUDDY not defined in this tree's Kconfig")


def parse(text: str) -> Node:
    b = TreeBuilder()
    b.feed(text)
    b.close()
    return b.root


# -- the browser ---------------------------------------------------------------

def chromium(page: Path, profile: Path, *extra: str) -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not on PATH: the report must be checked in a real browser; "
                    "install it (Debian: apt-get install -y chromium)")
    # Own profile directory: parallel test runs do not share a browser instance.
    cmd = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", *extra, page.as_uri()]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT,
                           check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish in {BROWSER_TIMEOUT}s: {cmd}")
    assert p.returncode == 0, f"chromium exited {p.returncode}: {p.stderr[-2000:]}"
    return p.stdout


def rendered(run_dir: Path, db: Path | None = None) -> Node:
    """write_html, then the DOM chromium built from the page."""
    page = write_html(run_dir, db)
    assert page == run_dir / "report.html"
    dom = chromium(page, run_dir.parent / f"{run_dir.name}-profile", "--dump-dom")
    assert "</html>" in dom, f"chromium dumped no document: {dom[:500]!r}"
    return parse(dom)


# -- run directories -------------------------------------------------------------

def copy_sample(dest: Path) -> Path:
    shutil.copytree(SAMPLE, dest)
    return dest


def sample_cell() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLE / "cells" / CELL / "result.json").read_text())
    return data


def add_cell(run: Path, dirname: str, cell: dict[str, Any]) -> None:
    (run / "cells" / dirname).mkdir(parents=True)
    (run / "cells" / dirname / "result.json").write_text(json.dumps(cell))
    summary = json.loads((run / "summary.json").read_text())
    summary["cells"].append({"name": cell["name"], "arch": cell["arch"],
                             "verdict": cell["verdict"], "reason": cell["reason"],
                             "result": f"cells/{dirname}/result.json"})
    (run / "summary.json").write_text(json.dumps(summary))


def make_variant(run: Path) -> Path:
    """The sample, its cell turned into a hostile finding, plus two cells with less data."""
    copy_sample(run)
    path = run / "cells" / CELL / "result.json"
    cell = json.loads(path.read_text())
    cell.update(verdict="fail", reason=HOSTILE_REASON,
                flush={"windows": [{"label": "first pass", "groups": {
                    "full_flush": 3, "cache_range": 512, "cpa_tlb": 40, "global_tlb": 7,
                    "ipi": 95}, "counts": {"__cpa_flush_tlb": 40, "flush_tlb_all": 7},
                    "time_us": None}],
                       "timing": "time per call withheld: under TCG it measures the emulator",
                       "untraceable": ["clflush_cache_range_opt"]})
    cell["failures"].append({"kind": "bug", "title": HOSTILE_TITLE, "line": 900, "boot": 0,
                             "known": False, "report": HOSTILE_REPORT})
    path.write_text(json.dumps(cell))
    summary = json.loads((run / "summary.json").read_text())
    summary["cells"][0].update(verdict="fail", reason=HOSTILE_REASON)
    (run / "summary.json").write_text(json.dumps(summary))

    nostats = sample_cell()
    nostats.update(name=NOSTATS, stats={}, failures=[], kexec=[], verdict="infra-error",
                   reason="QEMU crashed")
    add_cell(run, NOSTATS, nostats)

    partial = sample_cell()
    partial.update(name=PARTIAL, arch="i386", failures=[], kexec=[], verdict="pass",
                   reason="", unavailable=[UNAVAILABLE],
                   stats={"boot": {"ptdump": {"DirectMap4k": 4096, "DirectMap4M": 905216,
                                              "runs": 3}}})
    add_cell(run, PARTIAL, partial)
    return run


@pytest.fixture(scope="module")
def sample_dom(tmp_path_factory: pytest.TempPathFactory) -> Node:
    return rendered(copy_sample(tmp_path_factory.mktemp("html") / "sample"))


@pytest.fixture(scope="module")
def variant_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_variant(tmp_path_factory.mktemp("html") / "variant")


@pytest.fixture(scope="module")
def variant_dom(variant_run: Path) -> Node:
    return rendered(variant_run)


def bars(dom: Node, cell: str) -> dict[tuple[str, str], int]:
    """(when, size) -> kB of the bar segments drawn for a cell."""
    [svg] = dom.find_all("svg", class_="directmap", data_cell=cell)
    return {(r.attrs["data-when"], r.attrs["data-size"]): int(r.attrs["data-kb"])
            for r in svg.find_all("rect") if "data-when" in r.attrs}


# -- tests ---------------------------------------------------------------------

def test_no_external_references(tmp_path: Path) -> None:
    """Self-contained: nothing to fetch, nothing to run, readable offline."""
    text = write_html(copy_sample(tmp_path / "run")).read_text()
    for bad in ("http:", "https:", "<link", "<script", "@import", "url("):
        assert bad not in text
    for node in parse(text).iter():
        assert node.tag not in ("script", "link", "img", "iframe", "object", "embed")
        assert "src" not in node.attrs
        assert node.attrs.get("href", "#").startswith("#"), node.attrs
        assert not any(k.startswith("on") for k in node.attrs), node.attrs


def test_sample_header_and_verdicts(sample_dom: Node) -> None:
    summary = json.loads((SAMPLE / "summary.json").read_text())
    fields = {dd.attrs["data-field"]: dd.text() for dd in sample_dom.find_all("dd")}
    assert fields["source_id"] == summary["source_id"]
    assert fields["kernel_version"] == "6.12.117"
    assert fields["host"] == "vm"
    assert fields["exit_code"] == "2"
    assert fields["started"].endswith("UTC")

    [row] = sample_dom.find_all("tr", class_="cell")
    assert row.attrs["data-cell"] == CELL
    assert row.attrs["data-verdict"] == "user-error"
    cols = {td.attrs["class"].split()[0]: td.text() for td in row.find_all("td")}
    assert cols["verdict"] == "user-error"
    assert cols["accel"] == "tcg"
    assert cols["selftest"] == "pass, pass, pass"
    assert cols["kexec"] == "2/2"
    assert cols["flush"] == "-"     # the sample ran without flush accounting
    assert cols["duration"] == "2m 55s"
    assert cols["reason"].startswith("cell expectation not met: GB pages expected")


def test_sample_failures(sample_dom: Node) -> None:
    failures = sample_dom.find_all("article", class_="failure")
    assert len(failures) == 3
    for f in failures:
        assert f.attrs["data-known"] == "true"
        assert f.find_all("h3", class_="title")[0].text() == "WARNING in verify_rwx"
        [pre] = f.find_all("pre", class_="report")
        assert "CPA detected W^X violation" in pre.text()


def test_sample_direct_map_bars(sample_dom: Node) -> None:
    stats = json.loads((SAMPLE / "cells" / CELL / "result.json").read_text())["stats"]
    drawn = bars(sample_dom, CELL)
    for when in ("boot", "after_selftest"):
        for size in ("4k", "2M", "1G"):
            assert drawn[(when, size)] == stats[when]["ptdump"][f"DirectMap{size}"]
    assert len(drawn) == 6
    # The split the self-test did, as the reader sees it: 2M pages lost to 4k.
    assert drawn[("boot", "2M")] == 4184064 and drawn[("after_selftest", "2M")] == 3239936
    [svg] = sample_dom.find_all("svg", class_="directmap", data_cell=CELL)
    labels = svg.text()
    assert "boot" in labels and "after self-test" in labels
    assert "2M 4,086.0 MiB" in labels and "4k pages" in labels
    [lost] = sample_dom.find_all("td", class_="lost", data_size="2M")
    assert "-944,128 kB" in lost.text()


def test_hostile_text_stays_text(variant_dom: Node) -> None:
    assert not variant_dom.find_all("script")
    assert not variant_dom.find_all("img")
    assert not any(k.startswith("on") for n in variant_dom.iter() for k in n.attrs)

    [finding] = variant_dom.find_all("article", class_="failure", data_known="false")
    assert finding.attrs["data-kind"] == "bug"
    assert finding.find_all("h3", class_="title")[0].text() == HOSTILE_TITLE
    [pre] = finding.find_all("pre", class_="report")
    assert pre.text() == "\n".join(HOSTILE_REPORT).replace("\x1b", "\\x1b")

    [row] = variant_dom.find_all("tr", class_="cell", data_cell=CELL)
    assert row.attrs["data-verdict"] == "fail"
    [reason] = row.find_all("td", class_="reason")
    assert reason.text() == HOSTILE_REASON
    flush = {s.attrs["data-group"]: s.text() for s in row.find_all("span")}
    assert flush == {"full_flush": "full_flush 3", "cache_range": "cache_range 512",
                     "cpa_tlb": "cpa_tlb 40", "global_tlb": "global_tlb 7", "ipi": "ipi 95"}


def test_flush_windows_per_function(variant_dom: Node) -> None:
    [div] = variant_dom.find_all("div", class_="flush", data_cell=CELL)
    rows = {r.attrs["data-function"]: r.text() for r in div.find_all("tr")
            if "data-function" in r.attrs}
    assert rows == {"__cpa_flush_tlb": "__cpa_flush_tlb40", "flush_tlb_all": "flush_tlb_all7"}
    notes = [p.text() for p in div.find_all("p", class_="note")]
    assert notes[0].startswith("time per call withheld: under TCG")
    assert "clflush_cache_range_opt" in notes[1]
    [none] = variant_dom.find_all("div", class_="flush", data_cell=NOSTATS)
    assert "no counting window" in none.text()


def test_cells_with_less_data(variant_dom: Node) -> None:
    verdicts = {r.attrs["data-cell"]: r.attrs["data-verdict"]
                for r in variant_dom.find_all("tr", class_="cell")}
    assert verdicts == {CELL: "fail", NOSTATS: "infra-error", PARTIAL: "pass"}

    # No snapshot at all: said in words, no plot.
    assert not variant_dom.find_all("svg", class_="directmap", data_cell=NOSTATS)
    [note] = variant_dom.find_all("p", class_="no-stats", data_cell=NOSTATS)
    assert note.text() == "no statistics"

    # i386, boot only, no 1G key: the bar it has, and words for the missing one.
    assert bars(variant_dom, PARTIAL) == {("boot", "4M"): 905216, ("boot", "4k"): 4096}
    [svg] = variant_dom.find_all("svg", class_="directmap", data_cell=PARTIAL)
    assert "no statistics" in svg.text()


def test_unavailable_features_are_shown(variant_dom: Node, sample_dom: Node) -> None:
    [item] = variant_dom.find_all("li", class_="unavailable")
    assert item.text() == f"i386: {UNAVAILABLE}"
    assert not sample_dom.find_all("li", class_="unavailable")


def test_screenshot(variant_run: Path, tmp_path: Path) -> None:
    page = write_html(variant_run)
    shot = tmp_path / "report.png"
    chromium(page, tmp_path / "profile", "--window-size=1200,1600",
             f"--screenshot={shot}", "--hide-scrollbars")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])     # the IHDR chunk
    assert (width, height) == (1200, 1600)
    assert len(data) > 10_000, "a blank page compresses to almost nothing"


def test_a_cell_on_a_lab_box_names_the_box(tmp_path: Path) -> None:
    run = tmp_path / "labbox"
    shutil.copytree(Path(__file__).parent / "data" / "runs" / "labbox", run)
    [row] = rendered(run).find_all("tr", class_="cell")
    cols = {td.attrs["class"].split()[0]: td.text() for td in row.find_all("td")}
    assert (cols["verdict"], cols["accel"]) == ("pass", "box labbox")


def test_each_cells_last_runs_are_plotted(tmp_path: Path) -> None:
    """Three copies of the sample recorded in a history store, their 4k figure
    after the self-test edited apart; the report of the last plots all three."""
    from harness.results import history
    db = tmp_path / "h.sqlite"
    runs = []
    for n, kb in enumerate((900_000, 950_000, 1_100_000)):
        run = copy_sample(tmp_path / f"run{n}")
        path = run / "cells" / CELL / "result.json"
        doc = json.loads(path.read_text())
        doc["stats"]["after_selftest"]["ptdump"]["DirectMap4k"] = kb
        path.write_text(json.dumps(doc))
        summary = json.loads((run / "summary.json").read_text())
        summary["started"] = 1000.0 + n
        (run / "summary.json").write_text(json.dumps(summary))
        history.record_run(db, run)
        runs.append(run)
    dom = rendered(runs[-1], db)
    [fig] = [f for f in dom.find_all("figure", class_="trend")
             if f.attrs.get("data-metric") == "DirectMap4k"]
    assert fig.attrs["data-cell"] == CELL
    dots = fig.find_all("circle")
    assert [d.attrs["data-run"] for d in dots] == ["run0", "run1", "run2"]
    assert [d.text() for d in dots] == ["run0: 879 MiB", "run1: 928 MiB", "run2: 1074 MiB"]
    assert "1074 MiB now, 879 MiB to 1074 MiB over 3 runs" in fig.text()
    # without a store, or with one that cannot be read, no plot and still a report
    assert not rendered(runs[0]).find_all("figure", class_="trend")
    (tmp_path / "bad.sqlite").write_text("not a database, and long enough " * 200)
    assert not rendered(runs[1], tmp_path / "bad.sqlite").find_all("figure", class_="trend")
