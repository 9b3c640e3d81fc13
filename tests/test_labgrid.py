"""A box that is a labgrid place, against a real labgrid coordinator and
exporter on 127.0.0.1 (harness/target/labgrid_place.py): the place is acquired
for the cell and released on every way out, a place someone else holds is
waited for or refused in one line and left as it is, the console is the
place's NetworkSerialPort (a TCP line server standing in for ser2net) reached
as a cell reaches it, and power goes through the place (a simplerest power
endpoint sees off, then on) and only while the place is held.

No kernel boots here: labgrid's side of a box, not the box's.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import as_from_a_terminal

from harness.errors import InfraError, UserError
from harness.target import box as boxes
from harness.target import lab
from harness.target import labgrid_place as lg
from harness.target.box_target import spawn_console
from harness.target.ssh import free_port

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKDw4Sa61eMoJWOJJRZR3YaVg5gSmWdzQyqIkaX/9/V3"
CLIENT = lab.labgrid_client()
HARNESS = {"LG_HOSTNAME": "harness-host", "LG_USERNAME": "ci"}
OTHER = {"LG_HOSTNAME": "other-host", "LG_USERNAME": "bob"}

if not Path(CLIENT).is_file():
    if os.environ.get("CI"):
        raise RuntimeError("labgrid is not installed: ci/setup.sh --test installs the "
                           "[labgrid] extra, and CI must run these tests")
    pytest.skip("labgrid is not installed (pip install -e '.[labgrid]')",
                allow_module_level=True)


class LineServer:
    """A serial line as a console server gives it: a getty's prompt for each
    line it is sent; what it was sent is kept."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(4096):
                    self.received += data
                    if b"\r" in data or b"\n" in data:
                        conn.sendall(b"\r\nlgbox login: ")


@dataclass
class PowerSwitch:
    """A switched outlet behind labgrid's simplerest model: GET /outlet/INDEX/VALUE."""

    calls: list[str] = field(default_factory=list)

    def start(self) -> int:
        calls = self.calls

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                calls.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"1")

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server.server_address[1]


@dataclass
class Lab:
    coordinator: str
    line: LineServer
    power: PowerSwitch
    lab_file: Path

    def client(self, *args: str, who: dict[str, str] = OTHER,
               place: str = "lg1") -> subprocess.CompletedProcess[str]:
        """labgrid-client as someone else (another host, another user) would run it."""
        return subprocess.run([CLIENT, "-x", self.coordinator, "-p", place, *args],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, **who})

    def holder(self, place: str = "lg1") -> str | None:
        r = self.client("show", place=place)
        assert r.returncode == 0, r.stderr
        return lg.parse_show(r.stdout).holder

    def box(self, name: str = "lgbox") -> lab.Box:
        return lab.load(self.lab_file).box(name)


def _wait_for(what: str, check: object, seconds: float = 60.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if callable(check) and check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} within {seconds:.0f}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def labgrid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    where = tmp_path_factory.mktemp("labgrid")
    line, power = LineServer(), PowerSwitch()
    power_port = power.start()
    coordinator = f"127.0.0.1:{free_port()}"
    (where / "exporter.yaml").write_text(textwrap.dedent(f"""\
        lgbox:
          NetworkSerialPort:
            host: 127.0.0.1
            port: {line.port}
            speed: 115200
            protocol: raw
          NetworkPowerPort:
            model: simplerest
            host: 'http://127.0.0.1:{power_port}/outlet/{{index}}/{{value}}'
            index: 3
        """))
    (where / "lab.toml").write_text(textwrap.dedent(f"""\
        [box.lgbox]
        ssh = "root@127.0.0.1:2"
        key = "k"
        host_key = "{KEY}"
        labgrid_place = "lg1"
        labgrid_coordinator = "{coordinator}"

        [box.lgbox-nopower]
        ssh = "root@127.0.0.1:2"
        key = "k"
        host_key = "{KEY}"
        labgrid_place = "lg2"
        labgrid_coordinator = "{coordinator}"

        [box.lgbox-missing]
        ssh = "root@127.0.0.1:2"
        key = "k"
        host_key = "{KEY}"
        labgrid_place = "nowhere"
        labgrid_coordinator = "{coordinator}"
        """))
    logs = [open(where / f"{n}.log", "wb") for n in ("coordinator", "exporter")]
    # the coordinator keeps its places.yaml in its working directory
    coord = subprocess.Popen([str(Path(CLIENT).parent / "labgrid-coordinator"), "-l", coordinator],
                             cwd=where, stdout=logs[0], stderr=subprocess.STDOUT)
    exporter: subprocess.Popen[bytes] | None = None
    try:
        t = Lab(coordinator, line, power, where / "lab.toml")
        _wait_for("the coordinator answers", lambda: t.client("places").returncode == 0)
        exporter = subprocess.Popen(
            [str(Path(CLIENT).parent / "labgrid-exporter"), "-c", coordinator, "-n", "exp1",
             "--hostname", "127.0.0.1", str(where / "exporter.yaml")],
            cwd=where, stdout=logs[1], stderr=subprocess.STDOUT)
        _wait_for("the exporter's resources are seen",
                  lambda: "exp1/lgbox/NetworkSerialPort" in t.client("resources").stdout)
        for place, match in (("lg1", "exp1/lgbox/*"), ("lg2", "exp1/lgbox/NetworkSerialPort")):
            for step in (("create",), ("add-match", match)):
                r = t.client(*step, place=place)
                assert r.returncode == 0, r.stderr
        yield t
    finally:
        if exporter is not None:
            _stop(exporter)
        _stop(coord)
        for f in logs:
            f.close()


@pytest.fixture(autouse=True)
def harness_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # who this harness is to labgrid, and this host's box locks, per test
    for k, v in HARNESS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CPA_HARNESS_CACHE", str(tmp_path / "cache"))


def test_the_place_is_held_for_the_cell_and_released(labgrid: Lab) -> None:
    assert labgrid.holder() is None
    b = labgrid.box()
    assert b.console.describe() == "labgrid place lg1's serial port"
    with lg.held(b) as taken:
        assert labgrid.holder() == "harness-host/ci"
        assert (taken.console.scheme, taken.console.host, taken.console.port) == \
            ("tcp", "127.0.0.1", labgrid.line.port)
        assert taken.power == {"power_cycle": (CLIENT, "-x", labgrid.coordinator, "-p", "lg1",
                                               "power", "cycle")}
        assert taken.recovery == "power cycle"
        # this host's lock is held as well: a second cell here does not ask labgrid
        with pytest.raises(BlockingIOError), boxes.taken(b, wait=False):
            pass
    assert labgrid.holder() is None


def test_the_console_is_the_places_serial_port(labgrid: Lab) -> None:
    with lg.held(labgrid.box()) as taken:
        # as a cell attaches it (box_target): socat to the address the place gives
        child = spawn_console(taken)
        child.delaybeforesend = None    # no 50 ms for socat to make its pty raw
        try:
            child.send(b"\r")      # at once: the pty is raw before socat runs
            child.expect(b"lgbox login: ", timeout=10)
        finally:
            child.terminate(force=True)
        assert b"\r" in labgrid.line.received
        # and as doctor reads it
        assert b"lgbox login:" in boxes.console_answers(taken, seconds=10)


def test_power_goes_through_the_place_only_while_it_is_held(labgrid: Lab) -> None:
    b = labgrid.box()
    labgrid.power.calls.clear()
    refused = subprocess.run(b.power["power_cycle"], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "not acquired" in refused.stderr
    assert labgrid.power.calls == []
    with lg.held(b) as taken:
        r = subprocess.run(taken.power["power_cycle"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
    assert labgrid.power.calls == ["/outlet/3/0", "/outlet/3/1"]     # off, then on


def test_a_place_without_power_is_recovered_by_reboot_alone(labgrid: Lab) -> None:
    with lg.held(labgrid.box("lgbox-nopower")) as taken:
        assert labgrid.holder("lg2") == "harness-host/ci"
        assert taken.power == {} and taken.recovery == "reboot alone (no power commands)"
        assert taken.console.port == labgrid.line.port
    assert labgrid.holder("lg2") is None


def test_a_place_someone_else_holds_is_refused_and_left_to_them(labgrid: Lab) -> None:
    assert labgrid.client("acquire").returncode == 0
    try:
        with pytest.raises(lg.PlaceBusy) as e, lg.held(labgrid.box(), wait=0):
            pass
        assert e.value.line() == ("box 'lgbox': labgrid place 'lg1' is acquired by "
                                  "other-host/bob: run again when it is released, or ask its "
                                  "holder")
        assert e.value.exit_code == 3
        assert labgrid.holder() == "other-host/bob"
    finally:
        assert labgrid.client("release").returncode == 0


def test_a_place_someone_else_holds_is_waited_for(labgrid: Lab) -> None:
    assert labgrid.client("acquire").returncode == 0
    letgo = threading.Timer(3.0, lambda: labgrid.client("release"))
    letgo.start()
    start = time.monotonic()
    try:
        with lg.held(labgrid.box(), wait=60, poll=0.5):
            waited = time.monotonic() - start
            assert labgrid.holder() == "harness-host/ci"
    finally:
        letgo.join()
    assert waited > 3.0
    assert labgrid.holder() is None


def test_a_waited_for_place_that_stays_taken(labgrid: Lab) -> None:
    assert labgrid.client("acquire").returncode == 0
    try:
        start = time.monotonic()
        with pytest.raises(lg.PlaceBusy, match=r"acquired by other-host/bob \(waited 2s\)"), \
                lg.held(labgrid.box(), wait=2, poll=0.5):
            pass
        assert time.monotonic() - start >= 2.0
        assert labgrid.holder() == "other-host/bob"
    finally:
        assert labgrid.client("release").returncode == 0


def test_a_place_this_host_left_acquired_is_left_as_found(labgrid: Lab) -> None:
    # a run killed with SIGKILL leaves the place acquired under the harness's identity
    assert labgrid.client("acquire", who=HARNESS).returncode == 0
    try:
        with pytest.raises(lg.PlaceBusy) as e, lg.held(labgrid.box(), wait=0):
            pass
        assert "already acquired by harness-host/ci, this host and user" in e.value.line()
        assert f"{CLIENT} -x {labgrid.coordinator} -p lg1 release" in e.value.line()
        assert labgrid.holder() == "harness-host/ci"
    finally:
        assert labgrid.client("release", who=HARNESS).returncode == 0


def test_released_when_the_cell_fails_or_is_interrupted(labgrid: Lab) -> None:
    for error in (RuntimeError("the cell failed"), KeyboardInterrupt()):
        with pytest.raises(type(error)), lg.held(labgrid.box()):
            assert labgrid.holder() == "harness-host/ci"
            raise error
        assert labgrid.holder() is None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_released_when_the_harness_is_signalled(labgrid: Lab, tmp_path: Path,
                                                sig: signal.Signals) -> None:
    # a harness process, signalled as a terminal's Ctrl-C (its whole process
    # group) or a SIGTERM would: the CLI turns SIGTERM into KeyboardInterrupt
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""\
            import signal, sys, time
            from pathlib import Path
            from harness.cli import _sigterm
            from harness.target import lab, labgrid_place
            signal.signal(signal.SIGTERM, _sigterm)
            try:
                with labgrid_place.held(lab.load(Path(sys.argv[1])).box("lgbox")):
                    print("held", flush=True)
                    time.sleep(60)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                sys.exit(130)
            """), str(labgrid.lab_file)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=as_from_a_terminal)
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    assert labgrid.holder() == "harness-host/ci"
    os.killpg(holder.pid, sig)
    assert holder.wait(60) == 130 and holder.stdout.read() == "interrupted\n"
    assert labgrid.holder() is None


def test_a_place_the_coordinator_does_not_know(labgrid: Lab) -> None:
    with pytest.raises(InfraError) as e, lg.held(labgrid.box("lgbox-missing")):
        pass
    assert e.value.line() == (f"box 'lgbox-missing': labgrid place 'nowhere' at "
                              f"{labgrid.coordinator}: place pattern nowhere matches nothing: "
                              "is the coordinator up, and the place created there?")
    # this host's lock was let go too
    with boxes.taken(labgrid.box("lgbox-missing"), wait=False):
        pass


def test_a_coordinator_that_is_not_there(labgrid: Lab, tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(labgrid.lab_file.read_text().replace(labgrid.coordinator,
                                                         f"127.0.0.1:{free_port()}"))
    with pytest.raises(InfraError, match=r"^box 'lgbox': labgrid place 'lg1' at 127\.0\.0\.1:"
                       r"\d+: .*[Cc]ould not connect to coordinator"), \
            lg.held(lab.load(path).box("lgbox")):
        pass


def test_doctor_sees_the_place_without_taking_it(labgrid: Lab) -> None:
    problems, seen = lg.check(labgrid.box())
    assert problems == []
    assert seen == ["labgrid place lg1: free",
                    f"labgrid place lg1: console tcp://127.0.0.1:{labgrid.line.port}, "
                    "recovery by power cycle"]
    assert labgrid.holder() is None
    problems, _ = lg.check(labgrid.box("lgbox-missing"))
    assert problems == [f"labgrid place 'nowhere' at {labgrid.coordinator}: place pattern "
                        "nowhere matches nothing: is the coordinator up, and the place "
                        "created there?"]


def test_without_labgrid_installed(labgrid: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab, "labgrid_client", lambda: "/nonexistent/labgrid-client")
    b = labgrid.box()
    with pytest.raises(UserError) as e, lg.held(b):
        pass
    assert e.value.line() == ("box 'lgbox' is labgrid place 'lg1', and labgrid-client is not "
                              "installed: pip install 'cpa-harness[labgrid]'")
    assert e.value.exit_code == 2
