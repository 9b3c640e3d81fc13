"""A lab box as a Target: the kernel under test kexec'd from the box's own
known-good kernel (or booted once by its GRUB: target/grub.py), and the box
brought back to it afterwards.

start() takes the box (one cell at a time per box on this host), makes sure
it is up on its known-good kernel (power-cycling it when ssh does not
answer), records who it is, copies the kernel and the harness's initramfs into
one scratch directory, connects the console and kexecs. From there the box
runs what a QEMU guest runs, with the same ready marker and nonce, so the
scenarios see no difference. power_off() and release() bring it back: a reboot
(which lands on the box's default entry, its known-good kernel), a power
cycle when that does not answer, and proof that it is back (a new boot id and
the known-good `uname -r`). A box that does not come back is unhealthy: the
run gives it no further cells.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import tempfile
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pexpect

from harness.console import Failure
from harness.errors import HarnessError, InfraError, UserError
from harness.proc import die_with_parent, interrupts_held
from harness.progress import report
from harness.target import box as boxes
from harness.target import grub, labgrid_place
from harness.target.base import Fleet, Target, Targets, Timeouts
from harness.target.console import RECONNECT_HOLDS, Console, MaybeInGap
from harness.target.errors import Ending, FailureSeen, GuestExited, GuestHang
from harness.target.lab import Box
from harness.target.serial import new_nonce
from harness.target.shell import SshAccess
from harness.target.ssh import GuestSsh, SshError

# Nothing is written on the box outside this directory.
SCRATCH = "/var/tmp/cpa-harness"
KEXEC_FLAGS = {"kexec_load": "-l", "kexec_file_load": "-s"}
# A box's kernel is up to a serial console like a QEMU guest's.
BASE_CMDLINE = "console=ttyS0,115200"
# kernel/reboot.c, as `reboot -f` restarts the machine
RESTARTING = re.compile(rb"reboot: Restarting system")
# As doctor asks: output after a newline, before anything is done to the box
CONSOLE_ANSWERS = 10.0
# kernel/kexec_core.c as the old kernel goes, or the new kernel's banner
KEXEC_STARTED = re.compile(rb"kexec_core: Starting new kernel|Linux version ")
KEXEC_SEEN = 60.0
# How long a box that did not restart is given to answer before its power cycle.
QUICK_LOOK = 10.0


@dataclass
class Health:
    """Which boxes a run may still use: one that did not come back is not."""

    unhealthy: dict[str, str] = field(default_factory=dict)     # box -> why

    def check(self, box: Box) -> None:
        if box.name in self.unhealthy:
            raise InfraError(f"box {box.name!r} is unhealthy: {self.unhealthy[box.name]}",
                             "its remaining cells are not run; bring it back by hand")


def console_argv(box: Box) -> list[str]:
    """The console as a child whose terminal is the line."""
    c = box.console
    if c.command:
        return list(c.command)
    # raw, no echo: the pty between socat and the harness passes bytes as they are
    return ["socat", "-,raw,echo=0", f"TCP:{c.host}:{c.port}"]


def _raw_console() -> None:
    # In the child, before the console program runs: its pty is raw from the
    # start. socat makes it raw only once it runs, and a carriage return the
    # harness sent before that reached the line as a newline (the pty's ICRNL).
    die_with_parent()
    tty.setraw(0)


def spawn_console(box: Box) -> pexpect.spawn:
    """The console program on a raw pty (pexpect returns once it is exec'd)."""
    argv = console_argv(box)
    try:
        return pexpect.spawn(argv[0], argv[1:], timeout=None, echo=False,
                             preexec_fn=_raw_console, dimensions=(24, 500))
    except pexpect.ExceptionPexpect as e:
        raise InfraError(f"box {box.name!r}: the console {argv[0]} did not start: "
                         f"{e}") from None


class BoxTarget(Target):
    kind = "box"

    def __init__(self, box: Box, kernel: Path, initrd: Path, cmdline: str, serial_log: Path,
                 access: SshAccess | None, timeouts: Timeouts, health: Health,
                 fleet: Fleet | None = None,
                 is_fatal: Callable[[Failure, str | None], bool] = lambda f, k: True) -> None:
        self.nonce = new_nonce()
        super().__init__(Console(serial_log, self.nonce, is_fatal), access, timeouts.command)
        self.console.ended = self.ending
        self.box, self.kernel, self.initrd = box, kernel, initrd
        self.cmdline = " ".join(w for w in (BASE_CMDLINE, cmdline,
                                            f"cpa_harness.nonce={self.nonce}") if w)
        self.timeouts, self.health = timeouts, health
        self.fleet = fleet or Fleet()
        self.identity: boxes.BoxIdentity | None = None
        self.known_boot_id = ""         # the known-good kernel's boot before the cell
        self.back: dict[str, Any] = {}  # how it came back
        self._hold = contextlib.ExitStack()
        self._under_test = False        # the box may run the kernel under test
        self.kexec_at: float | None = None  # time.monotonic() of `kexec -e`
        self._ended: Ending | None = None

    # --- bringing the kernel under test up ---------------------------------

    def start(self) -> None:
        self.health.check(self.box)
        self.fleet.add(self)        # the run's teardown aborts it like a QEMU guest
        self._hold.callback(self.fleet.discard, self)
        # This host's lock, and the lab's labgrid place when the box is one:
        # the box as the cell uses it (the place's console and power filled in)
        self.box = self._hold.enter_context(labgrid_place.held(self.box))
        try:
            self.health.check(self.box)     # again: another cell may have had it meanwhile
            self.console.open_log()
            who = self._known_good(power_cycled=False)
            self.identity, self.known_boot_id = who, who.boot_id
            # ssh to the kernel under test at the box's address; without one,
            # none (QEMU's address could collide with a lab's network)
            self.cmdline = f"{self.cmdline} {who.net_cmdline() or 'cpa_harness.net=none'}"
            if self.box.boot in KEXEC_FLAGS and not who.kexec:
                raise UserError(f"box {self.box.name!r} has no kexec-tools",
                                "apt install kexec-tools on it")
            if self.box.boot in KEXEC_FLAGS and not who.kexec_in_kernel:
                raise UserError(f"box {self.box.name!r}: its kernel {who.kernel} has no kexec "
                                "support", "boot a known-good kernel built with CONFIG_KEXEC")
            self._attach_console()
            self._kexec()
        except BaseException:
            self.release()
            raise

    def _known_good(self, power_cycled: bool) -> boxes.BoxIdentity:
        """The box up on its known-good kernel: ssh answers, `uname -r` is it.
        One power cycle when ssh does not answer, if the box has the commands."""
        try:
            with boxes.connect(self.box, self.timeouts.ssh) as ssh:
                who = boxes.identify(ssh.runner(self.timeouts.command))
        except (InfraError, SshError) as e:
            if power_cycled or self.box.recovery != "power cycle":
                self.health.unhealthy[self.box.name] = str(e)
                if isinstance(e, SshError):
                    raise InfraError(f"box {self.box.name!r}: {e}") from None
                raise
            try:
                self.power_cycle()
            except InfraError as pe:
                self.health.unhealthy[self.box.name] = str(pe)
                raise
            return self._known_good(power_cycled=True)
        if self.box.known_good and who.kernel != self.box.known_good:
            raise InfraError(f"box {self.box.name!r} runs {who.kernel}, not its known-good "
                             f"kernel {self.box.known_good}",
                             "boot it back by hand, or correct known_good in the lab file")
        return who

    def power_cycle(self) -> None:
        """The box's power commands, run as argv (never through a shell)."""
        steps = ([self.box.power["power_cycle"]] if "power_cycle" in self.box.power
                 else [self.box.power["power_off"], self.box.power["power_on"]])
        for argv in steps:
            self.console.note(f"box {self.box.name}: power: {shlex.join(argv)}")
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                                   preexec_fn=die_with_parent)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise InfraError(f"box {self.box.name!r}: power command {shlex.join(argv)!r} "
                                 f"did not run: {e}", "check the lab file's power keys") \
                    from None
            if r.returncode != 0:
                said = (r.stderr or r.stdout).strip().splitlines()
                raise InfraError(f"box {self.box.name!r}: power command {shlex.join(argv)!r} "
                                 f"failed with status {r.returncode}"
                                 + (f": {said[-1][:200]}" if said else ""),
                                 "check the PDU or BMC, and the lab file's power keys")

    def _attach_console(self) -> None:
        child = self._spawn_console()
        time.sleep(RECONNECT_HOLDS)
        if not child.isalive():
            # Before the kexec, while the box is still as it was found
            said = b""
            with contextlib.suppress(pexpect.ExceptionPexpect, OSError):
                said = child.read_nonblocking(4096, timeout=0.1)
            child.close(force=True)
            last = said.decode(errors="replace").strip().splitlines()
            raise InfraError(f"box {self.box.name!r}: the console "
                             f"({self.box.console.describe()}) closed at once, status "
                             f"{child.exitstatus if child.exitstatus is not None else '?'}"
                             + (f": {last[-1][:200]}" if last else ""),
                             "check the lab file's console and the console server")
        self.console.attach(child)
        # A console that does not answer (a SOL session that failed slowly, a
        # server that reaches no line) would leave the kernel under test
        # unheard: found now, with the box still as it was found.
        sent = time.monotonic()
        self.console.send(b"\r")
        while self.console.last_output <= sent and time.monotonic() - sent < CONSOLE_ANSWERS:
            self.console.watch(0.5)
        if self.console.last_output <= sent:
            raise InfraError(f"box {self.box.name!r}: the console "
                             f"({self.box.console.describe()}) showed nothing after a newline "
                             f"within {CONSOLE_ANSWERS:.0f}s",
                             "check the console server and the box's serial getty "
                             "(`cpa-harness doctor --lab FILE`)")
        # The console server's connection can drop while the box runs on (the
        # server restarted, the network between): connect again, record the gap.
        self.console.reopen = self._reopen_console

    def _spawn_console(self) -> pexpect.spawn:
        return spawn_console(self.box)

    def _reopen_console(self) -> pexpect.spawn | None:
        if self._ended is not None:     # aborted, or released: the line stays closed
            return None
        try:
            return self._spawn_console()
        except InfraError:
            return None

    def _kexec(self) -> None:
        """Copy the kernel and initramfs in, load them, and execute (or reboot
        into them by a one-shot GRUB entry)."""
        image, initrd = f"{SCRATCH}/bzImage", f"{SCRATCH}/initrd.cpio"
        try:
            if self.box.boot == "grub-reboot":
                self._grub_reboot(image, initrd)
            else:
                self._load_and_execute(KEXEC_FLAGS[self.box.boot], image, initrd)
                self._kexec_seen()
        except SshError as e:
            raise InfraError(f"box {self.box.name!r}: ssh failed while loading the kernel "
                             f"under test: {e}") from None

    def _kexec_seen(self) -> None:
        """The kexec happened: the console shows it (the old kernel's last word,
        or the new one's banner). A box still on its known-good boot a minute
        later never ran `kexec -e` (its session's processes killed, a lockdown
        refusing it): the harness's trouble, never the kernel under test's hang.
        Neither (a silent console, ssh gone) is left to the boot's own wait."""
        try:
            self.console.wait_for(KEXEC_STARTED, KEXEC_SEEN, "the kexec",
                                  since=self.console.mark())
            return
        except (GuestHang, MaybeInGap):
            pass
        try:
            with boxes.connect(self.box, 10) as ssh:
                status, boot_id = ssh.runner(10)("cat /proc/sys/kernel/random/boot_id")
        except (HarnessError, SshError):
            return      # the known-good kernel is gone: the kexec went somewhere
        if status == 0 and boot_id.strip() == self.known_boot_id:
            raise InfraError(f"box {self.box.name!r}: `kexec -e` did not start the kernel under "
                             f"test within {KEXEC_SEEN:.0f}s: the box still runs its "
                             f"known-good boot {self.known_boot_id}",
                             "is kexec locked down on it, or are the ssh session's processes "
                             "killed when it ends (logind KillUserProcesses)?")

    def _copy_in(self, ssh: GuestSsh, image: str, initrd: str) -> None:
        """The kernel and initramfs into the scratch directory."""
        # Ours alone: made private, and refused when it is a link or another's
        made = ssh.run(f"install -d -m 700 {SCRATCH} && [ ! -L {SCRATCH} ] && "
                       f"[ \"$(stat -c '%u %a' {SCRATCH})\" = \"$(id -u) 700\" ]",
                       self.timeouts.command)
        if made.status != 0:
            raise InfraError(f"box {self.box.name!r}: {SCRATCH} is not a private directory "
                             "of the ssh user", f"remove it on the box: {made.stderr.strip()}")
        ssh.put(self.kernel, image, timeout=self.timeouts.copy)
        ssh.put(self.initrd, initrd, timeout=self.timeouts.copy)

    def _load_and_execute(self, flag: str, image: str, initrd: str) -> None:
        with boxes.connect(self.box, self.timeouts.ssh) as ssh:
            self._copy_in(ssh, image, initrd)
            load = ssh.run(f"kexec {flag} {image} --initrd={initrd} "
                           f"--command-line={shlex.quote(self.cmdline)}", self.timeouts.command)
            if load.status != 0:
                said = (load.stderr or load.stdout).strip()[-300:]
                raise UserError(f"box {self.box.name!r}: its kernel refused the kernel under "
                                f"test (kexec {flag}, status {load.status}): {said}",
                                "is the image built for this box's arch?")
            # Not `systemctl kexec`: on the way down, Debian's kexec-tools
            # (kexec-load.service, LOAD_KEXEC=true by default) load the
            # distribution's kernel over ours, and that is what boots. So the
            # file systems are synced and the kernel executed at once, as
            # after a crash: the journal is replayed when the box comes back.
            # A moment after this command, so that it returns first.
            self._under_test = True         # from here on, whatever this call says
            self.kexec_at = time.monotonic() + 1
            ssh.run("(sleep 1; sync; kexec -e) </dev/null >/dev/null 2>&1 &",
                    self.timeouts.command)

    def _grub_reboot(self, image: str, initrd: str) -> None:
        """The one-shot entry (target/grub.py), grub-reboot, and a reboot."""
        name = self.box.name
        words = grub.kernel_words(self.cmdline, name)      # before anything is written
        with boxes.connect(self.box, self.timeouts.ssh) as ssh:
            pre = ssh.run(grub.preflight_command(), self.timeouts.command)
            if pre.status != 0:
                raise UserError(f"box {name!r}: boot = \"grub-reboot\": "
                                f"{(pre.stdout or pre.stderr).strip()[-300:]}",
                                "install grub2-common on the box, and keep Debian's "
                                "update-grub set-up, or use kexec")
            self._copy_in(ssh, image, initrd)
            said = {}
            for key, command in grub.probe_commands(SCRATCH).items():
                c = ssh.run(command, self.timeouts.command)
                if c.status != 0:
                    raise UserError(f"box {name!r}: GRUB cannot reach {SCRATCH}: {command}: "
                                    f"{(c.stderr or c.stdout).strip()[-300:]}",
                                    "the scratch directory must be on a disk GRUB reads")
                said[key] = c.stdout
            try:
                where = grub.place(**said)
            except ValueError as e:
                raise UserError(f"box {name!r}: GRUB cannot reach {SCRATCH}: {e}") from None
            text = grub.entry(self.nonce, where, image.rsplit("/", 1)[1],
                              initrd.rsplit("/", 1)[1], words)
            with tempfile.NamedTemporaryFile("w", prefix="cpa-grub-", suffix=".cfg") as f:
                f.write(text)
                f.flush()
                ssh.put(Path(f.name), grub.ENTRY_FILE, timeout=self.timeouts.command)
            chosen = ssh.run(grub.set_next_command(self.nonce), self.timeouts.command)
            if chosen.status != 0:
                raise InfraError(f"box {name!r}: grub-reboot {grub.entry_id(self.nonce)} "
                                 f"failed with status {chosen.status}: "
                                 f"{(chosen.stderr or chosen.stdout).strip()[-300:]}")
            # From here the next boot is the kernel under test's, and the one
            # after it the default entry's again (GRUB clears next_entry).
            self._under_test = True
            self.kexec_at = time.monotonic() + 1
            ssh.run(f"(sleep 1; {grub.REBOOT}) </dev/null >/dev/null 2>&1 &",
                    self.timeouts.command)

    # --- the running kernel ------------------------------------------------

    def alive(self) -> bool:
        return self._ended is None and self.console.child is not None \
            and self.console.child.isalive()

    def kernel_cmdline(self) -> str:
        return self.cmdline

    def ending(self) -> Ending:
        if self._ended is None:
            # The console child exited: the console server dropped the connection
            self._ended = Ending("", True, f"the console connection to box {self.box.name} "
                                 f"({self.box.console.describe()}) closed")
        return self._ended

    # --- bringing the box back -----------------------------------------------

    def power_off(self, timeout: float) -> None:
        self.release()

    def _restart(self) -> bool:
        """`reboot -f` on the serial shell, which lands on the box's default
        entry; whether the kernel said it restarts."""
        if self.console.child is None or not self.console.child.isalive():
            # Aborted, or the line dropped for good: a new connection for this
            # one command, so a box without power commands is not left on it.
            try:
                child = self._spawn_console()
            except InfraError:
                return False
            time.sleep(RECONNECT_HOLDS)
            if not child.isalive() or self.console._log is None:
                child.close(force=True)
                return False
            self.console.reattach(child)
        # Until the kernel says so: closing the line at once can drop the
        # command before it reaches the box.
        with contextlib.suppress(OSError, GuestHang, GuestExited, FailureSeen,
                                 pexpect.ExceptionPexpect):
            self.console.cell_deadline = None
            self.console.send(b"\rreboot -f\r")
            # a kernel that can restart says so within a second or two
            self.console.wait_for(RESTARTING, min(30.0, self.timeouts.command),
                                  "the kernel restarting")
            return True
        return False

    def abort(self) -> None:
        # From another thread: close the line so the cell's waits end; release()
        # in the cell's own thread brings the box back.
        self._ended = Ending("", True, f"the harness stopped the cell on box {self.box.name}")
        self.console.reopen = None          # a reconnection in progress gives up
        child = self.console.child
        if child is not None and child.isalive():
            child.terminate(force=True)

    def release(self) -> None:
        """Never raises, but for a Ctrl-C or SIGTERM that came meanwhile, which
        is held until the box is back: a cell's verdict is the kernel's; a box
        that did not come back is marked unhealthy, noted, and kept from later
        cells."""
        with interrupts_held(report):
            try:
                restarted = self._under_test and self._restart()
                with contextlib.suppress(Exception):
                    self.console.flush_parser()
                self.console.reopen = None
                self.console.close()
                if self._under_test:
                    self._bring_back(restarted)
            except Exception as e:      # noqa: BLE001 -- the box's trouble, not the cell's
                self.back = {**self.back, "error": str(e)}
                self.health.unhealthy.setdefault(self.box.name, str(e))
                self.console.notes.append(f"box {self.box.name}: {e}")
            finally:
                self._hold.close()

    def _bring_back(self, restarted: bool) -> None:
        """Prove the box is back on its known-good kernel, power-cycling it once
        if it does not answer. A box that does not come back is unhealthy."""
        start = time.monotonic()
        self._under_test = False
        cycled = False
        while True:
            if cycled or restarted or self.box.recovery != "power cycle":
                # The firmware's whole boot: after our restart or power cycle,
                # or, with no power commands, the kernel's own reboot (panic=-1).
                wait = self.timeouts.boot
            else:
                # The kernel under test did not restart: stuck, or rebooting on
                # its own from a panic, a whole firmware boot away. Only the
                # power commands bring it back sooner; a look first, in case
                # it is back already.
                wait = QUICK_LOOK
            try:
                with boxes.connect(self.box, wait) as ssh:
                    who = boxes.identify(ssh.runner(self.timeouts.command))
                if who.boot_id == self.known_boot_id:
                    raise InfraError(f"box {self.box.name!r} still runs the boot it had "
                                     "before the cell: the kexec never happened")
                if self.box.known_good and who.kernel != self.box.known_good:
                    raise InfraError(f"box {self.box.name!r} came back on {who.kernel}, not "
                                     f"its known-good {self.box.known_good}")
                break
            except (HarnessError, SshError) as e:
                # Still the kernel under test (its ssh answers with another host
                # key), or nothing: a power cycle, once, when there are commands.
                if cycled or self.box.recovery != "power cycle":
                    why = str(e)
                    self.health.unhealthy[self.box.name] = why
                    raise InfraError(f"box {self.box.name!r} did not come back to its "
                                     f"known-good kernel: {why}",
                                     "its remaining cells are not run") from None
                try:
                    self.power_cycle()
                except InfraError as pe:
                    self.health.unhealthy[self.box.name] = str(pe)
                    raise
                cycled = True
        self.back = {"kernel": who.kernel, "boot_id": who.boot_id, "power_cycled": cycled,
                     "seconds": round(time.monotonic() - start, 1)}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "box": self.box.name, "boot": self.box.boot,
                "recovery": self.box.recovery, "cmdline": self.cmdline,
                "identity": self.identity.to_json() if self.identity else None,
                "back": self.back, "console_gaps": self.console.gaps,
                "kexec_to_ready_s": self.kexec_to_ready()}

    def kexec_to_ready(self) -> float | None:
        """From `kexec -e` to the kernel under test's ready marker."""
        at, ready = self.kexec_at, self.console.ready_at
        return round(ready - at, 1) if at is not None and ready is not None else None


@dataclass
class BoxTargets(Targets):
    """A cell's boots on one lab box."""

    box: Box
    cell_cmdline: str
    kernel: Path
    initrd: Path
    health: Health
    fleet: Fleet
    ssh_key: Path | None = None

    def new(self, serial_log: Path, *, ssh: bool,
            is_fatal: Callable[[Failure, str | None], bool],
            extra_cmdline: str = "") -> BoxTarget:
        # The kernel under test's own ssh server answers on the box's address
        access = (SshAccess(self.box.port, self.ssh_key, self.box.host)
                  if ssh and self.ssh_key else None)
        return BoxTarget(self.box, self.kernel, self.initrd,
                         f"{self.cell_cmdline} {extra_cmdline}".strip(), serial_log, access,
                         self.timeouts, self.health, self.fleet, is_fatal)

    @property
    def timeouts(self) -> Timeouts:
        # A real box is as fast as KVM or faster, but it boots through its
        # firmware when it is power-cycled: the slower set.
        return Timeouts.for_accel("tcg")

    def command(self, extra_cmdline: str = "") -> str:
        if self.box.boot == "grub-reboot":
            return (f"grub-reboot into {self.kernel} --initrd={self.initrd} "
                    f"on box {self.box.name}")
        return (f"kexec {KEXEC_FLAGS.get(self.box.boot, '?')} {self.kernel} "
                f"--initrd={self.initrd} on box {self.box.name}")
