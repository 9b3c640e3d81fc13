"""The first lines of kernel failure reports, and how each report ends.

Every header is a printk format from the kernel (6.12 and older), anchored at
the start of the message. Order matters: the first match wins, so specific
`BUG: ...` headers come before the catch-all.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class End(enum.Enum):
    """How a report opened by a header is found complete."""

    MARKER = "marker"            # "---[ end trace ... ]---" (oops_exit, __warn)
    RULE = "rule"                # the closing "=====" line (KASAN, KFENCE, KMSAN, KCSAN)
    MARKER_OR_RULE = "marker_or_rule"  # UBSAN: "---[ end trace ]---" now, "=====" before 4.x
    TRACE = "trace"              # the first line after its call trace (lockdep, stalls ...)
    SINGLE = "single"            # the header line is the whole report
    PANIC = "panic"              # "---[ end Kernel panic" or "Rebooting in N seconds.."
    # Announces the header that follows (e.g. "BUG: kernel NULL pointer
    # dereference" before "Oops:"): absorbs it, or ends at the first line that
    # is neither that header nor one of the lines printed between them.
    PRELUDE = "prelude"


class Pre(enum.Enum):
    """Which lines printed just before the header belong to the report."""

    NONE = "none"
    CUT_HERE = "cut_here"        # "------------[ cut here ]------------" and a WARN message
    RULE = "rule"                # the opening "=====" line
    CUT_OR_RULE = "cut_or_rule"


@dataclass(frozen=True)
class HeaderSpec:
    name: str
    pattern: re.Pattern[str]
    kind: str
    end: End
    pre: Pre = Pre.NONE
    absorbs: frozenset[str] = frozenset()
    # Lines allowed between the header and the start of its call trace.
    pre_trace_limit: int = 200
    # Another line that starts the call trace, besides "Call Trace:".
    trace_start: re.Pattern[str] | None = None
    # The stack is printed right after the header, without "Call Trace:".
    trace_from_header: bool = False
    # The characters the header can start with (a fast dispatch on the first
    # character), or else a substring every such line contains.
    starts: str = ""
    needle: str = ""
    # A follow-up of an earlier report of these kinds, not a failure of its own.
    follows: frozenset[str] = frozenset()
    follow_window: int | None = None
    # A one-line report printed in the middle of other output (another report's
    # stack walk, say): it is a failure of its own but does not end the report
    # open in its context.
    interjects: bool = False
    # A header line as the kernel prints it (tests and docs).
    example: str = ""


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _set(*names: str) -> frozenset[str]:
    return frozenset(names)


LOCKDEP_HEADERS = (
    r"WARNING: (?:possible circular locking dependency detected"
    r"|possible recursive locking detected|inconsistent lock state"
    r"|possible irq lock inversion dependency detected|\S+-safe -> \S+-unsafe lock order detected"
    r"|bad unlock balance detected!|held lock freed!|\S+ still has locks held!"
    r"|lock held when returning to user space!|Nested lock was not taken"
    r"|bad contention detected!|suspicious RCU usage|chain_key collision)"
    r"|\[ BUG: Invalid wait context \]|INFO: trying to register non-static key"
    # Before 4.13: "[ INFO: possible circular locking dependency detected ]"
    r"|\[ (?:INFO|BUG): [^\]]+ \]"
    r"|BUG: MAX_\w+ too low!|BUG: key \S+ has not been registered!"
    r"|BUG: looking up invalid subclass"
)

# kernel/panic.c __warn(), three generations of its first line:
#   "WARNING: CPU: %d PID: %d at %s:%d %pS" (3.x to 6.18),
#   "WARNING: %s:%d at %pS, CPU#%d: %s/%d" (6.19 on, "bugs/core: Reorganize fields
#   in the first line of WARNING output"; with DEBUG_BUGVERBOSE_DETAILED the file
#   follows the WARN's condition in brackets; %pS prints 0x0 when the trap gives
#   __warn() no caller address, as the x86 WARN reworked in late 2025 can, and
#   the function is then only in the RIP line),
#   "WARNING: at %s:%d %pS()" (2.6).
# The first two have no-file variants, "... at %pS" and "WARNING: at %pS, CPU#...".
WARNING_HEADER = r"WARNING: (?:CPU: \d+ PID: \d+ at |(?=.*, CPU#\d+: )|at )(?P<where>.*)"
# The task a WARNING line names, to tell its own `CPU: ... PID:` line from one of
# another report printed in the middle of it.
WARNING_PID = re.compile(
    r"WARNING: (?:CPU: \d+ PID: (?P<pid>\d+) at |.*, CPU#\d+: .*/(?P<pid2>\d+)\s*$)")
# lib/dump_stack.c dump_stack_print_info(): "CPU: %d UID: %u PID: %d Comm: %.20s
# ..." (6.12 prints it), "CPU: %d PID: %d Comm: %.20s ..." before the UID came.
TASK_INFO = re.compile(r"CPU: \d+ (?:UID: \d+ )?PID: (?P<pid>\d+) Comm: ")

HEADERS: tuple[HeaderSpec, ...] = (
    # arch/x86/mm/pat/cpa-test.c
    HeaderSpec(
        "cpa_not_passed", _re(r"NOT PASSED\. Please report\."), "cpa_selftest", End.PRELUDE,
        Pre.CUT_HERE, _set("warning"), starts="N",
        example="NOT PASSED. Please report."),
    HeaderSpec(
        "cpa_old_not_passed", _re(r"CPA selftests NOT PASSED"), "cpa_selftest", End.PRELUDE,
        absorbs=_set("warning"), starts="C",
        example="CPA selftests NOT PASSED. Please report."),
    HeaderSpec(
        "cpa_no_bitmap", _re(r"CPA Cannot vmalloc bitmap"), "cpa_selftest", End.SINGLE,
        starts="C", example="CPA Cannot vmalloc bitmap"),
    # arch/x86/mm/dump_pagetables.c
    HeaderSpec(
        "wx_found", _re(r"x86/mm: Found insecure W\+X mapping at address (?P<where>\S+)"),
        "wx_mapping", End.PRELUDE, Pre.CUT_HERE, _set("warning"), starts="x",
        example="x86/mm: Found insecure W+X mapping at address startup_64+0x0/0x20"),
    HeaderSpec(
        "wx_failed", _re(r"x86/mm: Checked W\+X mappings: FAILED"), "wx_mapping", End.SINGLE,
        starts="x", follows=_set("wx_mapping"),
        example="x86/mm: Checked W+X mappings: FAILED, 512 W+X pages found."),
    # lib/list_debug.c via CHECK_DATA_CORRUPTION: WARN, or pr_err + BUG
    HeaderSpec(
        "list_corruption", _re(r"(?P<op>h?list_[a-z_]+) (?:corruption|double add)\b"),
        "list_corruption", End.PRELUDE, Pre.CUT_HERE, _set("warning", "kernel_bug", "oops"),
        starts="hl",
        example="list_add corruption. prev->next should be next (ffffffff82a1c0e0), but was "
                "ffff888004a3c010. (prev=ffff888004a3c000)."),
    # drivers/misc/lkdtm: a protection that should have fired and did not
    HeaderSpec(
        "lkdtm_fail", _re(r"lkdtm: FAIL: (?P<what>.*)"), "lkdtm", End.SINGLE, starts="l",
        example="lkdtm: FAIL: survived bad write"),
    # arch/x86/mm/fault.c
    HeaderSpec(
        "nx_exec",
        _re(r"(?P<what>kernel tried to execute NX-protected page"
            r"|unable to execute userspace code \(SMEP\?\))"),
        "page_fault", End.PRELUDE, absorbs=_set("null_deref", "page_fault", "oops"), starts="ku",
        example="kernel tried to execute NX-protected page - exploit attempt? (uid: 0)"),
    HeaderSpec(
        "null_deref",
        _re(r"BUG: (?:kernel NULL pointer dereference, address"
            r"|unable to handle kernel NULL pointer dereference)"),
        "null_deref", End.PRELUDE, absorbs=_set("oops"), starts="B",
        example="BUG: kernel NULL pointer dereference, address: 0000000000000000"),
    HeaderSpec(
        "page_fault",
        _re(r"BUG: unable to handle (?:page fault for address|kernel paging request)"),
        "page_fault", End.PRELUDE, absorbs=_set("oops"), starts="B",
        example="BUG: unable to handle page fault for address: ffffffff82a4c000"),
    # arch/x86/kernel/traps.c
    HeaderSpec(
        "double_fault", _re(r"PANIC: double fault, error_code:"), "double_fault", End.PRELUDE,
        absorbs=_set("oops"), starts="P", example="PANIC: double fault, error_code: 0x0"),
    HeaderSpec(
        "stack_guard", _re(r"BUG: (?:\w+ )?stack guard page was hit at"), "oops", End.PRELUDE,
        absorbs=_set("oops"), starts="B",
        example="BUG: TASK stack guard page was hit at ffffc90000017ff8 "
                "(stack is ffffc90000018000..ffffc9000001c000)"),
    # lib/bug.c
    HeaderSpec(
        "kernel_bug",
        _re(r"(?:kernel BUG at (?P<file>\S+?):(?P<line>\d+)!"
            r"|Kernel BUG at (?P<sym>\S+) \[verbose debug info unavailable\])"),
        "bug", End.PRELUDE, Pre.CUT_HERE, _set("oops"), starts="kK",
        example="kernel BUG at mm/slub.c:553!"),
    # arch/x86/kernel/dumpstack.c __die_header(): "Oops: <type>: 0000 [#1] ..."
    HeaderSpec(
        "oops",
        _re(r"(?:Oops: )?(?:(?P<type>[A-Za-z][\w #/-]*?)"
            r"(?:, (?:probably|maybe) for (?:non-canonical )?address 0x[0-9a-fA-F]+)?: )?"
            r"[0-9a-f]{4} \[#\d+\]"),
        "oops", End.MARKER, needle="[#",
        example="Oops: general protection fault, probably for non-canonical address "
                "0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI"),
    # kernel/panic.c __warn() (WARNING_HEADER above)
    HeaderSpec(
        "warning", _re(WARNING_HEADER), "warning",
        # Before 4.x the WARN() message came after the WARNING line.
        End.MARKER, Pre.CUT_HERE, _set("list_corruption", "wx_found", "cpa_not_passed"),
        starts="W",
        example="WARNING: CPU: 0 PID: 1 at arch/x86/mm/pat/set_memory.c:665 "
                "verify_rwx+0x8f/0xa0"),
    # lib/ubsan.c
    HeaderSpec(
        "ubsan", _re(r"UBSAN: (?P<what>.+?) in (?P<where>\S+)"), "ubsan", End.MARKER_OR_RULE,
        Pre.CUT_OR_RULE, starts="U",
        example="UBSAN: array-index-out-of-bounds in drivers/misc/frob.c:42:9"),
    # mm/kasan, mm/kfence, mm/kmsan, kernel/kcsan
    HeaderSpec(
        "kasan", _re(r"BUG: KASAN: (?P<what>[\w-]+)(?: in (?P<func>\S+))?"), "kasan", End.RULE,
        Pre.RULE, starts="B", example="BUG: KASAN: slab-use-after-free in frob_list+0x8c/0xa0"),
    HeaderSpec(
        "kfence", _re(r"BUG: KFENCE: (?P<what>.+?) in (?P<func>\S+)"), "kfence", End.RULE,
        Pre.RULE, starts="B", example="BUG: KFENCE: use-after-free read in frob_read+0x22/0x40"),
    HeaderSpec(
        "kmsan", _re(r"BUG: KMSAN: (?P<what>[\w-]+) in (?P<func>\S+)"), "kmsan", End.RULE,
        Pre.RULE, trace_from_header=True, starts="B",
        example="BUG: KMSAN: uninit-value in frob_check+0x1c/0x60"),
    HeaderSpec(
        # "data-race", or "assert: race" for an ASSERT_EXCLUSIVE_*() that failed
        "kcsan",
        _re(r"BUG: KCSAN: (?P<what>assert: race|[\w-]+) in (?P<func>\S+)(?: / (?P<func2>\S+))?"),
        "kcsan", End.RULE, Pre.RULE,
        trace_start=_re(r"(?:race at unknown origin, with )?[\w -]+ to 0x[0-9a-f]+ "
                        r"of \d+ bytes by .* on cpu \d+:"),
        starts="B", example="BUG: KCSAN: data-race in frob_reader / frob_writer"),
    # kernel/watchdog.c, kernel/rcu/tree_stall.h, kernel/hung_task.c
    HeaderSpec(
        "soft_lockup", _re(r"(?:watchdog: )?BUG: soft lockup - CPU#\d+ stuck for"),
        "soft_lockup", End.TRACE, pre_trace_limit=150, starts="wB",
        example="watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [swapper/0:1]"),
    HeaderSpec(
        "hard_lockup", _re(r"(?:(?:NMI )?watchdog: )?Watchdog detected hard LOCKUP on cpu \d+"),
        "hard_lockup", End.TRACE, pre_trace_limit=150, starts="NwW",
        example="watchdog: Watchdog detected hard LOCKUP on cpu 1"),
    HeaderSpec(
        "rcu_stall", _re(r"(?:rcu: )?INFO: \S*rcu\S* (?:self-)?detected (?:expedited )?stalls?"),
        "rcu_stall", End.TRACE, pre_trace_limit=400, starts="rI",
        example="rcu: INFO: rcu_preempt self-detected stall on CPU"),
    # "INFO: task %s:%d blocked%s for more than %ld seconds.", %s being " in I/O
    # wait" for a task in io_schedule() (7.1 on, "hung_task: explicitly report I/O
    # wait state in log output"), empty before
    HeaderSpec(
        "hung_task",
        _re(r"INFO: task .+:\d+ blocked(?: in I/O wait)? for more than \d+ seconds"),
        "hung_task", End.TRACE, pre_trace_limit=40, starts="I",
        example="INFO: task kworker/0:1:12 blocked for more than 122 seconds."),
    # kernel/locking/lockdep.c, lib/locking-selftest.c
    HeaderSpec(
        "lockdep", _re(LOCKDEP_HEADERS), "lockdep", End.TRACE, Pre.RULE, pre_trace_limit=400,
        starts="WI[B", example="WARNING: possible circular locking dependency detected"),
    HeaderSpec(
        "lockdep_selftest", _re(r"BUG: +\d+ unexpected failures \(out of +\d+\)"), "lockdep",
        End.SINGLE, starts="B",
        example="BUG:   3 unexpected failures (out of 262) - debugging disabled! |"),
    # mm/page_alloc.c, mm/memory.c, mm/filemap.c
    HeaderSpec(
        "bad_page", _re(r"BUG: Bad page (?P<what>state|map|cache) in process"), "bad_page",
        End.TRACE, pre_trace_limit=60, starts="B",
        example="BUG: Bad page state in process swapper/0  pfn:04a3c"),
    # kernel/sched/core.c
    HeaderSpec(
        "atomic_sleep",
        _re(r"BUG: (?P<what>sleeping function called from invalid context"
            r"|scheduling while atomic|assuming atomic context"
            r"|scheduling in a non-blocking section|assuming non migratable context)"),
        "atomic_sleep", End.TRACE, pre_trace_limit=40, starts="B",
        example="BUG: sleeping function called from invalid context at "
                "kernel/locking/mutex.c:585"),
    # mm/page_alloc.c warn_alloc(), mm/vmalloc.c
    HeaderSpec(
        "page_alloc_failure",
        _re(r".{1,64}?: (?P<what>page allocation failure|page allocation stalls)\b"),
        "page_alloc_failure", End.TRACE, pre_trace_limit=20, needle="page allocation",
        example="swapper/0: page allocation failure: order:10, mode:0xcc0(GFP_KERNEL), "
                "nodemask=(null),cpuset=/,mems_allowed=0"),
    HeaderSpec(
        "vmalloc_error", _re(r".{1,64}?: (?P<what>vmalloc error)\b"), "page_alloc_failure",
        End.TRACE, pre_trace_limit=20, needle="vmalloc error",
        example="pageattr-test: vmalloc error: size 524288, page order 0, failed to allocate "
                "pages, mode:0xdc2(GFP_KERNEL|__GFP_HIGHMEM|__GFP_ZERO), nodemask=(null)"),
    # mm/oom_kill.c
    HeaderSpec(
        "oom", _re(r".{1,64}? invoked oom-killer: "), "oom", End.TRACE, pre_trace_limit=20,
        needle="invoked oom-killer",
        example="sh invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0"),
    HeaderSpec(
        "oom_no_killable", _re(r"Out of memory and no killable processes"), "oom", End.SINGLE,
        starts="O", example="Out of memory and no killable processes..."),
    HeaderSpec(
        "oom_killed",
        _re(r"(?:Memory cgroup )?[Oo]ut of memory(?: \(oom_kill_allocating_task\))?: "
            r"Kill(?:ed)? process"),
        "oom", End.SINGLE, starts="MOo", follows=_set("oom"), follow_window=50000,
        example="Out of memory: Killed process 91 (hog) total-vm:123456kB, anon-rss:120000kB"),
    # net/core/dev.c netdev_wait_allrefs_any(): every 10 s while a net_device being
    # unregistered still has references (2.6 on; with NET_DEV_REFCNT_TRACKER, 5.17
    # on, the holders' stacks follow). Repeats are the same failure, and it does
    # not end a report it is printed in the middle of (syzkaller agrees).
    HeaderSpec(
        "netdev_refcount",
        _re(r"unregister_netdevice: waiting for (?P<dev>\S+) to become free\. "
            r"Usage count = -?\d+"),
        "netdev_refcount", End.SINGLE, starts="u", follows=_set("netdev_refcount"),
        interjects=True,
        example="unregister_netdevice: waiting for lo to become free. Usage count = 2"),
    # arch/x86/kernel/unwind_frame.c (4.11 on), once per boot: the frame-pointer
    # unwinder (i386's default) found a pt_regs or frame pointer off the stack,
    # "WARNING: kernel stack regs at %p in %s:%d has bad 'bp' value %p" /
    # "WARNING: kernel stack frame pointer at %p in %s:%d has bad value %p", in the
    # middle of whatever stack it was walking; unwind_dump() lines follow.
    HeaderSpec(
        "bad_stack_value",
        _re(r"(?:WARNING: )?kernel stack (?P<what>regs|frame pointer) (?:at \S+ in .*? )?"
            r"has bad (?:'\w+' )?value"),
        "warning", End.SINGLE, starts="Wk", interjects=True,
        example="WARNING: kernel stack regs at 00000000a1b2c3d4 in swapper/0:1 has bad 'bp' "
                "value 0000000000000001"),
    # mm/kmemleak.c
    HeaderSpec(
        "memory_leak", _re(r"(?:kmemleak: )?unreferenced object 0x[0-9a-f]+ \(size \d+\):"),
        "memory_leak", End.TRACE, pre_trace_limit=40,
        trace_start=_re(r"(?:kmemleak:)?\s*backtrace(?: \(crc [0-9a-f]+\))?:"), starts="ku",
        example="unreferenced object 0xffff888004a3c000 (size 64):"),
    HeaderSpec(
        "memory_leak_summary", _re(r"kmemleak: \d+ new suspected memory leaks"), "memory_leak",
        End.SINGLE, starts="k", follows=_set("memory_leak"), follow_window=5000,
        example="kmemleak: 1 new suspected memory leaks (see /sys/kernel/debug/kmemleak)"),
    # kernel/panic.c
    HeaderSpec(
        "panic", _re(r"Kernel panic - not syncing: ?(?P<msg>.*)"), "panic", End.PANIC,
        pre_trace_limit=100000, starts="K",
        example="Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"),
    # The end line of a panic whose first line was lost (a log cut or garbled):
    # a header only when the boot has no panic yet.
    HeaderSpec(
        "panic_end", _re(r"---\[ end Kernel panic - not syncing: ?(?P<msg>.*?)(?: \]---)?\s*$"),
        "panic", End.SINGLE, starts="-",
        example="---[ end Kernel panic - not syncing: Fatal exception ]---"),
    # mm/slub.c slab_bug()
    HeaderSpec(
        "slub", _re(r"BUG (?P<cache>\S+) \([^)]*\): (?P<what>.+)"), "bug", End.TRACE, Pre.RULE,
        pre_trace_limit=80, starts="B", example="BUG kmalloc-64 (Not tainted): Poison overwritten"),
    # Everything else the kernel calls a BUG.
    HeaderSpec(
        "generic_bug", _re(r"BUG: (?P<what>.+)"), "bug", End.TRACE, pre_trace_limit=30,
        starts="B", example="BUG: using smp_processor_id() in preemptible [00000000] code: "
                            "swapper/0/1"),
)

_NAMED_GROUP = re.compile(r"\(\?P<\w+>")


def _alternation(specs: list[HeaderSpec]) -> re.Pattern[str]:
    # The group names inside the individual patterns would clash in one
    # alternation, so they become plain groups; the header's own pattern is
    # matched again for its groups.
    return re.compile("|".join(
        "(?P<h{}>{})".format(i, _NAMED_GROUP.sub("(?:", h.pattern.pattern))
        for i, h in enumerate(specs)
    ))


# First character -> (alternation of the headers that can start with it, them).
_BY_FIRST: dict[str, tuple[re.Pattern[str], list[HeaderSpec]]] = {}
for _first in sorted({c for h in HEADERS for c in h.starts}):
    _specs = [h for h in HEADERS if _first in h.starts]
    _BY_FIRST[_first] = (_alternation(_specs), _specs)
_NEEDLED = [h for h in HEADERS if h.needle]


def match_header(text: str) -> tuple[HeaderSpec, re.Match[str]] | None:
    """The failure header this message is, with its own match, or None."""
    entry = _BY_FIRST.get(text[:1])
    if entry is not None:
        m = entry[0].match(text)
        if m is not None and m.lastgroup is not None:
            spec = entry[1][int(m.lastgroup[1:])]
            own = spec.pattern.match(text)
            if own is not None:
                return spec, own
    for spec in _NEEDLED:
        if spec.needle in text:
            own = spec.pattern.match(text)
            if own is not None:
                return spec, own
    return None


# Report body patterns.
CUT_HERE = re.compile(r"-+\[ cut here \]-+\s*$")
END_TRACE = re.compile(r"---\[ end trace(?: [0-9a-f]+)? \]---")
RULE_LINE = re.compile(r"={20,}\s*$")
PANIC_END = re.compile(r"---\[ end Kernel panic - not syncing")
PANIC_REBOOTING = re.compile(r"Rebooting in \d+ seconds\.\.")
# "Call Trace:" (x86), "Call trace:" (arm64, riscv, and the generic dump_stack).
TRACE_START = re.compile(r"\s*Call [Tt]race:")
# " ? func+0x12/0x40 [mod]", " [<ffffffff81234567>] ? func+0x12/0x40", "    func+0x1/0x2";
# arm64 (6.14 on) marks where a frame came from after it, " func+0x1/0x2 (P)"
# (arch/arm64/kernel/stacktrace.c state_source_string()): C the caller, T a
# task's saved state, P the pt_regs PC, L its link register (later), U unknown;
# the mark is not part of the frame.
TRACE_FRAME = re.compile(
    r"(?:kmemleak:)?\s*(?:\[<[0-9a-f]+>\]\s*)?(?P<unreliable>\?\s+)?(?:\[<[0-9a-f]+>\]\s*)?"
    r"(?P<func>[A-Za-z_.$][\w.$]*)\+(?P<offset>0x[0-9a-f]+)/(?P<size>0x[0-9a-f]+)"
    r"(?:\s+\[(?P<module>[\w-]+)(?:\s+[0-9a-f]+)?\])?(?:\s+\((?P<mark>[A-Z]{1,4})\))?"
    # symbolized (syzbot, decode_stacktrace.sh): the source line after the frame
    r"(?:\s+\(?(?P<file>[\w./+-]+\.[chS]):(?P<line>\d+)\)?)?"
)
# A function the compiler inlined into the next frame, as symbolizers print it
# (syzbot's reports, addr2line -i): ` context_switch kernel/sched/core.c:5408 [inline]`.
INLINE_FRAME = re.compile(
    r"\s+(?P<func>[A-Za-z_.$][\w.$]*)\s+(?P<file>[\w./+-]+\.[chS]):(?P<line>\d+)\s+\[inline\]\s*$"
)
# A call-trace line the console cut (an nbcon console taken over in the middle of
# it, which then replays it; a log cut mid-line): indented, one token that a frame
# or a stack marker starts with, or a printk prefix that never ended. It neither
# ends the trace nor is a frame.
TRACE_FRAGMENT = re.compile(
    r"(?=.*\S)(?:\s+(?:\[<[0-9a-f]*>?\]?\s*)?(?:\?\s*)?(?:\[<[0-9a-f]*>?\]?\s*)?[\w.$]*"
    r"(?:\+[0-9a-fx/]*)?(?: \[[\w-]*)?|\s+</?[A-Z#_]*|\[[\s\d.]*(?:\]\[?[\sTC\d]*)?)$"
)
# A stack entry with no symbol: %pB of an address outside any function prints it
# raw (" ? 0xffffffff81000000"). Part of the trace, not a frame.
RAW_ADDRESS_FRAME = re.compile(r"\s+(?:\?\s+)?0x[0-9a-f]+\s*$")
# unwind_dump() after a bad stack value (arch/x86/kernel/unwind_frame.c): the
# stack words, "unwind stack type:%d next_sp:%p mask:0x%x graph_idx:%d" then
# "%p: %0*lx (%pB)"; part of the stack walk it interrupted.
UNWIND_DUMP = re.compile(r"unwind stack type:\d+ |[0-9a-f]{8,16}: [0-9a-f]{8,16} \(")
TRACE_MARKER = re.compile(r"\s*<(?P<close>/)?(?P<name>[A-Z#_]+)>\s*$")
REGISTER_LINE = re.compile(
    r"\s*(?:[RE](?:IP|SP|AX|BX|CX|DX|SI|DI|BP)|R\d{1,2}|[CDEFGS]S|CR\d|DR\d|Code"
    r"|ORIG_RAX|PKRU|EFLAGS)\s*:"
)
RIP_LINE = re.compile(
    r"(?:RIP|EIP|IP)(?::|  | is at)\s*(?:[0-9a-f]{4}:)?\s*(?:\[<[0-9a-f]+>\]\s*)*"
    r"(?P<func>[A-Za-z_.$][\w.$]*)\+(?P<offset>0x[0-9a-f]+)/(?P<size>0x[0-9a-f]+)"
    r"(?:\s+\[(?P<module>[\w-]+)(?:\s+[0-9a-f]+)?\])?"
)
# Lines printed between a PRELUDE header and the header it announces.
PRELUDE_BODY = re.compile(
    r"(?:#PF: |PGD |P4D |PUD |PMD |PTE |\*pdpt |\*pde |\*pte |BAD\s*$|IDT: |GDT: |LDTR: |TR: "
    r"|IP: |Thread overran stack|-+\[ cut here \]-+|\S+: Corrupted page table"
    r"|lkdtm: |Unexpected! |This is probably expected|kernel tried to execute"
    r"|unable to execute userspace code|BUG: unable to handle|BUG: kernel NULL pointer)"
)
