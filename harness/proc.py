"""Child processes that die with the harness.

Every child runs in its own session so that a terminal's Ctrl-C reaches the
harness alone (which then tears its children down in order), and with a
parent-death signal so that even a SIGKILLed harness leaves no QEMU behind:
that must not depend on the harness's own cleanup code running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the harness thread that forked it dies."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died between fork and prctl.
    if os.getppid() == 1:
        os._exit(1)


def child_preexec() -> Callable[[], None]:
    return die_with_parent


def kill_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 5.0) -> None:
    """SIGTERM the child's process group, then SIGKILL it after a grace period."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@contextlib.contextmanager
def interrupts_held(say: Callable[[str], None] = lambda text: None) -> Iterator[None]:
    """Ctrl-C and SIGTERM held until the block is done, then delivered: for
    work that must not stop halfway (a lab box between power_off and power_on,
    or on its way back to its known-good kernel). Only the main thread gets
    signals, so elsewhere this holds nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if not held:
            say("interrupted: finishing first, so that nothing is left halfway")
        held.append(signum)

    before = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if held:
            signal.raise_signal(held[0])
