"""Report formats of kernels before 6.x, which bisection and old trees still print."""

from __future__ import annotations

import pytest

from harness.console import ConsoleParser


def failures(text: str) -> list[tuple[str, str]]:
    p = ConsoleParser()
    p.feed("".join(f"[    1.{i:06d}] {line}\n" for i, line in enumerate(text.splitlines())))
    analysis = p.finish()
    return [(f.kind, f.title) for b in analysis.boots for f in b.failures]


OLD_REPORTS = {
    "lockdep before 4.13": ("""\
=============================================
[ INFO: possible recursive locking detected ]
3.10.0 #1 Not tainted
---------------------------------------------
Call Trace:
 [<ffffffff81234567>] dump_stack+0x19/0x1b
 [<ffffffff81234567>] __lock_acquire+0x1/0x2
 [<ffffffff81234567>] lock_acquire+0x1/0x2
 [<ffffffff81234567>] _raw_spin_lock+0x1/0x2
 [<ffffffff81234567>] frob_twice+0x1/0x2
random: nonblocking pool is initialized""", ("lockdep", "possible deadlock in frob_twice")),
    "WARN message after the WARNING line": ("""\
------------[ cut here ]------------
WARNING: CPU: 0 PID: 1 at lib/list_debug.c:33 __list_add+0xbe/0xd0()
list_add corruption. prev->next should be next (ffffffff81a0b2e0), but was (null).
Modules linked in:
Pid: 1, comm: swapper/0 Not tainted 3.10.0 #1
Call Trace:
 [<ffffffff81234567>] warn_slowpath_common+0x1/0x2
 [<ffffffff81234567>] __list_add+0xbe/0xd0
 [<ffffffff81234567>] frob_add+0x1/0x2
---[ end trace 1234567890abcdef ]---""", ("list_corruption", "BUG: corrupted list in frob_add")),
    "KASAN 4.x": ("""\
==================================================================
BUG: KASAN: use-after-free in frob+0x1/0x2 at addr ffff88003d7e3d40
Read of size 8 by task swapper/0/1
==================================================================""",
                  ("kasan", "KASAN: use-after-free Read in frob")),
    "page fault 2.6/3.x x86_64": ("""\
BUG: unable to handle kernel paging request at ffffffff81600000
IP: [<ffffffff81234567>] write_ro+0x1b/0x30
PGD 1a0f067 PUD 1a13063 PMD 80000000016001e1
Oops: 0003 [#1] SMP
Pid: 1, comm: swapper/0 Not tainted 3.2.0 #1
RIP: 0010:[<ffffffff81234567>]  [<ffffffff81234567>] write_ro+0x1b/0x30
Call Trace:
 [<ffffffff81234567>] do_one_initcall+0x56/0x2e0
---[ end trace 1234567890abcdef ]---""",
                                  ("page_fault",
                                   "BUG: unable to handle kernel paging request in write_ro")),
    "NULL pointer i386 2.6": ("""\
BUG: unable to handle kernel NULL pointer dereference at 00000000
IP: [<c1234567>] null_init+0x5/0x10
*pde = 00000000
Oops: 0002 [#1] SMP
EIP: 0060:[<c1234567>] EFLAGS: 00010246 CPU: 0
EIP is at null_init+0x5/0x10
Call Trace:
 [<c1000123>] ? do_one_initcall+0x56/0x2e0
---[ end trace 1234567890abcdef ]---""",
                              ("null_deref",
                               "BUG: unable to handle kernel NULL pointer dereference in "
                               "null_init")),
    "soft lockup 3.x": ("""\
BUG: soft lockup - CPU#0 stuck for 22s! [swapper/0:1]
Modules linked in:
RIP: 0010:[<ffffffff81234567>]  [<ffffffff81234567>] spin_forever+0x4/0x10
Call Trace:
 [<ffffffff81234567>] stuck_init+0x9/0x20
random: nonblocking pool is initialized""", ("soft_lockup", "BUG: soft lockup in spin_forever")),
    "RCU stall 4.x": ("""\
INFO: rcu_sched self-detected stall on CPU
\t0-...: (20999 ticks this GP) idle=e6a/140000000000001/0 softirq=1/1 fqs=5249
Call Trace:
 <IRQ>
 rcu_check_callbacks+0x1/0x2
 <EOI>
 busy_loop+0x5/0x10
random: crng init done""", ("rcu_stall", "INFO: rcu detected stall in busy_loop")),
    "UBSAN 4.x": ("""\
================================================================================
UBSAN: Undefined behaviour in lib/frob.c:12:3
shift exponent 32 is too large for 32-bit type 'int'
Call Trace:
 [<ffffffff81234567>] dump_stack+0x19/0x1b
 [<ffffffff81234567>] __ubsan_handle_shift_out_of_bounds+0x1/0x2
 [<ffffffff81234567>] frob_shift+0x1/0x2
================================================================================""",
                  ("ubsan", "UBSAN: Undefined behaviour in frob_shift")),
    "NMI watchdog 4.x": ("""\
NMI watchdog: Watchdog detected hard LOCKUP on cpu 1
RIP: 0010:irqs_off_loop+0x7/0x10
Call Trace:
 bad_driver_poll+0x20/0x40
random: crng init done""", ("hard_lockup", "BUG: hard lockup in irqs_off_loop")),
}


@pytest.mark.parametrize("name", sorted(OLD_REPORTS))
def test_old_report(name: str) -> None:
    text, expected = OLD_REPORTS[name]
    assert failures(text) == [expected]
