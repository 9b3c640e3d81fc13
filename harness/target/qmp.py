"""QEMU's own account of why a guest ended, read from its QMP events.

When QEMU exits, its exit status alone cannot say what happened: a guest that
reset (a triple fault, or a reboot) and one that powered off both end QEMU
with status 0 under -no-reboot, and so does QEMU stopped by a SIGTERM from
someone on the host. QEMU says which in the SHUTDOWN event's `reason` (its
ShutdownCause): guest-reset, guest-shutdown, guest-panic, host-signal, ...
A Monitor keeps a QMP connection for the guest's whole life, in a thread, and
records every event (QEMU starts paused, and the guest runs only once the
connection is up, so none is missed); `ending()` then turns the events and the exit status
into a verdict: the guest's doing (a kernel failure kind) or the host's (an
infrastructure error).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient, Runstate

from harness.target.errors import Ending

CONNECT_DEADLINE = 20.0     # QEMU creates its socket within a second of starting
POLL = 0.2

# qemu.qmp logs a lost connection as an error; here QEMU ending is expected.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


SOCKET_DIR_PREFIX = "cpa-harness-qmp."


def socket_dir() -> Path:
    """A private directory for one guest's QMP socket.

    Not under the run directory: a unix socket path is limited to 108 bytes.
    Mode 0700, so no other user can connect to QEMU's monitor. Named after the
    harness process, so that what a SIGKILLed harness left (no cleanup code
    runs then) is removed by the next one.
    """
    _sweep_stale()
    return Path(tempfile.mkdtemp(prefix=f"{SOCKET_DIR_PREFIX}{os.getpid()}."))


def _sweep_stale() -> None:
    for d in Path(tempfile.gettempdir()).glob(f"{SOCKET_DIR_PREFIX}*.*"):
        pid = d.name[len(SOCKET_DIR_PREFIX):].split(".", 1)[0]
        try:
            mine = d.stat().st_uid == os.getuid()
        except OSError:
            continue
        if pid.isdigit() and mine and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


class Monitor:
    """QMP events of one QEMU, collected in a thread until QEMU closes the socket."""

    def __init__(self, socket: Path, log: Path | None = None) -> None:
        self.socket = socket
        self.log = log
        self.events: list[dict[str, Any]] = []
        self.error = ""             # why there was no connection, if there was none
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, alive: Callable[[], bool]) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(alive)),
                                        name="qmp-events", daemon=True)
        self._thread.start()

    async def _main(self, alive: Callable[[], bool]) -> None:
        client = QMPClient("cpa-harness")
        end = time.monotonic() + CONNECT_DEADLINE
        while True:
            try:
                await client.connect(str(self.socket))
                break
            except Exception as e:  # noqa: BLE001 - ConnectError wraps any OSError
                if self._stop.is_set() or not alive() or time.monotonic() > end:
                    self.error = f"no QMP connection to {self.socket}: {e}"
                    return
                await asyncio.sleep(0.05)
        try:
            with client.listener() as listener:
                try:
                    await client.execute("cont")    # QEMU was started with -S
                except Exception as e:  # noqa: BLE001 - QEMU went away or refused
                    self.error = f"QMP 'cont' failed: {e}"
                    return
                self.connected.set()
                while not self._stop.is_set() and client.runstate == Runstate.RUNNING:
                    try:
                        ev = await asyncio.wait_for(listener.get(), POLL)
                    except TimeoutError:
                        continue
                    self._record(dict(ev))
                while not listener.empty():
                    self._record(dict(await listener.get()))
        finally:
            try:
                await client.disconnect()
            except Exception:  # noqa: BLE001 - QEMU is gone; the events are what matter
                pass

    def _record(self, ev: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(ev)
        if self.log is not None:
            try:
                with open(self.log, "a") as f:
                    f.write(json.dumps(ev, sort_keys=True) + "\n")
            except OSError as e:
                # A full disk: the events are still judged, from memory.
                self.error = f"cannot write {self.log}: {e.strerror}"
                self.log = None

    def wait_connected(self, timeout: float = CONNECT_DEADLINE + 1) -> bool:
        """True once connected; False when the thread gave up (see `error`)."""
        end = time.monotonic() + timeout
        while not self.connected.wait(0.05):
            if self._thread is None or not self._thread.is_alive() or time.monotonic() > end:
                return self.connected.is_set()
        return True

    def wait_closed(self, timeout: float = 5.0) -> None:
        """QEMU has exited: let the thread read what QEMU sent before closing."""
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)


def remove_socket_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# QEMU's ShutdownCause values a guest can cause, and the failure kind each is.
GUEST_CAUSES = {
    "guest-reset": ("reset", "the guest reset (a triple fault, or a reboot nobody asked for)"),
    "guest-shutdown": ("shutdown", "the guest powered off"),
    "guest-panic": ("panic", "the guest reported a panic to QEMU"),
    "subsystem-reset": ("reset", "a device reset the guest"),
}


def ending(events: list[dict[str, Any]], status: int | None, signal: int | None,
           monitored: bool) -> Ending:
    """Why QEMU ended, from its QMP events and how the process exited."""
    for ev in events:
        if ev.get("event") == "GUEST_PANICKED":
            return Ending("panic", False, "QEMU reported GUEST_PANICKED", status=status)
    shutdown = next((ev for ev in events if ev.get("event") == "SHUTDOWN"), None)
    if shutdown is not None:
        data = shutdown.get("data", {})
        reason = str(data.get("reason", "?"))
        if data.get("guest") and reason in GUEST_CAUSES:
            kind, text = GUEST_CAUSES[reason]
            return Ending(kind, False, f"{text} (QMP SHUTDOWN reason {reason})", status)
        return Ending("", True, f"QEMU was shut down from the host (QMP SHUTDOWN reason "
                                f"{reason}): someone stopped it", status)
    if signal:
        return Ending("", True, f"QEMU was killed by signal {signal} (not by the guest)",
                      status)
    if not monitored:
        return Ending("", True, f"QEMU exited with status {status} before its monitor "
                                f"answered: it did not start", status)
    return Ending("", True, f"QEMU exited with status {status} without a SHUTDOWN event: "
                            f"QEMU failed, not the guest", status)
