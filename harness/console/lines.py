"""The line stream: raw serial chunks in, numbered and prefix-stripped lines out.

Everything that is not the kernel's own message text is removed here, once:
terminal escape sequences (SeaBIOS and iPXE clear the screen, set colours and
titles), control bytes, the printk prefix (`<6>`, `[    1.234567]`, caller id
`[    T1]` / `[  C0]`, or both squeezed together), the prefixes of `dmesg -x`,
`dmesg -T` and syslog files, and a printk prefix that starts in the middle of a
line because a shell prompt was printed before it. The later stages only ever
see `Line.text`.

Line numbers are the 1-based numbers of the raw log, counted by `\\n` as `grep
-n` and editors count them. A lone `\\r` splits a physical line into several
logical lines that share its number; `\\r\\n` is one line end. A line longer
than MAX_LINE characters is cut (the kernel's own records are at most 1024
bytes), and a line that never ends is dropped past that length, so memory stays
flat whatever the input.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from typing import NamedTuple

MAX_LINE = 2048
# A pending, unterminated line is cut once it exceeds this many characters.
MAX_PENDING = 64 * 1024

# ESC sequences (CSI, OSC, DCS/SOS/PM/APC strings, charset designations, two
# byte Fe/Fp/Fs codes), the single-character C1 CSI, and every other control
# character except the tab.
ESCAPE_OR_CONTROL = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]"
    r"|\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|[ -/]*[0-~])?"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|[\x00-\x08\x0b-\x1f\x7f]"
)
HAS_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")

# <level>, [timestamp] or [dmesg -T date], [caller id]: any of them, any spacing.
PRINTK_PREFIX = re.compile(
    r"(?:<(?P<level>\d{1,3})>)?"
    r"(?:\[\s*(?P<ts>\d{1,10}\.\d{1,9})\s*\]"
    r"|\[(?P<date>(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4})\])?"
    r"(?:\s?\[\s*(?P<caller>[TC]\d{1,7})\s*\])?"
)
# `dmesg -x`: "kern  :warn  : [    1.234567] ..."
DMESG_DECODE_PREFIX = re.compile(
    r"(?:kern|user|mail|daemon|auth|syslog|lpr|news|uucp|cron|authpriv|ftp|local[0-7])\s*:"
    r"(?:emerg|alert|crit|err|warn|notice|info|debug)\s*: ?"
)
# syslog / journalctl -k: "Nov 25 18:00:00 host kernel: ..."
SYSLOG_PREFIX = re.compile(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ kernel: ?")
# The usual console prefix, for a fast path: "[    1.234567] " or with "[    T1]".
COMMON_PREFIX = re.compile(r"\[\s*(\d{1,10}\.\d{1,9})\](?:\s?\[\s*([TC]\d{1,7})\s*\])? ?")
# A printk timestamp after other output on the same line (a shell prompt, say).
MIDLINE_TIMESTAMP = re.compile(r"<\d{1,3}>\[\s*\d+\.\d{6}\]|\[\s*\d+\.\d{6}\]")
# What the console itself prints, not a record of the log buffer, so with no
# printk prefix (kernel/printk/printk.c): console_prepend_dropped() before the
# first record after the ones the console lost (`** %lu printk messages dropped
# **`, on a line of its own since 5.x, before that followed by the record on the
# same line), and console_prepend_replay() (6.12 on, nbcon consoles) before a
# record whose printing another context cut off and now prints again in full.
# The cut copy is usually the line before the marker (the 8250 driver ends the
# cut line first); without that newline the marker follows it on one line.
CONSOLE_MARKER = re.compile(
    r"\*\* (?:(?P<dropped>\d+) printk messages dropped|replaying previous printk message) \*\* ?"
)


class Line(NamedTuple):
    """One logical line of the console, as the parser sees it."""

    number: int
    text: str
    timestamp: float | None = None
    caller: str | None = None
    level: int | None = None
    # Carried a printk prefix: certainly kernel output.
    prefixed: bool = False
    truncated: bool = False
    # The line as the console printed it, escapes removed: a replayed record is
    # recognised by the cut copy before it being a prefix of it.
    raw: str = ""
    # A console marker at the start of the line (CONSOLE_MARKER): "dropped" or
    # "replay"; `text` is what followed it on the line.
    marker: str | None = None
    dropped: int = 0


def _match_printk(text: str) -> tuple[re.Match[str] | None, int]:
    """The printk prefix at the start of `text`, and where the message starts."""
    if not text or text[0] not in "<[":
        return None, 0
    m = PRINTK_PREFIX.match(text)
    if m is None or m.end() == 0:
        return None, 0
    end = m.end()
    if end < len(text) and text[end] == " ":
        end += 1
    return m, end


def strip_prefix(number: int, raw: str, truncated: bool = False) -> Line:
    """Build the Line for one raw logical line: clean it and remove its prefix."""
    text = raw
    control = HAS_CONTROL.search(text) is not None
    if control:
        text = ESCAPE_OR_CONTROL.sub("", text)
    cleaned = text
    if "** " in text:
        marker = CONSOLE_MARKER.search(text)
        if marker is not None:
            # What came before the marker is a cut copy of the record it replays
            # (or of one the console dropped): never a line of its own.
            rest = strip_prefix(number, text[marker.end():], truncated)
            dropped = marker.group("dropped")
            return rest._replace(marker="replay" if dropped is None else "dropped",
                                 dropped=int(dropped) if dropped is not None else 0)
    if not control and text[:1] == "[":
        fast = COMMON_PREFIX.match(text)
        if fast is not None:
            ts, caller = fast.groups()
            return Line(number, text[fast.end():], float(ts), caller, None, True, truncated,
                        cleaned)
    prefixed = False
    outer = None
    if text[:1].isalpha():
        outer = DMESG_DECODE_PREFIX.match(text) or SYSLOG_PREFIX.match(text)
        if outer is not None:
            text = text[outer.end():]
            prefixed = True
    m, end = _match_printk(text)
    if m is None and "[" in text:
        found = MIDLINE_TIMESTAMP.search(text)
        if found is not None and found.start() > 0:
            m, end = _match_printk(text[found.start():])
            if m is not None:
                text = text[found.start():]
    if m is None:
        return Line(number, text, None, None, None, prefixed, truncated, cleaned)
    level = m.group("level")
    ts = m.group("ts")
    return Line(
        number,
        text[end:],
        float(ts) if ts is not None else None,
        m.group("caller"),
        int(level) if level is not None else None,
        True,
        truncated,
        cleaned,
    )


class LineSplitter:
    """Turns arbitrary chunks of bytes or text into (number, text, truncated) lines."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []
        self._pending_len = 0
        self._overflow = False
        self.number = 0  # physical lines completed so far

    def feed(self, chunk: bytes | bytearray | str) -> Iterator[tuple[int, str, bool]]:
        text = chunk if isinstance(chunk, str) else self._decoder.decode(chunk)
        if not text:
            return
        parts = text.split("\n")
        last = parts.pop()
        if parts and (self._pending or self._overflow):
            yield from self._complete(parts[0])
            del parts[0]
        # The common case, kept tight: whole lines, no carriage returns, short.
        number = self.number
        for part in parts:
            number += 1
            if "\r" in part or len(part) > MAX_LINE:
                self.number = number - 1
                yield from self._complete(part)
            else:
                yield number, part, False
        self.number = number
        yield from self._add_pending(last)

    def finish(self) -> Iterator[tuple[int, str, bool]]:
        tail = self._decoder.decode(b"", final=True)
        if tail:
            yield from self.feed(tail)
        if self._pending_len or self._overflow:
            yield from self._complete("")

    def _add_pending(self, part: str) -> Iterator[tuple[int, str, bool]]:
        if not part:
            return
        if self._overflow:
            return
        self._pending.append(part)
        self._pending_len += len(part)
        if self._pending_len <= MAX_PENDING:
            return
        joined = "".join(self._pending)
        if "\r" in joined:
            # Lines ended by a lone carriage return: give them out now.
            *done, rest = joined.split("\r")
            for seg in done:
                yield self._logical(self.number + 1, seg)
            joined = rest
        if len(joined) > MAX_PENDING:
            joined = joined[:MAX_LINE]
            self._overflow = True
        self._pending = [joined] if joined else []
        self._pending_len = len(joined)

    def _complete(self, part: str) -> Iterator[tuple[int, str, bool]]:
        if self._overflow:
            physical = "".join(self._pending)
            cut = True
        else:
            self._pending.append(part)
            physical = "".join(self._pending)
            cut = False
        self._pending = []
        self._pending_len = 0
        self._overflow = False
        self.number += 1
        physical = physical.rstrip("\r")
        if "\r" in physical:
            for seg in physical.split("\r"):
                if seg:
                    number, text, trunc = self._logical(self.number, seg)
                    yield number, text, trunc or cut
            return
        number, text, trunc = self._logical(self.number, physical)
        yield number, text, trunc or cut

    @staticmethod
    def _logical(number: int, text: str) -> tuple[int, str, bool]:
        if len(text) > MAX_LINE:
            return number, text[:MAX_LINE], True
        return number, text, False
