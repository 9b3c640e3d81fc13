"""Where the harness keeps its cache, its results and its own shipped files."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.progress import report

# The checkout this package lives in: kernel-configs/, guest/ and ci/ sit beside it.
PACKAGE = Path(__file__).resolve().parent
PROJECT_ROOT = Path(os.environ.get("CPA_HARNESS_ROOT", PACKAGE.parent))


def _shipped(beside: str, inside: str) -> Path:
    """A directory of shipped files: beside the package in a checkout (or an
    editable install), inside it when installed from a wheel (pyproject.toml)."""
    checkout = PROJECT_ROOT / beside
    return checkout if checkout.is_dir() else PACKAGE / inside


CONFIGS_DIR = _shipped("kernel-configs", "shipped_configs")
GUEST_DIR = _shipped("guest", "shipped_guest")
CI_DIR = _shipped("ci", "shipped_ci")
KNOWN_ISSUES = CI_DIR / "known-issues.toml"
LAB_EXAMPLE = CI_DIR / "lab.example.toml"


def cache_dir() -> Path:
    """Builds, unpacked sources, packages, initramfs images: safe to delete."""
    env = os.environ.get("CPA_HARNESS_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cpa-harness"


def data_dir() -> Path:
    """Run results and history: worth keeping."""
    env = os.environ.get("CPA_HARNESS_DATA")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cpa-harness"


@contextmanager
def locked(lock: Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock` (made if missing).

    Harness processes sharing one cache take it around every fill of a cache
    entry. flock() locks die with their process, so a SIGKILLed holder never
    leaves one behind. With `wait` false, a lock held elsewhere raises
    BlockingIOError at once.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise
            report(f"waiting for another harness process to finish with "
                   f"{lock.with_suffix('')}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
