#!/bin/bash
# The whole test suite: install what is needed, then lint, type-check, check the
# import contracts (pyproject.toml), and run the unit tests and the real-boot
# integration tests. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh --test
.venv/bin/ruff check harness tests bench ci
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
# the CI templates against the engines' own schemas (bundled: works offline)
.venv/bin/check-jsonschema --builtin-schema vendor.github-workflows ci/templates/github-nightly.yml
.venv/bin/check-jsonschema --builtin-schema vendor.gitlab-ci ci/templates/gitlab-nightly.yml
# Two workers, a test file each: a boot test waits on the guest much of the
# time (the self-test's 30 s period), so the other's build or boot fills it.
# In the order tests/conftest.py gives (longest first), not xdist's (most tests first).
# The real bisect --passes (7.5 minutes of boots and builds) passed here, but
# the whole suite with it took 88.6 of CI's 90 minutes from a fresh clone: it
# runs by hand (pytest tests/test_bisect_boot.py) until the suite is faster.
exec .venv/bin/pytest -ra -n "${CPA_HARNESS_TEST_WORKERS:-2}" --dist loadfile \
    --no-loadscope-reorder \
    --deselect tests/test_bisect_boot.py::test_bisect_passes_names_a_commit_that_breaks_one_pass_in_four \
    "$@"
