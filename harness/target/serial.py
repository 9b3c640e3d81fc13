"""The serial line as the harness reads it: kernel lines lifted out of the lines they split.

The guest's shell and init write to the same UART as the kernel's console.
The kernel writes each printk record whole, but it can start one in the
middle of a line the shell is writing:

    CPA-HARNESS-READ[    1.558734][   T34] input: ImExPS/2 Generic Explorer Mouse ...
    Y boot_id=c4da2ef0-b3fb-4682-8cbf-96a34baff480

A marker searched for in the raw bytes is then never found, and a good kernel
looks hung. `SerialView` keeps a text in which every kernel record is a line
of its own and the pieces of the line it split are joined again, with
carriage returns and terminal escape sequences (busybox's `ESC[6n` cursor
query) taken out. Markers are searched for there, and only in complete lines.

A kernel record is recognised by its timestamp (`PRINTK_TIME` is in every
build's base fragment). Records without one (`printk.time=0`) are taken as
shell output; the markers that matter most (ready, host keys) also go through
the kernel log, where no split can happen.
"""

from __future__ import annotations

import re
import secrets

# "[    1.558734]" and an optional caller id "[   T34]" / "[ C1]"
KMSG_PREFIX = re.compile(rb"\[\s*\d+\.\d{6}\](?:\[\s*[TC]\d+\])?")
# CSI sequences (ESC [ params final) and two-byte escapes
ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


# The markers guest/init prints carry the nonce the harness put on the kernel
# command line for this boot, so that no kernel message, earlier boot or
# guest program can pass for them.
NONCE_PARAM = "cpa_harness.nonce"


def new_nonce() -> str:
    return secrets.token_hex(8)


def ready_re(nonce: str) -> re.Pattern[bytes]:
    """`CPA-HARNESS-READY nonce=N boot_id=UUID`, once per boot, for this boot's nonce."""
    return re.compile(rb"CPA-HARNESS-READY nonce=" + re.escape(nonce.encode())
                      + rb" boot_id=([0-9a-f-]{36})\b")


class SerialView:
    """The de-interleaved text of a serial stream, fed as bytes arrive.

    `text` holds complete lines only, each ending in b"\\n"; `base` is how many
    bytes of the de-interleaved stream were dropped from its front (so an
    offset into the stream stays valid while `text` is trimmed).
    """

    def __init__(self) -> None:
        self.text = bytearray()
        self.base = 0
        self._partial = b""             # raw bytes after the last newline
        self._held: bytes | None = None  # a line split by a kernel record, so far

    @property
    def end(self) -> int:
        """Stream offset just past the last complete line."""
        return self.base + len(self.text)

    def feed(self, data: bytes) -> None:
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for raw in lines:
            self._line(ESCAPES.sub(b"", raw).replace(b"\r", b""))

    def _line(self, line: bytes) -> None:
        if self._held is not None:
            if KMSG_PREFIX.match(line):
                # Another kernel record before the split line went on.
                self._emit(line)
                return
            line, self._held = self._held + line, None
        m = KMSG_PREFIX.search(line, 1)
        if m is None or KMSG_PREFIX.match(line):
            # A whole line, a kernel record or not. (A record that starts a line
            # and holds another timestamp later is one record: printk writes
            # records whole.)
            self._emit(line)
            return
        # Shell output, then a kernel record that began mid-line: the rest of
        # the shell's line comes after the record.
        self._held = line[:m.start()]
        self._emit(line[m.start():])

    def _emit(self, line: bytes) -> None:
        self.text += line + b"\n"

    def search(self, pattern: re.Pattern[bytes], start: int) -> re.Match[bytes] | None:
        """The first match in complete lines at or after stream offset `start`."""
        return pattern.search(self.text, max(0, start - self.base))

    def between(self, start: int, stop: int) -> bytes:
        """The de-interleaved text from stream offset `start` to `stop`."""
        return bytes(self.text[max(0, start - self.base):max(0, stop - self.base)])

    def offset(self, match: re.Match[bytes], which: str = "end") -> int:
        """A match's start or end as a stream offset."""
        return self.base + (match.end() if which == "end" else match.start())

    def trim(self, keep: int) -> None:
        """Forget all but the last `keep` bytes of text (it is in the serial log)."""
        drop = len(self.text) - keep
        if drop > 0:
            del self.text[:drop]
            self.base += drop
