"""A whole build's progress against the last whole build of its configuration:
a percentage of its lines and the time left (harness/kernel/build.py)."""

from __future__ import annotations

from pathlib import Path

from harness.kernel.build import BuildTimes, Progress


def test_the_percentage_and_time_left_follow_the_last_build() -> None:
    p = Progress("build x86_64", expected=(2000, 400.0))
    assert p.estimate(p.start + 1) == ""            # no line yet
    p.count = 500
    # early on, the last build's time; then this build's own pace
    assert p.estimate(p.start + 10) == "25%, about 5m00s left"
    assert p.estimate(p.start + 120) == "25%, about 6m00s left"
    p.count = 2500                                   # more lines than last time
    assert p.estimate(p.start + 500).startswith("99%, about ")
    assert Progress("build x86_64").estimate(0.0) == ""     # nothing to go by


def test_build_times_are_kept_per_configuration(tmp_path: Path) -> None:
    path = tmp_path / "build-times.json"
    a, b = BuildTimes(path, "x86_64-aaaa"), BuildTimes(path, "i386-bbbb")
    assert a.last() is None
    a.record(2000, 400.04)
    b.record(1500, 300.0)
    assert (a.last(), b.last()) == ((2000, 400.0), (1500, 300.0))
    path.write_text("not json")         # a damaged file is no estimate, not an error
    assert a.last() is None
    a.record(10, 1.0)
    assert a.last() == (10, 1.0)
