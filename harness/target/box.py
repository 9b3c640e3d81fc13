"""A lab box (target/lab.py): reached over ssh with its pinned key, its serial
line through a console server, taken by one harness process at a time.

What a box is, as the results record it, is read from the box itself (DMI,
/proc/cpuinfo, /proc/meminfo and the firmware's e820 map in dmesg): a lab
file's name for a box says nothing of what is in it, and the figures CPA
gives depend on exactly that.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from harness.errors import InfraError, UserError
from harness.files import write_atomic
from harness.paths import cache_dir, locked
from harness.probes import Runner
from harness.probes.runtime import cpu_flags, cpu_model_name
from harness.records import Record
from harness.target.lab import Box
from harness.target.ssh import GuestSsh, HostKeyMismatch, KeyRefused

# Read in one command, so a box is identified in one round trip.
IDENTIFY = ("for f in sys_vendor product_name; do "
            "echo \"$f=$(cat /sys/class/dmi/id/$f 2>/dev/null)\"; done; "
            "echo \"kernel=$(uname -r)\"; "
            "echo \"boot_id=$(cat /proc/sys/kernel/random/boot_id)\"; "
            "echo \"kexec=$(command -v kexec)\"; "
            "echo \"kexec_loaded=$(cat /sys/kernel/kexec_loaded 2>/dev/null)\"; "
            "grep -m1 '^MemTotal:' /proc/meminfo; "
            "echo '--- cpuinfo'; cat /proc/cpuinfo; "
            "echo '--- e820'; dmesg 2>/dev/null | grep -E 'BIOS-e820: |e820: update|e820: remove'; "
            # the address the kernel under test takes over (guest/init: cpa_harness.net=)
            "echo '--- net'; ip -o -4 route show default; ip -o -4 addr show scope global; "
            # the way back to this host, which is what matters on a box with several links
            "[ -n \"$SSH_CONNECTION\" ] && echo \"back $(ip -o -4 route get "
            "${SSH_CONNECTION%% *} 2>/dev/null)\"; "
            "for d in /sys/class/net/*; do echo \"link ${d##*/} $(cat $d/address)\"; done")
MICROCODE_RE = re.compile(r"^microcode\s*:\s*(\S+)", re.M)
MEMTOTAL_RE = re.compile(r"^MemTotal:\s+(\d+) kB", re.M)
# "[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable"
E820_RE = re.compile(r"(BIOS-e820: .*|e820: (?:update|remove) .*)$")
# "default via 10.0.2.2 dev eth0 proto dhcp src 10.0.2.15 metric 1024"
ROUTE_RE = re.compile(r"^default via (\S+) dev (\S+)", re.M)
# "2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global dynamic eth0\ ..."
ADDR_RE = re.compile(r"^\d+:\s+(\S+)\s+inet (\S+)", re.M)
LINK_RE = re.compile(r"^link (\S+) ([0-9a-f:]{17})$", re.M)
# "back 10.0.2.2 dev eth0 src 10.0.2.15 uid 0 \    cache" (via GATEWAY when routed)
BACK_RE = re.compile(r"^back \S+ (?:via (?P<via>\S+) )?dev (?P<dev>\S+) .*?src (?P<src>\S+)",
                     re.M)


@dataclass
class BoxIdentity(Record):
    """Who the box is, as it says itself."""

    vendor: str = ""
    product: str = ""
    cpu_model: str = ""
    cpu_flags: list[str] = field(default_factory=list)
    microcode: str = ""
    memory_kb: int = 0
    e820: list[str] = field(default_factory=list)
    kernel: str = ""            # uname -r
    boot_id: str = ""
    kexec: str = ""             # the kexec binary, "" when kexec-tools are missing
    # /sys/kernel/kexec_loaded exists only in a kernel built with kexec support
    kexec_in_kernel: bool = False
    # The interface of the default route: {"dev", "mac", "address" (CIDR), "gateway"}
    net: dict[str, str] = field(default_factory=dict)

    def net_cmdline(self) -> str:
        """The address the kernel under test takes over (guest/init), or ""."""
        n = self.net
        if not (n.get("mac") and n.get("address")):
            return ""
        return "cpa_harness.net=" + ",".join(filter(None, (n["mac"], n["address"],
                                                           n.get("gateway", ""))))


def identify(run: Runner) -> BoxIdentity:
    status, out = run(IDENTIFY)
    if status != 0 and "--- cpuinfo" not in out:
        raise InfraError(f"could not read the box's identity (status {status}): "
                         f"{out.strip()[-200:]}")
    head, _, rest = out.partition("--- cpuinfo\n")
    cpuinfo, _, rest = rest.partition("--- e820\n")
    e820, _, net = rest.partition("--- net\n")
    kv = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
    micro = MICROCODE_RE.search(cpuinfo)
    mem = MEMTOTAL_RE.search(head)
    return BoxIdentity(
        vendor=kv.get("sys_vendor", ""), product=kv.get("product_name", ""),
        cpu_model=cpu_model_name(cpuinfo), cpu_flags=cpu_flags(cpuinfo),
        microcode=micro.group(1) if micro else "", memory_kb=int(mem.group(1)) if mem else 0,
        e820=[m.group(1) for m in map(E820_RE.search, e820.splitlines()) if m],
        kernel=kv.get("kernel", ""), boot_id=kv.get("boot_id", ""), kexec=kv.get("kexec", ""),
        kexec_in_kernel=kv.get("kexec_loaded", "") != "", net=_net(net))


def _net(text: str) -> dict[str, str]:
    """The interface the harness reached the box through (else the default
    route's), with its address and MAC, and the gateway on it."""
    back, default = BACK_RE.search(text), ROUTE_RE.search(text)
    if back is not None:
        dev, src = back["dev"], back["src"]
        gateway = back["via"] or (default[1] if default and default[2] == dev else "")
        addr = next((a for d, a in ADDR_RE.findall(text)
                     if d == dev and a.split("/")[0] == src), "")
    elif default is not None:
        gateway, dev = default.groups()
        addr = next((a for d, a in ADDR_RE.findall(text) if d == dev), "")
    else:
        return {}
    mac = next((m for d, m in LINK_RE.findall(text) if d == dev), "")
    return {"dev": dev, "mac": mac, "address": addr, "gateway": gateway}


def pinned_key(box: Box) -> str:
    """The box's host key line, from the lab file or the known_hosts file it names."""
    if box.host_key:
        return box.host_key
    assert box.host_key_file is not None        # lab.load() makes sure of one of them
    entry = box.host if box.port == 22 else f"[{box.host}]:{box.port}"
    try:
        keys = paramiko.HostKeys(str(box.host_key_file)).lookup(entry)
    except OSError as e:
        raise UserError(f"box {box.name!r}: host key file {box.host_key_file}: "
                        f"{e.strerror or e}", "give a known_hosts file that exists") from None
    if not keys:
        raise UserError(f"box {box.name!r}: host key file {box.host_key_file} has no key "
                        f"for {entry}", "add the line `ssh-keyscan` prints")
    kind = next(iter(keys))
    return f"{kind} {keys[kind].get_base64()}"


def connect(box: Box, seconds: float) -> GuestSsh:
    """An ssh connection to the box; InfraError when it did not answer in time."""
    ssh = GuestSsh()
    try:
        ssh.connect(host=box.host, port=box.port, key_path=box.key, user=box.user,
                    host_key_line=pinned_key(box), deadline=time.monotonic() + seconds)
    except KeyRefused as e:
        # It answered with its pinned key: a power cycle would not help.
        raise UserError(f"box {box.name!r}: ssh to {box.user}@{box.host}:{box.port} refused "
                        f"the key {box.key} ({e.args[0].rpartition('(')[2].rstrip(')')})",
                        f"add {box.key}.pub to {box.user}'s ~/.ssh/authorized_keys on the box, "
                        "or correct key in the lab file") from None
    except HostKeyMismatch as e:
        # The box reinstalled, or (bringing it back) the kernel under test still up
        raise InfraError(f"box {box.name!r}: ssh to {box.user}@{box.host}:{box.port}: {e}",
                         "if the box was reinstalled, pin its new key (host_key in the lab "
                         "file, as `ssh-keyscan` prints it)") from None
    except InfraError as e:
        raise InfraError(f"box {box.name!r}: ssh to {box.user}@{box.host}:{box.port}: {e}",
                         "is the box up? `cpa-harness doctor --lab FILE` checks it, its "
                         "console and its power commands") from None
    return ssh


@contextlib.contextmanager
def taken(box: Box, wait: bool = True) -> Iterator[None]:
    """One cell at a time per box, across the harness processes of this host.

    The lock is a file in this host's cache, so it is local to one host: boxes
    shared by several hosts need a lab-wide lock (a labgrid place). Without
    `wait`, a box in use raises BlockingIOError at once.
    """
    # By address, not by name: two lab files may name one box differently,
    # or two boxes alike.
    where = re.sub(r"[^\w.-]", "_", f"{box.host}-{box.port}")
    with locked(cache_dir() / "locks" / f"box-{where}.lock", wait):
        yield


# The running kernel's configuration, where the kernel keeps it or where Debian
# and most distributions install it; then the modules in use.
OWN_CONFIG = ("{ zcat /proc/config.gz 2>/dev/null || cat \"/boot/config-$(uname -r)\"; }")


def own_config(box: Box, seconds: float, into: Path) -> tuple[Path, Path]:
    """The box's own kernel configuration and `lsmod`, read over ssh into
    `into`. The caller holds the box (labgrid_place.held()), so no cell's
    kernel under test answers instead; and it must be the known-good kernel's."""
    with connect(box, seconds) as ssh:
        run = ssh.runner(seconds)
        status, kernel = run("uname -r")
        if box.known_good and kernel.strip() != box.known_good:
            raise InfraError(f"box {box.name!r} runs {kernel.strip()}, not its known-good "
                             f"kernel {box.known_good}: its configuration is not read",
                             "boot it back by hand, or correct known_good in the lab file")
        status, config = run(OWN_CONFIG)
        if status != 0 or "CONFIG_" not in config:
            raise UserError(f"box {box.name!r}: its kernel's configuration is neither in "
                            "/proc/config.gz nor in /boot/config-$(uname -r)",
                            "install it there, or set config = \"cell\" for the box")
        status, mods = run("lsmod")
        if status != 0:
            raise InfraError(f"box {box.name!r}: lsmod failed (status {status}): "
                             f"{mods.strip()[-200:]}")
    into.mkdir(parents=True, exist_ok=True)
    write_atomic(into / "config", config)
    write_atomic(into / "lsmod", _module_list(mods))
    return into / "config", into / "lsmod"


def _module_list(lsmod: str) -> str:
    """lsmod's modules, sorted and without sizes or users: its row order and
    use counts change from boot to boot, and the build key is taken from this.
    localyesconfig reads only the names (scripts/kconfig/streamline_config.pl)."""
    lines = lsmod.splitlines()
    names = sorted({ln.split()[0] for ln in lines[1:] if ln.split()})
    return "Module                  Size  Used by\n" + "".join(f"{n} 0 0\n" for n in names)


class ConsoleLine:
    """The box's serial line: a console server's TCP address, or a command
    whose stdin and stdout are the line. Raw bytes; rfc2217's option
    negotiation is not spoken (ser2net answers plain reads and writes)."""

    def __init__(self, box: Box) -> None:
        self.box = box
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def open(self, seconds: float = 10.0) -> None:
        c = self.box.console
        if c.command:
            try:
                self.proc = subprocess.Popen(c.command, stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            except OSError as e:
                raise InfraError(f"box {self.box.name!r}: console command "
                                 f"{c.describe()!r} did not start: {e.strerror or e}",
                                 "check the lab file's console key") from None
            return
        try:
            self.sock = socket.create_connection((c.host, c.port), timeout=seconds)
        except OSError as e:
            raise InfraError(f"box {self.box.name!r}: console server {c.describe()} refused "
                             f"the connection: {e.strerror or e}",
                             "is the console server running?") from None

    def write(self, data: bytes) -> None:
        if self.sock is not None:
            self.sock.sendall(data)
        elif self.proc is not None and self.proc.stdin is not None:
            # a command that has exited: read() says so, with its status
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.write(data)
                self.proc.stdin.flush()

    def read(self, seconds: float) -> bytes:
        """What the line gave within `seconds`; b"" for nothing. InfraError when
        the connection is gone (the server closed it, the command exited)."""
        if self.sock is not None:
            self.sock.settimeout(seconds)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return b""
            if not data:
                raise InfraError(f"box {self.box.name!r}: console server "
                                 f"{self.box.console.describe()} closed the connection")
            return data
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], seconds)
        if not ready:
            return b""
        data = os.read(self.proc.stdout.fileno(), 4096)
        if not data:
            status = self.proc.wait(5)
            raise InfraError(f"box {self.box.name!r}: console command "
                             f"{self.box.console.describe()!r} exited (status {status})",
                             "run it by hand: it must stay connected to the serial line")
        return data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            # SIGTERM first: a console client such as ipmitool ends its SOL
            # session on it, and a killed one leaves the session taken
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    # what is still buffered for a command that has exited is lost
                    with contextlib.suppress(BrokenPipeError):
                        pipe.close()
            self.proc = None


def console_answers(box: Box, seconds: float = 30.0) -> bytes:
    """What the console shows after a newline (a getty's prompt, a shell's).
    InfraError when it cannot be reached or shows nothing in `seconds`."""
    line = ConsoleLine(box)
    line.open()
    try:
        line.write(b"\r\n")
        seen = b""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not seen.strip():
            seen += line.read(min(1.0, max(0.0, end - time.monotonic())))
    finally:
        line.close()
    if not seen.strip():
        raise InfraError(f"box {box.name!r}: console {box.console.describe()} showed nothing "
                         f"within {seconds:.0f}s of a newline",
                         "is the serial line wired, and a getty or console on it?")
    return seen
