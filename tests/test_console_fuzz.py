"""Property-based fuzzing: random bytes and mutated logs never raise or lie."""

from __future__ import annotations

from pathlib import Path

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.console import Analysis, ConsoleParser, Failure, FailureFound
from harness.console.lines import LineSplitter, strip_prefix
from harness.console.output import load_schema
from harness.console.parser import is_kernel_output

DATA = Path(__file__).parent / "data" / "console"
SAMPLES = [
    (DATA / "x86_64-wx-warning.log").read_bytes(),
    (DATA / "i386-amd-smp.log").read_bytes(),
    (DATA / "kinds" / "null_deref.log").read_bytes(),
    (DATA / "kinds" / "lockdep.log").read_bytes(),
    # console markers, cut lines, the 6.19 WARNING line
    (DATA / "kinds" / "warning-replayed.log").read_bytes(),
    (DATA / "kinds" / "hung_task-replayed.log").read_bytes(),
    (DATA / "kinds" / "warning-6.19.log").read_bytes(),
]
VALIDATOR = jsonschema.Draft202012Validator(load_schema())
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def parse(data: bytes, chunk: int | None = None) -> tuple[Analysis, list[object]]:
    p = ConsoleParser()
    events: list[object] = []
    if chunk is None:
        events += p.feed(data)
    else:
        for i in range(0, len(data), chunk):
            events += p.feed(data[i:i + chunk])
    analysis = p.finish()
    return analysis, events + list(p.finish_events)


def has_kernel_output(data: bytes) -> bool:
    s = LineSplitter()
    lines = [*s.feed(data), *s.finish()]
    return any(is_kernel_output(strip_prefix(n, t, c)) for n, t, c in lines)


def check(data: bytes) -> Analysis:
    analysis, events = parse(data)
    doc = analysis.to_json()
    VALIDATOR.validate(doc)
    assert analysis.verdict in ("pass", "fail", "no-selftest", "incomplete")
    # Each failure is announced once, when first complete; its repeats only count.
    def key(f: Failure) -> tuple[str, str, int]:
        return f.kind, f.title, f.line
    found = [key(e.failure) for e in events if isinstance(e, FailureFound)]
    assert found == [key(f) for b in analysis.boots for f in b.failures]
    if not has_kernel_output(data):
        assert analysis.verdict == "incomplete"
    if analysis.verdict == "pass":
        assert analysis.boots
    return analysis


@FUZZ
@given(st.binary(max_size=4000))
def test_random_bytes(data: bytes) -> None:
    check(data)


USER_SPACE = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789 .,:-_/=#$~\t\r\n"),
    max_size=3000)


@FUZZ
@given(USER_SPACE)
def test_output_without_kernel_lines_is_never_pass(text: str) -> None:
    analysis = check(text.encode())
    assert analysis.verdict != "pass"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    lines = draw(st.sampled_from(SAMPLES)).split(b"\n")
    for _ in range(draw(st.integers(0, 12))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "truncate", "flip", "insert", "swap"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "truncate":
            lines[i] = lines[i][: draw(st.integers(0, max(0, len(lines[i]))))]
        elif op == "flip" and lines[i]:
            j = draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:j] + bytes([lines[i][j] ^ draw(st.integers(1, 255))]) \
                + lines[i][j + 1:]
        elif op == "insert":
            lines.insert(i, draw(st.binary(max_size=80)))
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    data = b"\n".join(lines)
    cut = draw(st.integers(0, len(data)))
    return data[:cut] if draw(st.booleans()) else data


@FUZZ
@given(mutated())
def test_mutated_logs(data: bytes) -> None:
    check(data)


@FUZZ
@given(mutated(), st.integers(1, 200))
def test_mutated_logs_chunked_equal_whole(data: bytes, chunk: int) -> None:
    whole, whole_events = parse(data)
    chunked, chunked_events = parse(data, chunk)
    assert chunked.to_json() == whole.to_json()
    assert chunked_events == whole_events


KASAN = (b"\n[   99.000000] ==================================================================\n"
         b"[   99.000001] BUG: KASAN: slab-use-after-free in frob_list+0x8c/0xa0\n")


@FUZZ
@given(mutated())
def test_a_failure_after_any_mutated_log_is_found(data: bytes) -> None:
    analysis = check(data + KASAN)
    assert analysis.verdict == "fail"
    titles = [f.title for b in analysis.boots for f in b.failures]
    assert "KASAN: slab-use-after-free in frob_list" in titles
