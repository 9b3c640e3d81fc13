"""The GitLab template run for real by gitlab-ci-local (shell executor).

A project that includes ci/templates/gitlab-nightly.yml as a user's
.gitlab-ci.yml would, on a slice of the matrix (tests/data/matrices/
ci-slice.toml: two short x86_64 cells), split in 2 shards: both shard jobs
boot their cell, the merge job joins them, and its artefacts are the merged
run directory, JUnit and KCIDB JSON. Then the merge job alone, once a
shard's artefacts are gone (a runner that died): it still runs, lists the
lost shard's cell as not run, and fails the pipeline.

gitlab-ci-local is not skipped when it is missing: `ci/setup.sh --test`
installs it, and CI must run this.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from harness import paths
from harness.results import kcidb

pytestmark = pytest.mark.boot

ROOT = Path(__file__).resolve().parent.parent
SLICE = ROOT / "tests" / "data" / "matrices" / "ci-slice.toml"
VERSION = "4.56.2"
CELLS = ["x86_64-cpa", "x86_64-nokaslr"]
# the project directory, what gitlab-ci-local said, and how long it took
Pipeline = tuple[Path, subprocess.CompletedProcess[str], float]

# What a user's .gitlab-ci.yml says to run the template: include it, point it
# at a matrix, and (here) use the harness already installed instead of
# running ci/setup.sh on this machine again.
PROJECT_CI = """\
include: [{local: ci/templates/gitlab-nightly.yml}]
variables: {CPA_MATRIX: ci/slice.toml}
nightly-shard:
  parallel: 2
  before_script: ['ln -sfn "$CPA_TEST_VENV" .venv']
nightly-merge:
  before_script: ['ln -sfn "$CPA_TEST_VENV" .venv']
"""


def _gitlab_ci_local(project: Path, *args: str, timeout: float = 1800) \
        -> subprocess.CompletedProcess[str]:
    exe = shutil.which("gitlab-ci-local")
    assert exe, "gitlab-ci-local is not installed: run bash ci/setup.sh --test"
    data = project.parent / "data"
    return subprocess.run(
        [exe, "--shell-isolation", "--concurrency", "1", "--no-color",
         # jobs see only the variables given: the harness, its cache (the builds
         # the smoke tests made) and a data directory of the test's own
         "--variable", f"CPA_TEST_VENV={Path(sys.executable).parent.parent}",
         "--variable", f"CPA_HARNESS_CACHE={paths.cache_dir()}",
         "--variable", f"CPA_HARNESS_DATA={data}", *args],
        cwd=project, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    project = tmp_path_factory.mktemp("gitlab") / "project"
    (project / "ci" / "templates").mkdir(parents=True)
    shutil.copy(ROOT / "ci" / "templates" / "gitlab-nightly.yml", project / "ci" / "templates")
    shutil.copy(SLICE, project / "ci" / "slice.toml")
    (project / ".gitlab-ci.yml").write_text(PROJECT_CI)
    (project / ".gitignore").write_text(".venv\n")
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "nightly"], check=True)
    start = time.monotonic()
    r = _gitlab_ci_local(project)
    return project, r, time.monotonic() - start


def _artifacts(project: Path) -> Path:
    return project / ".gitlab-ci-local" / "artifacts"


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def test_tool_is_the_pinned_release() -> None:
    exe = shutil.which("gitlab-ci-local")
    assert exe, "gitlab-ci-local is not installed: run bash ci/setup.sh --test"
    assert subprocess.run([exe, "--version"], capture_output=True, text=True,
                          timeout=60).stdout.strip() == VERSION


def test_pipeline_runs_two_shards_and_the_merge(
        pipeline: Pipeline) -> None:
    project, r, seconds = pipeline
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    for job in ("nightly-shard: [1/2]", "nightly-shard: [2/2]", "nightly-merge"):
        assert re.search(rf"^{re.escape(job)} +finished in", r.stdout, re.M), r.stdout[-4000:]
    assert "FAIL" not in r.stdout
    print(f"gitlab-ci-local pipeline: {seconds:.0f}s")


def test_each_shard_job_recorded_its_part(
        pipeline: Pipeline) -> None:
    project, _, _ = pipeline
    summaries = sorted(_artifacts(project).glob("*/results/shard-*-of-2/summary.json"))
    assert [p.parent.name for p in summaries] == ["shard-1-of-2", "shard-2-of-2"]
    sha = {s["matrix_sha256"] for s in map(_json, summaries)}
    assert len(sha) == 1 and len(sha.pop()) == 64
    for n, path in enumerate(summaries, 1):
        s = _json(path)
        assert (s["shard"]["index"], s["shard"]["count"]) == (n, 2)
        assert s["shard"]["cells"] == [CELLS[n - 1]] and s["shard"]["selection"] == CELLS
        assert s["source_id"].startswith("tarball:linux-source-6.12")
        assert not (path.parent / "exit-code").exists()     # the harness exited 0


def test_merge_artifacts_are_the_run_junit_and_kcidb(
        pipeline: Pipeline) -> None:
    project, _, _ = pipeline
    merged = _artifacts(project) / "nightly-merge" / "merged"
    summary = _json(merged / "summary.json")
    assert [(c["name"], c["verdict"]) for c in summary["cells"]] == [(c, "pass") for c in CELLS]
    assert summary["exit_code"] == 0
    assert summary["shards_missing"] == [] and summary["cells_not_run"] == []
    assert [(s["index"], s["used"]) for s in summary["shards"]] == [(1, True), (2, True)]
    for name in CELLS:
        result = _json(merged / "cells" / name / "result.json")
        # KVM where it really runs a kernel, TCG otherwise: recorded either way
        assert result["accel"] in ("kvm", "tcg") and result["accel_reason"]
        # the merge job's own path for it, relative to where it ran
        assert result["serial_log"] == f"merged/cells/{name}/serial.log"
        log = merged / "cells" / name / "serial.log"
        assert "CPA self-test:" in log.read_text(errors="replace")
    suites = ET.parse(merged / "junit.xml").getroot()
    assert [s.get("name") for s in suites] == CELLS
    assert all(s.get("failures") == "0" for s in suites)
    doc = _json(merged / "kcidb.json")
    kcidb.validate(doc)
    # a test node per cell (cpa.CELL), with its boot and self-test pass under it
    assert {t["path"] for t in doc["tests"] if t["path"].count(".") == 1} == \
        {f"cpa.{c}" for c in CELLS}
    assert all(t["status"] == "PASS" for t in doc["tests"])


def test_merge_job_alone_with_a_shard_lost(
        pipeline: Pipeline) -> None:
    """The shard 2 runner died and left nothing: the merge job still runs and
    fails the pipeline, naming the shard, with the cell it lost as not run."""
    project, first, _ = pipeline
    assert first.returncode == 0
    lost = list(_artifacts(project).glob("*/results/shard-2-of-2"))
    assert len(lost) == 1
    shutil.rmtree(lost[0])
    r = _gitlab_ci_local(project, "nightly-merge", timeout=600)
    assert r.returncode == 1, (r.stdout + r.stderr)[-4000:]
    assert "shard 2/2 is missing: 1 cell did not run (x86_64-nokaslr)" in r.stdout
    summary = _json(_artifacts(project) / "nightly-merge" / "merged" / "summary.json")
    assert summary["shards_missing"] == ["2/2"]
    assert summary["cells_not_run"] == [{"name": "x86_64-nokaslr", "shard": "2/2",
                                         "reason": "shard 2/2 is missing"}]
    assert [(c["name"], c["verdict"]) for c in summary["cells"]] == [
        ("x86_64-cpa", "pass"), ("x86_64-nokaslr", "not-run")]

