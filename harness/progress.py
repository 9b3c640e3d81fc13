"""Progress: what the harness is doing, told through the one reporter the CLI owns.

Unpacking a source, building a kernel, making an image, waiting for another
harness's lock: these take minutes, and the user is told, but operations never
print. They call report() (a timestamped line) and status() (a transient one:
make's progress), which go to the output in charge: the run's (through its
live status line on a terminal, so nothing is drawn over it), installed with
reporting(); the standard output otherwise, and status to the standard error,
redrawn in place on a terminal only.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TextIO

_current: ContextVar[TextIO | None] = ContextVar("cpa_harness_progress", default=None)


def say(out: TextIO, line: str) -> None:
    """One timestamped progress line: readable live and in a CI log alike."""
    out.write(f"{time.strftime('%H:%M:%S')} {line}\n")
    out.flush()


@contextlib.contextmanager
def reporting(out: TextIO) -> Iterator[None]:
    """Operations called in this block (in this thread) report to `out`."""
    token = _current.set(out)
    try:
        yield
    finally:
        _current.reset(token)


def report(line: str) -> None:
    say(_current.get() or sys.stdout, line)


def status(text: str) -> None:
    """A transient line, replaced by the next one: in the live status line, or
    redrawn in place on a terminal; nothing elsewhere (CI logs get report())."""
    out = _current.get()
    if isinstance(out, Live):
        out.note(text)
    elif out is None and sys.stderr.isatty():
        width = shutil.get_terminal_size().columns
        sys.stderr.write("\r\033[K" + text[:max(20, width - 1)])
        sys.stderr.flush()


def clear_status() -> None:
    out = _current.get()
    if isinstance(out, Live):
        out.note("")
    elif out is None and sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


class Live(io.TextIOBase):
    """On a terminal: the log lines scroll as usual, and one status line under
    them shows the cells running and for how long, redrawn every second."""

    def __init__(self, out: TextIO, total: int) -> None:
        self.out = out
        self.total = total
        self.done = 0
        self.running: dict[str, float] = {}
        self.doing = ""
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ticker = threading.Thread(target=self._tick, name="live-view", daemon=True)
        self.ticker.start()

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.lock:
            self.out.write("\r\033[K" + text)
            self._draw()
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def started(self, name: str) -> None:
        with self.lock:
            self.running[name] = time.monotonic()

    def finished(self, name: str) -> None:
        with self.lock:
            self.running.pop(name, None)
            self.done += 1

    def note(self, text: str) -> None:
        """What an operation is doing now (make's progress), shown in the status line."""
        with self.lock:
            self.doing = text

    def status(self) -> str:
        now = time.monotonic()
        cells = ", ".join(f"{n} {now - t:.0f}s" for n, t in self.running.items())
        return f"[{self.done}/{self.total} done] {cells or self.doing or 'building, preparing'}"

    def _draw(self) -> None:
        width = shutil.get_terminal_size().columns
        self.out.write(self.status()[:max(20, width - 1)])
        self.out.flush()

    def _tick(self) -> None:
        while not self.stop.wait(1.0):
            with self.lock:
                self.out.write("\r\033[K")
                self._draw()

    def close(self) -> None:
        self.stop.set()
        self.ticker.join()
        with self.lock:
            self.out.write("\r\033[K")
            self.out.flush()
        super().close()
