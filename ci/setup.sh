#!/bin/bash
# Install everything the harness needs on a Debian 12 host, as root, and the
# harness itself into .venv. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

# Host tools: the kernel's build system, QEMU, Debian's kernel source.
HOST_PACKAGES=(make gcc binutils bc flex bison perl libelf-dev libssl-dev xz-utils git
               cpio qemu-system-x86 linux-source-6.12 ca-certificates)
# The tests also open the HTML report in a real browser (`ci/setup.sh --test`),
# and builds and boots a cell on Debian 12's own 6.1 source, so that version
# drift is caught at every change, and the simulated lab box (ci/labbox.sh):
# a stock Debian 12 disk made with mmdebstrap, its console behind ser2net.
if [[ "${1:-}" == "--test" ]]; then
    HOST_PACKAGES+=(chromium fonts-liberation linux-source-6.1
                    mmdebstrap ser2net socat qemu-utils openssh-client e2fsprogs)
    # The GitLab template is run for real by gitlab-ci-local (from npm), whose
    # shell executor copies the checkout with rsync.
    HOST_PACKAGES+=(rsync)
fi
# Guest userspace, for both guest arches (the harness downloads them itself;
# these are only checked for availability).
GUEST_CHECK=(busybox-static:amd64 busybox-static:i386 dropbear-bin:i386 kexec-tools:i386)

say() { echo "setup: $*"; }

if ! dpkg --print-foreign-architectures | grep -qx i386; then
    say "adding the i386 architecture"
    dpkg --add-architecture i386
fi

missing=()
for p in "${HOST_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# One i386 index of the security archive fails to download on these hosts
# ("File has unexpected size"), so apt-get update exits 100 while everything
# we need is still reachable. Do not trust the exit code alone: check below.
say "apt-get update"
apt-get update -q >/tmp/cpa-harness-apt-update.log 2>&1 || \
    say "apt-get update exited $? (see /tmp/cpa-harness-apt-update.log); checking packages"

if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/cpa-harness-apt.log 2>&1 || {
        tail -20 /tmp/cpa-harness-apt.log
        echo "setup: error: apt-get install failed (log: /tmp/cpa-harness-apt.log)" >&2
        exit 3
    }
fi

for p in "${GUEST_CHECK[@]}"; do
    # (no pipe into grep -q: with pipefail, its early exit fails apt-cache)
    policy=$(apt-cache policy "$p" 2>/dev/null || true)
    if [[ "$policy" != *"Candidate: "[0-9]* ]]; then
        echo "setup: error: Debian package $p is not available: check the apt sources" \
             "and run apt-get update" >&2
        exit 3
    fi
done

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    "$PY" -m venv .venv
fi
# With --test also labgrid (the optional extra): tests/test_labgrid.py runs its
# real coordinator and exporter, and must not find it missing in CI.
EXTRAS=test IMPORTS="harness, paramiko, pexpect, elftools, qemu.qmp, pytest, xdist, hypothesis, importlinter, check_jsonschema"
if [[ "${1:-}" == "--test" ]]; then
    EXTRAS=test,labgrid IMPORTS="$IMPORTS, labgrid"
fi
if ! .venv/bin/python -c "import $IMPORTS" \
        2>/dev/null || [ pyproject.toml -nt .venv/.installed ]; then
    say "installing the harness and its Python dependencies into .venv"
    if ! { .venv/bin/pip install -q --upgrade pip &&
           .venv/bin/pip install -q -e ".[$EXTRAS]"; } >/tmp/cpa-harness-pip.log 2>&1; then
        tail -20 /tmp/cpa-harness-pip.log
        echo "setup: error: pip install failed (log: /tmp/cpa-harness-pip.log)" >&2
        exit 3
    fi
    touch .venv/.installed
fi
# gitlab-ci-local 4.56.2 (tests/test_ci_templates_gitlab_boot.py): later
# releases need a newer Node.js than 20 (or Debian 12's 18); 4.56.2 runs on both.
GITLAB_CI_LOCAL=4.56.2
if [[ "${1:-}" == "--test" ]] && \
        [[ "$(gitlab-ci-local --version 2>/dev/null || true)" != "$GITLAB_CI_LOCAL" ]]; then
    if ! command -v npm >/dev/null; then
        say "installing nodejs npm"
        apt-get install -y -q --no-install-recommends nodejs npm >/tmp/cpa-harness-apt.log 2>&1 || {
            tail -20 /tmp/cpa-harness-apt.log
            echo "setup: error: apt-get install nodejs npm failed (log: /tmp/cpa-harness-apt.log)" >&2
            exit 3
        }
    fi
    say "installing gitlab-ci-local $GITLAB_CI_LOCAL"
    npm install -g "gitlab-ci-local@$GITLAB_CI_LOCAL" >/tmp/cpa-harness-npm.log 2>&1 || {
        tail -20 /tmp/cpa-harness-npm.log
        echo "setup: error: npm install gitlab-ci-local failed (log: /tmp/cpa-harness-npm.log)" >&2
        exit 3
    }
fi
say "ready"
