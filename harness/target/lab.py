"""The lab file: the real x86 boxes a run may use, and how to reach each one.

One `[box.NAME]` table per box (ci/lab.example.toml is the documented
example). A box is reached over ssh with a pinned host key, its serial console
is a command whose stdin and stdout are the line (`telnet HOST PORT`,
`ipmitool -I lanplus ... sol activate`, `console NAME`) or a `tcp://` or
`rfc2217://` address of a console server, its power is a set of commands (a
box without them is recovered by reboot alone), and the kernel under test is
booted by kexec or a one-shot bootloader entry. A box in a lab that runs
labgrid can be a labgrid place instead (`labgrid_place`): taken through the
lab's coordinator, with the place's serial port and power unless the file
gives its own (target/labgrid_place.py).

Everything wrong with the file is one line naming the file, the box and the
key, found before anything connects.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.arches import ARCHES
from harness.errors import InfraError, UserError
from harness.files import read_toml
from harness.target.ssh import parse_host_key_line

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SSH_RE = re.compile(r"^(?P<user>[A-Za-z_][\w.-]*)@(?P<host>\[[0-9a-fA-F:]+\]|[\w.-]+)"
                    r"(?::(?P<port>\d{1,5}))?$")
CONSOLE_URL_RE = re.compile(r"^(?P<scheme>tcp|rfc2217)://(?P<host>\[[0-9a-fA-F:]+\]|[\w.-]+)"
                            r":(?P<port>\d{1,5})$")
# How the kernel under test is started: the kexec system calls (as for QEMU
# cells), or a one-shot GRUB entry, so that any reset lands on the default one.
BOOT_METHODS = ("kexec_load", "kexec_file_load", "grub-reboot")
POWER_KEYS = ("power_cycle", "power_off", "power_on")
# Where the kernel under test's configuration starts: the box's own (read over
# ssh, its modules built in), or the cell's, which boots only where the box's
# hardware is what the cell's kernel has drivers for (a QEMU machine).
CONFIGS = ("box", "cell")
KEYS = {"arch", "ssh", "key", "host_key", "host_key_file", "console", "boot", "known_good",
        "config", *POWER_KEYS, "labgrid_place", "labgrid_coordinator"}
COORDINATOR_RE = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[\w.-]+):(?P<port>\d{1,5})$")
HINT = "see ci/lab.example.toml"


@dataclass(frozen=True)
class Console:
    """The serial line: a command to run, or a console server's address."""

    command: tuple[str, ...] = ()
    scheme: str = ""        # "tcp" or "rfc2217" for an address
    host: str = ""
    port: int = 0

    def describe(self) -> str:
        if self.scheme == "labgrid":
            # not known before the place is acquired (labgrid_place.held())
            return f"labgrid place {self.host}'s serial port"
        return shlex.join(self.command) if self.command else f"{self.scheme}://{self.host}:{self.port}"


def labgrid_client() -> str:
    """labgrid-client beside this Python first: the [labgrid] extra installs it
    into the harness's own environment, whose bin/ need not be on PATH."""
    beside = Path(sys.executable).parent / "labgrid-client"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("labgrid-client") or "labgrid-client"


@dataclass(frozen=True)
class Place:
    """The labgrid place a box is. An empty coordinator leaves it to labgrid
    (LG_COORDINATOR, else its own default)."""

    name: str
    coordinator: str = ""   # HOST:PORT

    def argv(self, *command: str) -> tuple[str, ...]:
        where = ("-x", self.coordinator) if self.coordinator else ()
        return (labgrid_client(), *where, "-p", self.name, *command)


@dataclass(frozen=True)
class Box:
    name: str
    arch: str
    user: str
    host: str
    port: int
    key: Path
    host_key: str           # "ssh-ed25519 AAAA...", or "" with host_key_file
    host_key_file: Path | None
    console: Console
    boot: str
    power: dict[str, tuple[str, ...]]       # power_cycle, power_off, power_on: argv
    known_good: str = ""    # `uname -r` of the kernel the box must come back to
    place: Place | None = None      # a labgrid place: taken through its coordinator
    config: str = "box"     # one of CONFIGS

    def check_arch(self, cell: str, arch: str) -> None:
        """A kernel for another arch is one the box cannot boot: said before it is built."""
        if arch != self.arch:
            raise UserError(f"cell {cell} is {arch}, box {self.name!r} is {self.arch}",
                            "give the box an arch its kernel can boot, or the cell that arch")

    @property
    def recovery(self) -> str:
        """How a box that stops answering is brought back, as the report says it."""
        if "power_cycle" in self.power or {"power_off", "power_on"} <= self.power.keys():
            return "power cycle"
        return "reboot alone (no power commands)"


@dataclass(frozen=True)
class Lab:
    path: Path
    boxes: dict[str, Box]

    def box(self, name: str) -> Box:
        if name not in self.boxes:
            raise UserError(f"target {name!r} is not in lab file {self.path}",
                            f"boxes there: {', '.join(self.boxes) or 'none'}")
        return self.boxes[name]


def load(path: Path) -> Lab:
    doc = read_toml(path, "lab file", HINT)
    unknown = sorted(set(doc) - {"box"})
    if unknown:
        raise UserError(f"{path}: unknown top-level key {unknown[0]!r}",
                        "a lab file holds [box.NAME] tables only")
    tables = doc.get("box")
    if not isinstance(tables, dict) or not tables:
        raise UserError(f"{path}: no [box.NAME] tables", HINT)
    return Lab(path, {name: _box(path, name, raw) for name, raw in tables.items()})


def _box(path: Path, name: str, raw: Any) -> Box:
    def fail(key: str | None, problem: str, hint: str = HINT) -> UserError:
        where = f"{path}: box {name!r}" + (f": key {key!r}" if key else "")
        return UserError(f"{where}: {problem}", hint)

    if not NAME_RE.fullmatch(name):
        raise fail(None, "a box name is letters, digits, '.', '_' and '-' (64 at most)")
    if not isinstance(raw, dict):
        raise fail(None, "must be a table")
    for key in sorted(raw):
        if key not in KEYS:
            raise fail(key, "unknown key", f"allowed: {', '.join(sorted(KEYS))}")
        if not isinstance(raw[key], str):
            raise fail(key, f"must be a string, not {type(raw[key]).__name__}")
    place = _place(raw, fail)
    # a place's own serial port is the console unless the file names one
    for key in ("ssh", "key") + (() if place else ("console",)):
        if not raw.get(key):
            raise fail(key, "missing")
    arch = raw.get("arch", "x86_64")
    if arch not in ARCHES:
        raise fail("arch", f"unknown arch {arch!r}", f"choose from {', '.join(ARCHES)}")
    ssh = SSH_RE.fullmatch(raw["ssh"])
    if ssh is None:
        raise fail("ssh", f"{raw['ssh']!r} is not USER@HOST[:PORT]")
    port = int(ssh["port"] or 22)
    if not 0 < port < 65536:
        raise fail("ssh", f"port {port} is out of range")
    host_key, host_key_file = raw.get("host_key", ""), raw.get("host_key_file")
    if bool(host_key) == bool(host_key_file):
        # Host keys are pinned, never learnt on first use: say which one.
        raise fail(None, "give exactly one of host_key and host_key_file",
                   "the box's key as `ssh-keyscan` prints it, or a known_hosts file")
    if host_key:
        try:
            parse_host_key_line(host_key)
        except InfraError:
            raise fail("host_key", "not a public key line like 'ssh-ed25519 AAAA...'",
                       "the line `ssh-keyscan -t ed25519 HOST` prints, without HOST") from None
    boot = raw.get("boot", "kexec_load")
    if boot not in BOOT_METHODS:
        raise fail("boot", f"unknown boot method {boot!r}",
                   f"choose from {', '.join(BOOT_METHODS)}")
    config = raw.get("config", "box")
    if config not in CONFIGS:
        raise fail("config", f"unknown configuration {config!r}",
                   f"choose from {', '.join(CONFIGS)}")
    power = {key: _command(raw[key], _at(fail, key)) for key in POWER_KEYS if key in raw}
    if ("power_off" in power) != ("power_on" in power):
        raise fail("power_off" if "power_off" in power else "power_on",
                   "power_off and power_on go together")
    if place and not power:
        # the place's power resource, as labgrid-client drives it (the client
        # must hold the place, which the cell does); none: labgrid_place.held()
        power = {"power_cycle": place.argv("power", "cycle")}
    console = (_console(raw["console"], _at(fail, "console")) if raw.get("console")
               else Console(scheme="labgrid", host=place.name if place else ""))
    return Box(name=name, arch=arch, user=ssh["user"], host=ssh["host"].strip("[]"), port=port,
               key=Path(raw["key"]).expanduser(), host_key=host_key,
               host_key_file=Path(host_key_file).expanduser() if host_key_file else None,
               console=console, boot=boot,
               power=power, known_good=raw.get("known_good", ""), config=config, place=place)


def _place(raw: dict[str, str],
           fail: Callable[[str | None, str, str], UserError]) -> Place | None:
    name, coordinator = raw.get("labgrid_place", ""), raw.get("labgrid_coordinator", "")
    if coordinator and not name:
        raise fail("labgrid_coordinator", "needs labgrid_place", "the place this box is")
    if "labgrid_place" in raw and not NAME_RE.fullmatch(name):
        raise fail("labgrid_place", f"{name!r} is not a place name (letters, digits, "
                   "'.', '_' and '-')", "as `labgrid-client places` lists it")
    if coordinator:
        where = COORDINATOR_RE.fullmatch(coordinator)
        if where is None or not 0 < int(where["port"]) < 65536:
            raise fail("labgrid_coordinator", f"{coordinator!r} is not HOST:PORT",
                       "the coordinator's address, as labgrid-client -x takes it")
    return Place(name, coordinator) if name else None


def _at(fail: Callable[[str | None, str], UserError],
        key: str) -> Callable[[str], UserError]:
    return lambda problem: fail(key, problem)


def _command(text: str, fail: Callable[[str], UserError]) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(text))
    except ValueError as e:
        raise fail(f"not a command line: {e}") from None
    if not argv:
        raise fail("an empty command")
    return argv


def _console(text: str, fail: Callable[[str], UserError]) -> Console:
    if "://" in text:
        url = CONSOLE_URL_RE.fullmatch(text)
        if url is None:
            raise fail(f"{text!r} is not tcp://HOST:PORT or rfc2217://HOST:PORT")
        port = int(url["port"])
        if not 0 < port < 65536:
            raise fail(f"port {port} is out of range")
        return Console(scheme=url["scheme"], host=url["host"].strip("[]"), port=port)
    return Console(command=_command(text, fail))
