"""The guest over ssh, for real: an x86_64 and an i386 guest, one at a time.

Each guest boots the smoke kernel (built and cached as for `cpa-harness run`)
with an initramfs holding a fresh client key. The test connects as soon as
the guest's init prints its host key, before dropbear is up, so connect()
has to ride out QEMU's early resets. No self-test period is waited for.

The first tests need no guest: they check the key, port and host-key helpers
and connect()'s deadline against a port that resets every connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from harness import paths
from harness.arches import get_arch
from harness.cells import KERNEL_FRAGMENTS
from harness.errors import InfraError
from harness.image.initramfs import build_initramfs
from harness.kernel import build as kbuild
from harness.kernel import source
from harness.probes import flush, stats
from harness.target.console import Console
from harness.target.qemu import QemuParams
from harness.target.serial import new_nonce
from harness.target.ssh import (
    HOSTKEY_RE,
    GuestSsh,
    HostKeyMismatch,
    SshTimeout,
    _disabled_for,
    free_port,
    generate_client_key,
    host_key_lines,
    parse_host_key_line,
)
from harness.target.vm import QemuTarget

pytestmark = pytest.mark.boot

# A real Ed25519 public key that no guest has.
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFGIGw03CGkaUjCGiJR4rxap16TBH0h46dgHyoSwG+Y8 x"
BOOT_TIMEOUT = 120.0
SSH_DEADLINE = 60.0
COMMAND = 60.0


# --- without a guest --------------------------------------------------------

def test_client_key_is_fresh_and_private(tmp_path: Path) -> None:
    key, line = generate_client_key(tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    kind, blob, comment = line.split()
    assert kind == "ssh-rsa" and comment == "cpa-harness"
    loaded = paramiko.RSAKey.from_private_key_file(str(key))
    assert loaded.get_base64() == blob and loaded.get_bits() == 2048
    _, again = generate_client_key(tmp_path)
    assert again != line


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_host_key_line_from_serial() -> None:
    serial = (b"[    5.1] random: crng init done\r\n"
              b"CPA-HARNESS-HOSTKEY " + OTHER_KEY.encode() + b"\r\n"
              b"CPA-HARNESS-READY boot_id=0b5f38a4-1d55-4a3c-9f0b-0b1d2c3e4f50\r\n")
    lines = host_key_lines(serial)
    assert lines == [" ".join(OTHER_KEY.split()[:2])]
    assert parse_host_key_line("CPA-HARNESS-HOSTKEY " + OTHER_KEY).get_name() == "ssh-ed25519"
    assert parse_host_key_line(lines[0]) == parse_host_key_line(OTHER_KEY)


def test_client_offers_only_the_pinned_host_key_type() -> None:
    disabled = _disabled_for(parse_host_key_line(OTHER_KEY))["keys"]
    assert "ssh-ed25519" not in disabled
    assert {"rsa-sha2-512", "rsa-sha2-256", "ecdsa-sha2-nistp256"} <= set(disabled)


def test_host_key_pattern_waits_for_the_line_end() -> None:
    # pexpect matches against what has arrived so far: a key cut by the end of
    # a read must not match, or a truncated key would be pinned.
    cut = b"CPA-HARNESS-HOSTKEY " + OTHER_KEY.encode()[:40]
    assert HOSTKEY_RE.search(cut) is None
    assert HOSTKEY_RE.search(b"CPA-HARNESS-HOSTKEY " + OTHER_KEY.encode()) is not None


@pytest.mark.parametrize("bad", ["", "ssh-ed25519", "ssh-ed25519 AAAA[6.1] garbled",
                                 "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFGIGw03"])
def test_garbled_host_key_line_is_an_infra_error(bad: str) -> None:
    with pytest.raises(InfraError, match="bad host key line"):
        parse_host_key_line(bad)


def test_connect_gives_up_at_the_deadline(tmp_path: Path) -> None:
    """Like QEMU's forward before dropbear listens: accept, then close at once."""
    key, _ = generate_client_key(tmp_path)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    stop = threading.Event()
    accepted = 0

    def reset_all() -> None:
        nonlocal accepted
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted += 1
            conn.close()
    t = threading.Thread(target=reset_all, daemon=True)
    t.start()
    ssh = GuestSsh()
    start = time.monotonic()
    try:
        with pytest.raises(InfraError) as e:
            ssh.connect(port=port, key_path=key, host_key_line=OTHER_KEY,
                        deadline=time.monotonic() + 3)
    finally:
        stop.set()
        t.join()
        server.close()
    took = time.monotonic() - start
    assert 2.9 < took < 6
    assert f"ssh to 127.0.0.1:{port} did not answer within 3s" in e.value.message
    assert "\n" not in e.value.line()
    assert ssh.attempts > 1 and accepted >= ssh.attempts - 1


# --- a real guest -----------------------------------------------------------

def Drain(m: Console) -> contextlib.AbstractContextManager[None]:
    """Read the serial console while ssh works: a full pty would stall the guest."""
    return m.draining()


@dataclass
class Guest:
    arch: str
    machine: Console
    ssh: GuestSsh
    port: int
    key: Path
    host_key_line: str
    connect_seconds: float


def _kernel(arch_name: str) -> Path:
    cache = paths.cache_dir()
    arch = get_arch(arch_name)
    req = kbuild.BuildRequest(source.resolve(None, cache), arch,
                              kbuild.fragments_for(arch, list(KERNEL_FRAGMENTS[arch.name])))
    return kbuild.build(req, cache).image


@pytest.fixture(scope="module", params=["x86_64", "i386"])
def guest(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    arch = get_arch(request.param)
    kernel = _kernel(arch.name)
    work = tmp_path_factory.mktemp(f"ssh-{arch.name}")
    key, pub = generate_client_key(work)
    initrd = build_initramfs(arch, paths.cache_dir(), authorized_key=pub)
    port = free_port()
    params = QemuParams(arch=arch, accel="tcg", cpu=arch.cpu, memory_mb=1024, smp=2,
                        cmdline="", kernel=kernel, initrd=initrd, ssh_port=port,
                        nonce=new_nonce())
    target = QemuTarget(params, work / "serial.log", is_fatal=lambda f, k: False)
    m = target.console
    ssh = GuestSsh()
    try:
        target.start()
        # Printed just before dropbear starts: connecting now meets a port
        # QEMU accepts while nothing in the guest listens yet.
        hk = m.wait_for(HOSTKEY_RE, BOOT_TIMEOUT, "the guest's host key line")
        assert hk["nonce"].decode() == params.nonce
        line = f"{hk['type'].decode()} {hk['key'].decode()}"
        start = time.monotonic()
        with Drain(m):
            ssh.connect(port=port, key_path=key, host_key_line=line,
                        deadline=time.monotonic() + SSH_DEADLINE)
        yield Guest(arch.name, m, ssh, port, key, line, time.monotonic() - start)
    finally:
        ssh.close()
        target.power_off(30)
        target.release()
        # The image holds this run's key and will never be used again.
        initrd.unlink(missing_ok=True)


def test_connected_with_the_pinned_key(guest: Guest) -> None:
    assert guest.host_key_line.startswith("ssh-ed25519 ")
    assert guest.connect_seconds < SSH_DEADLINE
    serial = Path(guest.machine.serial_log).read_bytes()
    assert host_key_lines(serial) == [guest.host_key_line]
    assert guest.ssh.client is not None
    t = guest.ssh.client.get_transport()
    assert t is not None
    assert t.get_remote_server_key() == parse_host_key_line(guest.host_key_line)


def test_status_stdout_stderr_kept_apart(guest: Guest) -> None:
    with Drain(guest.machine):
        c = guest.ssh.run("echo out; echo err >&2; echo more; exit 3", COMMAND)
        assert (c.status, c.stdout, c.stderr) == (3, "out\nmore\n", "err\n")
        c = guest.ssh.run("uname -m; id -u", COMMAND)
    machine = {"x86_64": "x86_64", "i386": "i686"}[guest.arch]
    assert (c.status, c.stdout, c.stderr) == (0, f"{machine}\n0\n", "")


def test_many_commands_back_to_back(guest: Guest) -> None:
    # Each channel is closed before the next opens: dropbear once refused
    # channels opened back to back ("Unable to open channel").
    with Drain(guest.machine):
        outs = [guest.ssh.run(f"echo {i}", COMMAND).stdout for i in range(25)]
    assert outs == [f"{i}\n" for i in range(25)]


def test_command_timeout_is_typed_and_the_connection_survives(guest: Guest) -> None:
    with Drain(guest.machine):
        start = time.monotonic()
        with pytest.raises(SshTimeout) as e:
            guest.ssh.run("sleep 20", 1.0)
        assert time.monotonic() - start < 5
        assert e.value.seconds == 1.0 and "sleep 20" in e.value.what
        assert guest.ssh.run("echo still here", COMMAND).stdout == "still here\n"


def test_put_and_read_back(guest: Guest, tmp_path: Path) -> None:
    text = tmp_path / "hello.txt"
    text.write_text("hello from the host\nsecond line\n")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(300_000))
    with Drain(guest.machine):
        guest.ssh.put(text, "/tmp/hello.txt", 0o640)
        c = guest.ssh.run("cat /tmp/hello.txt; stat -c %a /tmp/hello.txt", COMMAND)
        assert c.stdout == "hello from the host\nsecond line\n640\n"
        guest.ssh.put(blob, "/tmp/dir with space.bin", 0o755)
        c = guest.ssh.run("sha256sum '/tmp/dir with space.bin'; "
                          "stat -c '%a %s' '/tmp/dir with space.bin'", COMMAND)
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    assert c.stdout.split("\n")[:2] == [f"{digest}  /tmp/dir with space.bin", "755 300000"]


def test_wrong_pinned_key_is_refused(guest: Guest) -> None:
    other = GuestSsh()
    start = time.monotonic()
    with Drain(guest.machine), pytest.raises(HostKeyMismatch) as e:
        other.connect(port=guest.port, key_path=guest.key, host_key_line=OTHER_KEY,
                      deadline=time.monotonic() + SSH_DEADLINE)
    # refused at once, not retried until the deadline
    assert time.monotonic() - start < 15
    assert "not the pinned" in e.value.message
    assert other.client is None


def test_snapshot_over_ssh(guest: Guest) -> None:
    with Drain(guest.machine):
        snap = stats.collect(guest.ssh.runner(COMMAND), label="boot", arch=guest.arch)
    assert snap.absent == [] and snap.errors == {}
    assert snap.meminfo is not None and snap.meminfo["DirectMap4k"] > 0
    large = "DirectMap2M" if guest.arch == "x86_64" else "DirectMap4M"
    assert large in snap.meminfo
    assert snap.vmstat is not None and "nr_tlb_local_flush_one" in snap.vmstat
    assert snap.cpa_stats is not None and len(snap.cpa_stats) == 7
    assert snap.ptdump and snap.ptdump["DirectMap4k"] > 0 and snap.ptdump["runs"] > 0
    assert snap.tainted is not None
    if guest.arch == "i386":
        # meminfo's counters and the page tables agree on i386
        assert set(stats.direct_map_disagreement(snap).values()) == {0}
    # the same through the serial shell
    serial = stats.collect(lambda cmd: guest.machine.run(cmd, COMMAND), label="serial",
                           arch=guest.arch)
    assert serial.absent == [] and serial.errors == {}
    assert serial.meminfo is not None and set(serial.meminfo) == set(snap.meminfo)
    assert serial.ptdump is not None and set(serial.ptdump) == set(snap.ptdump)
    assert serial.tainted == snap.tainted


def _wait_for_a_selftest_period(m: Console) -> None:
    """The pageattr-test kthread runs every 30 s: 36 s hold at least one run."""
    with Drain(m):
        time.sleep(36)


def test_flush_accounting_counts_only_inside_its_window(guest: Guest) -> None:
    """One self-test period inside the window: CPA and TLB flush calls are counted;
    one more period after it: nothing more is counted."""
    run = guest.ssh.runner(COMMAND)
    prof = flush.Profiler(lambda c: _drained(guest.machine, run, c), show_times=False)
    prof.setup()
    assert "__cpa_flush_tlb" in prof.traceable and "flush_tlb_all" in prof.traceable
    assert set(prof.traceable) | set(prof.untraceable) == set(flush.FLUSH_PATHS)
    prof.start()
    _wait_for_a_selftest_period(guest.machine)
    inside = prof.stop("period")
    _wait_for_a_selftest_period(guest.machine)
    after = prof.read("after")
    prof.teardown()
    # the self-test changes _PAGE_GLOBAL (no cache attribute): TLB flushes, no CLFLUSH
    assert inside.groups["cpa_tlb"] + inside.groups["global_tlb"] > 0
    assert inside.counts["__cpa_flush_tlb"] > 0 or inside.counts["flush_tlb_all"] > 0
    assert after.counts == inside.counts, "counted outside the window"
    assert inside.time_us is None


def _drained(m: Console, run: flush.Runner, cmd: str) -> tuple[int, str]:
    with Drain(m):
        return run(cmd)
