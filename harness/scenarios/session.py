"""Manual boot-and-check sessions: a person at the serial console or in an ssh shell.

The guest boots as in a cell (runtime checks, statistics at boot), then the
user drives it until they leave: Ctrl-] on the serial console, or exiting the
ssh shell. The console is analysed all the while; on exit the statistics are
read again and the verdict is printed and saved like any cell's.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import sys
import termios
import time
import tty
from pathlib import Path
from typing import TextIO

import paramiko

from harness.cells import Cell
from harness.errors import HarnessError, InfraError, UserError
from harness.probes import runtime, stats
from harness.results.cell import CellResult, Verdict
from harness.scenarios import cpa
from harness.target.guest import Guest, qemu_running, read_guest_file
from harness.target.machine import FailureSeen, GuestExited, GuestHang
from harness.target.ssh import GuestSsh

ESCAPE = "\x1d"     # Ctrl-]: leaves the serial console, as in telnet


def ssh_command(run_dir: Path, port: int, key: Path) -> str:
    """The OpenSSH command a second terminal uses; the host key is pinned in a file."""
    return (f"ssh -i {key} -p {port} -o UserKnownHostsFile={run_dir / 'ssh' / 'known_hosts'} "
            f"-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes root@127.0.0.1")


def write_known_hosts(run_dir: Path, port: int, host_key: str) -> None:
    path = run_dir / "ssh" / "known_hosts"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(f"[127.0.0.1]:{port} {host_key}\n")


def interactive_shell(chan: paramiko.Channel, stdin: TextIO) -> None:
    """Copy between the user's terminal and an ssh channel until the shell exits."""
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    try:
        if saved is not None:
            tty.setraw(fd)
        chan.settimeout(0.0)
        cfd = chan.fileno()     # readable whenever the channel has data
        while not chan.exit_status_ready() or chan.recv_ready():
            r, _, _ = select.select([cfd, fd], [], [], 0.5)
            if cfd in r and chan.recv_ready():
                data = chan.recv(32768)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if fd in r:
                data = os.read(fd, 1024)
                if not data:
                    chan.shutdown_write()
                    continue
                chan.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def open_shell(ssh: GuestSsh) -> paramiko.Channel:
    """A login shell on a pty the size of the user's terminal."""
    transport = ssh.client.get_transport() if ssh.client is not None else None
    if transport is None:
        raise InfraError("ssh is not connected: cannot open a shell")
    chan = transport.open_session()
    size = shutil.get_terminal_size()
    chan.get_pty(term=os.environ.get("TERM", "vt100"), width=size.columns, height=size.lines)
    chan.invoke_shell()
    return chan


def run(cell: Cell, ctx: cpa.CellContext, run_dir: Path, mode: str, out: TextIO) -> CellResult:
    """Boot, hand the guest to the user (mode 'interactive' or 'ssh'), then judge."""
    res = cpa.new_result(cell, ctx)
    if ctx.ssh_key is None:
        raise InfraError("a manual session needs the run's ssh key")
    # No failure ends a session: the user decides when to stop.
    g, t = cpa.launch(cell, ctx, res, is_fatal=lambda f, k: False)
    m, access = g.m, g.access
    assert access is not None
    start = time.monotonic()
    try:
        m.start()
        out.write(f"booting {cell.name} ({ctx.accel.accel}); serial log {res.serial_log}\n")
        out.flush()
        res.boot_id = g.boot(t.boot, t.ssh)
        write_known_hosts(run_dir, access.port, g.host_key)
        view, boot = cpa.first_look(cell, ctx, res, g)
        problems = runtime.mismatches(view, res.cmdline, res.accel, cell.smp)
        for p in problems:
            out.write(f"runtime check: {p}\n")
        out.write(f"guest up (boot id {res.boot_id}); from another terminal:\n"
                  f"  {ssh_command(run_dir, access.port, access.key)}\n"
                  f"  cpa-harness ssh {run_dir}\n")
        if mode == "interactive":
            out.write("serial console follows; Ctrl-] leaves and powers the guest off\n")
            out.flush()
            assert m.child is not None
            m.child.interact(escape_character=ESCAPE)
        else:
            _ssh_shell(g, out)
        end = stats.collect(g.run, "end", cell.arch) if m.alive() else None
        if end is not None:
            res.stats.update({"end": end.to_json(), "delta": stats.snapshot_delta(boot, end)})
        g.close_ssh()
        m.poweroff(t.command)
        res.verdict = Verdict.PASS
        if problems:
            res.verdict, res.reason = Verdict.USER_ERROR, "runtime check failed: " + \
                "; ".join(problems)
    except (FailureSeen, GuestHang, GuestExited, OSError) as e:
        res.verdict, res.reason = Verdict.FAIL, f"the guest ended the session: {e}"
    except HarnessError as e:
        res.verdict = Verdict.USER_ERROR if e.exit_code == 2 else Verdict.INFRA_ERROR
        res.reason = e.line()
    finally:
        g.close_ssh()
        doc = m.finish()
        res.durations["total"] = time.monotonic() - start
    cpa._fill_from_analysis(res, doc, ctx.known)
    _judge_session(res, doc)
    return res


def _ssh_shell(g: Guest, out: TextIO) -> None:
    if g.ssh is None:
        raise InfraError("ssh is not up: cannot open a shell", f"see {g.m.serial_log}")
    out.write("ssh shell follows; exit it to power the guest off\n")
    out.flush()
    chan = open_shell(g.ssh)
    with g.m.draining(on_stop=chan.close):
        interactive_shell(chan, sys.stdin)
    chan.close()


def _judge_session(res: CellResult, doc: dict[str, object]) -> None:
    """Failures decide; without one, only a completed self-test pass is a pass."""
    unknown = [f for f in res.failures if not f.known]
    failed = [p for p in res.cpa_selftest if p.get("result") == "fail"]
    if unknown:
        res.verdict, res.reason = Verdict.FAIL, f"{unknown[0].kind}: {unknown[0].title}"
    elif failed:
        res.verdict, res.reason = Verdict.FAIL, "CPA self-test NOT PASSED"
    elif res.verdict == Verdict.PASS and not any(p.get("result") == "pass"
                                                 for p in res.cpa_selftest):
        res.verdict = Verdict.NOT_RUN
        res.reason = "the session ended before the CPA self-test's first verdict (30 s after boot)"


def ssh_into_run(run_dir: Path, cell: str | None, command: list[str], out: TextIO) -> int:
    """`cpa-harness ssh RUN`: a shell (or one command) in a guest of RUN that is still up."""
    if not (run_dir / "cells").is_dir():
        raise UserError(f"{run_dir} is not a cpa-harness run directory",
                        "give the results directory a run printed")
    up = []
    for f in sorted((run_dir / "cells").glob("*/guest.json")):
        try:
            doc = read_guest_file(f)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {f}: {e}") from None
        if qemu_running(doc.get("qemu_pid")) and doc.get("port"):
            up.append((f.parent.name, doc))
    if cell is not None:
        up = [(n, d) for n, d in up if n == cell]
    if not up:
        raise UserError(f"no guest of {run_dir}{' for cell ' + cell if cell else ''} is running",
                        "start one with 'cpa-harness boot --interactive' (or --ssh)")
    if len(up) > 1:
        raise UserError(f"{len(up)} guests of {run_dir} are running",
                        f"choose one with --cell: {', '.join(n for n, _ in up)}")
    name, doc = up[0]
    ssh = GuestSsh()
    ssh.connect(port=int(doc["port"]), key_path=Path(doc["key"]), host_key_line=doc["host_key"],
                deadline=time.monotonic() + 30)
    with ssh:
        words = command     # argparse took away the '--' before it
        if words:
            c = ssh.run(" ".join(shlex.quote(w) for w in words), 3600)
            out.write(c.stdout)
            sys.stderr.write(c.stderr)
            return c.status if c.status >= 0 else 1
        chan = open_shell(ssh)
        out.write(f"ssh shell in {name} (leave with exit)\n")
        out.flush()
        interactive_shell(chan, sys.stdin)
        return 0
