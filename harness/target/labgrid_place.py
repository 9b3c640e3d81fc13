"""A lab box that is a labgrid place: taken through the lab's labgrid
coordinator, so that the harnesses of several hosts, and people with
labgrid-client, share the box one at a time.

labgrid is an optional extra (`pip install 'cpa-harness[labgrid]'`). It is
driven through its own command, labgrid-client, as argv (never through a
shell): the harness imports nothing of it, and works without it for boxes
that are not places. Without labgrid a box's lock is local to one host
(box.taken()).

held() takes the box: this host's lock first (so two cells on this host never
race for the place under the same labgrid identity), then the place, waited
for while someone else has it. It yields the box with its console (the
place's NetworkSerialPort, unless the lab file names one) and its power (the
place's power resource through `labgrid-client power cycle`, unless the lab
file gives power commands) filled in, and releases the place on every way
out, Ctrl-C and SIGTERM included. A place acquired and never released (a
harness killed with SIGKILL, a labgrid-client session) stays acquired in the
coordinator: the harness refuses it in one line and leaves it as it is.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import getpass
import os
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import InfraError, UserError
from harness.proc import die_with_parent
from harness.progress import report
from harness.target import box as boxes
from harness.target.lab import Box, Console, Place

# How long a cell waits for a place someone else has, and how often it asks.
WAIT = 3600.0
POLL = 10.0
# One labgrid-client call: it connects, syncs with the coordinator and does one
# thing (a power cycle waits between off and on).
CALL_TIMEOUT = 120.0

# `labgrid-client show`: "  acquired: HOST/USER" (or "None"), then each resource
# as a header line and its asdict() pretty-printed, indented by two.
ACQUIRED_RE = re.compile(r"^  acquired: (?P<who>\S+)$", re.M)
RESOURCE_RE = re.compile(r"^(?:Acquired|Matching) resource '(?P<name>[^']*)' "
                         r"\((?P<path>[^()]*)\):$")


class PlaceBusy(InfraError):
    """The place is acquired by someone else (or by this host and user, but
    not by this harness): it is left as it is."""


@dataclass(frozen=True)
class Resource:
    name: str           # the place's name for it (a named match), else the exporter's
    path: str           # exporter/group/class/name
    cls: str
    params: dict[str, Any]
    avail: bool


@dataclass(frozen=True)
class Shown:
    holder: str | None  # "HOST/USER", None when nobody has the place
    resources: list[Resource]


def identity() -> str:
    """Who labgrid-client says this is to the coordinator, as it computes it."""
    return (f"{os.environ.get('LG_HOSTNAME') or socket.gethostname()}/"
            f"{os.environ.get('LG_USERNAME') or getpass.getuser()}")


def place_of(box: Box) -> Place:
    if box.place is None:
        raise UserError(f"box {box.name!r} is not a labgrid place",
                        "give labgrid_place in the lab file")
    return box.place


def _release_hint(place: Place) -> str:
    return shlex.join(place.argv("release"))


def _run(box: Box, *command: str, finish: bool = False) -> subprocess.CompletedProcess[str]:
    """One labgrid-client call. In its own session, so that a terminal's Ctrl-C
    reaches the harness alone; with `finish` (a release) it is not killed with
    the harness either, so that it gets the place back to the coordinator."""
    place = place_of(box)
    argv = place.argv(*command)
    if not Path(argv[0]).is_file():
        raise UserError(f"box {box.name!r} is labgrid place {place.name!r}, and labgrid-client "
                        "is not installed", "pip install 'cpa-harness[labgrid]'")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                preexec_fn=None if finish else die_with_parent)
    except OSError as e:
        raise InfraError(f"box {box.name!r}: {shlex.join(argv)} did not run: "
                         f"{e.strerror or e}", "check the labgrid installation") from None
    interrupted: BaseException | None = None
    deadline = time.monotonic() + CALL_TIMEOUT
    while True:
        try:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            break
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise InfraError(f"box {box.name!r}: {shlex.join(argv)} did not finish in "
                             f"{CALL_TIMEOUT:.0f}s", "is the labgrid coordinator up?") from None
        except KeyboardInterrupt as e:
            if not finish:
                proc.kill()
                proc.communicate()
                raise
            # a release is let finish (it takes a second), then the interrupt goes on
            interrupted = e
    if interrupted is not None:
        raise interrupted
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _said(r: subprocess.CompletedProcess[str]) -> str:
    """labgrid-client's own last word: "labgrid-client: Error: ...", or the
    coordinator's "Server error: ..." (the traceback lines above are not it)."""
    lines = [line.strip() for line in (r.stderr + "\n" + r.stdout).splitlines() if line.strip()]
    last = lines[-1] if lines else f"status {r.returncode}"
    return last.removeprefix("labgrid-client: ").removeprefix("Error: ")[:300]


def show(box: Box) -> Shown:
    """Who holds the place and its resources (acquired ones when it is held,
    those its matches find otherwise). InfraError when labgrid cannot say."""
    place = place_of(box)
    r = _run(box, "show")
    if r.returncode != 0:
        raise InfraError(f"box {box.name!r}: labgrid place {place.name!r}"
                         + (f" at {place.coordinator}" if place.coordinator else "")
                         + f": {_said(r)}",
                         "is the coordinator up, and the place created there?")
    return parse_show(r.stdout)


def parse_show(text: str) -> Shown:
    who = ACQUIRED_RE.search(text)
    holder = who["who"] if who and who["who"] != "None" else None
    resources: list[Resource] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        head = RESOURCE_RE.match(line)
        if head is None:
            continue
        body = []
        for follow in lines[i + 1:]:
            if not follow.startswith("  "):
                break
            body.append(follow[2:])
        try:
            d = ast.literal_eval("\n".join(body))
        except (ValueError, SyntaxError):
            continue        # not a resource as this labgrid prints it: not one we use
        if not isinstance(d, dict):
            continue
        parts = head["path"].split("/")
        cls = str(d.get("cls", parts[2] if len(parts) == 4 else ""))
        params = d.get("params") if isinstance(d.get("params"), dict) else {}
        resources.append(Resource(head["name"], head["path"], cls, dict(params or {}),
                                  bool(d.get("avail", False))))
    return Shown(holder, resources)


def _acquire(box: Box, wait: float, poll: float, owed: list[bool]) -> None:
    """The place acquired, waited for up to `wait` seconds while someone else
    has it. `owed` is set while an acquire may have taken it, so that the
    caller releases it even when interrupted right then."""
    place = place_of(box)
    me = identity()
    deadline = time.monotonic() + wait
    told = False
    while True:
        holder = show(box).holder
        if holder == me:
            # this host's lock is held, so no other cell here has it: a harness
            # that was killed, or someone's labgrid-client session
            raise PlaceBusy(f"box {box.name!r}: labgrid place {place.name!r} is already "
                            f"acquired by {me}, this host and user, but not by this harness "
                            "(a killed run, or a labgrid-client session)",
                            f"release it with `{_release_hint(place)}` when it is free")
        if holder is None:
            owed[0] = True
            r = _run(box, "acquire")
            if r.returncode == 0:
                return
            holder = show(box).holder
            owed[0] = holder == me      # taken after all (the client failed after it)
            if holder is None or holder == me:
                raise InfraError(f"box {box.name!r}: labgrid place {place.name!r} could not "
                                 f"be acquired: {_said(r)}",
                                 "is its exporter up? `labgrid-client -p "
                                 f"{place.name} show` lists what the place matches")
            # someone else was quicker: wait like for any holder
        left = deadline - time.monotonic()
        if left <= 0:
            waited = f" (waited {wait:.0f}s)" if wait > 0 else ""
            raise PlaceBusy(f"box {box.name!r}: labgrid place {place.name!r} is acquired by "
                            f"{holder}{waited}",
                            "run again when it is released, or ask its holder")
        if not told:
            report(f"waiting for labgrid place {place.name} (box {box.name}), acquired by "
                   f"{holder}")
            told = True
        time.sleep(min(poll, left))


def _release(box: Box) -> None:
    """Only if this harness's identity still holds it (release-from is atomic
    in the coordinator): a place someone has kicked us from and taken is
    theirs. Never raises: what did not work is said, with what to do."""
    place = place_of(box)
    me = identity()
    try:
        r = _run(box, "release-from", me, finish=True)
        if r.returncode == 0:
            return
        if show(box).holder != me:
            return          # not ours (never acquired, or released by someone else)
        why = _said(r)
    except InfraError as e:
        why = e.line()
    report(f"box {box.name}: labgrid place {place.name} was not released: {why}: "
           f"release it with `{_release_hint(place)}`")


def _serial_port(box: Box, resources: list[Resource]) -> Console:
    place = place_of(box)
    ports = [r for r in resources if r.cls == "NetworkSerialPort"]
    if len(ports) > 1:
        # a place with several serial lines names its console, as labgrid's
        # own strategies do
        ports = [r for r in ports if r.name == "console"] or ports
    if len(ports) != 1:
        found = ", ".join(r.path for r in ports) or "none"
        raise UserError(f"box {box.name!r}: labgrid place {place.name!r} has "
                        f"{len(ports) or 'no'} serial port{'s' if len(ports) != 1 else ''} "
                        f"({found})",
                        "name the console one `console` (labgrid-client add-named-match), "
                        "or give console in the lab file")
    port = ports[0]
    p = port.params
    extra = p.get("extra") if isinstance(p.get("extra"), dict) else {}
    if not port.avail or not p.get("host") or not isinstance(p.get("port"), int):
        raise InfraError(f"box {box.name!r}: labgrid place {place.name!r}: its serial port "
                         f"{port.path} is not available", "is its exporter up?")
    if extra and extra.get("proxy_required"):
        raise UserError(f"box {box.name!r}: labgrid place {place.name!r}: its serial port "
                        f"{port.path} is reachable only through labgrid's ssh proxy, which the "
                        "harness does not use", "give console in the lab file")
    # raw is plain TCP; rfc2217 (what the exporter's own ser2net speaks) is read
    # as plain TCP too, like a lab file's rfc2217:// console (target/box.py)
    scheme = "tcp" if p.get("protocol") == "raw" else "rfc2217"
    return Console(scheme=scheme, host=str(p["host"]), port=int(p["port"]))


def resolved(box: Box, shown: Shown) -> Box:
    """The box with what its place gives filled in: the console when the lab
    file names none, and no power when the place has no power resource and the
    lab file gave no power commands (then it is recovered by reboot alone, and
    its description says so)."""
    place = place_of(box)
    console = _serial_port(box, shown.resources) if box.console.scheme == "labgrid" \
        else box.console
    power = box.power
    if power == {"power_cycle": place.argv("power", "cycle")} and \
            not any("Power" in r.cls for r in shown.resources):
        power = {}
    return dataclasses.replace(box, console=console, power=power)


@contextlib.contextmanager
def held(box: Box, wait: float = WAIT, poll: float = POLL) -> Iterator[Box]:
    """Take the box for one cell: this host's lock, then its labgrid place
    when it is one; yields the box as the cell uses it (resolved()). With
    `wait` 0 a box in use raises at once: BlockingIOError for this host's
    lock, PlaceBusy for the place."""
    with boxes.taken(box, wait > 0):
        if box.place is None:
            yield box
            return
        owed = [False]
        try:
            _acquire(box, wait, poll, owed)
            yield resolved(box, show(box))
        finally:
            if owed[0]:
                _release(box)


def check(box: Box) -> tuple[list[str], list[str]]:
    """What doctor can see of a place without taking it: problems, and what
    was seen (who holds it, the console and power it would give)."""
    try:
        shown = show(box)
    except (InfraError, UserError) as e:
        return [e.line().removeprefix(f"box {box.name!r}: ")], []
    place = place_of(box)
    seen = [f"labgrid place {place.name}: "
            + (f"acquired by {shown.holder}" if shown.holder else "free")]
    try:
        b = resolved(box, shown)
    except (InfraError, UserError) as e:
        return [e.line().removeprefix(f"box {box.name!r}: ")], seen
    seen.append(f"labgrid place {place.name}: console {b.console.describe()}, "
                f"recovery by {b.recovery}")
    return [], seen
