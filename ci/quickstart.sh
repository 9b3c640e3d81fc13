#!/bin/bash
# The main job: install what is needed, build the smoke kernels (Debian's
# linux-source unless --tree is given), boot every smoke cell and print the
# verdict table. Arguments go to `cpa-harness run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
exec .venv/bin/cpa-harness run "$@"
