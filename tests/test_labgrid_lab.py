"""A lab file's labgrid places (harness/target/lab.py, labgrid_place.py)
without labgrid: the keys, their mistakes in one line, and what a place's
`labgrid-client show` gives the cell. tests/test_labgrid.py runs the real
coordinator and exporter."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import InfraError, UserError
from harness.target import lab
from harness.target import labgrid_place as lg

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKDw4Sa61eMoJWOJJRZR3YaVg5gSmWdzQyqIkaX/9/V3"
BOX = (f'[box.b]\nssh = "root@10.0.0.5"\nkey = "k"\nhost_key = "{KEY}"\n'
       'labgrid_place = "rack1-nuc"\n')

# `labgrid-client -p rack1-nuc show` of labgrid 26.0.1, the place acquired
SHOWN = """\
Place 'rack1-nuc':
  matches:
    exp1/nuc/*
  acquired: build7/ci
  acquired resources:
    exp1/nuc/NetworkPowerPort/NetworkPowerPort
    exp1/nuc/NetworkSerialPort/NetworkSerialPort
  created: 2026-12-02 17:40:14.159913
  changed: 2026-12-02 17:40:16.081335
Acquired resource 'NetworkPowerPort' (exp1/nuc/NetworkPowerPort/NetworkPowerPort):
  {'acquired': 'rack1-nuc',
   'avail': True,
   'cls': 'NetworkPowerPort',
   'params': {'extra': {'proxy': 'localhost', 'proxy_required': False},
              'host': 'http://127.0.0.1:47002/power/{index}/{value}',
              'index': 0,
              'model': 'simplerest'}}
Acquired resource 'NetworkSerialPort' (exp1/nuc/NetworkSerialPort/NetworkSerialPort):
  {'acquired': 'rack1-nuc',
   'avail': True,
   'cls': 'NetworkSerialPort',
   'params': {'extra': {'proxy': 'localhost', 'proxy_required': False},
              'host': '127.0.0.1',
              'port': 47001,
              'protocol': 'raw',
              'speed': 115200}}
"""


def load(tmp_path: Path, text: str) -> lab.Box:
    path = tmp_path / "lab.toml"
    path.write_text(text)
    return lab.load(path).box("b")


def test_the_examples_place() -> None:
    from harness.paths import LAB_EXAMPLE
    b = lab.load(LAB_EXAMPLE).box("rack2-nuc")
    assert b.place == lab.Place("rack2-nuc", "labgrid.lab.example:20408")
    assert b.power["power_cycle"][-2:] == ("power", "cycle") and b.recovery == "power cycle"


def test_a_place_gives_console_and_power(tmp_path: Path) -> None:
    b = load(tmp_path, BOX + 'labgrid_coordinator = "lab-gw:20408"\n')
    assert b.place == lab.Place("rack1-nuc", "lab-gw:20408")
    assert b.console.describe() == "labgrid place rack1-nuc's serial port"
    assert b.power == {"power_cycle": (lab.labgrid_client(), "-x", "lab-gw:20408",
                                       "-p", "rack1-nuc", "power", "cycle")}
    assert b.recovery == "power cycle"


def test_the_lab_files_own_console_and_power_win(tmp_path: Path) -> None:
    b = load(tmp_path, BOX + 'console = "tcp://10.0.0.9:7001"\npower_cycle = "pdu 3 reboot"\n')
    assert b.console.describe() == "tcp://10.0.0.9:7001"
    assert b.power == {"power_cycle": ("pdu", "3", "reboot")}
    # and the place's resources do not replace them
    assert lg.resolved(b, lg.parse_show(SHOWN)) == b


def test_no_coordinator_is_labgrids_default(tmp_path: Path) -> None:
    b = load(tmp_path, BOX)
    assert b.place == lab.Place("rack1-nuc", "")
    assert b.power["power_cycle"][1:] == ("-p", "rack1-nuc", "power", "cycle")


def test_a_box_without_a_place_is_as_before(tmp_path: Path) -> None:
    b = load(tmp_path, BOX.replace('labgrid_place = "rack1-nuc"\n', 'console = "telnet h 7"\n'))
    assert b.place is None and b.power == {}


@pytest.mark.parametrize("text,where,problem", [
    (BOX.replace('labgrid_place = "rack1-nuc"\n', ""), "key 'console'", "missing"),
    (BOX.replace('"rack1-nuc"', '"a b"'), "key 'labgrid_place'", "is not a place name"),
    (BOX.replace('"rack1-nuc"', '""'), "key 'labgrid_place'", "is not a place name"),
    (BOX + 'labgrid_coordinator = "lab-gw"\n', "key 'labgrid_coordinator'", "not HOST:PORT"),
    (BOX + 'labgrid_coordinator = "h:0"\n', "key 'labgrid_coordinator'", "not HOST:PORT"),
    (BOX.replace('labgrid_place = "rack1-nuc"\n', 'console = "telnet h 7"\n')
     + 'labgrid_coordinator = "h:1"\n', "key 'labgrid_coordinator'", "needs labgrid_place"),
])
def test_mistakes_are_one_line(tmp_path: Path, text: str, where: str, problem: str) -> None:
    with pytest.raises(UserError) as e:
        load(tmp_path, text)
    assert f"lab.toml: box 'b': {where}: " in e.value.line() and problem in e.value.line()
    assert "\n" not in e.value.line()


def test_what_show_says() -> None:
    shown = lg.parse_show(SHOWN)
    assert shown.holder == "build7/ci"
    assert [(r.name, r.cls, r.avail) for r in shown.resources] == [
        ("NetworkPowerPort", "NetworkPowerPort", True),
        ("NetworkSerialPort", "NetworkSerialPort", True)]
    assert shown.resources[1].params["port"] == 47001
    free = lg.parse_show(SHOWN.replace("acquired: build7/ci", "acquired: None"))
    assert free.holder is None


def test_the_place_resolved(tmp_path: Path) -> None:
    b = lg.resolved(load(tmp_path, BOX), lg.parse_show(SHOWN))
    assert (b.console.scheme, b.console.host, b.console.port) == ("tcp", "127.0.0.1", 47001)
    assert b.recovery == "power cycle"
    # an exporter's own ser2net speaks rfc2217
    rfc = lg.resolved(load(tmp_path, BOX), lg.parse_show(SHOWN.replace("'raw'", "'rfc2217'")))
    assert rfc.console.describe() == "rfc2217://127.0.0.1:47001"
    # no power resource: reboot alone, and the box says so
    unpowered = SHOWN.replace("'cls': 'NetworkPowerPort'", "'cls': 'NetworkService'")
    assert lg.resolved(load(tmp_path, BOX), lg.parse_show(unpowered)).recovery == \
        "reboot alone (no power commands)"


def _second_port(name: str) -> str:
    head, _, port = SHOWN.partition("Acquired resource 'NetworkSerialPort'")
    return SHOWN + f"Acquired resource '{name}'" + port.replace("47001", "47009")


def test_a_place_with_two_serial_ports(tmp_path: Path) -> None:
    b = load(tmp_path, BOX)
    named = lg.resolved(b, lg.parse_show(_second_port("console")))
    assert named.console.port == 47009
    with pytest.raises(UserError) as e:
        lg.resolved(b, lg.parse_show(_second_port("bmc")))
    assert e.value.line() == (
        "box 'b': labgrid place 'rack1-nuc' has 2 serial ports "
        "(exp1/nuc/NetworkSerialPort/NetworkSerialPort, "
        "exp1/nuc/NetworkSerialPort/NetworkSerialPort): name the console one `console` "
        "(labgrid-client add-named-match), or give console in the lab file")


@pytest.mark.parametrize("change,error,problem", [
    (("'avail': True,\n   'cls': 'NetworkSerialPort'", "'avail': False,\n   'cls': "
      "'NetworkSerialPort'"), InfraError, "is not available: is its exporter up?"),
    (("'proxy_required': False},\n              'host': '127.0.0.1'",
      "'proxy_required': True},\n              'host': '127.0.0.1'"), UserError,
     "reachable only through labgrid's ssh proxy"),
    (("'cls': 'NetworkSerialPort'", "'cls': 'USBSerialPort'"), UserError,
     "has no serial ports (none)"),
])
def test_a_serial_port_the_harness_cannot_use(tmp_path: Path, change: tuple[str, str],
                                              error: type[Exception], problem: str) -> None:
    assert change[0] in SHOWN
    with pytest.raises(error, match="^box 'b': labgrid place 'rack1-nuc'") as e:
        lg.resolved(load(tmp_path, BOX), lg.parse_show(SHOWN.replace(*change)))
    assert problem in f"{e.value}: {getattr(e.value, 'hint', '')}"


def test_who_the_harness_is_to_labgrid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LG_HOSTNAME", "build7")
    monkeypatch.setenv("LG_USERNAME", "ci")
    assert lg.identity() == "build7/ci"
