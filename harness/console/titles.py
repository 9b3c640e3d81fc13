"""Kind and title of a complete report, in the style of syzkaller dashboards.

A title is stable across runs: no addresses, pids, CPU numbers, sizes or
offsets, only the report type and a function ("WARNING in verify_rwx",
"KASAN: slab-use-after-free Read in foo", "kernel panic: VFS: Unable to mount
root fs").

The function: for the oops family and lockups, the RIP/EIP function (where
the CPU was; with the ORC unwinder the faulting function itself is printed as
an unreliable `?` frame and the first reliable frame is its caller). For
WARNING and the sanitizers, the function their header names (a WARNING line
may name none, `at 0x0`: then the RIP's). Otherwise the
first reliable call-trace frame that is not a generic report, lock, sleep or
allocation helper; then the RIP; then the first unreliable frame (a kernel
without a reliable unwinder prints every frame with `?`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from harness.console.model import Frame

# Kinds whose report has the registers of the place the CPU was at.
CRASH_KINDS = frozenset({
    "oops", "page_fault", "null_deref", "gpf", "invalid_opcode", "double_fault", "bug",
})

# Frames a title never names while a better one is in the trace (reporting,
# locking, allocation, string helpers, sanitizers, the stall machinery), one
# per line with its reason in harness/data/generic-frames.txt.
GENERIC_FRAMES_FILE = Path(__file__).parent.parent / "data" / "generic-frames.txt"


def load_generic_frames(path: Path = GENERIC_FRAMES_FILE) -> list[tuple[str, str]]:
    """(pattern, reason) of each entry; a line without a reason is a mistake."""
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        pattern, _, reason = line.strip().partition("  ")
        if not reason.strip():
            raise ValueError(f"{path}:{n}: an entry without its reason: {line!r}")
        entries.append((pattern, reason.strip()))
    return entries


GENERIC_FUNCTION = re.compile("(?:" + "|".join(p for p, _ in load_generic_frames()) + ")")

# Compiler-made clones: foo.isra.0, foo.constprop.3, foo.part.1, foo.cold, foo.llvm.123
CLONE_SUFFIX = re.compile(
    r"(?:\.(?:isra|constprop|part|cold|llvm|lto_priv|localalias)(?:\.\d+)?)+$"
)


def normalize_function(name: str) -> str:
    return CLONE_SUFFIX.sub("", name)


def is_generic(name: str) -> bool:
    return GENERIC_FUNCTION.fullmatch(normalize_function(name)) is not None


def symbol_function(symbol: str | None) -> str | None:
    """The function of a %pS symbol "func+0x12/0x40 [mod]", or None for raw addresses."""
    if not symbol:
        return None
    m = re.match(r"([A-Za-z_.$][\w.$]*)(?:\+0x[0-9a-f]+(?:/0x[0-9a-f]+)?)?(?:\(\))?$",
                 symbol.split(" [")[0].strip())
    return m.group(1) if m else None


def pick_function(candidates: Iterable[str | None],
                  skip: re.Pattern[str] | None = None) -> str | None:
    """The first candidate that is not a generic helper (nor `skip`), else the first at all."""
    first: str | None = None
    for candidate in candidates:
        if not candidate:
            continue
        name = normalize_function(candidate)
        if first is None:
            first = name
        if not is_generic(name) and (skip is None or skip.fullmatch(name) is None):
            return name
    return first


# The function slot of a title whose trace cannot be trusted: cut short with
# only generic frames seen, records lost inside it (`** N printk messages
# dropped **`), or another report's lines mixed in. Any frame named then would
# be a random one, and a dashboard would group unrelated bugs under it.
CORRUPTED = "(corrupted report)"


def in_title(base: str, function: str | None) -> str:
    if function == CORRUPTED:
        return f"{base} {CORRUPTED}"
    return f"{base} in {function}" if function else base


# Messages: what stays in a title once numbers and addresses are gone.
_KEYVAL = re.compile(r"[^\s=]+=\S*")
_PTRVAL = re.compile(r"\(?_*ptrval_*\)?")
_HEX = re.compile(r"\b0x[0-9a-fA-F]+\b|\b[0-9a-fA-F]{8,}\b")
_CPU = re.compile(r"(?:\bon )?\bCPU#?\d+\b")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w])")
_EMPTY_GROUP = re.compile(r"\(\s*[,/:\s]*\)|\[\s*[,/:\s]*\]|\{\s*[,/:\s]*\}|<\s*>")
_SPACES = re.compile(r"\s+")


def normalize_message(text: str) -> str:
    """Drop numbers, addresses, key=value pairs and CPU ids from a free-form message."""
    s = _KEYVAL.sub("", text)
    s = _PTRVAL.sub("", s)
    s = _HEX.sub("", s)
    s = _CPU.sub("", s)
    s = _NUMBER.sub("", s)
    for _ in range(2):
        s = _EMPTY_GROUP.sub("", s)
    s = _SPACES.sub(" ", s).strip(" :,;.-")
    return s


PANIC_CANONICAL: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"VFS: Unable to mount root fs"), "VFS: Unable to mount root fs"),
    (re.compile(r"Attempted to kill init!"), "Attempted to kill init!"),
    (re.compile(r"Attempted to kill the idle task!"), "Attempted to kill the idle task!"),
    (re.compile(r"No working init found"), "No working init found"),
    (re.compile(r"Requested init \S+ failed"), "Requested init failed"),
    (re.compile(r"Fatal exception in interrupt"), "Fatal exception in interrupt"),
    (re.compile(r"Fatal exception"), "Fatal exception"),
    (re.compile(r"(\S+): panic_on_warn set"), r"\1: panic_on_warn set"),
    (re.compile(r"(\S+): system warned too often"), r"\1: system warned too often"),
)
STACK_PROTECTOR = re.compile(r"stack-protector: Kernel stack is corrupted in: (?P<sym>\S+)")


def panic_title(message: str) -> str:
    message = message.strip()
    m = STACK_PROTECTOR.match(message)
    if m is not None:
        func = symbol_function(m.group("sym"))
        base = "stack-protector: Kernel stack is corrupted"
        return f"kernel panic: {in_title(base, func)}"
    for pattern, canonical in PANIC_CANONICAL:
        found = pattern.match(message)
        if found is not None:
            return "kernel panic: " + found.expand(canonical)
    text = normalize_message(message)
    return f"kernel panic: {text}" if text else "kernel panic"


def bug_text(what: str) -> str:
    """The stable part of a catch-all `BUG: ...` line: up to its first detail."""
    head = re.split(r": | - |, |!", what, maxsplit=1)[0]
    return normalize_message(head) or normalize_message(what)


LOCKDEP_TITLES: tuple[tuple[re.Pattern[str], str, bool], ...] = (
    (re.compile(r"WARNING: possible (?:circular locking dependency|recursive locking"
                r"|irq lock inversion dependency) detected"), "possible deadlock", True),
    (re.compile(r"WARNING: \S+-safe -> \S+-unsafe lock order detected"),
     "possible deadlock", True),
    (re.compile(r"WARNING: inconsistent lock state"), "inconsistent lock state", True),
    (re.compile(r"WARNING: bad unlock balance detected"), "WARNING: bad unlock balance", True),
    (re.compile(r"WARNING: held lock freed"), "WARNING: held lock freed", True),
    (re.compile(r"WARNING: \S+ still has locks held"), "WARNING: still has locks held", True),
    (re.compile(r"WARNING: lock held when returning to user space"),
     "WARNING: lock held when returning to user space", True),
    (re.compile(r"WARNING: Nested lock was not taken"), "WARNING: nested lock was not taken",
     True),
    (re.compile(r"WARNING: bad contention detected"), "WARNING: bad contention detected", True),
    (re.compile(r"WARNING: suspicious RCU usage"), "WARNING: suspicious RCU usage", True),
    (re.compile(r"WARNING: chain_key collision"), "WARNING: chain_key collision", True),
    (re.compile(r"\[ BUG: Invalid wait context \]|WARNING: Invalid wait context"),
     "BUG: Invalid wait context", True),
    (re.compile(r"INFO: trying to register non-static key"),
     "INFO: trying to register non-static key", True),
    (re.compile(r"BUG: (MAX_\w+) too low"), r"BUG: \1 too low", False),
    (re.compile(r"BUG: key \S+ has not been registered"),
     "BUG: key has not been registered", True),
    (re.compile(r"BUG: looking up invalid subclass"), "BUG: looking up invalid subclass", True),
    (re.compile(r"BUG: +\d+ unexpected failures"),
     "BUG: locking self-test unexpected failures", False),
)

OLD_LOCKDEP = re.compile(r"\[ (?:INFO|BUG): (.*?)\.? \]")
OOPS_TYPE_KIND: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"(?:segment-related )?general protection fault"), "gpf",
     "general protection fault"),
    (re.compile(r"invalid opcode"), "invalid_opcode", "invalid opcode"),
    (re.compile(r"double fault"), "double_fault", "double fault"),
)

# WARNINGs titled by the facility that warned rather than by where, as syzkaller
# does (pkg/report/linux.go): the WARN() message, or the file the WARN is in,
# names it; the function is the first caller that is neither a generic helper
# nor one of the facility's own (its users, for ODEBUG). (title, message, file,
# helpers skipped)
WARN_CLASSES: tuple[tuple[str, re.Pattern[str], re.Pattern[str], re.Pattern[str]], ...] = (
    # lib/debugobjects.c debug_print_object(): "ODEBUG: %s %s (active state %u)
    # object: %p object type: %s hint: %pS" (2.6.26 on)
    ("WARNING: ODEBUG bug", re.compile(r"ODEBUG: "), re.compile(r"(?:.*/)?lib/debugobjects\.c"),
     re.compile(r".*(?:debug_|rcu|hrtimer_|timer_|work_|percpu_|vunmap|vfree|__free_"
                r"|kobject_).*|\w*_(?:timer|work)|kv?free\w*|kmem_cache_free\w*|\w*slab_free\w*"
                r"|__kmem_cache_free\w*|free_large_kmalloc\w*")),
    # lib/refcount.c refcount_warn_saturate(): "refcount_t: underflow; use-after-free.",
    # "refcount_t: saturated; leaking memory.", "refcount_t: addition on 0; ..." (4.13 on)
    ("WARNING: refcount bug", re.compile(r"refcount_t: "), re.compile(r"(?:.*/)?lib/refcount\.c"),
     re.compile(r"(?:__)?(?:refcount|kref|kobject)_\w+")),
    # include/linux/debug_locks.h DEBUG_LOCKS_WARN_ON(c): "DEBUG_LOCKS_WARN_ON(%s)";
    # any WARN in kernel/locking/lockdep.c
    ("WARNING: locking bug", re.compile(r"DEBUG_LOCKS_WARN_ON\("),
     re.compile(r"(?:.*/)?kernel/locking/lockdep\.c"),
     re.compile(r"lock_sock\w*|release_sock|__lock_\w+|hlock_\w+|\w*lock_class\w*"
                r"|lookup_chain_cache\w*|add_chain_cache\w*|debug_locks_off|debug_mutex_\w+"
                r"|(?:__)?(?:ww|rt)_mutex_\w+")),
)
# A WARN in mm/ in a kmalloc-family function (syzkaller: "WARNING: .*mm/.*\.c.*
# k?.?malloc"): kmalloc, kvmalloc_node, vmalloc, ... but not __vmalloc_node_range.
KMALLOC_FILE = re.compile(r"(?:.*/)?mm/[\w/.-]+\.c")
KMALLOC_FUNCTION = re.compile(r"k?.?malloc\w*")
KMALLOC_HELPER = re.compile(r"\w*(?:kmalloc|krealloc|slab|kmem)\w*")
# The WARN() of the CPA self-test's own failing pass, and of its start.
CPA_TEST_FILE = re.compile(r"(?:.*/)?(?:cpa|pageattr)-test\.c")
# What follows "WARNING: CPU: %d PID: %d at " or "WARNING: at " (before 6.19).
WARNING_WHERE = re.compile(
    r"(?:(?P<file>\S+):(?P<line>\d+) )?(?P<func>[A-Za-z_.$][\w.$]*)"
    r"(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?(?:\(\))?"
)
# What follows "WARNING: " since 6.19: "[cond] file:line at %pS, CPU#%d: comm/pid".
WARNING_WHERE_CPU = re.compile(
    r"(?:\[.*\] )?(?:(?P<file>\S+):(?P<line>\d+) )?at (?P<sym>\S+), CPU#\d+: "
)
KASAN_ACCESS = re.compile(r"(?P<access>Read|Write) of size \d+ (?:at addr|by task)")
WX_WHERE = re.compile(r"(?:0x[0-9a-f]+/)?(?P<sym>[A-Za-z_.$][\w.$]*)\+0x")


class ReportFacts:
    """What titles need from a complete report."""

    def __init__(
        self,
        headers: Sequence[tuple[str, re.Match[str]]],
        message: Sequence[str],
        body: Sequence[str],
        frames: Sequence[Frame],
        rip: Frame | None,
        late_message: Sequence[str] = (),
        mixed: bool = False,
        cut: bool = False,
        lost_after: int | None = None,
    ) -> None:
        self.headers = headers
        self.names = [name for name, _ in headers]
        self.message = message
        self.body = body
        self.frames = frames
        self.rip = rip
        # The lines right after a WARNING line, where a WARN() message can be.
        self.late_message = late_message
        # A `CPU: ... PID:` line of another task came in: the RIP and frames may
        # be another report's, so a WARNING's title takes nothing from them.
        self.mixed = mixed
        # The log, the boot or the size limit ended the report inside its trace.
        self.cut = cut
        # The console lost records inside the call trace, after this many frames:
        # the frame that should name the report may be among them.
        self.lost_after = lost_after

    def header(self, name: str) -> re.Match[str] | None:
        for hname, m in self.headers:
            if hname == name:
                return m
        return None

    # Inlined frames a symbolizer added are not candidates: a title is the same
    # for the log as the kernel printed it and for the symbolized one.
    def reliable(self, task_only: bool = False) -> list[str]:
        return [
            f.function for f in self.frames
            if f.reliable and not f.inline and (not task_only or f.context in (None, "TASK"))
        ]

    def unreliable(self) -> list[str]:
        return [f.function for f in self.frames if not f.reliable and not f.inline]

    def rip_function(self) -> str | None:
        return self.rip.function if self.rip else None


def _from_trace(r: ReportFacts, picked: str | None, *elsewhere: str | None) -> str | None:
    """`picked`, unless the trace it came from cannot be trusted (CORRUPTED
    then): a generic fallback from a trace cut short, lossy or mixed, or a
    frame seen after records were lost. A specific function from `elsewhere`
    (the header, the RIP line) stands, as does one seen before a cut."""
    if picked is None:
        return None
    if is_generic(picked):
        # Nothing specific was seen: it may have been in what is missing.
        return CORRUPTED if r.cut or r.mixed or r.lost_after is not None else picked
    if picked in {normalize_function(e) for e in elsewhere if e}:
        return picked
    if r.mixed:
        return CORRUPTED
    if r.lost_after is not None:
        at = next((n for n, f in enumerate(r.frames)
                   if normalize_function(f.function) == picked), len(r.frames))
        if at >= r.lost_after:
            return CORRUPTED
    return picked


def _crash_function(r: ReportFacts) -> str | None:
    rip = r.rip_function()
    return _from_trace(r, pick_function([rip, *r.reliable(), *r.unreliable()]), rip)


def _trace_function(r: ReportFacts, first: str | None = None) -> str | None:
    rip = r.rip_function()
    return _from_trace(r, pick_function([first, *r.reliable(), rip, *r.unreliable()]),
                       first, rip)


def warning_where(m: re.Match[str]) -> tuple[str | None, str | None]:
    """The file and function a WARNING line names (either may be missing)."""
    where = m.group("where").strip()
    new = WARNING_WHERE_CPU.match(where)
    if new is not None:
        return new.group("file"), symbol_function(new.group("sym"))
    old = WARNING_WHERE.match(where)
    return (old.group("file"), old.group("func")) if old is not None else (None, None)


def warning_function(r: ReportFacts, func: str | None) -> str | None:
    """Where the WARN is: the function its WARNING line names, as printed; when it
    names none (`at 0x0`), the RIP line's, then the first frame. Nothing
    from the body of a report with another report's lines mixed in."""
    if func is not None:
        return normalize_function(func)
    if r.mixed:
        return None
    rip = r.rip_function()
    return normalize_function(rip) if rip else _trace_function(r)


def warning_title(r: ReportFacts, m: re.Match[str]) -> str:
    """`WARNING in f`, f where the WARN is; its file when no function is known."""
    file, func = warning_where(m)
    return in_title("WARNING", warning_function(r, func) or file)


def _warning(r: ReportFacts, m: re.Match[str]) -> tuple[str, str]:
    file, func = warning_where(m)
    # A message line that came after the WARNING line (before 4.x; the reworked x86 WARN).
    if "cpa_not_passed" in r.names:
        return "cpa_selftest", warning_title(r, m)
    if "wx_found" in r.names:
        return "wx_mapping", "x86/mm: Found insecure W+X mapping"
    if "list_corruption" in r.names:
        return "list_corruption", in_title("BUG: corrupted list", _trace_function(r))
    where = warning_function(r, func)
    if file and CPA_TEST_FILE.fullmatch(file):
        if where == "start_pageattr_test":
            return "cpa_selftest", "CPA self-test could not start"
        # The self-test's own WARN: titled like any WARN, kind cpa_selftest.
        return "cpa_selftest", in_title("WARNING", where or file)
    message = [*r.message, *r.late_message]
    if file and file.endswith("dump_pagetables.c") and any("W+X" in line for line in message):
        return "wx_mapping", "x86/mm: Found insecure W+X mapping"
    if file and file.endswith("list_debug.c"):
        return "list_corruption", in_title("BUG: corrupted list", _trace_function(r))
    for base, text, source, helpers in WARN_CLASSES:
        if (file and source.fullmatch(file)) or any(text.match(line) for line in message):
            return "warning", in_title(base, _guilty(r, helpers))
    if file and KMALLOC_FILE.fullmatch(file) and where and KMALLOC_FUNCTION.fullmatch(where):
        return "warning", in_title("WARNING: kmalloc bug", _guilty(r, KMALLOC_HELPER))
    return "warning", in_title("WARNING", where or file)


def _guilty(r: ReportFacts, helpers: re.Pattern[str]) -> str | None:
    """The caller a facility's WARN blames: the first frame that is not a helper."""
    if r.mixed:
        return None
    rip = r.rip_function()
    return _from_trace(r, pick_function([*r.reliable(), rip, *r.unreliable()], helpers), rip)


def _oops(r: ReportFacts) -> tuple[str, str]:
    m = r.header("oops")
    kind, base = "oops", "Oops"
    if m is not None and m.group("type"):
        base = m.group("type").strip()
        for pattern, k, b in OOPS_TYPE_KIND:
            if pattern.match(base):
                kind, base = k, b
                break
    return kind, in_title(base, _crash_function(r))


def kind_and_title(r: ReportFacts) -> tuple[str, str]:
    """The failure kind (from model.FAILURE_KINDS) and stable title of a report."""
    names = r.names
    first = names[0]
    if first in ("cpa_not_passed", "cpa_old_not_passed"):
        # The WARNING that follows the message names where the self-test failed.
        warning = r.header("warning")
        if warning is not None:
            return "cpa_selftest", warning_title(r, warning)
        return "cpa_selftest", "CPA self-test NOT PASSED"
    if first == "cpa_no_bitmap":
        return "cpa_selftest", "CPA self-test could not allocate its bitmap"
    if first in ("wx_found", "wx_failed"):
        m = r.header("wx_found")
        where = WX_WHERE.match(m.group("where")) if m is not None else None
        base = "x86/mm: Found insecure W+X mapping"
        return "wx_mapping", f"{base} at {where.group('sym')}" if where else base
    if first == "list_corruption":
        return "list_corruption", in_title("BUG: corrupted list", _trace_function(r))
    if first == "lkdtm_fail":
        m = r.header("lkdtm_fail")
        what = normalize_message(m.group("what")) if m is not None else ""
        return "lkdtm", f"lkdtm: FAIL: {what}" if what else "lkdtm: FAIL"
    if first == "nx_exec":
        m = r.header("nx_exec")
        base = ("BUG: unable to execute userspace code (SMEP)"
                if m is not None and "SMEP" in m.group("what")
                else "BUG: kernel tried to execute NX-protected page")
        return "page_fault", in_title(base, _crash_function(r))
    if first == "null_deref":
        return "null_deref", in_title(
            "BUG: unable to handle kernel NULL pointer dereference", _crash_function(r))
    if first == "page_fault":
        return "page_fault", in_title(
            "BUG: unable to handle kernel paging request", _crash_function(r))
    if first == "double_fault":
        return "double_fault", in_title("double fault", _crash_function(r))
    if first == "stack_guard":
        return "oops", in_title("BUG: stack guard page was hit", _crash_function(r))
    if first == "kernel_bug":
        return "bug", in_title("kernel BUG", _crash_function(r))
    if first == "oops":
        return _oops(r)
    m = r.header(first)
    assert m is not None
    if first == "warning":
        return _warning(r, m)
    if first == "ubsan":
        what = m.group("what")
        func = _trace_function(r)
        if func is None:
            func = m.group("where").split(":")[0]
        return "ubsan", in_title(f"UBSAN: {what}", func)
    if first in ("kasan", "kfence", "kmsan"):
        what = m.group("what")
        func = symbol_function(m.group("func"))
        if first == "kasan":
            access = next((a.group("access") for a in map(KASAN_ACCESS.match, r.body) if a),
                          None)
            base = f"KASAN: {what} {access}" if access else f"KASAN: {what}"
        else:
            base = f"{first.upper()}: {what}"
        return first, in_title(base, _trace_function(r, func))
    if first == "kcsan":
        f1 = symbol_function(m.group("func"))
        f2 = symbol_function(m.group("func2"))
        funcs = " / ".join(f for f in (f1, f2) if f) or None
        return "kcsan", in_title(f"KCSAN: {m.group('what')}", funcs)
    if first == "soft_lockup":
        return "soft_lockup", in_title("BUG: soft lockup", _crash_function(r))
    if first == "hard_lockup":
        return "hard_lockup", in_title("BUG: hard lockup", _crash_function(r))
    if first == "rcu_stall":
        rip = r.rip_function()
        func = _from_trace(r, pick_function([*r.reliable(task_only=True), rip, *r.reliable(),
                                             *r.unreliable()]), rip)
        return "rcu_stall", in_title("INFO: rcu detected stall", func)
    if first == "hung_task":
        return "hung_task", in_title("INFO: task hung", _trace_function(r))
    if first in ("lockdep", "lockdep_selftest"):
        # "[ INFO: possible recursive locking detected ]" before 4.13.
        text = OLD_LOCKDEP.sub(r"WARNING: \1", m.group(0))
        for pattern, base, with_function in LOCKDEP_TITLES:
            found = pattern.match(text)
            if found is not None:
                base = found.expand(base)
                return "lockdep", in_title(base, _trace_function(r) if with_function else None)
        return "lockdep", in_title("lockdep", _trace_function(r))
    if first == "bad_page":
        return "bad_page", in_title(f"BUG: Bad page {m.group('what')}", _trace_function(r))
    if first == "atomic_sleep":
        return "atomic_sleep", in_title(f"BUG: {m.group('what')}", _trace_function(r))
    if first == "netdev_refcount":
        # "DEV" literally: the device name differs between runs (syzkaller's title).
        return "netdev_refcount", "unregister_netdevice: waiting for DEV to become free"
    if first == "bad_stack_value":
        if m.group("what") == "regs":
            return "warning", "WARNING: kernel stack regs has bad 'bp' value"
        return "warning", "WARNING: kernel stack frame pointer has bad value"
    if first in ("page_alloc_failure", "vmalloc_error"):
        return "page_alloc_failure", in_title(m.group("what"), _trace_function(r))
    if first in ("oom", "oom_killed"):
        return "oom", "Out of memory"
    if first == "oom_no_killable":
        return "oom", "Out of memory and no killable processes"
    if first == "memory_leak":
        return "memory_leak", in_title("memory leak", _trace_function(r))
    if first == "memory_leak_summary":
        return "memory_leak", "kmemleak: new suspected memory leaks"
    if first in ("panic", "panic_end"):
        return "panic", panic_title(m.group("msg"))
    if first == "slub":
        return "bug", in_title(f"BUG: slab {bug_text(m.group('what'))}", _trace_function(r))
    # generic_bug
    return "bug", in_title(f"BUG: {bug_text(m.group('what'))}", _trace_function(r))
