"""The CI templates (ci/templates/), checked as the engines would read them.

Both files are validated by check-jsonschema's bundled schemas of the engines
(offline: no schema is fetched), and held to what the design asks of them:
inputs reach a shell only through environment variables, a failing shard
does not stop the merge, the merge's exit code decides, shards ask for KVM
runners by a documented tag or label. tests/test_ci_templates_gitlab_boot.py runs the
GitLab one for real.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "ci" / "templates"
GITHUB = TEMPLATES / "github-nightly.yml"
GITLAB = TEMPLATES / "gitlab-nightly.yml"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
# An expression the engine expands into the text of a script before a shell
# reads it: GitHub's ${{ ... }}, GitLab's $[[ ... ]] (spec:inputs).
EXPANDED = re.compile(r"\$\{\{|\$\[\[")


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def _schema_check(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    # proxies that lead nowhere: a schema fetched from the network would fail
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    return subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("schema,path", [("vendor.github-workflows", GITHUB),
                                         ("vendor.gitlab-ci", GITLAB)])
def test_templates_pass_the_engines_schemas(schema: str, path: Path, tmp_path: Path) -> None:
    r = _schema_check(schema, path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok -- validation done" in r.stdout
    # and the check can fail: the same file with a job key the engine does not know
    broken = tmp_path / path.name
    data = _load(path)
    job = next(iter(data["jobs"].values())) if "jobs" in data else data["nightly-shard"]
    job["parallel" if "jobs" not in data else "runs-on"] = {"not": "a valid value"}
    broken.write_text(yaml.safe_dump(data))
    r = _schema_check(schema, broken)
    assert r.returncode == 1, r.stdout + r.stderr


def _github_scripts() -> list[tuple[str, str]]:
    return [(f"{name}: {step.get('name', step.get('uses', '?'))}", step["run"])
            for name, job in _load(GITHUB)["jobs"].items()
            for step in job["steps"] if "run" in step]


def _gitlab_scripts() -> list[tuple[str, str]]:
    return [(f"{name}: {key}", line)
            for name, job in _load(GITLAB).items() if isinstance(job, dict)
            for key in ("before_script", "script", "after_script")
            for line in job.get(key, [])]


def test_no_expression_is_expanded_into_a_shell_script() -> None:
    """A kernel tree URL like `x"; curl ... | sh; "` would be shell code there:
    inputs go through env: and are quoted as variables."""
    scripts = _github_scripts() + _gitlab_scripts()
    assert len(scripts) >= 6
    bad = [(where, text) for where, text in scripts if EXPANDED.search(text)]
    assert bad == []
    # the inputs the templates take do reach the shell, as variables
    github = _load(GITHUB)
    assert github["jobs"]["shard"]["env"]["KERNEL_TREE"] == "${{ inputs.tree }}"
    assert any('"$KERNEL_TREE"' in text for _, text in _github_scripts())
    assert any('"$KERNEL_TREE"' in text for _, text in _gitlab_scripts())


def test_the_check_finds_an_expression_in_a_script() -> None:
    """What the check above would have said of the template before: it was
    `git clone --depth 1 "${{ inputs.tree }}" linux`."""
    assert EXPANDED.search('git clone --depth 1 "${{ inputs.tree }}" linux')
    assert EXPANDED.search("echo $[[ inputs.tree ]]")
    assert not EXPANDED.search('git clone --depth 1 -- "$KERNEL_TREE" linux')


def test_github_merge_runs_whatever_the_shards_did_and_decides() -> None:
    jobs = _load(GITHUB)["jobs"]
    shard, merge = jobs["shard"], jobs["merge"]
    assert shard["strategy"]["fail-fast"] is False
    assert merge["needs"] == "shard"
    # always() or !cancelled(): without one, a failed shard skips the merge
    assert re.search(r"always\(\)|!\s*cancelled\(\)", merge["if"])
    # a shard's failed cells are recorded, not the job's failure: the merge decides
    run = next(s["run"] for s in shard["steps"] if "cpa-harness run" in s.get("run", ""))
    assert re.search(r'\|\| echo "\$\?" > "\$OUT/exit-code"', run)
    merge_step = next(s for s in merge["steps"] if "cpa-harness merge" in s.get("run", ""))
    assert "if" not in merge_step and "continue-on-error" not in merge_step
    assert "|| " not in merge_step["run"]
    # every attempt's artifacts: a re-run shard's results are merged by attempt
    upload = next(s for s in shard["steps"] if s.get("uses", "").startswith(
        "actions/upload-artifact"))
    assert "github.run_attempt" in upload["with"]["name"]
    download = next(s for s in merge["steps"] if s.get("uses", "").startswith(
        "actions/download-artifact"))
    assert download["with"]["run-id"] == "${{ github.run_id }}"
    reports = [s for s in merge["steps"] if s.get("uses", "").startswith(
        ("actions/upload-artifact", "mikepenz/action-junit-report"))]
    assert {str(s.get("with", {}).get("path", s.get("with", {}).get("report_paths")))
            for s in reports} == {"results", "results/kcidb.json", "results/junit.xml"}
    assert all(s["if"] == "${{ !cancelled() }}" for s in reports)


def test_gitlab_merge_runs_whatever_the_shards_did_and_decides() -> None:
    data = _load(GITLAB)
    shard, merge = data["nightly-shard"], data["nightly-merge"]
    assert data["stages"] == ["shard", "merge"]
    assert merge["when"] == "always" and "allow_failure" not in merge
    assert any(re.search(r'\|\| echo "\$\?" > "\$out/exit-code"', line)
               for line in shard["script"])
    assert merge["script"] == [".venv/bin/cpa-harness merge merged results/shard-*"]
    assert merge["artifacts"] == {"when": "always", "paths": ["merged/"],
                                  "reports": {"junit": "merged/junit.xml"}}
    assert shard["artifacts"]["when"] == "always"


def test_shards_ask_for_kvm_runners_by_a_documented_name() -> None:
    github, gitlab = GITHUB.read_text(), GITLAB.read_text()
    runs_on = _load(GITHUB)["jobs"]["shard"]["runs-on"]
    assert '"kvm"' in runs_on and "vars.CPA_SHARD_RUNNER" in runs_on
    assert "CPA_SHARD_RUNNER" in github.split("\nname:")[0]      # the header says how
    assert "kvm" in _load(GITLAB)["nightly-shard"]["tags"]
    assert 'tag "kvm"' in gitlab and "tags: [debian-12]" in gitlab.split("\nstages:")[0]
    # the merge needs no KVM
    assert "kvm" not in _load(GITLAB)["nightly-merge"]["tags"]
    assert "kvm" not in _load(GITHUB)["jobs"]["merge"]["runs-on"]
    for doc in (ROOT / "README.md", ROOT / "docs" / "design.md"):
        text = doc.read_text()
        assert "CPA_SHARD_RUNNER" in text and '"kvm"' in text, doc
