"""Console waits against a real child process (no QEMU needed): deadlines and the drain."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pexpect
import pytest

from harness.errors import InfraError
from harness.target import console
from harness.target.console import Console
from harness.target.errors import CellDeadline, GuestExited, GuestHang
from harness.target.serial import new_nonce


def machine(tmp_path: Path, program: str, *args: str) -> Console:
    """A serial line whose 'machine' is a local program on a pty, its output
    logged and parsed as a guest's would be."""
    m = Console(tmp_path / "serial.log", new_nonce())
    m.attach(pexpect.spawn(program, list(args), timeout=None, echo=False))
    return m


UART = Path(__file__).with_name("uart.py")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_serial_commands_survive_kernel_records_mid_line(tmp_path: Path, seed: int) -> None:
    m = machine(tmp_path, sys.executable, str(UART), "9", str(seed))
    for n in range(15):
        status, out = m.run(f"echo out-{n}-$((6*7)); false", 30)
        assert (status, out) == (1, f"out-{n}-42")
    # The records really did split the markers and the output in the raw log
    # (a marker line broken by '[') -- and every command was still read right.
    log = m.serial_log.read_bytes()
    split = re.findall(rb"@@CPA-\d*-?[A-Z]*-?\d*@?\[", log) + re.findall(rb"out-[\d-]*\[", log)
    assert len(split) >= 5, log[:2000]
    assert m.notes == []
    m.close()


def test_a_lost_command_is_typed_again_and_runs_once(tmp_path: Path) -> None:
    # The first line typed never reaches the shell (read and thrown away).
    count = tmp_path / "count"
    m = machine(tmp_path, "sh", "-c", "read -r lost; exec sh")
    status, out = m.run(f"echo x >> {count}; echo done", 6)
    assert (status, out) == (0, "done")
    assert len(m.notes) == 1 and "typed it again (2/3)" in m.notes[0]
    # A line that was only late runs once, however often it was typed.
    m2 = machine(tmp_path, "sh", "-c", "sleep 4; exec sh")
    status, out = m2.run(f"echo y >> {count}", 9)
    assert status == 0
    time.sleep(1)
    assert count.read_text() == "x\ny\n"
    assert len(m2.notes) >= 1
    m.close()
    m2.close()


def test_a_command_that_never_starts_is_a_hang_after_every_attempt(tmp_path: Path) -> None:
    m = machine(tmp_path, "sh", "-c", "cat > /dev/null")
    with pytest.raises(GuestHang, match="typed 3 times"):
        m.run("true", 3)
    assert len(m.notes) == 2
    m.close()


def test_a_wait_ends_at_its_own_deadline_as_a_hang(tmp_path: Path) -> None:
    m = machine(tmp_path, "sleep", "30")
    start = time.monotonic()
    with pytest.raises(GuestHang, match="no ready marker within 1s"):
        m.wait_for(re.compile(b"READY"), 1.0, "ready marker")
    assert time.monotonic() - start < 3
    m.close()


def test_the_cell_deadline_cuts_a_longer_wait_as_an_infra_error(tmp_path: Path) -> None:
    m = machine(tmp_path, "sleep", "30")
    m.cell_deadline = time.monotonic() + 1
    start = time.monotonic()
    with pytest.raises(CellDeadline) as e:
        m.wait_for(re.compile(b"READY"), 60.0, "ready marker")
    assert time.monotonic() - start < 3
    assert e.value.exit_code == 3 and "while waiting for ready marker" in e.value.message
    m.close()


def test_drain_reraises_what_ended_the_guest(tmp_path: Path) -> None:
    m = machine(tmp_path, "sh", "-c", "echo hello; exit 3")
    stopped = []
    with pytest.raises(GuestExited), m.draining(on_stop=lambda: stopped.append(True)):
        time.sleep(2)
    assert stopped == [True]        # the ssh side is told at once
    m.close()


def test_live_view_draws_a_status_line_under_the_log() -> None:
    import io

    from harness.progress import Live, say
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


RUNNING_KERNEL = r'''
printf '[    0.000000][    T0] Linux version 6.12.117 (cpa-harness@cpa-harness) #1 SMP\n'
printf '[   31.000000][   T29] CPA self-test:\n'
for i in 1 2 3; do
    printf '[   31.100000][   T29]  4k 2046 large 439 gb 0 x 333[c009c000-ddf4a000] miss 0\n'
done
printf '[   31.200000][   T29] ok.\n'
while :; do printf '[   32.000000][   T50] still printing\n'; sleep 0.2; done
'''


def test_no_ready_marker_from_a_running_kernel_is_not_a_hang(tmp_path: Path) -> None:
    m = machine(tmp_path, "sh", "-c", RUNNING_KERNEL)
    with pytest.raises(InfraError) as e:
        m.wait_ready(3)
    assert "no ready marker from the guest's init within 3s, but the kernel was running " \
           "(self-test pass at 0 s, last output 0 s ago)" in e.value.message
    m.close()
    # silent from the start: nothing shows the kernel running, so it is a hang
    m = machine(tmp_path, "sleep", "30")
    m.last_output -= 60
    with pytest.raises(GuestHang):
        m.wait_ready(1)
    m.close()


def test_operations_report_through_the_runs_output() -> None:
    """An operation's progress goes where the run's lines go (under the live
    status line on a terminal), never straight to the terminal."""
    import io

    from harness import progress
    screen = io.StringIO()
    live = progress.Live(screen, total=1)
    with progress.reporting(live):  # type: ignore[arg-type]
        progress.report("unpacking linux-source-6.12.tar.xz (once)")
        progress.status("build x86_64:    12s CC arch/x86/mm/pat/set_memory.o")
        assert "CC arch/x86/mm/pat/set_memory.o" in live.status()
        progress.clear_status()
    live.close()
    text = screen.getvalue()
    assert " unpacking linux-source-6.12.tar.xz (once)\n" in text
    out = io.StringIO()
    with progress.reporting(out):
        progress.report("copying a tree")
        progress.status("nothing: not a terminal")
    assert out.getvalue().endswith(" copying a tree\n") and "nothing" not in out.getvalue()


def test_a_record_that_overtakes_a_markers_newline_is_found_from_a_mark(
        tmp_path: Path) -> None:
    """As in a real selfcheck boot (i386, LKDTM WARNING): LKDTM's announcement
    began right after the begin marker, before the shell's newline, so the view
    holds it before the marker's line. Looked for from a mark taken before the
    command was typed, it is found; from after the marker, it is not."""
    m = machine(tmp_path, "sh", "-c",
                "sleep 0.3; printf '@@CPA-2-BEGIN@@[    3.112319][   T63] lkdtm: Performing "
                "direct entry WARNING\\r\\n[    3.113095][   T63] random: crng init done"
                "\\r\\n\\r\\n'; sleep 30")
    typed = m.mark()
    m.wait_for(re.compile(rb"@@CPA-2-BEGIN@@"), 5, "begin marker")
    trigger = re.compile(rb"lkdtm: Performing direct entry (\w+)")
    with pytest.raises(GuestHang):
        m.wait_for(trigger, 1, "LKDTM announcing WARNING")
    assert m.wait_for(trigger, 1, "LKDTM announcing WARNING", since=typed).group(1) == b"WARNING"
    m.close()


def spawn(script: str) -> pexpect.spawn:
    return pexpect.spawn("sh", ["-c", script], timeout=None, echo=False)


def test_a_dropped_line_is_connected_again_and_the_gap_logged(tmp_path: Path) -> None:
    """A console server's connection that drops while the machine runs on: the
    first reconnection is refused (the server still starting), the second holds."""
    m = machine(tmp_path, "sh", "-c", "echo before the drop; exit 0")
    answers = iter([spawn("exit 1"), spawn("sleep 1; echo after the drop; sleep 30")])
    m.reopen = lambda: next(answers)
    m.wait_for(re.compile(rb"after the drop"), 20, "the machine again")
    [(at, gap)] = m.gaps
    assert at >= 0 and 0.5 <= gap < 10
    [note] = m.notes
    assert "the console connection dropped; connected again after" in note
    assert "(2 tries)" in note
    m.close()
    log = m.serial_log.read_text()
    before, gapline, after = log.partition("[cpa-harness: the console connection dropped")
    assert "before the drop" in before and "after the drop" in after
    # the harness's words are in the log for a reader, never in the kernel's console
    assert "cpa-harness" not in m.view.between(0, m.view.end).decode()


def test_a_line_that_stays_down_ends_the_wait_with_the_targets_account(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "RECONNECT_FOR", 4.0)
    m = machine(tmp_path, "sh", "-c", "exit 0")
    m.reopen = lambda: spawn("exit 1")      # the server refuses, every time
    start = time.monotonic()
    with pytest.raises(GuestExited):
        m.wait_for(re.compile(rb"never"), 1, "the machine again")
    assert 4 <= time.monotonic() - start < 9
    # the gap that did not end is recorded too, in the log as in the notes
    [(at, gap)] = m.gaps
    assert gap >= 4 and "not connected again within 4s" in m.notes[-1]
    assert "[cpa-harness: the console connection dropped; not connected again" in \
        m.serial_log.read_text()


def test_a_server_that_keeps_dropping_is_given_up_on(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Accepts, holds a second, drops: the reconnection budget runs from the
    first drop, not from each."""
    monkeypatch.setattr(console, "RECONNECT_FOR", 4.0)
    m = machine(tmp_path, "sh", "-c", "exit 0")
    m.reopen = lambda: spawn("sleep 1")
    start = time.monotonic()
    with pytest.raises(GuestExited):
        m.wait_for(re.compile(rb"never"), 30, "the machine again")
    assert time.monotonic() - start < 12
    assert "not connected again within" in m.notes[-1]


def test_a_wait_a_drop_overlapped_is_not_a_hang(tmp_path: Path) -> None:
    """The marker may have come while nobody listened: an infrastructure error."""
    from harness.target.console import MaybeInGap
    m = machine(tmp_path, "sh", "-c", "exit 0")
    m.reopen = lambda: spawn("sleep 30")        # back, and silent
    with pytest.raises(MaybeInGap, match="the console connection dropped meanwhile"):
        m.wait_for(re.compile(rb"never"), 3, "ready marker")
    m.close()


def test_a_drop_seen_by_a_short_wait_is_still_connected_again(tmp_path: Path) -> None:
    """The drain reads in waits of a fraction of a second: the reconnection
    outlasts the wait that saw the drop."""
    m = machine(tmp_path, "sh", "-c", "exit 0")
    answers = iter([spawn("exit 1"), spawn("exit 1"), spawn("echo back; sleep 30")])
    m.reopen = lambda: next(answers)
    time.sleep(0.5)
    m.watch(0.05)
    m.wait_for(re.compile(rb"back"), 10, "the machine again")
    assert len(m.gaps) == 1 and "(3 tries)" in m.notes[0]
    m.close()


def test_connections_that_drop_before_they_carry_a_byte_are_one_gap(tmp_path: Path) -> None:
    """A console server that accepts before it can reach the line, and closes:
    one gap, from the drop until a connection that works."""
    m = machine(tmp_path, "sh", "-c", "echo before; exit 0")
    answers = iter([spawn("sleep 1"), spawn("sleep 1"), spawn("sleep 1; echo after; sleep 30")])
    m.reopen = lambda: next(answers)
    m.wait_for(re.compile(rb"after"), 30, "the machine again")
    [(at, gap)] = m.gaps
    assert gap >= 2.0, m.gaps       # two accepted connections that dropped, inside it
    [note] = m.notes
    assert "(3 tries)" in note
    m.close()
    assert m.serial_log.read_text().count("[cpa-harness: the console connection dropped") == 1


def test_a_quiet_line_that_stays_up_closes_the_gap(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "GAP_SETTLES", 1.0)
    m = machine(tmp_path, "sh", "-c", "exit 0")
    m.reopen = lambda: spawn("sleep 30")    # up, and silent
    m.watch(3)
    assert len(m.gaps) == 1 and m.gaps[0][1] < 2
    m.close()


def test_a_line_the_target_closed_is_not_connected_again(tmp_path: Path) -> None:
    m = machine(tmp_path, "sh", "-c", "exit 0")
    m.reopen = lambda: None                 # aborted: the line stays closed
    with pytest.raises(GuestExited):
        m.wait_for(re.compile(rb"never"), 30, "the machine again")
    assert m.gaps == [] and m.notes == []
