#!/bin/bash
# The whole test suite: install what is needed, then lint, type-check, and run
# the unit tests and the real-boot integration tests. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh --test
.venv/bin/ruff check harness tests bench ci
.venv/bin/mypy
exec .venv/bin/pytest -ra "$@"
