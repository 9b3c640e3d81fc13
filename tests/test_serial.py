"""The serial line view: markers found however kernel records split them."""

from __future__ import annotations

import re

import pytest

from harness.target.serial import SerialView, new_nonce, ready_re
from harness.target.ssh import host_key_lines

BOOT_ID = "c4da2ef0-b3fb-4682-8cbf-96a34baff480"
# Seen in tests/test_selfcheck_boot.py's SOFTLOCKUP boot (i386): the kernel's
# record began in the middle of the marker init echoed.
SEEN = (b"CPA-HARNESS-READ[    1.558734][   T34] input: ImExPS/2 Generic Explorer Mouse as "
        b"/devices/platform/i8042/serio1/input/input3\r\n"
        b"Y boot_id=" + BOOT_ID.encode() + b"\r\n")
OLD_READY = re.compile(rb"CPA-HARNESS-READY boot_id=([0-9a-f-]{36})")
RECORD = b"[    2.104577][    T1] virtio_net virtio0 eth0: renamed from something\r\n"


def viewed(*chunks: bytes) -> SerialView:
    v = SerialView()
    for c in chunks:
        v.feed(c)
    return v


def test_the_split_seen_in_a_real_boot_is_joined() -> None:
    v = viewed(SEEN)
    m = v.search(OLD_READY, 0)
    assert m is not None and m.group(1).decode() == BOOT_ID
    # the kernel's record is a line of its own, before the joined one
    lines = bytes(v.text).split(b"\n")
    assert lines[0].startswith(b"[    1.558734][   T34] input: ImExPS/2")
    assert lines[1] == b"CPA-HARNESS-READY boot_id=" + BOOT_ID.encode()
    # ...where the raw bytes never held the marker
    assert OLD_READY.search(SEEN) is None


@pytest.mark.parametrize("records", [1, 2])
def test_a_marker_split_at_every_position_is_found(records: int) -> None:
    nonce = new_nonce()
    marker = f"CPA-HARNESS-READY nonce={nonce} boot_id={BOOT_ID}\r\n".encode()
    for cut in range(len(marker) + 1):
        raw = marker[:cut] + RECORD * records + marker[cut:]
        # and fed in pieces of every size, as reads end where they end
        for step in (1, 7, len(raw)):
            v = viewed(*(raw[i:i + step] for i in range(0, len(raw), step)))
            m = v.search(ready_re(nonce), 0)
            assert m is not None, (cut, step)
            assert m.group(1).decode() == BOOT_ID
            assert bytes(v.text).count(b"virtio_net") == records


def test_a_command_marker_split_by_records_and_escapes() -> None:
    raw = (b"~ # \x1b[6n" + b"echo '@@CPA''-3-BEGIN@@'; true\r\n"
           + b"@@CPA-3-BE" + RECORD + b"GIN@@\r\n"
           + b"output li" + RECORD + RECORD + b"ne\r\n@@CPA-3-END-0@@\r\n")
    v = viewed(raw)
    begin = v.search(re.compile(rb"@@CPA-3-BEGIN@@"), 0)
    end = v.search(re.compile(rb"@@CPA-3-END-(\d+)@@"), 0)
    assert begin is not None and end is not None
    between = v.between(v.offset(begin), v.offset(end, "start")).split(b"\n")
    assert b"output line" in between
    assert b"\x1b" not in bytes(v.text)
    # the typed line's echo is not the marker: the quotes split it
    assert v.search(re.compile(rb"@@CPA-3-BEGIN@@"), 0).start() > bytes(v.text).index(b"''")


def test_only_complete_lines_match() -> None:
    v = viewed(b"CPA-HARNESS-READY nonce=abc boot_id=" + BOOT_ID.encode())
    assert v.search(ready_re("abc"), 0) is None
    v.feed(b"\r\n")
    assert v.search(ready_re("abc"), 0) is not None


def test_a_marker_without_this_boots_nonce_is_not_taken() -> None:
    nonce = new_nonce()
    fake = (b"[    5.000000][  T100] CPA-HARNESS-READY boot_id=" + BOOT_ID.encode() + b"\r\n"
            b"[    5.000001][  T100] CPA-HARNESS-READY nonce=" + new_nonce().encode()
            + b" boot_id=" + BOOT_ID.encode() + b"\r\n"
            # the command line shows the nonce, but not as a marker
            b"[    0.000000][    T0] Command line: console=ttyS0 cpa_harness.nonce="
            + nonce.encode() + b"\r\n")
    assert viewed(fake).search(ready_re(nonce), 0) is None
    real = b"[    2.5][  T1] CPA-HARNESS-READY nonce=" + nonce.encode() + b" boot_id=" \
        + BOOT_ID.encode() + b"\r\n"
    assert viewed(fake, real).search(ready_re(nonce), 0) is not None


def test_host_key_lines_of_this_boot_only() -> None:
    key = "AAAAC3NzaC1lZDI1NTE5AAAAIHhZ8S5l1mS6yDVmJ0m3rIZYbO9h2aKx0QW1hG3x8bYc"
    text = (f"[    2.0][  T1] CPA-HARNESS-HOSTKEY nonce=old ssh-ed25519 {key}A root@x\n"
            f"[    2.1][  T1] CPA-HARNESS-HOSTKEY nonce=new ssh-ed25519 {key} root@x\n").encode()
    assert host_key_lines(text, "new") == [f"ssh-ed25519 {key}"]
    assert len(host_key_lines(text)) == 2


def test_trim_keeps_offsets_valid() -> None:
    v = viewed(b"a\n" * 1000)
    end = v.end
    v.trim(100)
    assert v.end == end and len(v.text) == 100
    v.feed(b"marker\n")
    m = v.search(re.compile(rb"marker"), end)
    assert m is not None and v.offset(m) == end + 6
