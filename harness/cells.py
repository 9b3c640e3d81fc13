"""Cells: one kernel build, one guest configuration, one scenario, one verdict."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.arches import Arch, get_arch

# Every debug option compiled in, so one build per arch serves every cell; the
# cells vary by command line and QEMU flags.
KERNEL_FRAGMENTS: dict[str, tuple[str, ...]] = {
    "x86_64": ("cpa-test", "debug-pagealloc", "gbpages", "stats", "lkdtm", "flush-accounting",
               "flush-times", "exerciser"),
    "i386-pae": ("cpa-test", "debug-pagealloc", "stats", "lkdtm", "flush-accounting", "exerciser"),
    "i386": ("cpa-test", "debug-pagealloc", "stats", "lkdtm", "flush-accounting", "exerciser"),
}


@dataclass(frozen=True)
class Expect:
    """What the cell claims about the running kernel; checked, not assumed."""

    gbpages: bool | None = None             # GB pages back the direct map
    debug_pagealloc: bool | None = None
    direct_map_all_4k: bool = False         # no 2M/4M/1G direct-map entries at all


@dataclass(frozen=True)
class Cell:
    name: str
    arch: str
    fragments: tuple[str, ...]
    cmdline: str = ""
    cpu: str | None = None          # None: the arch's default model
    memory_mb: int = 2048
    smp: int = 2
    scenario: str = "cpa"
    periods: int = 1                # self-test periods watched after the first pass
    expect: Expect = field(default_factory=Expect)
    sets: tuple[str, ...] = ()
    kexec: tuple[str, ...] = ()     # kexec methods, one round trip each, in order
    kexec_rounds: int = 1           # the kexec sequence, this many times in a row
    ssh: bool = True
    numa_nodes: int = 1
    workload: str = ""              # a guest shell command run in the background while
                                    # the periods after the first pass are watched
    deadline: float | None = None   # seconds for the whole cell; None: from the timeouts
    target: str = ""                # a lab box's name (the lab file's); "": a QEMU guest
    # CPA exerciser modes run after the self-test periods (scenarios/exercise.py)
    exercise: tuple[str, ...] = ()
    exercise_threads: int = 0       # concurrent: most threads (0: every CPU)
    # The fast self-test (kernel/fast_selftest.py): the period between passes
    # in ms, 0 for the stock kernel's 30 s; and the passes seen after the first
    # (in place of periods watched).
    selftest_period_ms: int = 0
    passes: int = 0

    def kexec_trips(self) -> list[str]:
        return list(self.kexec) * self.kexec_rounds

    @property
    def arch_params(self) -> Arch:
        return get_arch(self.arch)

    @property
    def cpu_model(self) -> str:
        return self.cpu or self.arch_params.cpu


SMOKE: tuple[Cell, ...] = (
    # kexec once broke with GB pages: the gbpages cell goes through both system calls.
    # A 4 GiB guest has one 1G-aligned range of RAM that can be a GB page (4-5 GiB);
    # KASLR may put the kernel image there and split it at boot, so the cell that
    # expects a GB page at boot runs with nokaslr (seen: 1 GiB in 1G pages on one
    # boot, none on the next).
    Cell("x86_64-gbpages", "x86_64", KERNEL_FRAGMENTS["x86_64"], cmdline="nokaslr", cpu="max",
         memory_mb=4096, expect=Expect(gbpages=True, debug_pagealloc=False),
         kexec=("kexec_load", "kexec_file_load")),
    Cell("x86_64-debug-pagealloc", "x86_64", KERNEL_FRAGMENTS["x86_64"],
         cmdline="debug_pagealloc=on", cpu="max", memory_mb=2048,
         expect=Expect(debug_pagealloc=True, direct_map_all_4k=True)),
    Cell("i386-pae", "i386-pae", KERNEL_FRAGMENTS["i386-pae"], memory_mb=2048,
         expect=Expect(debug_pagealloc=False), kexec=("kexec_load",)),
    Cell("i386", "i386", KERNEL_FRAGMENTS["i386"], memory_mb=1024,
         expect=Expect(debug_pagealloc=False)),
)

# Provoke each kind of kernel failure through LKDTM and check the harness names
# it (not in the default run: `cpa-harness run --cell 'selfcheck-*'`).
SELFCHECK: tuple[Cell, ...] = (
    Cell("selfcheck-x86_64", "x86_64", KERNEL_FRAGMENTS["x86_64"], cpu="max", memory_mb=1024,
         scenario="selfcheck", ssh=False),
    Cell("selfcheck-i386", "i386-pae", KERNEL_FRAGMENTS["i386-pae"], memory_mb=1024,
         scenario="selfcheck", ssh=False),
)
ALL_CELLS: tuple[Cell, ...] = SMOKE + SELFCHECK
