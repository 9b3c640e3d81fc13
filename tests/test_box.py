"""A lab box's pieces that need no box: its identity read from captured output
of the simulated box, its console line through real commands, its lock across
real processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.errors import InfraError
from harness.target import box, lab

DATA = Path(__file__).parent / "data" / "lab"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKDw4Sa61eMoJWOJJRZR3YaVg5gSmWdzQyqIkaX/9/V3"


def a_box(tmp_path: Path, console: str) -> lab.Box:
    path = tmp_path / "lab.toml"
    path.write_text(textwrap.dedent(f"""\
        [box.b]
        ssh = "root@127.0.0.1:2"
        key = "k"
        host_key = "{KEY}"
        console = "{console}"
        """))
    return lab.load(path).box("b")


def test_identity_of_the_simulated_box() -> None:
    out = (DATA / "identify-labbox.txt").read_text()
    who = box.identify(lambda command: (0, out))
    assert (who.vendor, who.product) == ("QEMU", "Standard PC (i440FX + PIIX, 1996)")
    assert who.kernel.endswith("-amd64") and len(who.boot_id) == 36
    assert who.kexec == "/usr/sbin/kexec" and who.kexec_in_kernel
    assert who.memory_kb > 512 * 1024 and who.cpu_model and "pae" in who.cpu_flags
    assert who.microcode
    assert who.e820[0].startswith("BIOS-e820: [mem 0x0000000000000000-")
    assert any(line.endswith("usable") for line in who.e820)
    # the interface of the default route, which the kernel under test takes over
    assert who.net == {"dev": "eth0", "mac": "52:54:00:12:34:56", "address": "10.0.2.15/24",
                       "gateway": "10.0.2.2"}
    assert who.net_cmdline() == "cpa_harness.net=52:54:00:12:34:56,10.0.2.15/24,10.0.2.2"
    assert box.BoxIdentity.from_json(who.to_json()) == who


def test_a_box_with_no_way_back_gives_the_kernel_under_test_no_address() -> None:
    out = (DATA / "identify-labbox.txt").read_text()
    out = "\n".join(ln for ln in out.splitlines()
                    if not ln.startswith(("default via", "back ")))
    who = box.identify(lambda command: (0, out))
    assert who.net == {} and who.net_cmdline() == ""


def test_the_address_is_the_one_the_harness_reached_the_box_by() -> None:
    """A box on two links: reached over its management NIC (eth1, no gateway:
    the host is on that subnet), its default route on eth0."""
    out = (DATA / "identify-labbox.txt").read_text()
    out = out.replace("back 10.0.2.2 dev eth0 src 10.0.2.15", "back 192.0.2.1 dev eth1 src "
                      "192.0.2.7")
    out += ("3: eth1    inet 192.0.2.7/28 brd 192.0.2.15 scope global eth1\n"
            "link eth1 52:54:00:ab:cd:ef\n")
    who = box.identify(lambda command: (0, out))
    assert who.net == {"dev": "eth1", "mac": "52:54:00:ab:cd:ef", "address": "192.0.2.7/28",
                       "gateway": ""}
    assert who.net_cmdline() == "cpa_harness.net=52:54:00:ab:cd:ef,192.0.2.7/28"


def test_identity_recorded_before_the_net_section_still_reads() -> None:
    out = (DATA / "identify-labbox.txt").read_text().partition("--- net")[0]
    who = box.identify(lambda command: (0, out))
    assert who.e820[-1].startswith("e820: remove") and who.net == {}


def test_identity_when_the_box_cannot_say() -> None:
    with pytest.raises(InfraError, match="could not read the box's identity .status 255"):
        box.identify(lambda command: (255, "ssh: connection closed"))


def test_a_console_command_that_exits_at_once(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match=r"box 'b': console command 'true' exited \(status 0\)"):
        box.console_answers(a_box(tmp_path, "true"), seconds=5)


def test_a_console_command_that_is_missing(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="console command 'no-such-console' did not start"):
        box.console_answers(a_box(tmp_path, "no-such-console"), seconds=5)


def test_a_console_that_answers_a_newline(tmp_path: Path) -> None:
    # a line that echoes a prompt for each line it is sent, as a getty does
    script = "while read -r l; do echo 'b login:'; done"
    seen = box.console_answers(a_box(tmp_path, f"sh -c \\\"{script}\\\""), seconds=5)
    assert b"b login:" in seen


def test_a_silent_console(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="showed nothing within 2s of a newline"):
        box.console_answers(a_box(tmp_path, "sleep 30"), seconds=2)


def test_a_console_server_that_is_not_there(tmp_path: Path) -> None:
    from harness.target.ssh import free_port
    with pytest.raises(InfraError, match="refused the connection"):
        box.console_answers(a_box(tmp_path, f"tcp://127.0.0.1:{free_port()}"), seconds=2)


def test_one_cell_at_a_time_per_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPA_HARNESS_CACHE", str(tmp_path / "cache"))
    b = a_box(tmp_path, "true")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""\
            import sys, time
            from pathlib import Path
            from harness.target import box, lab
            with box.taken(lab.load(Path(sys.argv[1])).box("b")):
                print("taken", flush=True)
                time.sleep(3)
            print("released", flush=True)
            """), str(tmp_path / "lab.toml")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "taken\n"
    start = time.monotonic()
    with box.taken(b):
        waited = time.monotonic() - start
        assert holder.stdout.readline() == "released\n"    # ours only once the other let go
    assert waited > 2.0
    holder.wait(10)


def test_doctor_does_not_connect_to_a_box_a_cell_has(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main
    from harness.target.ssh import generate_client_key
    monkeypatch.setenv("CPA_HARNESS_CACHE", str(tmp_path / "cache"))
    key, _ = generate_client_key(tmp_path)
    b = a_box(tmp_path, "sh -c true")
    path = tmp_path / "lab.toml"
    path.write_text(path.read_text().replace('key = "k"', f'key = "{key}"'))
    with box.taken(b):
        code = main(["doctor", "--lab", str(path)])
    out, _ = capsys.readouterr()
    assert code == 3
    assert "PROBLEM  b: in use by a cell on this host: not connected" in out


class FakeSsh:
    """The box over ssh, answering IDENTIFY from a capture; it records every command."""

    def __init__(self, identify: str, commands: list[str]) -> None:
        self.identify, self.commands = identify, commands

    def __enter__(self) -> FakeSsh:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def runner(self, timeout: float) -> Callable[[str], tuple[int, str]]:
        def run(command: str) -> tuple[int, str]:
            self.commands.append(command)
            return (0, self.identify) if command == box.IDENTIFY else (1, "not expected")
        return run


@pytest.mark.parametrize("drop,message", [
    ("kexec_loaded=", "box 'b': its kernel 6.1.0-50-amd64 has no kexec support: boot a "
                      "known-good kernel built with CONFIG_KEXEC"),
    ("kexec=", "box 'b' has no kexec-tools: apt install kexec-tools on it"),
])
def test_a_box_that_cannot_kexec_is_one_line_and_left_as_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drop: str, message: str) -> None:
    from harness.errors import UserError
    from harness.target.base import Timeouts
    from harness.target.box_target import BoxTarget, Health
    monkeypatch.setenv("CPA_HARNESS_CACHE", str(tmp_path / "cache"))
    out = (DATA / "identify-labbox.txt").read_text()
    out = "\n".join(ln for ln in out.splitlines() if not ln.startswith(drop))
    commands: list[str] = []
    monkeypatch.setattr(box, "connect", lambda b, seconds: FakeSsh(out, commands))
    health = Health()
    target = BoxTarget(a_box(tmp_path, "true"), tmp_path / "bzImage", tmp_path / "initrd", "",
                       tmp_path / "serial.log", None,
                       Timeouts(boot=5, first_pass=5, command=5, ssh=3), health)
    with pytest.raises(UserError) as e:
        target.start()
    assert e.value.line() == message
    # identified, and nothing else: no copy, no kexec, no power, not unhealthy
    assert commands == [box.IDENTIFY] and health.unhealthy == {}
    with box.taken(target.box, wait=False):    # and given back
        pass


def test_the_module_list_keys_the_build_by_names_alone() -> None:
    raw = (DATA / "lsmod-labbox.txt").read_text()
    header, *rows = raw.splitlines()
    listed = box._module_list(raw)
    # another boot: the same modules loaded in another order, with other use counts
    again = box._module_list("\n".join([header, *reversed(rows)]).replace(" 1 ", " 3 ") + "\n")
    assert listed == again
    names = [ln.split()[0] for ln in listed.splitlines()[1:]]
    assert names == sorted(names) and {"virtio_net", "virtio_blk", "ext4"} <= set(names)
    assert len(names) == len(rows)


def test_an_interrupt_while_a_box_is_brought_back_waits_until_it_is_back() -> None:
    import os
    import signal

    from harness.proc import interrupts_held
    done, said = [], []
    # As Python started from a terminal has it (a background job starts with
    # SIGINT ignored, which the harness rightly keeps ignored)
    was = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_held(said.append):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
                done.append("power_on")         # not cut short
        assert done == ["power_on"] and len(said) == 1
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, was)


@pytest.mark.parametrize("grub_says,problem", [
    ((0, ""), None),
    ((1, "/boot/grub/grub.cfg does not honour next_entry\n"),
     "boot by grub-reboot: /boot/grub/grub.cfg does not honour next_entry"),
])
def test_doctor_checks_grub_not_kexec_for_a_grub_reboot_box(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grub_says: tuple[int, str],
        problem: str | None) -> None:
    import dataclasses

    from harness import doctor
    from harness.target import grub
    out = "\n".join(ln for ln in (DATA / "identify-labbox.txt").read_text().splitlines()
                    if not ln.startswith("kexec="))          # no kexec-tools: not needed
    commands: list[str] = []

    class Ssh(FakeSsh):
        def runner(self, timeout: float) -> Callable[[str], tuple[int, str]]:
            def run(command: str) -> tuple[int, str]:
                commands.append(command)
                if command == grub.preflight_command():
                    return grub_says
                return (0, out) if command == box.IDENTIFY else (0, "/proc/config.gz")
            return run

    monkeypatch.setattr(box, "connect", lambda b, seconds: Ssh(out, commands))
    monkeypatch.setattr(box, "console_answers", lambda b: b"labbox login: ")
    b = dataclasses.replace(a_box(tmp_path, "true"), boot="grub-reboot")
    found, seen = doctor._box_connected(b)
    assert grub.preflight_command() in commands
    assert not any("kexec-tools" in line or "kexec support" in line for line in found)
    if problem is None:
        assert found == [] and any(line.startswith("grub-reboot: its GRUB") for line in seen)
    else:
        assert [line for line in found if line.startswith(problem)], found


@pytest.mark.parametrize("console_says,still_up,refused", [
    ("[   30.0] kexec_core: Starting new kernel\n", True, False),   # seen: the kexec went
    ("", True, True),       # silent, and the old boot still answers: it never happened
    ("", False, False),     # silent, and the old kernel gone: the boot's own wait decides
])
def test_a_kexec_that_never_happened_is_not_the_kernels_hang(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, console_says: str, still_up: bool,
        refused: bool) -> None:
    import pexpect

    from harness.target import box_target
    from harness.target.base import Timeouts
    monkeypatch.setattr(box_target, "KEXEC_SEEN", 2.0)
    old = "ce493067-d1ec-4c3d-a9e7-e51c61dc2418"

    class Box(FakeSsh):
        def runner(self, timeout: float) -> Callable[[str], tuple[int, str]]:
            return lambda command: (0, old + "\n")

    def connect(b: lab.Box, seconds: float) -> FakeSsh:
        if not still_up:
            raise InfraError("box 'b': ssh to root@127.0.0.1:2 did not answer")
        return Box("", [])

    monkeypatch.setattr(box, "connect", connect)
    target = box_target.BoxTarget(a_box(tmp_path, "true"), tmp_path / "k", tmp_path / "i", "",
                                  tmp_path / "serial.log", None,
                                  Timeouts(boot=5, first_pass=5, command=5, ssh=3),
                                  box_target.Health())
    target.known_boot_id = old
    target.console.attach(pexpect.spawn("sh", ["-c", f"printf '{console_says}'; sleep 30"]))
    if refused:
        with pytest.raises(InfraError, match="did not start the kernel under test within 2s: "
                                             f"the box still runs its known-good boot {old}"):
            target._kexec_seen()
    else:
        target._kexec_seen()
    target.console.close()
