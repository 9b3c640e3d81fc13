"""What the console parser finds: boots, CPA self-test passes, failures, events.

The JSON document (`Analysis.to_json`) is the contract described by
harness/data/parse.schema.json; names follow the kernel's own words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Verdict = Literal["pass", "fail", "no-selftest", "incomplete"]

# The closed list of failure kinds, documented in docs/console.md.
FAILURE_KINDS: tuple[str, ...] = (
    "warning",
    "bug",
    "oops",
    "panic",
    "page_fault",
    "null_deref",
    "gpf",
    "invalid_opcode",
    "double_fault",
    "soft_lockup",
    "hard_lockup",
    "rcu_stall",
    "hung_task",
    "lockdep",
    "kasan",
    "kfence",
    "kmsan",
    "kcsan",
    "ubsan",
    "bad_page",
    "list_corruption",
    "page_alloc_failure",
    "oom",
    "memory_leak",
    "atomic_sleep",
    "cpa_selftest",
    "wx_mapping",
    "lkdtm",
    "netdev_refcount",
)

# How a boot ended. "reset": the next kernel's banner (or a printk clock that
# restarted from zero) came without any end message from this one.
ENDED_BY: tuple[str, ...] = ("kexec", "reboot", "panic", "poweroff", "reset", "end-of-log")

# How a failure report was found complete.
COMPLETED_BY: tuple[str, ...] = (
    "end-marker",   # its own end line: "---[ end trace", the closing "=====" rule
    "trace-end",    # the first line after its call trace
    "header",       # a report with no body beyond its header line(s)
    "next-line",    # a line that cannot belong to it (another report, a far timestamp)
    "line-limit",   # it grew past the size a report can have
    "flush",        # the live runner's quiet period
    "boot-end",     # the boot ended (kexec, reboot, panic, power-off, new banner)
    "end-of-log",   # the log ended: the report may be truncated
)

DIRECT_MAP_SIZES: tuple[str, ...] = ("4k", "2M", "4M", "1G")


@dataclass(frozen=True, slots=True)
class Frame:
    """One `func+0x12/0x40 [module]` entry of a call trace or a RIP/EIP line."""

    function: str
    offset: int
    size: int
    module: str | None = None
    reliable: bool = True
    # The stack section the frame was printed in ("TASK", "IRQ", "NMI", ...).
    context: str | None = None
    file: str | None = None
    line: int | None = None
    # Inlined into the next frame: a symbolizer's line, with no address of its own.
    inline: bool = False

    @property
    def text(self) -> str:
        if self.inline:
            return f"{self.function} [inline]"
        mod = f" [{self.module}]" if self.module else ""
        return f"{self.function}+{self.offset:#x}/{self.size:#x}{mod}"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Frame:
        return cls(function=str(d["function"]), offset=int(d.get("offset", 0)),
                   size=int(d.get("size", 0)), module=d.get("module"),
                   reliable=bool(d.get("reliable", True)), context=d.get("context"),
                   file=d.get("file"), line=d.get("line"), inline=bool(d.get("inline", False)))

    def to_json(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "offset": self.offset,
            "size": self.size,
            "module": self.module,
            "reliable": self.reliable,
            "context": self.context,
            "text": self.text,
            "file": self.file,
            "line": self.line,
            **({"inline": True} if self.inline else {}),
        }


@dataclass(frozen=True, slots=True)
class Failure:
    """One kernel failure report: found once, complete, never changed afterwards."""

    kind: str
    title: str
    line: int
    first_line: int
    last_line: int
    report: tuple[str, ...]
    frames: tuple[Frame, ...] = ()
    rip: Frame | None = None
    caller: str | None = None
    completed_by: str = "end-marker"
    report_lines_dropped: int = 0
    # How often this boot reported the same failure (kind and title), and the
    # line of each report after the first (the first MAX_REPEAT_LINES of them)
    count: int = 1
    repeat_lines: tuple[int, ...] = ()

    @property
    def call_trace(self) -> list[str]:
        return [f.function for f in self.frames if f.reliable]

    @property
    def unreliable_frames(self) -> list[str]:
        return [f.function for f in self.frames if not f.reliable]

    def times(self) -> str:
        """' (3 times, lines 161, 402, 643)' for a repeated failure, '' otherwise."""
        if self.count == 1:
            return ""
        lines = [self.line, *self.repeat_lines]
        shown = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
        return f" ({self.count} times, lines {shown})"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Failure:
        """The inverse of to_json. A result written before frames were kept has
        only the reliable frames' names: they come back without offsets."""
        if "frames" in d:
            frames = tuple(Frame.from_json(f) for f in d["frames"])
        else:
            frames = tuple(Frame(str(name), 0, 0) for name in d.get("call_trace", []))
        line = int(d["line"])
        return cls(kind=str(d["kind"]), title=str(d["title"]), line=line,
                   first_line=int(d.get("first_line", line)),
                   last_line=int(d.get("last_line", line)),
                   report=tuple(map(str, d.get("report", []))), frames=frames,
                   rip=Frame.from_json(d["rip"]) if d.get("rip") else None,
                   caller=d.get("caller"), completed_by=str(d.get("completed_by", "")),
                   report_lines_dropped=int(d.get("report_lines_dropped", 0)),
                   count=int(d.get("count", 1)),
                   repeat_lines=tuple(map(int, d.get("repeat_lines", []))))

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "title": self.title,
            "line": self.line,
            "first_line": self.first_line,
            "last_line": self.last_line,
            "call_trace": self.call_trace,
            "unreliable_frames": self.unreliable_frames,
            "rip": self.rip.to_json() if self.rip else None,
            "frames": [f.to_json() for f in self.frames],
            "caller": self.caller,
            "completed_by": self.completed_by,
            "report": list(self.report),
            "report_lines_dropped": self.report_lines_dropped,
            "count": self.count,
            "repeat_lines": list(self.repeat_lines),
        }


@dataclass(slots=True)
class Split:
    """One ` 4k N large N gb N x N[a-b] miss N` line of the self-test."""

    line: int
    pages_4k: int
    large: int
    gb: int | None
    x: int
    x_range: tuple[int, int]
    miss: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "4k": self.pages_4k,
            "large": self.large,
            "gb": self.gb,
            "x": self.x,
            "x_range": list(self.x_range),
            "miss": self.miss,
            "line": self.line,
        }


@dataclass(slots=True)
class SelftestError:
    line: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "message": self.message}


@dataclass(slots=True)
class CpaSelftest:
    """One pass of the CPA self-test (arch/x86/mm/pat/cpa-test.c)."""

    first_line: int
    last_line: int
    # "current": "CPA self-test:" ... "ok." (2.6.25 on); "2.6": "CPA mapping" ...
    # "CPA selftests PASSED".
    format: str = "current"
    result: str = "incomplete"
    splits: list[Split] = field(default_factory=list)
    errors: list[SelftestError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    caller: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "format": self.format,
            "first_line": self.first_line,
            "last_line": self.last_line,
            "splits": [s.to_json() for s in self.splits],
            "errors": [e.to_json() for e in self.errors],
            "notes": list(self.notes),
        }


@dataclass(slots=True)
class DirectMap:
    """One snapshot of the `DirectMap*` lines of /proc/meminfo, in kB."""

    line: int
    sizes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {size: self.sizes.get(size) for size in DIRECT_MAP_SIZES}
        doc["line"] = self.line
        return doc


@dataclass(frozen=True, slots=True)
class Panic:
    message: str
    line: int
    # Index in the boot's failures of the report this panic ended (an oops,
    # panic_on_warn ...), or None when the panic is a failure of its own.
    caused_by: int | None

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "line": self.line, "caused_by": self.caused_by}


@dataclass(slots=True)
class Boot:
    """One kernel, from its `Linux version` banner (or first line) to its end."""

    index: int
    first_line: int
    last_line: int
    kernel: str | None = None
    banner: str | None = None
    cmdline: str | None = None
    cpa_selftest: list[CpaSelftest] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    direct_map: list[DirectMap] = field(default_factory=list)
    wx_checks: list[str] = field(default_factory=list)
    ended_by: str | None = None
    panic: Panic | None = None
    # Evidence behind the derived facts; see the properties below.
    gbpages_seen: bool = False
    debug_pagealloc_cmdline: bool | None = None
    debug_pagealloc_oops: bool | None = None

    @property
    def gbpages(self) -> bool | None:
        """True when GB pages back the direct map, None when the log cannot tell.

        Evidence: "Using GB pages for direct mapping" (arch/x86/mm/init.c), a
        self-test split line with gb > 0, a DirectMap1G snapshot above zero.
        Its absence means no only when the boot's banner was seen.
        """
        if self.gbpages_seen:
            return True
        if any(s.gb for p in self.cpa_selftest for s in p.splits):
            return True
        if any(d.sizes.get("1G") for d in self.direct_map):
            return True
        return False if self.kernel is not None else None

    @property
    def debug_pagealloc(self) -> bool | None:
        """Whether DEBUG_PAGEALLOC is active, None when the log cannot tell.

        The kernel prints no message when it turns it on (mm/mm_init.c); the
        evidence is, strongest first: the " DEBUG_PAGEALLOC" flag of an Oops
        header (or its absence), large or GB pages in the direct map (which
        debug_pagealloc forbids, arch/x86/mm/init.c), and the command line.
        Without `debug_pagealloc=` on the command line the answer depends on
        CONFIG_DEBUG_PAGEALLOC_ENABLE_DEFAULT, which the log does not show.
        """
        if self.debug_pagealloc_oops is not None:
            return self.debug_pagealloc_oops
        if self.gbpages_seen or any(
            s.large or s.gb for p in self.cpa_selftest for s in p.splits
        ):
            return False
        return self.debug_pagealloc_cmdline

    @property
    def wx_check(self) -> str | None:
        if not self.wx_checks:
            return None
        return "failed" if "failed" in self.wx_checks else "passed"

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kernel": self.kernel,
            "banner": self.banner,
            "cmdline": self.cmdline,
            "gbpages": self.gbpages,
            "debug_pagealloc": self.debug_pagealloc,
            "first_line": self.first_line,
            "last_line": self.last_line,
            "cpa_selftest": [p.to_json() for p in self.cpa_selftest],
            "failures": [f.to_json() for f in self.failures],
            "direct_map": [d.to_json() for d in self.direct_map],
            "wx_check": self.wx_check,
            "panic": self.panic.to_json() if self.panic else None,
            "ended_by": self.ended_by,
        }


@dataclass(slots=True)
class Analysis:
    """Everything found in one log; `verdict` summarises it."""

    boots: list[Boot] = field(default_factory=list)
    lines: int = 0
    # Problems of the input itself (cut lines), recorded rather than raised.
    notes: list[str] = field(default_factory=list)
    symbolized: bool | None = None
    symbolize_note: str | None = None

    @property
    def verdict(self) -> Verdict:
        """fail: a failure or a failed self-test pass in any boot; incomplete: no
        kernel output; no-selftest: kernel output, nothing failed, and no
        self-test pass completed (the log ends before the first one, 30 s after
        boot, or the kernel lacks CPA_DEBUG), which proves nothing good; pass:
        a pass completed and nothing failed."""
        if not self.boots:
            return "incomplete"
        for boot in self.boots:
            if boot.failures or any(p.result == "fail" for p in boot.cpa_selftest):
                return "fail"
        if not any(p.result == "pass" for b in self.boots for p in b.cpa_selftest):
            return "no-selftest"
        return "pass"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "boots": [b.to_json() for b in self.boots],
            "lines": self.lines,
            "notes": list(self.notes),
            "verdict": self.verdict,
        }
        if self.symbolized is not None:
            doc["symbolized"] = self.symbolized
            doc["symbolize_note"] = self.symbolize_note
        return doc


# Events: what the live runner acts on, each emitted once.


@dataclass(frozen=True, slots=True)
class BootStarted:
    boot: int


@dataclass(frozen=True, slots=True)
class SelftestDone:
    boot: int
    selftest: CpaSelftest


@dataclass(frozen=True, slots=True)
class FailureFound:
    boot: int
    failure: Failure


@dataclass(frozen=True, slots=True)
class BootEnded:
    boot: int
    ended_by: str


Event = BootStarted | SelftestDone | FailureFound | BootEnded
