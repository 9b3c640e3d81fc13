"""Machine waits against a real child process (no QEMU needed): deadlines and the drain."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pexpect
import pytest

from harness.arches import get_arch
from harness.machine import CellDeadline, GuestExited, GuestHang, Machine
from harness.qemu import QemuParams


def machine(tmp_path: Path, program: str, *args: str) -> Machine:
    arch = get_arch("x86_64")
    m = Machine(QemuParams(arch=arch, accel="tcg", cpu="max", memory_mb=64, smp=1, cmdline="",
                           kernel=Path("/none"), initrd=Path("/none")), tmp_path / "serial.log")
    m.child = pexpect.spawn(program, list(args), timeout=None, echo=False)
    return m


def test_a_wait_ends_at_its_own_deadline_as_a_hang(tmp_path: Path) -> None:
    m = machine(tmp_path, "sleep", "30")
    start = time.monotonic()
    with pytest.raises(GuestHang, match="no ready marker within 1s"):
        m.wait_for(re.compile(b"READY"), 1.0, "ready marker")
    assert time.monotonic() - start < 3
    m.kill()


def test_the_cell_deadline_cuts_a_longer_wait_as_an_infra_error(tmp_path: Path) -> None:
    m = machine(tmp_path, "sleep", "30")
    m.cell_deadline = time.monotonic() + 1
    start = time.monotonic()
    with pytest.raises(CellDeadline) as e:
        m.wait_for(re.compile(b"READY"), 60.0, "ready marker")
    assert time.monotonic() - start < 3
    assert e.value.exit_code == 3 and "while waiting for ready marker" in e.value.message
    m.kill()


def test_drain_reraises_what_ended_the_guest(tmp_path: Path) -> None:
    m = machine(tmp_path, "sh", "-c", "echo hello; exit 3")
    stopped = []
    with pytest.raises(GuestExited), m.draining(on_stop=lambda: stopped.append(True)):
        time.sleep(2)
    assert stopped == [True]        # the ssh side is told at once
    m.kill()


def test_memory_budget_holds_cells_back_until_memory_is_free() -> None:
    import threading

    from harness.run import MemoryBudget
    budget = MemoryBudget(3000)
    order: list[str] = []
    first = threading.Event()
    release = threading.Event()

    def big(name: str) -> None:
        with budget.hold(2048):
            order.append(f"start {name}")
            first.set()
            release.wait(5)
            order.append(f"end {name}")

    a = threading.Thread(target=big, args=("a",))
    b = threading.Thread(target=big, args=("b",))
    a.start()
    first.wait(5)
    b.start()
    time.sleep(0.3)
    assert order == ["start a"]          # b does not fit beside a
    release.set()
    a.join(5)
    b.join(5)
    assert order == ["start a", "end a", "start b", "end b"]
    # a cell larger than the whole budget still runs, alone
    with MemoryBudget(100).hold(4096):
        pass


def test_live_view_draws_a_status_line_under_the_log() -> None:
    import io

    from harness.run import Live, say
    screen = io.StringIO()
    live = Live(screen, total=2)
    live.started("x86_64-cpa")
    say(live, "[x86_64-cpa] started")      # type: ignore[arg-type]
    time.sleep(1.2)                          # the ticker redraws the running time
    live.finished("x86_64-cpa")
    say(live, "[x86_64-cpa] pass (79s)")   # type: ignore[arg-type]
    live.close()
    text = screen.getvalue()
    assert "[x86_64-cpa] started\n" in text and "[x86_64-cpa] pass (79s)\n" in text
    assert "[0/2 done] x86_64-cpa 1s" in text
    assert "[1/2 done] building, preparing" in text
    assert text.endswith("\r\x1b[K")       # the status line is cleared at the end
