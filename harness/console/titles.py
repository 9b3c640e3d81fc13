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

from harness.console.model import Frame

# Kinds whose report has the registers of the place the CPU was at.
CRASH_KINDS = frozenset({
    "oops", "page_fault", "null_deref", "gpf", "invalid_opcode", "double_fault", "bug",
})

# Helpers that report, warn, lock, sleep, allocate or take interrupts: never
# the function a title names while a better one is in the trace.
GENERIC_FUNCTION = re.compile(
    r"(?:dump_stack\w*|__dump_stack|show_stack|show_trace_log_lvl|sched_show_task"
    r"|show_regs|__show_regs|show_regs_if_on_stack|print_\w+|__print_\w+|debug_show_\w+"
    r"|__warn|warn_slowpath\w*|__warn_printk|report_bug|__report_bug|handle_bug"
    r"|exc_\w+|asm_exc_\w+|asm_sysvec_\w+|sysvec_\w+|__sysvec_\w+|asm_common_interrupt"
    r"|common_interrupt|do_error_trap|do_trap|do_int3\w*|die|__die|__die_body|die_addr"
    r"|oops_\w+|page_fault_oops|no_context|kernelmode_fixup_or_oops|__bad_area\w*"
    r"|bad_area\w*|do_user_addr_fault|do_kern_addr_fault|handle_page_fault"
    r"|spurious_kernel_fault|fixup_exception|ex_handler_\w+"
    r"|panic|nmi_panic|vpanic|check_panic_on_warn|add_taint"
    r"|kasan_\w+|__kasan_\w+|print_report|print_address_description\w*|__asan_\w+"
    r"|asan_\w+|check_memory_region\w*|kfence_\w+|__kfence_\w+|kmsan_\w+|__msan_\w+"
    r"|__kmsan_\w+|kcsan_\w+|__kcsan_\w+|__tsan_\w+|__ubsan_\w+|ubsan_\w+|__ubsan_handle\w*"
    r"|lock_acquire\w*|__lock_acquire|lock_release|lock_acquired|lock_contended"
    r"|lockdep_\w+|__lockdep_\w+|validate_chain|check_prev_add|check_prevs_add"
    r"|check_noncircular|check_deadlock|check_irq_usage|check_usage\w*|mark_lock\w*"
    r"|mark_usage|mark_held_locks|debug_check_no_locks_\w+|lock_is_held_type"
    r"|_raw_\w+|__raw_\w+|do_raw_\w+|raw_spin_\w+|spin_(?:lock|unlock|trylock)\w*|queued_\w+|native_queued_\w+"
    r"|__pv_queued_\w+|pv_queued_\w+|mutex_lock\w*|__mutex_lock\w*|mutex_unlock"
    r"|__mutex_unlock\w*|mutex_trylock|down|down_\w+|__down\w*|up|up_\w+|rwsem_\w+"
    r"|__rwsem_\w+|rt_mutex_\w+|__rt_mutex_\w+|rt_spin_\w+|rcu_read_lock\w*"
    r"|rcu_lock_\w+|__rcu_read_lock|__rcu_read_unlock"
    r"|schedule|__schedule|schedule_\w+|io_schedule\w*|preempt_schedule\w*|__cond_resched"
    r"|__switch_to\w*|context_switch"
    r"|_cond_resched|cond_resched\w*|wait_for_completion\w*|__wait_for_common"
    r"|wait_for_common\w*|do_wait_for_common|__wait_\w+|usleep_range\w*|msleep\w*"
    r"|__might_sleep|__might_resched|___might_sleep|might_sleep\w*|__might_fault"
    r"|__schedule_bug|schedule_debug\w*|__cant_sleep|__cant_migrate"
    r"|warn_alloc|__alloc_pages\w*|alloc_pages\w*|__alloc_frozen_pages\w*"
    r"|__get_free_pages|get_zeroed_page\w*|__vmalloc\w*|vmalloc\w*|vzalloc\w*"
    r"|__vmalloc_node\w*|__vmalloc_area_node|vm_area_alloc_pages|kmalloc\w*|__kmalloc\w*"
    r"|kmem_cache_alloc\w*|slab_alloc\w*|__slab_alloc\w*|___slab_alloc|kzalloc\w*"
    r"|krealloc\w*|kvmalloc\w*|__kvmalloc\w*|kmemdup\w*|kstrdup\w*|alloc_slab_page"
    r"|allocate_slab|new_slab|folio_alloc\w*|__folio_alloc\w*|alloc_pages_mpol\w*"
    r"|kmemleak_\w+|create_object\w*|__create_object"
    r"|out_of_memory|oom_kill_process|dump_header|__oom_kill_process"
    r"|bad_page|free_page_is_bad\w*|check_new_page\w*|free_pages_prepare|__free_pages_ok"
    r"|free_unref_page\w*|free_unref_folios|__free_pages|free_pages|__free_one_page"
    r"|__folio_put|folio_put|put_page|__put_page|check_free_page\w*"
    r"|__list_add_valid\w*|__list_del_entry_valid\w*|__list_add|list_add\w*|list_del\w*"
    r"|__list_del\w*|__hlist_\w+|hlist_\w+"
    r"|debug_print_object|debug_object_\w+|__debug_object_\w+|debug_check_\w+"
    r"|refcount_warn_saturate|refcount_\w+|__refcount_\w+"
    r"|watchdog_timer_fn|watchdog_\w+|__hrtimer_run_queues|hrtimer_interrupt|hrtimer_\w+"
    r"|__hrtimer_\w+|tick_\w+|update_process_times|rcu_sched_clock_irq|rcu_pending"
    r"|rcu_dump_cpu_stacks|print_cpu_stall\w*|check_cpu_stall|rcu_\w*stall\w*|dump_cpu_task"
    r"|nmi_cpu_backtrace\w*|nmi_trigger_cpumask_backtrace|arch_trigger_cpumask_backtrace"
    r"|trigger_\w+_backtrace|nmi_handle|default_do_nmi|exc_nmi|asm_exc_nmi"
    r"|handle_irq_event\w*|__handle_irq_event\w*|handle_\w+_irq|irq_exit\w*|__irq_exit_rcu"
    r"|handle_softirqs|__do_softirq|do_softirq\w*|run_timer_softirq|call_timer_fn"
    r"|__run_timers|__run_timer_base|run_timer_base|__sysvec_apic_timer_interrupt"
    r"|__stack_chk_fail|kthread|ret_from_fork\w*|entry_SYSCALL\w*|do_syscall_\w+"
    r"|x64_sys_call|__x64_sys_call|syscall_exit_\w+|native_safe_halt|default_idle\w*"
    r"|__bug|bug_handler)"
)

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


def in_title(base: str, function: str | None) -> str:
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

    def header(self, name: str) -> re.Match[str] | None:
        for hname, m in self.headers:
            if hname == name:
                return m
        return None

    def reliable(self, task_only: bool = False) -> list[str]:
        return [
            f.function for f in self.frames
            if f.reliable and (not task_only or f.context in (None, "TASK"))
        ]

    def unreliable(self) -> list[str]:
        return [f.function for f in self.frames if not f.reliable]

    def rip_function(self) -> str | None:
        return self.rip.function if self.rip else None


def _crash_function(r: ReportFacts) -> str | None:
    return pick_function([r.rip_function(), *r.reliable(), *r.unreliable()])


def _trace_function(r: ReportFacts, first: str | None = None) -> str | None:
    return pick_function([first, *r.reliable(), r.rip_function(), *r.unreliable()])


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
    return pick_function([*r.reliable(), r.rip_function(), *r.unreliable()], helpers)


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
            "BUG: unable to handle page fault for address", _crash_function(r))
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
        func = pick_function([*r.reliable(task_only=True), r.rip_function(), *r.reliable(),
                              *r.unreliable()])
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
