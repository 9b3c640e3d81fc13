"""Every failure kind, from a report excerpt in the kernel's own printk formats."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from harness.console import FAILURE_KINDS, ConsoleParser, parse_path
from harness.console.headers import HEADERS, match_header
from harness.console.output import load_schema

KINDS_DIR = Path(__file__).parent / "data" / "console" / "kinds"

# file: (kind, title, header line, first call-trace function or None)
EXPECTED: dict[str, tuple[str, str, int, str | None]] = {
    "warning.log": ("warning", "WARNING in __vmalloc_node_range_noprof", 2,
                    "__vmalloc_node_noprof"),
    "warning-message.log": ("warning", "WARNING in foo_frob", 3, "foo_init"),
    # 6.19 on: "WARNING: %s:%d at %pS, CPU#%d: %s/%d", here with 0x0 for the caller
    "warning-6.19.log": ("warning", "WARNING in ext4_xattr_inode_update_ref", 2,
                         "ext4_xattr_inode_dec_ref_all"),
    "warning-refcount.log": ("warning", "WARNING: refcount bug in frob_put", 3, "frob_put"),
    "warning-odebug.log": ("warning", "WARNING: ODEBUG bug in frob_destroy", 3,
                           "debug_check_no_obj_freed"),
    "warning-locking.log": ("warning", "WARNING: locking bug in frob_work_fn", 3,
                            "mutex_lock_nested"),
    "warning-kmalloc.log": ("warning", "WARNING: kmalloc bug in frob_alloc_table", 2,
                            "frob_alloc_table"),
    # an nbcon console replayed a cut WARNING line and two cut call-trace lines
    "warning-replayed.log": ("warning", "WARNING in frob_check", 4, "frob_test_run"),
    "bad_stack_value.log": ("warning", "WARNING: kernel stack regs has bad 'bp' value", 1, None),
    "bug.log": ("bug", "kernel BUG in __slab_free", 2, "kfree"),
    "oops.log": ("oops", "divide error in bar_compute", 1, "bar_init"),
    "panic.log": ("panic", "kernel panic: VFS: Unable to mount root fs", 1, "dump_stack_lvl"),
    "null_deref.log": ("null_deref",
                       "BUG: unable to handle kernel NULL pointer dereference in foo_init", 1,
                       "do_one_initcall"),
    "page_fault.log": ("page_fault",
                       "BUG: unable to handle kernel paging request in lkdtm_WRITE_RO", 1,
                       "lkdtm_do_action"),
    "nx.log": ("page_fault", "BUG: kernel tried to execute NX-protected page in lkdtm_data_area",
               3, "execute_location"),
    "gpf.log": ("gpf", "general protection fault in list_walker", 1, "process_one_work"),
    "invalid_opcode.log": ("invalid_opcode", "invalid opcode in weird_func", 1, "caller_func"),
    "double_fault.log": ("double_fault", "double fault in recurse_forever", 1,
                         "recurse_forever"),
    "soft_lockup.log": ("soft_lockup", "BUG: soft lockup in spin_forever", 1, "stuck_init"),
    # the CPU was in memcpy: the title names who called it (generic-frames.txt)
    "soft_lockup-memcpy.log": ("soft_lockup", "BUG: soft lockup in frob_fill_ring", 1,
                               "frob_fill_ring"),
    "hard_lockup.log": ("hard_lockup", "BUG: hard lockup in irqs_off_loop", 1,
                        "bad_driver_poll"),
    "rcu_stall.log": ("rcu_stall", "INFO: rcu detected stall in busy_loop", 1,
                      "rcu_sched_clock_irq"),
    "hung_task.log": ("hung_task", "INFO: task hung in frob_worker", 1, "__schedule"),
    "hung_task-iowait.log": ("hung_task", "INFO: task hung in folio_wait_bit_common", 1,
                             "__schedule"),
    # arm64: "Call trace:", frames marked " (T)"
    "hung_task-arm64.log": ("hung_task", "INFO: task hung in frob_work_fn", 1, "__switch_to"),
    # a cut and replayed call-trace line, and "** 3 printk messages dropped **"
    # 3 records lost after `schedule`: the guilty frame may be among them
    "hung_task-replayed.log": ("hung_task", "INFO: task hung (corrupted report)", 1, "__schedule"),
    "lockdep.log": ("lockdep", "possible deadlock in grab_b", 2, "dump_stack_lvl"),
    "kasan.log": ("kasan", "KASAN: slab-use-after-free Read in frob_list", 2, "dump_stack_lvl"),
    "kasan-dropped.log": ("kasan", "KASAN: slab-use-after-free Read in frob_list", 2,
                          "dump_stack_lvl"),
    "kfence.log": ("kfence", "KFENCE: use-after-free read in frob_read", 2, None),
    "kmsan.log": ("kmsan", "KMSAN: uninit-value in frob_check", 2, "frob_check"),
    "kcsan.log": ("kcsan", "KCSAN: data-race in frob_reader / frob_writer", 2, "frob_writer"),
    "ubsan.log": ("ubsan", "UBSAN: array-index-out-of-bounds in frob_index", 2,
                  "dump_stack_lvl"),
    "bad_page.log": ("bad_page", "BUG: Bad page state in frob_free_pages", 1, "dump_stack_lvl"),
    "list_corruption.log": ("list_corruption", "BUG: corrupted list in frob_enqueue", 2,
                            "frob_enqueue"),
    "list_corruption-bug.log": ("list_corruption", "BUG: corrupted list in frob_dequeue", 1,
                                "frob_dequeue"),
    "page_alloc_failure.log": ("page_alloc_failure", "page allocation failure in frob_alloc_big",
                               1, "dump_stack_lvl"),
    "vmalloc_error.log": ("page_alloc_failure", "vmalloc error in pageattr_test", 1,
                          "dump_stack_lvl"),
    "oom.log": ("oom", "Out of memory", 1, "dump_stack_lvl"),
    "memory_leak.log": ("memory_leak", "memory leak in frob_leak", 1, "__kmalloc_cache_noprof"),
    "atomic_sleep.log": ("atomic_sleep",
                         "BUG: sleeping function called from invalid context in "
                         "frob_locked_sleep", 1, "dump_stack_lvl"),
    # the self-test's own WARN is titled like any WARN, and keeps its kind
    "cpa_selftest.log": ("cpa_selftest", "WARNING in pageattr_test", 5, "do_pageattr_test"),
    "wx_mapping.log": ("wx_mapping", "x86/mm: Found insecure W+X mapping at startup_64", 2,
                       "ptdump_pte_entry"),
    "lkdtm.log": ("lkdtm", "lkdtm: FAIL: survived bad write", 3, None),
    # three times 10 s apart: one failure
    "netdev_refcount.log": ("netdev_refcount",
                            "unregister_netdevice: waiting for DEV to become free", 1, None),
}


def test_every_excerpt_has_an_expectation() -> None:
    assert sorted(p.name for p in KINDS_DIR.glob("*.log")) == sorted(EXPECTED)


def test_every_kind_is_covered() -> None:
    covered = {kind for kind, *_ in EXPECTED.values()}
    assert covered == set(FAILURE_KINDS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_kind_and_title(name: str) -> None:
    kind, title, line, first_frame = EXPECTED[name]
    analysis = parse_path(KINDS_DIR / name)
    failures = [f for b in analysis.boots for f in b.failures]
    assert [(f.kind, f.title, f.line) for f in failures] == [(kind, title, line)]
    assert analysis.verdict == "fail"
    trace = failures[0].call_trace
    assert (trace[0] if trace else None) == first_frame
    jsonschema.validate(analysis.to_json(), load_schema())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_titles_carry_no_numbers_or_addresses(name: str) -> None:
    failure = parse_path(KINDS_DIR / name).boots[0].failures[0]
    words = failure.title.replace("/", " ").split()
    assert not any(w.startswith("0x") or w.isdigit() for w in words), failure.title


@pytest.mark.parametrize("spec", HEADERS, ids=lambda s: s.name)
def test_every_header_example_matches_its_header(spec: object) -> None:
    from harness.console.headers import HeaderSpec
    assert isinstance(spec, HeaderSpec)
    assert spec.example
    found = match_header(spec.example)
    assert found is not None and found[0].name == spec.name
    assert spec.kind in FAILURE_KINDS


def test_oops_kills_init_is_one_failure_and_a_caused_panic() -> None:
    analysis = parse_path(KINDS_DIR / "null_deref.log")
    boot = analysis.boots[0]
    assert len(boot.failures) == 1
    assert boot.panic is not None and boot.panic.caused_by == 0
    assert boot.panic.message.startswith("Attempted to kill init!")
    assert boot.ended_by == "panic"


def test_fatal_exception_after_bug_is_not_a_second_failure() -> None:
    boot = parse_path(KINDS_DIR / "bug.log").boots[0]
    assert [f.kind for f in boot.failures] == ["bug"]
    assert boot.panic is not None and boot.panic.message == "Fatal exception"
    assert boot.ended_by == "panic"


def test_standalone_panic_is_its_own_failure() -> None:
    boot = parse_path(KINDS_DIR / "panic.log").boots[0]
    assert boot.panic is not None and boot.panic.caused_by is None
    assert boot.failures[0].completed_by == "end-marker"


def test_warn_message_is_kept_in_the_report() -> None:
    failure = parse_path(KINDS_DIR / "warning-message.log").boots[0].failures[0]
    assert failure.report[:3] == (
        "------------[ cut here ]------------",
        "foo: refusing to frobnicate the bar (state 3)",
        "WARNING: CPU: 0 PID: 1 at drivers/misc/foo.c:88 foo_frob+0x2a/0x40",
    )
    assert failure.first_line == 1 and failure.line == 3


def test_oom_kill_line_follows_its_report() -> None:
    boot = parse_path(KINDS_DIR / "oom.log").boots[0]
    assert len(boot.failures) == 1


def test_kmemleak_summary_follows_its_objects() -> None:
    boot = parse_path(KINDS_DIR / "memory_leak.log").boots[0]
    assert [f.title for f in boot.failures] == ["memory leak in frob_leak"]


def test_kmemleak_summary_alone_is_a_failure() -> None:
    p = ConsoleParser()
    p.feed("[  120.0] kmemleak: 2 new suspected memory leaks (see /sys/kernel/debug/kmemleak)\n")
    boot = p.finish().boots[0]
    assert [(f.kind, f.title) for f in boot.failures] == [
        ("memory_leak", "kmemleak: new suspected memory leaks")]


def test_wx_failed_line_follows_the_warning() -> None:
    boot = parse_path(KINDS_DIR / "wx_mapping.log").boots[0]
    assert len(boot.failures) == 1
    assert boot.wx_check == "failed"


def test_wx_failed_alone_is_a_failure() -> None:
    p = ConsoleParser()
    p.feed("[    1.5] x86/mm: Checked W+X mappings: FAILED, 512 W+X pages found.\n")
    boot = p.finish().boots[0]
    assert [(f.kind, f.title) for f in boot.failures] == [
        ("wx_mapping", "x86/mm: Found insecure W+X mapping")]
    assert boot.wx_check == "failed"


def test_vmalloc_failure_and_cpa_bitmap_are_two_failures() -> None:
    p = ConsoleParser()
    p.feed((KINDS_DIR / "vmalloc_error.log").read_text())
    p.feed("[   52.000012] CPA Cannot vmalloc bitmap\n")
    boot = p.finish().boots[0]
    assert [f.kind for f in boot.failures] == ["page_alloc_failure", "cpa_selftest"]
    assert [p.result for p in boot.cpa_selftest] == ["fail"]


def test_every_generic_frame_has_its_reason() -> None:
    from harness.console.titles import GENERIC_FRAMES_FILE, is_generic, load_generic_frames
    entries = load_generic_frames()
    assert len(entries) > 250 and all(reason for _, reason in entries)
    # one entry per line: a line that lost its reason is refused, not taken as a pattern
    text = GENERIC_FRAMES_FILE.read_text()
    assert sum(1 for ln in text.splitlines() if ln.strip() and not ln.startswith("#")) \
        == len(entries)
    for name in ("memcpy_orig", "strscpy", "__fortify_report", "dump_stack_lvl",
                 "debug_print_object", "__mutex_lock.constprop.0"):
        assert is_generic(name), name
    for name in ("pageattr_test", "change_page_attr_set_clr", "frob_fill_ring"):
        assert not is_generic(name), name


def test_an_entry_without_a_reason_is_refused(tmp_path: Path) -> None:
    from harness.console.titles import load_generic_frames
    bad = tmp_path / "frames.txt"
    bad.write_text("# header\nmemcpy\\w*  string helper\nstrlen\n")
    with pytest.raises(ValueError, match="frames.txt:3: an entry without its reason"):
        load_generic_frames(bad)
