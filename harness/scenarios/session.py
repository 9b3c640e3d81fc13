"""Manual boot-and-check sessions: a person at the serial console or in an ssh shell.

The guest boots as in a cell (runtime checks, statistics at boot), then the
user drives it until they leave: Ctrl-] on the serial console, or exiting the
ssh shell. The console is analysed all the while; on exit the statistics are
read again and the verdict is printed and saved like any cell's.
"""

from __future__ import annotations

import json
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
from harness.results.cell import CellResult, SshRecord, Verdict
from harness.scenarios import cpa
from harness.scenarios.context import CellContext, new_result
from harness.scenarios.judge import Outcome, judge, read_console
from harness.target.base import Target
from harness.target.errors import FailureSeen, GuestExited, GuestHang
from harness.target.kinds import may_be_up
from harness.target.shell import SshAccess
from harness.target.ssh import GuestSsh

ESCAPE = "\x1d"     # Ctrl-]: leaves the serial console, as in telnet


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a session, once the machine was given back: the result so
    far (not run, unless the kernel failed meanwhile) goes with it."""

    def __init__(self, result: CellResult) -> None:
        super().__init__()
        self.result = result


def ssh_command(run_dir: Path, access: SshAccess) -> str:
    """The OpenSSH command a second terminal uses; the host key is pinned in a file."""
    return (f"ssh -i {access.key} -p {access.port} "
            f"-o UserKnownHostsFile={run_dir / 'ssh' / 'known_hosts'} "
            f"-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes root@{access.host}")


def write_known_hosts(run_dir: Path, access: SshAccess, host_key: str) -> None:
    path = run_dir / "ssh" / "known_hosts"
    path.parent.mkdir(parents=True, exist_ok=True)
    # the address of a QEMU guest's forwarded port, or a lab box's own
    name = access.host if access.port == 22 else f"[{access.host}]:{access.port}"
    with open(path, "a") as f:
        f.write(f"{name} {host_key}\n")


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


def run(cell: Cell, ctx: CellContext, run_dir: Path, mode: str, out: TextIO) -> CellResult:
    """Boot, hand the machine to the user (mode 'interactive' or 'ssh'), then judge."""
    res = new_result(cell, ctx)
    t = ctx.targets.timeouts
    # No failure ends a session: the user decides when to stop.
    target = ctx.targets.new(ctx.cell_dir / "serial.log", ssh=True, is_fatal=lambda f, k: False)
    con, sh = target.console, target.shell
    access = sh.access
    if access is None:
        raise InfraError("a manual session needs the run's ssh key")
    res.serial_log = str(con.serial_log)
    res.cmdline = target.kernel_cmdline()
    start = time.monotonic()
    problems: list[str] = []
    interrupted = False
    try:
        target.start()
        res.cmdline = target.kernel_cmdline()   # as booted: a box adds its own words
        out.write(f"booting {cell.name} ({ctx.accel}); serial log {res.serial_log}\n")
        out.flush()
        res.boot_id = sh.boot(t.boot, t.ssh)
        res.ssh = SshRecord(**sh.describe())
        write_known_hosts(run_dir, access, sh.host_key)
        view, boot = cpa.first_look(cell, ctx, target)
        res.guest = view
        res.stats = {"boot": boot.to_json()}
        problems = runtime.mismatches(view, res.cmdline, res.accel, res.smp)
        for p in problems:
            out.write(f"runtime check: {p}\n")
        out.write(f"guest up (boot id {res.boot_id}); from another terminal:\n"
                  f"  {ssh_command(run_dir, access)}\n"
                  f"  cpa-harness ssh {run_dir}\n")
        if mode == "interactive":
            out.write("serial console follows; Ctrl-] leaves and powers the guest off\n")
            out.flush()
            assert con.child is not None
            con.child.interact(escape_character=ESCAPE)
        else:
            _ssh_shell(target, out)
        end = stats.collect(sh.run, "end", cell.arch) if target.alive() else None
        if end is not None:
            res.stats.update({"end": end.to_json(), "delta": stats.snapshot_delta(boot, end)})
        sh.close_ssh()
        target.power_off(t.command)
        steps = Outcome(Verdict.PASS)
        if problems:
            steps = Outcome(Verdict.USER_ERROR, "runtime check failed: " + "; ".join(problems))
    except (FailureSeen, GuestHang, GuestExited, OSError) as e:
        steps = Outcome(Verdict.FAIL, f"the guest ended the session: {e}")
    except HarnessError as e:
        steps = Outcome(Verdict.USER_ERROR if e.exit_code == 2 else Verdict.INFRA_ERROR,
                        e.line())
    except KeyboardInterrupt:
        # Given back first, like any session's end (a lab box to its known-good kernel)
        interrupted = True
        steps = Outcome(Verdict.NOT_RUN, "the session was interrupted (Ctrl-C)")
    finally:
        try:
            analysis = cpa.finish(target, ctx)
        except KeyboardInterrupt:
            # Ctrl-C while the machine was given back: held until it was
            interrupted = True
            steps = Outcome(Verdict.NOT_RUN, "the session was interrupted (Ctrl-C)")
            analysis = target.console.finish()
        res.target = target.describe()
        res.durations["total"] = time.monotonic() - start
    read_console(analysis, ctx.known, cell.arch).fill(res)
    verdict = judge(steps, res, session=True)
    res.verdict, res.reason = verdict.verdict, verdict.reason
    if interrupted:
        raise Interrupted(res)
    return res


def _ssh_shell(target: Target, out: TextIO) -> None:
    if target.shell.ssh is None:
        raise InfraError("ssh is not up: cannot open a shell",
                         f"see {target.console.serial_log}")
    out.write("ssh shell follows; exit it to power the guest off\n")
    out.flush()
    chan = open_shell(target.shell.ssh)
    with target.console.draining(on_stop=chan.close):
        interactive_shell(chan, sys.stdin)
    chan.close()


def ssh_into_run(run_dir: Path, cell: str | None, command: list[str], out: TextIO) -> int:
    """`cpa-harness ssh RUN`: a shell (or one command) in a guest of RUN that is still up."""
    if not (run_dir / "cells").is_dir():
        raise UserError(f"{run_dir} is not a cpa-harness run directory",
                        "give the results directory a run printed")
    up = []
    for f in sorted((run_dir / "cells").glob(f"*/{cpa.GUEST_FILE}")):
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {f}: {e}") from None
        if isinstance(doc, dict) and doc.get("port") and not doc.get("released") \
                and may_be_up(doc):
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
    ssh.connect(host=str(doc.get("host") or "127.0.0.1"), port=int(doc["port"]),
                key_path=Path(doc["key"]), host_key_line=doc["host_key"],
                deadline=time.monotonic() + 30)
    with ssh:
        # The host key names the machine, the boot id the kernel: a machine that
        # rebooted since (a lab box outlives the run) is no longer that guest.
        now = ssh.run("cat /proc/sys/kernel/random/boot_id", 30).stdout.strip()
        if doc.get("boot_id") and now != doc["boot_id"]:
            raise UserError(f"{name}'s machine has booted again since the run (boot id "
                            f"{doc['boot_id']}, now {now or '?'}): it is not that guest",
                            "start one with 'cpa-harness boot --interactive' (or --ssh)")
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
