"""The simulated lab box (ci/labbox.sh), for real: stock Debian 12 in a QEMU VM
the harness does not start, its console behind ser2net, its power through
QMP. What the lab code stands on: the box answers ssh with the host key its
lab file pins, its console server shows output after a newline, its power
commands boot it again (a new boot id), and `doctor --lab` finds nothing wrong.
Then cells on it: the CPA cell kexec'd from Debian's kernel passes and the box
is back on that kernel afterwards; a kernel that panics at boot is a failure
and a power cycle brings the box back; a failing power command is an
infrastructure error, and the box is not used again in that run.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest
from helpers import as_from_a_terminal, guest_command, wait_for_file

from harness.target import lab
from harness.target.ssh import GuestSsh, free_port

pytestmark = pytest.mark.boot

SCRIPT = Path(__file__).resolve().parent.parent / "ci" / "labbox.sh"
UP = 420            # TCG boot of a stock Debian under a loaded host
BOOT_ID = "cat /proc/sys/kernel/random/boot_id"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lab.Box]:
    where = tmp_path_factory.mktemp("labbox")
    env = {**os.environ, "LABBOX_SSH_PORT": str(free_port()),
           "LABBOX_CONSOLE_PORT": str(free_port())}
    subprocess.run(["bash", str(SCRIPT), "start", str(where)], env=env, check=True,
                   timeout=1800)
    try:
        yield lab.load(where / "lab.toml").box("labbox")
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(where)], timeout=60)
        for pidfile in ("qemu.pid", "ser2net.pid"):
            if (where / pidfile).exists():
                pid = int((where / pidfile).read_text())
                assert not Path(f"/proc/{pid}").exists(), f"{pidfile}: {pid} still runs"


def ssh_to(box: lab.Box) -> GuestSsh:
    ssh = GuestSsh()
    ssh.connect(host=box.host, port=box.port, key_path=box.key, host_key_line=box.host_key,
                deadline=time.monotonic() + UP)
    return ssh


def boot_id(box: lab.Box) -> str:
    with ssh_to(box) as ssh:
        c = ssh.run(BOOT_ID, 60)
    assert c.status == 0, c.stderr
    return c.stdout.strip()


def test_the_box_runs_its_own_debian_kernel_with_kexec(box: lab.Box) -> None:
    with ssh_to(box) as ssh:
        c = ssh.run("uname -r; command -v kexec", 60)
    assert c.status == 0
    assert c.stdout.split() == [box.known_good, "/usr/sbin/kexec"]


def test_its_console_server_answers_a_newline(box: lab.Box) -> None:
    boot_id(box)        # up: getty is on the line
    seen = b""
    with socket.create_connection((box.console.host, box.console.port), timeout=10) as s:
        s.sendall(b"\r\n")
        end = time.monotonic() + 30
        while b"login:" not in seen and time.monotonic() < end:
            try:
                seen += s.recv(4096)
            except TimeoutError:
                break
    assert b"labbox login:" in seen, seen[-200:]


def test_doctor_finds_nothing_wrong(box: lab.Box, tmp_path: Path) -> None:
    lab_file = Path(box.power["power_cycle"][-1]) / "lab.toml"
    r = subprocess.run([sys.executable, "-m", "harness", "doctor", "--lab", str(lab_file)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok       labbox: root@127.0.0.1" in r.stdout


def test_power_commands_boot_it_again(box: lab.Box) -> None:
    before = boot_id(box)
    subprocess.run(box.power["power_cycle"], check=True, timeout=120)
    after = boot_id(box)
    assert after and after != before
    subprocess.run(["bash", str(SCRIPT), "reset", box.power["power_cycle"][-1]], check=True,
                   timeout=60)
    time.sleep(5)       # the reset itself is instant; the old ssh server is gone with it
    assert boot_id(box) not in (before, after)


# --- cells on the box -------------------------------------------------------

def run_on_box(box: lab.Box, out: Path, *extra: str,
               lab_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`cpa-harness boot --arch x86_64 --lab FILE --target labbox`, as a user types it."""
    lab_file = lab_file or Path(box.power["power_cycle"][-1]) / "lab.toml"
    return subprocess.run([sys.executable, "-m", "harness", "boot", "--arch", "x86_64",
                           "--lab", str(lab_file), "--target", box.name, "--out", str(out),
                           *extra], capture_output=True, text=True, timeout=1800)


def cell_result(out: Path) -> dict[str, object]:
    [path] = (out / "cells").glob("*/result.json")
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def test_the_cpa_cell_runs_on_the_box_by_kexec_and_the_box_comes_back(
        box: lab.Box, tmp_path: Path) -> None:
    """...through a console server that restarts while the kernel under test
    runs: the line is connected again and the gap is in the serial log."""
    before = boot_id(box)
    out = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-m", "harness", "boot", "--arch", "x86_64",
                            "--lab", str(Path(box.power["power_cycle"][-1]) / "lab.toml"),
                            "--target", box.name, "--out", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # a cold build of the box's own kernel on a busy 2-core host comes first
        wait_for_file(out / "cells" / "x86_64-boot" / "guest.json", within=1800)
        subprocess.run(["bash", str(SCRIPT), "console-restart",
                        str(Path(box.power["power_cycle"][-1]))], check=True, timeout=60)
        said, _ = run.communicate(timeout=1500)
    finally:
        run.kill()
    res = cell_result(out)
    assert run.returncode == 0, said[-5000:]
    assert res["verdict"] == "pass" and res["accel"] == "box"
    target = res["target"]
    assert isinstance(target, dict) and target["kind"] == "box" and target["box"] == "labbox"
    assert target["identity"]["vendor"] == "QEMU" and target["identity"]["e820"]
    assert target["identity"]["boot_id"] == before
    # the kernel under test ran: its own boot id, the nonce on its command line
    assert res["boot_id"] not in ("", before)
    assert "cpa_harness.nonce=" in res["guest"]["cmdline"]
    assert res["cpa_selftest"] and res["passes_proven"] >= 1
    # and the box is back on Debian's kernel, in a boot of its own
    back = target["back"]
    assert back["kernel"] == box.known_good and back["boot_id"] not in (before, res["boot_id"])
    with ssh_to(box) as ssh:
        c = ssh.run(f"uname -r; {BOOT_ID}; ls /var/tmp/cpa-harness", 60)
    assert c.stdout.split() == [box.known_good, back["boot_id"], "bzImage", "initrd.cpio"]
    # the kernel under test took the box's own address (guest/init)
    assert "cpa_harness.net=52:54:00:12:34:56,10.0.2.15/24,10.0.2.2" in target["cmdline"]
    assert target["kexec_to_ready_s"] > 0
    # the console server's restart: a gap (two, when the server took the first
    # reconnection before it could reach the line), recorded where a reader looks
    gaps = target["console_gaps"]
    assert 1 <= len(gaps) <= 3 and all(0 < gap < 60 for _, gap in gaps), gaps
    serial = (out / "cells" / "x86_64-boot" / "serial.log").read_text(errors="replace")
    assert re.search(r"\[cpa-harness: the console connection dropped; connected again after "
                     r"[\d.]+s \(\d+ tr(?:y|ies)\)", serial), serial[-3000:]
    assert any("the console connection dropped; connected again" in n
               for n in res["notes"]), res["notes"]
    assert "no interface has the MAC" not in serial


def test_a_kernel_that_panics_at_boot_is_a_failure_and_the_box_recovers(
        box: lab.Box, tmp_path: Path) -> None:
    r = run_on_box(box, tmp_path / "run", "--cmdline", "rdinit=/bin/true")
    res = cell_result(tmp_path / "run")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    assert res["verdict"] == "fail" and "panic" in str(res["reason"]), res["reason"]
    back = res["target"]["back"]        # type: ignore[index]
    assert back["kernel"] == box.known_good and back["power_cycled"] is True
    assert boot_id(box) == back["boot_id"]


def test_a_kernel_that_hangs_is_a_hang_and_a_power_cycle_brings_the_box_back(
        box: lab.Box, tmp_path: Path) -> None:
    """Wedged from outside once it is up: LKDTM's HARDLOCKUP on its only CPU
    (maxcpus=1; under TCG no NMI watchdog reports it), so console and ssh go
    silent and only the power commands can bring the box back."""
    out = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-m", "harness", "boot", "--arch", "x86_64",
                            "--lab", str(Path(box.power["power_cycle"][-1]) / "lab.toml"),
                            "--target", box.name, "--out", str(out), "--cmdline", "maxcpus=1"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # a cold build of the box's own kernel on a busy 2-core host comes first
        wait_for_file(out / "cells" / "x86_64-boot" / "guest.json", within=1800)
        time.sleep(5)       # the runtime checks' commands done
        wedge = guest_command(out, "x86_64-boot", "echo HARDLOCKUP > "
                              "/sys/kernel/debug/provoke-crash/DIRECT")
        said, _ = run.communicate(timeout=1500)
    finally:
        run.kill()
    wedge.kill()
    wedge.wait(10)
    res = cell_result(out)
    assert run.returncode == 1, said[-3000:]
    assert res["verdict"] == "fail" and str(res["reason"]).startswith("hang: "), res["reason"]
    back = res["target"]["back"]        # type: ignore[index]
    assert back["kernel"] == box.known_good and back["power_cycled"] is True
    assert boot_id(box) == back["boot_id"]


def test_a_failing_power_command_is_an_infra_error_and_the_box_unhealthy(
        box: lab.Box, tmp_path: Path) -> None:
    where = Path(box.power["power_cycle"][-1])
    broken = tmp_path / "lab.toml"
    broken.write_text(re.sub(r'(?m)^power_cycle = .*$', 'power_cycle = "false"',
                             (where / "lab.toml").read_text()))
    assert 'power_cycle = "false"' in broken.read_text()
    subprocess.run(["bash", str(SCRIPT), "power-off", str(where)], check=True, timeout=60)
    out = tmp_path / "run"
    try:
        # two cells on the box, one after the other: the second is not run
        r = subprocess.run([sys.executable, "-m", "harness", "run", "--lab", str(broken),
                            "--target", box.name, "--jobs", "1", "--out", str(out),
                            "--cell", "x86_64-gbpages", "--cell", "x86_64-debug-pagealloc"],
                           capture_output=True, text=True, timeout=1800)
    finally:
        subprocess.run(["bash", str(SCRIPT), "power-on", str(where)], check=True, timeout=60)
    assert r.returncode == 3, r.stdout[-3000:] + r.stderr[-2000:]
    results = [json.loads((out / "cells" / name / "result.json").read_text())
               for name in ("x86_64-gbpages", "x86_64-debug-pagealloc")]
    # the first cell finds the failing command (and its one retry, like any
    # cell's after an infrastructure error, finds the box unhealthy); the
    # other is not run on it, and says why
    for res in results:
        assert res["verdict"] == "infra-error", res["reason"]
        assert "power command 'false' failed with status 1" in res["reason"], res["reason"]
    assert sum("box 'labbox' is unhealthy" in res["reason"] for res in results) >= 1
    boot_id(box)        # up again for whatever follows


# --- bad input, with the box left as it was found ---------------------------

def lab_with(box: lab.Box, tmp_path: Path, key: str, value: str) -> Path:
    where = Path(box.power["power_cycle"][-1])
    changed = tmp_path / "lab.toml"
    changed.write_text(re.sub(rf'(?m)^{key} = .*$', f'{key} = "{value}"',
                              (where / "lab.toml").read_text()))
    assert f'{key} = "{value}"' in changed.read_text()
    return changed


def stranger_key(tmp_path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "stranger")], check=True)
    return str(tmp_path / "stranger")


@pytest.mark.parametrize("key,value,code,verdict,said", [
    # a console command that exits at once
    ("console", lambda tmp: "sh -c 'echo no such console >&2; exit 1'", 3, "infra-error",
     r"box 'labbox': the console \(sh -c .*\) closed at once, status 1: no such console"),
    # ssh refusing the key: it answered, so it is not power-cycled
    ("key", stranger_key, 2, "user-error",
     r"box 'labbox': ssh to root@127.0.0.1:\d+ refused the key \S+/stranger .*: add "
     r"\S+/stranger.pub to root's ~/.ssh/authorized_keys"),
])
def test_bad_input_is_one_line_and_the_box_untouched(
        box: lab.Box, tmp_path: Path, key: str, value: Callable[[Path], str], code: int,
        verdict: str, said: str) -> None:
    before = boot_id(box)
    r = run_on_box(box, tmp_path / "run", lab_file=lab_with(box, tmp_path, key, value(tmp_path)))
    assert r.returncode == code, r.stdout[-3000:] + r.stderr[-2000:]
    res = cell_result(tmp_path / "run")
    assert res["verdict"] == verdict
    assert re.search(said, str(res["reason"]) + ": " + r.stdout + r.stderr), res["reason"]
    assert boot_id(box) == before       # never kexec'd, never power-cycled


# --- manual sessions on the box ---------------------------------------------

def session_on_box(box: lab.Box, mode: str, out: Path) -> pexpect.spawn:
    lab_file = Path(box.power["power_cycle"][-1]) / "lab.toml"
    child = pexpect.spawn(sys.executable, ["-m", "harness", "boot", "--arch", "x86_64", mode,
                                           "--lab", str(lab_file), "--target", box.name,
                                           "--out", str(out)],
                          encoding="utf-8", codec_errors="replace", timeout=900,
                          dimensions=(40, 200), preexec_fn=as_from_a_terminal)
    child.logfile_read = open(out.parent / f"{out.name}.pty.log", "w")   # noqa: SIM115
    return child


def test_an_ssh_session_on_the_box_and_the_box_back_after_it(
        box: lab.Box, tmp_path: Path) -> None:
    before = boot_id(box)
    out = tmp_path / "run"
    child = session_on_box(box, "--ssh", out)
    child.expect(r"guest up \(boot id [0-9a-f-]{36}\)")
    child.expect(rf"ssh -i \S+ -p {box.port} .* root@{box.host}")   # for a second terminal
    child.expect("ssh shell follows")
    r = subprocess.run([sys.executable, "-m", "harness", "ssh", str(out), "--", "cat",
                        "/proc/cmdline"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "cpa_harness.nonce=" in r.stdout and "cpa_harness.net=" in r.stdout
    # stay past the first self-test pass (30 s after boot), then leave
    child.sendline("sleep 40; echo DONE-$((6*7))")
    child.expect("DONE-42", timeout=180)
    child.sendline("exit")
    child.expect(r"results: ", timeout=600)
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    res = cell_result(out)
    assert child.exitstatus == 0, res["reason"]
    back = res["target"]["back"]        # type: ignore[index]
    assert back["kernel"] == box.known_good and back["boot_id"] != before
    assert boot_id(box) == back["boot_id"]


def test_ctrl_c_in_a_session_on_the_box_puts_the_box_back(
        box: lab.Box, tmp_path: Path) -> None:
    before = boot_id(box)
    out = tmp_path / "run"
    child = session_on_box(box, "--interactive", out)
    child.expect(r"booting x86_64-boot \(box\)")    # kexec'd: the kernel under test runs
    child.sendintr()
    child.expect(pexpect.EOF, timeout=600)
    child.close()
    assert child.exitstatus == 130 or child.signalstatus is not None
    res = cell_result(out)
    back = res["target"]["back"]        # type: ignore[index]
    assert back["kernel"] == box.known_good and back["boot_id"] != before, res["target"]
    assert boot_id(box) == back["boot_id"]


# --- the one-shot GRUB entry --------------------------------------------------

def test_the_cpa_cell_runs_on_the_box_by_a_one_shot_grub_entry_and_the_box_comes_back(
        box: lab.Box, tmp_path: Path) -> None:
    """boot = "grub-reboot": the box's GRUB (which boots it every time) boots
    the kernel under test once from the entry the harness wrote, clearing
    next_entry as it does, so the reboot afterwards lands on Debian's default
    entry. Characters that are GRUB script reach the kernel as they were given."""
    before = boot_id(box)
    hostile = "cpa_x=$root;{}#`"
    r = run_on_box(box, tmp_path / "run", "--cmdline", hostile,
                   lab_file=lab_with(box, tmp_path, "boot", "grub-reboot"))
    res = cell_result(tmp_path / "run")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    proven = res["passes_proven"]
    assert res["verdict"] == "pass" and res["cpa_selftest"]
    assert isinstance(proven, int) and proven >= 1
    target = res["target"]
    assert isinstance(target, dict) and target["boot"] == "grub-reboot"
    assert target["identity"]["boot_id"] == before
    # GRUB booted it from the scratch directory, with this cell's nonce
    assert res["boot_id"] not in ("", before)
    nonce = re.search(r"cpa_harness\.nonce=([0-9a-f]+)", target["cmdline"])
    assert nonce, target["cmdline"]
    guest_cmdline = str(res["guest"]["cmdline"])     # type: ignore[index]
    assert guest_cmdline.startswith("BOOT_IMAGE=/var/tmp/cpa-harness/bzImage "), guest_cmdline
    assert f" {hostile} " in f" {guest_cmdline} ", guest_cmdline
    assert f"cpa_harness.nonce={nonce[1]}" in guest_cmdline.split()
    assert target["kexec_to_ready_s"] > 0
    # back on Debian's kernel in a boot of its own, by reboot alone; the entry
    # is still there (harmless) but nothing chooses it: next_entry is spent
    back = target["back"]
    assert back["kernel"] == box.known_good and back["power_cycled"] is False
    assert back["boot_id"] not in (before, res["boot_id"])
    with ssh_to(box) as ssh:
        c = ssh.run(f"{BOOT_ID}; cat /proc/cmdline; grub-editenv list; "
                    "grep -c menuentry /boot/grub/custom.cfg; grep -o 'cpa-harness-[0-9a-f]*' "
                    "/boot/grub/custom.cfg", 60)
    assert c.status == 0, c.stderr
    lines = c.stdout.splitlines()
    assert lines[0] == back["boot_id"]
    assert lines[1].startswith(f"BOOT_IMAGE=/boot/vmlinuz-{box.known_good} "), lines[1]
    assert lines[2:] == ["next_entry=", "1", f"cpa-harness-{nonce[1]}"], lines
