"""The line stream: prefixes, line ends, escapes, bad bytes, long lines."""

from __future__ import annotations

import pytest

from harness.console import ConsoleParser
from harness.console.lines import MAX_LINE, MAX_PENDING, LineSplitter, strip_prefix


def split(*chunks: bytes | str) -> list[tuple[int, str, bool]]:
    s = LineSplitter()
    out = [line for c in chunks for line in s.feed(c)]
    return out + list(s.finish())


@pytest.mark.parametrize(
    ("raw", "text", "timestamp", "caller", "level"),
    [
        ("[    1.234567] CPA self-test:", "CPA self-test:", 1.234567, None, None),
        ("[    1.234567][    T1] CPA self-test:", "CPA self-test:", 1.234567, "T1", None),
        ("[    1.234567] [    T1] CPA self-test:", "CPA self-test:", 1.234567, "T1", None),
        ("[    T1] CPA self-test:", "CPA self-test:", None, "T1", None),
        ("[  C0] CPA self-test:", "CPA self-test:", None, "C0", None),
        ("[1.234567] CPA self-test:", "CPA self-test:", 1.234567, None, None),
        ("[12345.678901][T123] ok.", "ok.", 12345.678901, "T123", None),
        ("<6>[    1.234567] CPA self-test:", "CPA self-test:", 1.234567, None, 6),
        ("<4>WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2", "WARNING: CPU: 0 PID: 1 at a.c:1 "
         "f+0x1/0x2", None, None, 4),
        ("kern  :warn  : [    1.234567] ok.", "ok.", 1.234567, None, None),
        ("Nov 25 18:00:00 host kernel: [    1.234567] ok.", "ok.", 1.234567, None, None),
        ("[Tue Nov 25 18:00:00 2025] ok.", "ok.", None, None, None),
        ("~ # [   36.100000] ok.", "ok.", 36.1, None, None),
        ("[    1.234567]  4k 1 large 2 gb 0 x 3[a-b] miss 0",
         " 4k 1 large 2 gb 0 x 3[a-b] miss 0", 1.234567, None, None),
        ("[  OK  ] Started foo.", "[  OK  ] Started foo.", None, None, None),
        (" [<ffffffff81000000>] foo+0x1/0x2", " [<ffffffff81000000>] foo+0x1/0x2", None, None,
         None),
    ],
)
def test_prefixes_are_stripped(raw: str, text: str, timestamp: float | None,
                               caller: str | None, level: int | None) -> None:
    line = strip_prefix(7, raw)
    assert (line.number, line.text, line.timestamp, line.caller, line.level) == (
        7, text, timestamp, caller, level)


def test_prefixed_flag() -> None:
    assert strip_prefix(1, "[    1.0] x").prefixed
    assert strip_prefix(1, "<6>x").prefixed
    assert not strip_prefix(1, "x").prefixed
    assert not strip_prefix(1, "[  OK  ] x").prefixed


@pytest.mark.parametrize(
    "raw",
    [
        "\x1b[2J\x1b[1;1H[    1.0] ok.",
        "\x1bc[    1.0] ok.",
        "\x1b]0;title\x07[    1.0] ok.",
        "\x1b[0m\x1b[1;37m[    1.0] ok.\x1b[0m",
        "\x1b(B[    1.0] ok.",
        "\x00\x08[    1.0] ok.\x7f",
    ],
)
def test_escape_sequences_and_controls_are_removed(raw: str) -> None:
    line = strip_prefix(1, raw)
    assert (line.text, line.timestamp) == ("ok.", 1.0)


def test_crlf_and_lone_cr() -> None:
    assert split(b"a\r\nb\r\n") == [(1, "a", False), (2, "b", False)]
    # A lone CR splits a physical line; both pieces keep its number.
    assert split(b"one\rtwo\nthree\n") == [(1, "one", False), (1, "two", False),
                                          (2, "three", False)]
    # CR and LF in different chunks are still one line end.
    assert split(b"a\r", b"\nb\n") == [(1, "a", False), (2, "b", False)]
    assert split(b"a\r\r\n") == [(1, "a", False)]


def test_blank_lines_count() -> None:
    assert split("a\n\nb\n") == [(1, "a", False), (2, "", False), (3, "b", False)]


def test_last_line_without_newline() -> None:
    assert split("a\nb") == [(1, "a", False), (2, "b", False)]


def test_non_utf8_bytes_are_replaced() -> None:
    assert split(b"caf\xe9 \xff\xfe\n") == [(1, "caf\ufffd \ufffd\ufffd", False)]


def test_multibyte_character_split_across_chunks() -> None:
    data = "µs ok\n".encode()
    assert split(data[:1], data[1:]) == [(1, "µs ok", False)]


def test_long_line_is_cut() -> None:
    out = split("x" * (MAX_LINE + 10) + "\nnext\n")
    assert out == [(1, "x" * MAX_LINE, True), (2, "next", False)]


def test_endless_line_keeps_memory_flat() -> None:
    s = LineSplitter()
    for _ in range(50):
        assert list(s.feed("y" * MAX_PENDING)) == []
        assert sum(map(len, s._pending)) <= MAX_PENDING
    out = list(s.feed("tail\nafter\n"))
    assert out == [(1, "y" * MAX_LINE, True), (2, "after", False)]


def test_endless_cr_terminated_lines_are_given_out() -> None:
    s = LineSplitter()
    out = list(s.feed("ab\r" * (MAX_PENDING // 2)))
    assert out and all(o == (1, "ab", False) for o in out)


def test_line_numbers_in_a_parse_count_raw_lines() -> None:
    p = ConsoleParser()
    p.feed(b"junk\r\nmore junk\r\n[    1.0] BUG: spinlock bad magic on CPU#0, swapper/0/1\r\n")
    analysis = p.finish()
    assert analysis.lines == 3
    assert analysis.boots[0].failures[0].line == 3


def test_cut_lines_are_noted() -> None:
    p = ConsoleParser()
    p.feed(bytearray(b"[    1.0] " + b"x" * (MAX_LINE * 2) + b"\n"))
    assert p.finish().notes == [f"1 lines longer than {MAX_LINE} characters were cut"]
