"""The lab file (harness/target/lab.py): the example reads, and every mistake is one
line naming the file, the box and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import UserError
from harness.paths import LAB_EXAMPLE
from harness.target import lab

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKDw4Sa61eMoJWOJJRZR3YaVg5gSmWdzQyqIkaX/9/V3"
BOX = f'[box.b]\nssh = "root@10.0.0.5"\nkey = "k"\nhost_key = "{KEY}"\nconsole = "telnet h 7"\n'


def test_the_example_reads() -> None:
    example = lab.load(LAB_EXAMPLE)
    nuc = example.box("nuc1")
    assert (nuc.user, nuc.host, nuc.port, nuc.arch) == ("root", "192.0.2.10", 22, "x86_64")
    assert nuc.console.command == ("telnet", "127.0.0.1", "7001")
    assert nuc.power["power_cycle"] == ("pdudaemon-client", "pdu1", "3", "reboot")
    assert nuc.recovery == "power cycle" and nuc.known_good == "6.1.0-28-amd64"
    xeon = example.box("old-xeon")
    assert xeon.boot == "grub-reboot" and xeon.host_key == "" and xeon.host_key_file
    assert xeon.recovery == "reboot alone (no power commands)"
    assert xeon.key == Path("~/.ssh/lab_ed25519").expanduser()


def test_console_addresses() -> None:
    for text, scheme, port in (("tcp://127.0.0.1:7001", "tcp", 7001),
                               ("rfc2217://[::1]:2000", "rfc2217", 2000)):
        c = lab._console(text, lambda p: UserError(p))
        assert (c.scheme, c.port, c.command) == (scheme, port, ())
        assert c.describe() == text.replace("[::1]", "::1")


@pytest.mark.parametrize("text,where,problem", [
    (BOX + 'colour = "red"\n', "box 'b': key 'colour'", "unknown key"),
    ("[lab]\n" + BOX, "", "unknown top-level key 'lab'"),
    ("", "", "no [box.NAME] tables"),
    (BOX.replace('ssh = "root@10.0.0.5"\n', ""), "box 'b': key 'ssh'", "missing"),
    (BOX.replace("root@10.0.0.5", "10.0.0.5"), "box 'b': key 'ssh'", "is not USER@HOST[:PORT]"),
    (BOX.replace("root@10.0.0.5", "root@h:99999"), "box 'b': key 'ssh'", "out of range"),
    (BOX.replace(f'host_key = "{KEY}"\n', ""), "box 'b'", "exactly one of host_key"),
    (BOX + 'host_key_file = "kh"\n', "box 'b'", "exactly one of host_key"),
    (BOX.replace(KEY, "AAAA"), "box 'b': key 'host_key'", "not a public key line"),
    (BOX.replace("telnet h 7", "tcp://h"), "box 'b': key 'console'", "tcp://HOST:PORT"),
    (BOX.replace("telnet h 7", "telnet 'h"), "box 'b': key 'console'", "not a command line"),
    (BOX + 'boot = "pxe"\n', "box 'b': key 'boot'", "unknown boot method 'pxe'"),
    (BOX + 'arch = "arm64"\n', "box 'b': key 'arch'", "unknown arch 'arm64'"),
    (BOX + 'power_off = "off"\n', "box 'b': key 'power_off'", "go together"),
    (BOX + 'power_cycle = ""\n', "box 'b': key 'power_cycle'", "an empty command"),
    (BOX + "port = 22\n", "box 'b': key 'port'", "unknown key"),
    (BOX.replace('key = "k"', "key = 3"), "box 'b': key 'key'", "must be a string, not int"),
    (BOX.replace("[box.b]", '[box."a b"]'), "box 'a b'", "a box name is letters"),
    ("box = 3\n", "", "no [box.NAME] tables"),
    ("[box\n", "", "not valid TOML for a lab file"),
])
def test_mistakes_are_one_line_naming_box_and_key(tmp_path: Path, text: str, where: str,
                                                  problem: str) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        lab.load(path)
    assert e.value.message.startswith(f"{path}: {where}".rstrip(": ")), e.value.message
    assert problem in e.value.message and e.value.exit_code == 2
    assert "\n" not in e.value.line()


def test_a_target_not_in_the_lab_file(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(BOX)
    with pytest.raises(UserError) as e:
        lab.load(path).box("nuc9")
    assert e.value.message == f"target 'nuc9' is not in lab file {path}"
    assert "boxes there: b" in e.value.line()


def test_a_missing_lab_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="lab file .*nope.toml does not exist"):
        lab.load(tmp_path / "nope.toml")


def doctor(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from harness.cli import main
    code = main(["doctor", "--lab", str(path), "--offline"])
    out, err = capsys.readouterr()
    return code, out, err


def test_doctor_checks_each_box_from_here(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from harness.target.ssh import generate_client_key
    key, _ = generate_client_key(tmp_path)
    known = tmp_path / "known_hosts"
    known.write_text(f"[10.0.0.6]:2222 {KEY}\n")
    path = tmp_path / "lab.toml"
    here = BOX.replace("telnet h 7", "sh -c true")       # a console command this host has
    path.write_text(here.replace('key = "k"', f'key = "{key}"') + 'power_cycle = "true"\n'
                    f'[box.c]\nssh = "root@10.0.0.6:2222"\nkey = "{key}"\n'
                    f'host_key_file = "{known}"\nconsole = "tcp://127.0.0.1:7001"\n')
    code, out, _ = doctor(path, capsys)
    assert code == 0, out
    assert "ok       b: root@10.0.0.5:22, console sh -c true, boot by kexec_load, " \
           "recovery by power cycle" in out
    assert "ok       c: root@10.0.0.6:2222, console tcp://127.0.0.1:7001" in out
    assert "not checked (--offline): ssh login, console output" in out
    # what is wrong is said per box, and the exit code says a problem was found
    known.write_text(f"10.0.0.9 {KEY}\n")
    path.write_text(here + 'power_cycle = "no-such-pdu-tool off"\n'
                    f'[box.c]\nssh = "root@10.0.0.6:2222"\nkey = "{key}"\n'
                    f'host_key_file = "{known}"\nconsole = "tcp://127.0.0.1:7001"\n')
    code, out, _ = doctor(path, capsys)
    assert code == 3
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
    assert [p.split(":")[0] for p in problems] == ["PROBLEM  b"] * 2 + ["PROBLEM  c"]
    assert "ssh key k does not load" in problems[0]
    assert "power_cycle: no-such-pdu-tool is not on this host's PATH" in problems[1]
    assert "has no key for [10.0.0.6]:2222" in problems[2]


def test_doctor_on_a_bad_lab_file_is_one_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(BOX + 'colour = "red"\n')
    code, out, err = doctor(path, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "box 'b': key 'colour'" in err


@pytest.mark.parametrize("argv,message", [
    (["--target", "b"], "target 'b' needs a lab file: add --lab FILE"),
    (["--target", "nope", "--lab", "LAB"], "target 'nope' is not in lab file"),
    # a kernel the box cannot boot: built for another arch
    (["--target", "b", "--lab", "LAB", "--arch", "i386-pae"],
     "cell i386-pae-boot is i386-pae, box 'b' is x86_64: give the box an arch its kernel "
     "can boot"),
])
def test_a_target_that_cannot_be_used_is_one_line_before_any_build(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        argv: list[str], message: str) -> None:
    from harness.cli import main
    monkeypatch.setenv("CPA_HARNESS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "lab.toml").write_text(BOX)
    argv = [str(tmp_path / "lab.toml") if a == "LAB" else a for a in argv]
    if "--arch" not in argv:
        argv += ["--arch", "x86_64"]
    code = main(["boot", "--out", str(tmp_path / "run"), *argv])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "cache").exists()       # nothing was built


def test_a_matrix_cell_names_its_box(tmp_path: Path) -> None:
    from harness.matrix import load
    m = tmp_path / "m.toml"
    m.write_text('[[cell]]\nname = "on-box"\narch = "x86_64"\ntarget = "nuc1"\n'
                 '[[cell]]\nname = "in-qemu"\narch = "x86_64"\n')
    cells = load(m).cells
    assert [(c.name, c.target) for c in cells] == [("on-box", "nuc1"), ("in-qemu", "")]
