"""Bisect a failing cell to the commit that broke it, with `git bisect run`.

Each step builds the checked-out revision (in one build directory per tree,
so a step after the first rebuilds only what changed) and runs the cell. Its
answer to git: 0 good; 1 bad, when the cell fails the same way as at --bad
(the self-test's own NOT PASSED, or else the same failure kind and title; any
failure with --any-failure); 125 skip, for a different failure met halfway (reported, not
chased), a build that does not compile, or an infrastructure error; 128 aborts
the bisection on a user error. `cpa-harness bisect-step` is that step, usable
by hand as `git bisect run cpa-harness bisect-step --cell NAME --signature ...`.

With --passes N each step runs the cell with the fast self-test (the tree
patched in place, a second between passes, each printed): good only after N passes
after the first, bad at the first failed one, so a failure that shows once
in many passes can be bisected; each step records the passes it rests on.

Before bisecting, --bad is run to learn the failure's signature and --good to
make sure it passes: good and bad reversed is a user error, found before git
is touched. The tree is always left as it was found, on success, failure or
Ctrl-C (`git bisect reset`, then the original checkout).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from harness.cells import Cell
from harness.errors import UserError
from harness.files import write_json
from harness.results.cell import CellResult, Verdict

GOOD, BAD, SKIP, ABORT = 0, 1, 125, 128


@dataclass
class Step:
    rev: str
    subject: str
    answer: str                 # good, bad, skip, abort
    verdict: str
    reason: str
    build_seconds: float
    run_seconds: float
    result_dir: str
    checked: str = ""           # "good"/"bad" for the two runs before bisecting
    patches: list[str] = field(default_factory=list)    # applied on top for this step
    dropped: list[str] = field(default_factory=list)    # essential options this revision lacks
    signature: str = ""         # what a failure here is compared by
    passes: int = 0             # self-test passes proven: what a good answer rests on


@dataclass
class Report:
    tree: str
    cell: str
    good: str
    bad: str
    signature: str
    commits: int = 0            # candidates between good and bad
    max_steps: int = 0          # ceil(log2 commits) + 1
    first_bad: str = ""
    subject: str = ""
    excerpt: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def git(tree: Path, *args: str, check: bool = True) -> str:
    r = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True,
                       timeout=600)
    if check and r.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed in {tree}: "
                        f"{(r.stderr or r.stdout).strip()[:200]}")
    return r.stdout.strip()


def check_tree(tree: Path, good: str, bad: str) -> tuple[str, str]:
    """The full commit ids of good and bad; a user error for every unusable input."""
    if not (tree / ".git").exists():
        raise UserError(f"{tree} is not a git repository", "bisect needs --tree GIT_CHECKOUT")
    if (tree / ".git" / "BISECT_LOG").exists():
        raise UserError(f"a bisection is already in progress in {tree}",
                        "finish it or run 'git bisect reset' first")
    if git(tree, "status", "--porcelain", "--untracked-files=no"):
        raise UserError(f"{tree} has uncommitted changes", "commit or stash them first")
    ids = []
    for name, rev in (("--good", good), ("--bad", bad)):
        r = subprocess.run(["git", "-C", str(tree), "rev-parse", "--verify", "-q",
                            f"{rev}^{{commit}}"], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise UserError(f"{name} {rev} is not a commit in {tree}")
        ids.append(r.stdout.strip())
    if subprocess.run(["git", "-C", str(tree), "merge-base", "--is-ancestor", ids[0], ids[1]],
                      timeout=60).returncode != 0:
        raise UserError(f"--good {good} is not an ancestor of --bad {bad}",
                        "give an older good revision")
    return ids[0], ids[1]


NOT_PASSED = "cpa_selftest: CPA self-test NOT PASSED"


def signature(res: CellResult) -> str:
    """What 'the same failure' means: the self-test's own NOT PASSED, whatever
    the console showed of the WARN that carries it (its title can change with
    how the lines came), else the first unknown failure's kind and title."""
    return next(iter(names(res)))


def names(res: CellResult) -> dict[str, None]:
    """Every name a failure here answers to, the signature first: a signature
    given by hand may be the report's title instead."""
    found: dict[str, None] = {}
    if any(p.get("result") == "fail" for p in res.cpa_selftest):
        found[NOT_PASSED] = None
    unknown = [f for f in res.failures if not f.known]
    if unknown:
        found[f"{unknown[0].kind}: {unknown[0].title}"] = None
    found[res.reason] = None
    return found


def answer(res: CellResult, wanted: str | None) -> int:
    """git bisect run's exit code for one step's result (wanted None: any failure)."""
    if res.verdict == Verdict.PASS:
        return GOOD
    if res.verdict == Verdict.USER_ERROR:
        # A revision whose Kconfig cannot give an essential option (older than
        # the option, or past its removal) cannot be tested: skipped, named.
        return SKIP if res.dropped_options else ABORT
    # build_dir is set once the kernel compiled: a build that does not is skipped
    if res.verdict == Verdict.FAIL and res.build_dir and (wanted is None
                                                          or wanted in names(res)):
        return BAD
    # a build that does not compile, another failure, QEMU or the host failing
    return SKIP


RunCell = Callable[[Path, Path], CellResult]


def run_step(tree: Path, run_cell: RunCell, wanted: str | None, steps_dir: Path,
             log: Path | None, patches: list[Path] | None = None) -> tuple[int, Step]:
    """Build and run the cell on the tree's checkout (with `patches` applied on top
    for the step's length); log the step; its exit code."""
    rev = git(tree, "rev-parse", "HEAD")
    subject = git(tree, "log", "-1", "--format=%s", rev)
    out = steps_dir / f"{len(list(steps_dir.glob('*'))) + 1:02d}-{rev[:12]}"
    start = time.monotonic()
    applied: list[Path] = []
    try:
        for p in patches or []:
            # In place, not on a copy: the build directory then stays incremental.
            r = subprocess.run(["git", "-C", str(tree), "apply", str(p.resolve())],
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                res = CellResult(name="", arch="", verdict=Verdict.INFRA_ERROR,
                                 reason=f"patch {p.name} does not apply here: "
                                        f"{r.stderr.strip()[:150]}")
                break
            applied.append(p)
        else:
            res = run_cell(tree, out)
    finally:
        for p in reversed(applied):
            git(tree, "apply", "-R", str(p.resolve()))
    code = answer(res, wanted)
    build_s = float(res.durations.get("build", 0.0))
    step = Step(rev, subject, {GOOD: "good", BAD: "bad", SKIP: "skip"}.get(code, "abort"),
                res.verdict.value, res.reason or signature(res), round(build_s, 1),
                round(time.monotonic() - start - build_s, 1), str(out),
                patches=[str(p) for p in patches or []], dropped=list(res.dropped_options),
                signature=signature(res) if res.verdict == Verdict.FAIL else "",
                passes=res.passes_proven())
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(json.dumps(asdict(step)) + "\n")
    return code, step


def bisect(tree: Path, good: str, bad: str, cell: Cell, out: Path, run_cell: RunCell,
           step_command: list[str], any_failure: bool, say: TextIO,
           patches: list[Path] | None = None) -> Report:
    tree = tree.resolve()
    good_id, bad_id = check_tree(tree, good, bad)
    report = Report(str(tree), cell.name, good_id, bad_id, "")
    original = git(tree, "symbolic-ref", "-q", "--short", "HEAD", check=False) or \
        git(tree, "rev-parse", "HEAD")
    steps_dir, log = out / "steps", out / "steps.jsonl"
    steps_dir.mkdir(parents=True, exist_ok=True)
    try:
        for checked, rev in (("bad", bad_id), ("good", good_id)):
            git(tree, "checkout", "-q", "--detach", rev)
            code, step = run_step(tree, run_cell, None, steps_dir, None, patches)
            step.checked = checked
            report.steps.append(step)
            say.write(f"bisect: {checked} {rev[:12]}: {step.verdict} {step.reason}\n")
            if checked == "bad":
                if code != BAD:
                    raise UserError(f"the cell does not fail at --bad {bad} "
                                    f"({step.verdict}: {step.reason or 'no failure'})",
                                    "nothing to bisect")
                report.signature = "" if any_failure else step.signature
            elif code != GOOD:
                raise UserError(f"the cell does not pass at --good {good} ({step.verdict}: "
                                f"{step.reason}): are good and bad reversed?")
        report.commits = int(git(tree, "rev-list", "--count", f"{good_id}..{bad_id}"))
        report.max_steps = math.ceil(math.log2(max(report.commits, 1))) + 1
        git(tree, "bisect", "start", bad_id, good_id)
        cmd = [*step_command, "--log", str(log), "--steps-dir", str(steps_dir)]
        for p in patches or []:
            cmd += ["--patch", str(p.resolve())]
        cmd += ["--any-failure"] if any_failure else ["--signature", report.signature]
        r = subprocess.run(["git", "-C", str(tree), "bisect", "run", *cmd],
                           capture_output=True, text=True)
        (out / "git-bisect-run.log").write_text(r.stdout + r.stderr)
        first = git(tree, "rev-parse", "-q", "--verify", "refs/bisect/bad", check=False)
        if r.returncode != 0 or "is the first bad commit" not in r.stdout:
            lines = (r.stdout + r.stderr).strip().splitlines() or ["git bisect run failed"]
            report.error = lines[-1][:300]
        elif first:
            report.first_bad = first
            report.subject = git(tree, "log", "-1", "--format=%s", first)
    finally:
        git(tree, "bisect", "reset", check=False)
        git(tree, "checkout", "-q", original, check=False)
        report.steps += _logged_steps(log)
        write_json(out / "bisect.json", report.to_json())
    report.excerpt = _excerpt(report)
    write_json(out / "bisect.json", report.to_json())
    return report


def _logged_steps(log: Path) -> list[Step]:
    try:
        return [Step(**json.loads(line)) for line in log.read_text().splitlines() if line]
    except OSError:
        return []


def _excerpt(report: Report) -> list[str]:
    """The failure as the first bad commit's run saw it."""
    for s in report.steps:
        if s.rev == report.first_bad and s.answer == "bad":
            try:
                doc = json.loads(next(Path(s.result_dir).glob("cells/*/result.json"))
                                 .read_text())
            except (StopIteration, OSError, ValueError):
                return []
            for f in doc.get("failures", []):
                if not f.get("known"):
                    return list(f.get("report", []))[:40]
            return [str(doc.get("reason", ""))]
    return []


def print_report(report: Report, out: TextIO) -> None:
    out.write(f"\n{'rev':12}  {'answer':6}  {'passes':>6}  {'build':>6}  {'run':>6}  reason\n")
    for s in report.steps:
        tag = f" ({s.checked})" if s.checked else ""
        out.write(f"{s.rev[:12]}  {s.answer:6}  {s.passes:6d}  {s.build_seconds:5.0f}s  "
                  f"{s.run_seconds:5.0f}s  {s.reason}{tag}\n")
    bisected = [s for s in report.steps if not s.checked]
    if report.first_bad:
        out.write(f"\nfirst bad commit: {report.first_bad} {report.subject}\n"
                  f"({len(bisected)} steps over {report.commits} commits; at most "
                  f"{report.max_steps} expected)\n")
        out.write("".join(f"  {line}\n" for line in report.excerpt))
    else:
        out.write(f"\nno first bad commit: {report.error or 'see git-bisect-run.log'}\n")


def main_step(tree: Path, run_cell: RunCell, wanted: str | None, steps_dir: Path,
              log: Path | None, patches: list[Path] | None = None) -> int:
    """`cpa-harness bisect-step`: one step, answered as git bisect run expects."""
    try:
        code, step = run_step(tree, run_cell, wanted, steps_dir, log, patches)
    except UserError as e:
        sys.stderr.write(f"cpa-harness: error: {e.line()}\n")
        return ABORT
    sys.stderr.write(f"bisect-step {step.rev[:12]}: {step.answer} ({step.verdict}: "
                     f"{step.reason})\n")
    return code
