"""The scheduler: when a cell may start, what it measures, and its run loop."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import schedule
from harness.schedule import (
    OVERHEAD_MB,
    History,
    HostLoad,
    HostTimes,
    Job,
    Next,
    Running,
    Scheduler,
    may_start,
    process_times,
)

# this host's /proc/stat, read while it was idle between two test runs
PROC_STAT = ("cpu  963796 205 203060 1895939 12155 0 2594 8323 0 0\n"
             "cpu0 481322 101 101745 947431 6021 0 1823 4170 0 0\n")


def running(name: str = "a", memory: int = 1024, cores: float = 0.0, waited: float = 0.0,
            age: float = 100.0, known: float | None = None, now: float = 1000.0,
            on_host: bool = True) -> Running:
    """A cell that has run `age` s, its guests measured at `cores` and `waited`."""
    r = Running(name, memory, list, known, now - age, on_host)
    r.samples.extend([(now - 5, 0.0, 0.0), (now, cores * 5, waited * 5)])
    return r


def nxt(name: str = "b", memory: int = 1024, known: float | None = None,
        on_host: bool = True) -> Next:
    return Next(name, memory, known, on_host)


def start(n: Next, run: list[Running], **kw: object) -> str | None:
    args: dict[str, object] = {"limit": None, "cpus": 2, "memory_mb": 24000, **kw}
    return may_start(n, run, 1000.0, **args)  # type: ignore[arg-type]


def test_the_first_cell_always_starts_whatever_the_host() -> None:
    assert start(nxt(memory=100000), [], memory_mb=10, steal=0.9, others=8.0) is None


def test_idle_guests_leave_room_for_more_cells_than_cpus() -> None:
    """Three guests waiting for the next self-test pass use 0.1 core each: a
    fourth boots beside them on 2 CPUs; one-per-core would have held it."""
    idle = [running(n, cores=0.1) for n in "acd"]
    assert start(nxt(), idle) is None
    assert start(nxt(), idle, limit=2) == "2 cells run (--jobs 2)"


def test_booting_guests_hold_the_next_cell() -> None:
    why = start(nxt(), [running("a", cores=1.0), running("c", cores=0.9)])
    assert why == "1.9 cores used by 2 cells, of 2: b needs 1.0"


def test_a_cell_just_started_is_a_full_core_before_its_boot_shows() -> None:
    fresh = running("a", cores=0.0, age=2.0)
    assert start(nxt(), [fresh], cpus=1) == "1.0 cores used by 1 cells, of 1: b needs 1.0"
    assert start(nxt(), [running("a", cores=0.0, age=schedule.START_S + 1)], cpus=1) is None


def test_a_cells_known_demand_is_its_floor() -> None:
    """A cell that reboots for kexec is idle now, but used 1.2 cores on average
    in its last runs: it keeps that share."""
    kexec = running("a", cores=0.05, known=1.2)
    assert start(nxt(), [kexec]) == "1.2 cores used by 1 cells, of 2: b needs 1.0"
    assert start(nxt(), [running("a", cores=0.05)]) is None
    # and the next cell's own history: a stress cell needs more than its boot's core
    assert start(nxt(known=1.95), [running("a", cores=0.1)]) is not None


def test_other_work_takes_its_share_of_the_cores() -> None:
    why = start(nxt(), [running("a", cores=0.2)], others=1.0)
    assert why == "0.2 cores used by 1 cells and 1.0 by other work, of 2: b needs 1.0"


def test_a_starved_guest_or_a_stealing_hypervisor_holds_every_cell() -> None:
    starved = running("a", cores=0.3, waited=0.7)
    assert start(nxt(), [starved], cpus=8) == (
        "the host is overloaded: a's guest waited 0.70 s a second for a CPU")
    assert start(nxt(), [running("a", cores=0.3)], cpus=8, steal=0.2) == (
        "the host is overloaded: its hypervisor takes 20% of its time")


def test_memory_holds_a_cell_back_even_with_jobs_given() -> None:
    big = [running("a", memory=2048)]
    total = 2 * (2048 + OVERHEAD_MB) - 1
    assert start(nxt(memory=2048), big, memory_mb=total, limit=4) == (
        f"{2 * (2048 + OVERHEAD_MB)} MB of guests would not fit in {total} MB")
    assert start(nxt(memory=2048), big, memory_mb=total + 1, limit=4) is None


def test_a_lab_box_uses_neither_the_hosts_cores_nor_its_memory() -> None:
    boxes = [running(n, cores=0.0, age=1.0, on_host=False) for n in "acd"]
    assert start(nxt("e", on_host=False), boxes, cpus=1, memory_mb=0, steal=0.5) is None
    assert start(nxt("e"), boxes, cpus=1) is None        # a guest beside them


def test_no_more_than_four_cells_a_cpu() -> None:
    idle = [running(str(i), cores=0.0) for i in range(8)]
    assert start(nxt(), idle) == "8 cells run, the most for 2 CPUs"


def test_host_times_from_proc_stat_leave_niced_work_out() -> None:
    t = HostTimes.parse(PROC_STAT)
    assert t is not None
    tick = os.sysconf("SC_CLK_TCK")
    assert t.busy == pytest.approx((963796 + 203060 + 0 + 2594) / tick)
    assert t.steal == pytest.approx(8323 / tick)
    assert t.total == pytest.approx((963796 + 205 + 203060 + 1895939 + 12155 + 0 + 2594 + 8323)
                                    / tick)
    assert HostTimes.parse("intr 1 2 3\n") is None


def test_host_load_is_what_is_busy_less_our_guests() -> None:
    reads = iter([HostTimes(10.0, 0.0, 100.0), HostTimes(18.0, 1.0, 110.0)])
    load = HostLoad(lambda: next(reads))
    load.sample(0.0)
    assert load.rates(0.0) == (0.0, 0.0)        # one sample: nothing known yet
    load.sample(5.0)
    others, steal = load.rates(0.6)
    assert others == pytest.approx(1.0)         # 8 s busy in 5 s, 0.6 of it our guests
    assert steal == pytest.approx(0.1)


def test_process_times_of_a_real_busy_process() -> None:
    """A child spinning for 1 s: its threads' schedstat says about 1 s on a CPU."""
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nt = time.time()\nwhile time.time() - t < 1: pass\n"
                              "time.sleep(30)"])
    try:
        time.sleep(1.5)
        got = process_times(child.pid)
        assert got is not None
        on, waited = got
        assert 0.7 < on < 1.5
        assert waited >= 0.0
        assert schedule.measurable()     # what the fallback looks for is what was read
    finally:
        child.kill()
        child.wait()
    assert process_times(child.pid) is None


def test_running_sums_every_guest_and_forgets_the_old_window() -> None:
    times = {1: (2.0, 0.1), 2: (1.0, 0.0)}
    r = Running("a", 1024, lambda: list(times), None, 0.0)
    r.sample(0.0, times.get)
    times.update({1: (4.0, 0.6), 2: (3.0, 0.0)})
    r.sample(2.0, times.get)
    assert (r.cpu, r.waited) == pytest.approx((7.0, 0.6))
    assert r.rates() == pytest.approx((2.0, 0.25))
    del times[2]                     # the first guest's kexec'd successor: a new process
    times[3] = (0.5, 0.0)
    r.sample(10.0, times.get)
    assert r.cpu == pytest.approx(7.5)
    assert len(r.samples) == 2       # only the window's ends are kept


def test_history_keeps_the_last_runs_and_says_the_heaviest(tmp_path: Path) -> None:
    h = History(tmp_path / "demand.json")
    assert h.demand("x") is None
    for rate in (0.9, 0.2, 0.3, 0.1, 0.2, 0.25):
        h.record("x", rate)
    assert h.demand("x") == 0.3      # 0.9 was six runs ago
    (tmp_path / "demand.json").write_text("{not json")
    assert h.demand("x") is None     # a broken file is a guess, not an error


def test_a_history_that_cannot_be_written_loses_no_cell(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    h = History(tmp_path / "file" / "demand.json")
    h.record("x", 0.5)          # a cache that cannot be written: only the figure is lost
    assert h.demand("x") is None


def test_without_schedstat_one_cell_a_cpu(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedule, "measurable", lambda: False)
    told: list[str] = []
    sched = Scheduler(None, History(tmp_path / "d.json"), told.append, cpus=3)
    assert sched.limit == 3
    assert told == ["this host's kernel has no per-task schedstat (CONFIG_SCHED_INFO): "
                    "guests' CPU cannot be measured, so at most 3 cells run at once, one a CPU"]


def test_memory_other_work_took_since_the_start_is_not_given_to_guests(
        tmp_path: Path) -> None:
    sched = Scheduler(None, History(tmp_path / "d.json"), cpus=64, memory_mb=8000,
                      host=HostLoad(lambda: None))
    sched.memory_now = lambda: 1000          # a build took 7 GB since
    a = running("a", memory=1024, cores=0.0)
    why = sched._why_wait(Job("b", 1024, "b", list, str), [a], 1000.0)
    assert why == (f"{2 * (1024 + OVERHEAD_MB)} MB of guests would not fit in "
                   f"{1000 + 1024 + OVERHEAD_MB} MB")


def test_a_crash_while_preparing_cells_is_raised_by_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the preparing thread a bug must not end the run as if its cells had
    only not run: the run raises it, and its summary is written."""
    from helpers import fake_kernel_tree

    from harness import run
    from harness.cells import SMOKE

    def prepared(*args: object) -> object:
        raise RuntimeError("a bug while preparing")
        yield

    monkeypatch.setenv("CPA_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(run, "_prepared", prepared)
    tree = fake_kernel_tree(tmp_path / "linux")
    with pytest.raises(RuntimeError, match="a bug while preparing"):
        run.run_cells(list(SMOKE[:2]), run.RunOptions(tree=str(tree)), tmp_path / "run",
                      tmp_path / "cache", out=open(os.devnull, "w"))
    assert (tmp_path / "run" / "summary.json").exists()


def _job(name: str, log: list[str], gate: threading.Event | None = None,
         result: str = "") -> Job[str]:
    def work() -> str:
        log.append(f"start {name}")
        if gate is not None:
            gate.wait(10)
        log.append(f"end {name}")
        return result or name
    return Job(name, 512, name, list, work)


def test_the_scheduler_starts_cells_as_they_come_and_as_the_cores_allow(
        tmp_path: Path) -> None:
    """Two cells a core each on 2 CPUs; the third waits until one ends; a
    fourth arrives later (its kernel was still building) and still runs."""
    log: list[str] = []
    told: list[str] = []
    gate = threading.Event()
    ready: queue.Queue[Job[str] | None] = queue.Queue()
    for n in "abc":
        ready.put(_job(n, log, gate))
    sched = Scheduler(None, History(tmp_path / "d.json"), told.append, cpus=2,
                      memory_mb=10000, host=HostLoad(lambda: None))
    got: list[str] = []
    before: list[str] = []

    def later() -> None:
        try:
            time.sleep(1.5)
            before.extend(log)
            gate.set()
            time.sleep(0.5)
            ready.put(_job("d", log))
        finally:
            gate.set()
            ready.put(None)

    feeder = threading.Thread(target=later)
    feeder.start()
    sched.run(ready, lambda job, res, r: got.append(res), lambda: None)
    feeder.join()
    assert before == ["start a", "start b"]
    assert sorted(got) == ["a", "b", "c", "d"]
    assert told == ["[c] waits: 2.0 cores used by 2 cells, of 2: c needs 1.0"]
    assert sched.most_running == 2


def test_a_failure_to_write_a_result_stops_the_run_and_keeps_what_ended(
        tmp_path: Path) -> None:
    """a's result cannot be written: the run stops, c never starts, and b,
    which had ended meanwhile, is still told."""
    log: list[str] = []
    gate = threading.Event()
    ready: queue.Queue[Job[str] | None] = queue.Queue()
    for job in (_job("a", log), _job("b", log), _job("c", log, gate)):
        ready.put(job)
    ready.put(None)
    stopped: list[bool] = []
    got: list[str] = []

    def done(job: Job[str], res: str, r: Running) -> None:
        if res == "a":
            while "end b" not in log:
                time.sleep(0.01)
            raise OSError("disk full")
        got.append(res)

    def stop() -> None:
        stopped.append(True)
        gate.set()

    sched = Scheduler(2, History(tmp_path / "d.json"), cpus=2, memory_mb=10000,
                      host=HostLoad(lambda: None))
    with pytest.raises(OSError, match="disk full"):
        sched.run(ready, done, stop)
    assert stopped == [True]
    assert "start c" not in log      # not started once the run stopped
    assert got == ["b"]


def test_cells_are_prepared_kernel_by_kernel_in_the_order_first_needed() -> None:
    """With builds in a pipeline, an x86_64 cell whose kernel is built must not
    wait behind the i386 build the matrix lists between."""
    from dataclasses import replace

    from harness.cells import SMOKE
    from harness.run import RunOptions, _build_order
    x86 = next(c for c in SMOKE if c.arch == "x86_64")
    i386 = next(c for c in SMOKE if c.arch == "i386")
    cells = [replace(x86, name="x1"), replace(i386, name="i1"), replace(x86, name="x2"),
             replace(x86, name="fast", selftest_period_ms=1000), replace(i386, name="i2")]
    got = [c.name for c in _build_order(cells, RunOptions())]
    assert got == ["x1", "x2", "i1", "i2", "fast"]


def test_a_build_in_the_preparing_thread_is_killed_when_the_run_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """make (here a tree whose tinyconfig sleeps) ends within a second of the
    stop, with its children: a stopped run leaves no build running."""
    from helpers import fake_kernel_tree

    from harness.arches import ARCHES
    from harness.errors import InfraError
    from harness.kernel import build as kbuild
    from harness.kernel import source
    tree = fake_kernel_tree(tmp_path / "linux")
    marker = f"cpa-stop-{os.getpid()}"
    with open(tree / "Makefile", "a") as f:
        f.write(f"tinyconfig:\n\tsleep 60; echo {marker}\n")
    monkeypatch.setenv("CPA_HARNESS_CACHE", str(tmp_path / "cache"))
    arch = ARCHES["x86_64"]
    req = kbuild.BuildRequest(source.resolve(str(tree), tmp_path / "cache"), arch,
                              kbuild.fragments_for(arch, ["cpa-test"]))
    stop = threading.Event()
    got: list[BaseException] = []

    def build() -> None:
        with kbuild.stopped_by(stop):
            try:
                kbuild.build(req, tmp_path / "cache")
            except BaseException as e:     # noqa: BLE001 - the test reads it
                got.append(e)

    t = threading.Thread(target=build)
    t.start()
    deadline = time.monotonic() + 30
    while not subprocess.run(["pgrep", "-f", f"sleep 60; echo {marker}"],
                             capture_output=True).stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    t.join(5)
    assert not t.is_alive()
    assert len(got) == 1 and isinstance(got[0], InfraError), got
    assert "the build of x86_64 was stopped: the run is stopping" in str(got[0])
    time.sleep(0.5)
    assert not subprocess.run(["pgrep", "-f", f"sleep 60; echo {marker}"],
                              capture_output=True).stdout
