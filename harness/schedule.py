"""When the next cell starts: by the CPU the running guests use, within memory.

A TCG guest uses a core while it boots and next to none while it waits for
the self-test's next pass (30 s), so one cell per core leaves the host idle
most of a run. Here a cell starts as soon as the host has a core for its
boot: the running cells' demand is what their QEMU processes were measured
to use over the last seconds (and a full core while a cell has just
started, before its boot shows), never less than what the cell used on
average in its last runs (cache/demand.json), so a cell that reboots for
kexec or runs a workload keeps its share.

The host is watched too, and no cell starts while it is overloaded: a
guest whose threads wait for a CPU more than half the time would slow its
kernel until a good one reports a soft lockup, an RCU stall or a hung task;
a hypervisor that steals the host's time does the same. What is not ours
(another run, a build beside) takes its measured share off the cores;
niced work (the harness's own builds) does not, since it yields to guests.
A run with nothing running always starts its next cell: a loaded host
slows a run, it never stalls it.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from harness.errors import HarnessError
from harness.files import write_json

TICK_S = 1.0            # how often guests and the host are sampled
WINDOW_S = 5.0          # demand and waiting are rates over this much of the past
START_S = 8.0           # a cell is a full core for this long: its boot is not measured yet
STALL = 0.5             # a guest waiting this many s/s for a CPU: the host is overloaded
STEAL = 0.10            # the hypervisor taking this share of the host's time: the same
OVERHEAD_MB = 256       # QEMU itself beside its guest's memory, TCG's translation cache
PER_CPU = 4             # at most this many cells a CPU, however idle they are


def host_cpus() -> int:
    return len(os.sched_getaffinity(0))


def available_memory_mb() -> int:
    """What may be given to guests: 80% of MemAvailable (a host that swaps
    turns every timeout into a false hang)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) / 1024 * 0.8)
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 30


@dataclass(frozen=True)
class HostTimes:
    """/proc/stat's cpu line in seconds: busy leaves niced time out (it yields)."""

    busy: float
    steal: float
    total: float

    @classmethod
    def parse(cls, text: str) -> HostTimes | None:
        for line in text.splitlines():
            f = line.split()
            if f and f[0] == "cpu" and len(f) >= 9:
                user, _nice, system, idle, iowait, irq, softirq, steal = map(int, f[1:9])
                tick = os.sysconf("SC_CLK_TCK")
                return cls((user + system + irq + softirq) / tick, steal / tick,
                           (user + _nice + system + idle + iowait + irq + softirq + steal)
                           / tick)
        return None

    @classmethod
    def read(cls) -> HostTimes | None:
        try:
            return cls.parse(Path("/proc/stat").read_text())
        except OSError:
            return None


def process_times(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds waiting on a run queue) of all of a process's
    threads, from their schedstat; None when it is gone."""
    on = wait = 0.0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            f = (task / "schedstat").read_text().split()
            on += int(f[0]) / 1e9
            wait += int(f[1]) / 1e9
        except (OSError, ValueError, IndexError):
            continue        # a thread that ended meanwhile
    return on, wait


def measurable() -> bool:
    """Whether this kernel keeps the per-task schedstat process_times reads."""
    return Path(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/schedstat").exists()


class History:
    """Each cell's CPU use in its last runs, as cores on average (demand.json)."""

    KEEP = 5

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, list[float]]:
        try:
            got = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return got if isinstance(got, dict) else {}

    def demand(self, key: str) -> float | None:
        """The most the cell used in its last runs: a cell is as heavy as its heaviest."""
        rates = self._read().get(key)
        return max(rates) if isinstance(rates, list) and rates else None

    def record(self, key: str, rate: float) -> None:
        # Two runs at once may both write: the last wins, and a lost figure
        # only makes the next run guess a full core for that cell.
        with self._lock:
            all_ = self._read()
            all_[key] = [*all_.get(key, [])[-(self.KEEP - 1):], round(rate, 3)]
            try:
                write_json(self.path, all_)
            except (HarnessError, OSError):
                pass    # the figure is an optimisation, never a reason to lose a cell


@dataclass
class Running:
    """A cell that runs: its guests' CPU and run-queue waiting, sampled."""

    name: str
    memory_mb: int
    pids: Callable[[], Iterable[int]]
    known_demand: float | None
    started: float
    on_host: bool = True            # a lab box's CPU is not this host's
    cpu: float = 0.0                # seconds on a CPU, all its guests so far
    waited: float = 0.0             # seconds its guests' threads waited for one
    _last: dict[int, tuple[float, float]] = field(default_factory=dict)
    samples: deque[tuple[float, float, float]] = field(default_factory=deque)

    def sample(self, now: float, times: Callable[[int], tuple[float, float] | None]) -> None:
        seen = {}
        for pid in self.pids():
            got = times(pid)
            if got is None:
                continue
            on, wait = got
            last_on, last_wait = self._last.get(pid, (0.0, 0.0))
            self.cpu += max(0.0, on - last_on)
            self.waited += max(0.0, wait - last_wait)
            seen[pid] = got
        self._last = seen
        self.samples.append((now, self.cpu, self.waited))
        while len(self.samples) > 2 and now - self.samples[1][0] >= WINDOW_S:
            self.samples.popleft()

    def rates(self) -> tuple[float, float]:
        """(cores used, seconds waited a second) over the window; 0 before two samples."""
        if len(self.samples) < 2:
            return 0.0, 0.0
        (t0, c0, w0), (t1, c1, w1) = self.samples[0], self.samples[-1]
        dt = t1 - t0
        return ((c1 - c0) / dt, (w1 - w0) / dt) if dt > 0 else (0.0, 0.0)

    def demand(self, now: float) -> float:
        used, _ = self.rates()
        floor = 1.0 if self.on_host and now - self.started < START_S else 0.0
        return max(used, floor, self.known_demand or 0.0)


@dataclass(frozen=True)
class Next:
    """The cell that would start next."""

    name: str
    memory_mb: int
    known_demand: float | None
    on_host: bool = True

    @property
    def demand(self) -> float:
        if not self.on_host:
            return 0.0
        return max(1.0, self.known_demand or 0.0)     # it boots: a core at least


def may_start(nxt: Next, running: list[Running], now: float, *, limit: int | None,
              cpus: int, memory_mb: int, others: float = 0.0,
              steal: float = 0.0) -> str | None:
    """None when `nxt` may start now; otherwise why it waits.

    limit: --jobs N, at most N cells at once and nothing else judged but
    memory; None: by demand. `others`: cores busy with work not ours;
    `steal`: the share of the host's time its hypervisor took.
    """
    if not running:
        return None
    need = (nxt.memory_mb + OVERHEAD_MB) if nxt.on_host else 0
    used_mb = sum(r.memory_mb + OVERHEAD_MB for r in running if r.on_host)
    if used_mb + need > memory_mb:
        return f"{used_mb + need} MB of guests would not fit in {memory_mb} MB"
    if limit is not None:
        return f"{limit} cells run (--jobs {limit})" if len(running) >= limit else None
    if not nxt.on_host:
        return None     # a lab box: this host's CPUs are not what it runs on
    if len(running) >= PER_CPU * cpus:
        return f"{len(running)} cells run, the most for {cpus} CPUs"
    for r in running:
        waited = r.rates()[1]
        if waited > STALL:
            return (f"the host is overloaded: {r.name}'s guest waited {waited:.2f} s a "
                    "second for a CPU")
    if steal > STEAL:
        return f"the host is overloaded: its hypervisor takes {steal:.0%} of its time"
    demand = sum(r.demand(now) for r in running)
    free = cpus - others - demand
    if free < nxt.demand:
        return (f"{demand:.1f} cores used by {len(running)} cells"
                + (f" and {others:.1f} by other work" if others >= 0.05 else "")
                + f", of {cpus}: {nxt.name} needs {nxt.demand:.1f}")
    return None


class HostLoad:
    """The host's busy and stolen time over the window, less our own guests'."""

    def __init__(self, read: Callable[[], HostTimes | None] = HostTimes.read) -> None:
        self.read = read
        self.samples: deque[tuple[float, HostTimes]] = deque()

    def sample(self, now: float) -> None:
        got = self.read()
        if got is not None:
            self.samples.append((now, got))
        while len(self.samples) > 2 and now - self.samples[1][0] >= WINDOW_S:
            self.samples.popleft()

    def rates(self, ours: float) -> tuple[float, float]:
        """(cores busy with work not ours, share of time stolen)."""
        if len(self.samples) < 2:
            return 0.0, 0.0
        (t0, a), (t1, b) = self.samples[0], self.samples[-1]
        total = b.total - a.total
        if t1 <= t0 or total <= 0:
            return 0.0, 0.0
        return max(0.0, (b.busy - a.busy) / (t1 - t0) - ours), (b.steal - a.steal) / total


R = TypeVar("R")


@dataclass
class Job(Generic[R]):
    """A cell to run: `work` runs it in a thread of its own."""

    name: str
    memory_mb: int
    key: str                                # its line in the demand history
    pids: Callable[[], Iterable[int]]       # its live guests' QEMU processes
    work: Callable[[], R]
    on_host: bool = True


class Scheduler:
    """Starts jobs as they become ready (the kernels they need built) and as
    may_start() lets them, each in a thread; `done` is told each one's result
    in this thread, the moment it ends."""

    def __init__(self, limit: int | None, history: History,
                 tell: Callable[[str], None] = lambda line: None, *,
                 cpus: int | None = None, memory_mb: int | None = None,
                 host: HostLoad | None = None,
                 times: Callable[[int], tuple[float, float] | None] = process_times,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cpus = cpus or host_cpus()
        if limit is None and times is process_times and not measurable():
            limit = self.cpus
            tell(f"this host's kernel has no per-task schedstat (CONFIG_SCHED_INFO): guests' "
                 f"CPU cannot be measured, so at most {limit} cells run at once, one a CPU")
        self.limit, self.history, self.tell = limit, history, tell
        # Guests are given what was available at the start, less what other
        # work (a build beside them) takes from it later.
        self.memory_mb = memory_mb if memory_mb is not None else available_memory_mb()
        fixed = self.memory_mb
        self.memory_now: Callable[[], int] = ((lambda: fixed) if memory_mb is not None
                                              else available_memory_mb)
        self.host = host or HostLoad()
        self.times, self.clock = times, clock
        self.most_running = 0
        # Cells that ended in the last window: their CPU is still in the host's
        # busy time, and it is not other work's.
        self._ended_lately: deque[Running] = deque()

    def run(self, ready: queue.Queue[Job[R] | None],
            done: Callable[[Job[R], R, Running], None],
            stop: Callable[[], None]) -> None:
        """Until `ready` has given None and every job it gave has ended.
        On an exception (Ctrl-C, `done` failing), jobs not started never
        start, `stop` ends the running ones, and those that had ended are
        told to `done` before it is raised."""
        pool = ThreadPoolExecutor(max_workers=self.limit or PER_CPU * self.cpus)
        pending: deque[Job[R]] = deque()
        running: dict[Future[R], tuple[Job[R], Running]] = {}
        told: set[str] = set()
        fed = False
        try:
            while not (fed and not pending and not running):
                fed = self._take(ready, pending, block=not running and not pending) or fed
                now = self.clock()
                self.host.sample(now)
                for _, r in running.values():
                    r.sample(now, self.times)
                for fut in [f for f in running if f.done()]:
                    job, r = running.pop(fut)
                    self._ended(job, r, now)
                    done(job, fut.result(), r)
                while pending:
                    job = pending[0]
                    why = self._why_wait(job, [r for _, r in running.values()], now)
                    if why is not None:
                        # waiting for one of --jobs N is what was asked: not news
                        limited = self.limit is not None and len(running) >= self.limit
                        if job.name not in told and not limited:
                            told.add(job.name)
                            self.tell(f"[{job.name}] waits: {why}")
                        break
                    pending.popleft()
                    r = Running(job.name, job.memory_mb, job.pids,
                                self.history.demand(job.key), now, job.on_host)
                    running[pool.submit(job.work)] = (job, r)
                    self.most_running = max(self.most_running, len(running))
                if running:
                    wait(list(running), timeout=TICK_S, return_when=FIRST_COMPLETED)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            stop()
            for fut, (job, r) in running.items():
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    try:
                        done(job, fut.result(), r)
                    except Exception:   # noqa: BLE001 - what stopped the run is the news
                        pass
            raise
        pool.shutdown()

    def _take(self, ready: queue.Queue[Job[R] | None], pending: deque[Job[R]],
              block: bool) -> bool:
        """Move ready jobs to `pending`; True once the end (None) came."""
        fed = False
        timeout: float | None = TICK_S if block else 0
        while True:
            try:
                job = ready.get(timeout=timeout) if timeout else ready.get_nowait()
            except queue.Empty:
                return fed
            timeout = None
            if job is None:
                fed = True
            else:
                pending.append(job)

    def _why_wait(self, job: Job[R], running: list[Running], now: float) -> str | None:
        while self._ended_lately and now - self._ended_lately[0].samples[-1][0] > WINDOW_S:
            self._ended_lately.popleft()
        ours = sum(r.rates()[0] for r in [*running, *self._ended_lately] if r.on_host)
        others, steal = self.host.rates(ours)
        held = sum(r.memory_mb + OVERHEAD_MB for r in running if r.on_host)
        memory = min(self.memory_mb, self.memory_now() + held)
        return may_start(Next(job.name, job.memory_mb, self.history.demand(job.key),
                              job.on_host), running, now, limit=self.limit,
                         cpus=self.cpus, memory_mb=memory, others=others, steal=steal)

    def _ended(self, job: Job[R], r: Running, now: float) -> None:
        r.sample(now, self.times)
        self._ended_lately.append(r)
        wall = now - r.started
        if job.on_host and r.cpu > 0 and wall > 0:
            self.history.record(job.key, r.cpu / wall)
