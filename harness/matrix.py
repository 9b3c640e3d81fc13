"""Matrix files: named cells in TOML, checked before anything is built.

    [defaults]              # any cell key, for every cell below
    periods = 1

    [[cell]]
    name = "x86_64-gbpages"
    arch = "x86_64"         # x86_64, i386-pae, i386
    cmdline = "nokaslr"
    cpu = "max"             # QEMU -cpu (default: the arch's)
    memory = 4096           # MB
    smp = 2
    numa = 1                # NUMA nodes (memory and CPUs split evenly)
    scenario = "cpa"        # or "selfcheck"
    periods = 1             # self-test periods watched after the first pass
    kexec = ["kexec_load", "kexec_file_load"]
    kexec_rounds = 1
    workload = "..."        # guest shell command run while the periods are watched
    exercise = ["cache"]    # CPA exerciser modes after the periods: cache, concurrent,
                            # alloc-fail (guest/exerciser/cpa_exercise.c)
    exercise_threads = 0    # concurrent: most threads (0: every CPU)
    # or, instead of periods, the fast self-test (the tree patched with
    # guest/patches/cpa-test-period.patch; 0 for a stock cell):
    # selftest_period_ms = 1000 # between passes after the first, each printed
    # passes = 20           # passes seen after the first
    deadline = 1800         # seconds for the whole cell (default: from the timeouts)
    fragments = []          # extra Kconfig fragments (each distinct set is a build)
    expect = { gbpages = true, debug_pagealloc = false, direct_map_all_4k = false }

A mistake names the file, the cell and the key, in one line (exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.arches import ARCHES, get_arch
from harness.cells import KERNEL_FRAGMENTS, Cell, Expect
from harness.errors import UserError
from harness.files import read_toml
from harness.kernel import fast_selftest, kconfig
from harness.probes.exercise import MODES as EXERCISE_MODES
from harness.scenarios.kexec import METHODS, check_method
from harness.target.qemu import BASE_CMDLINE
from harness.target.serial import NONCE_PARAM

# A cell's name is a directory name in every run: 128 characters are plenty.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# x86's COMMAND_LINE_SIZE is 2048 bytes with the NUL; the harness puts its own
# words around the cell's (BASE_CMDLINE, and a kexec nonce of 16 hex digits).
# A longer line is cut silently by the kernel, and the cell would then fail on
# a /proc/cmdline mismatch after a build and a boot.
CMDLINE_MAX = 2047 - len(BASE_CMDLINE) - len(f" {NONCE_PARAM}=0123456789abcdef") - 1
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
SCENARIOS = ("cpa", "selfcheck")
TOP_KEYS = {"description", "defaults", "cell"}
# key -> (type, check or None); bool is not an int here
CELL_KEYS: dict[str, type] = {
    "name": str, "arch": str, "cmdline": str, "cpu": str, "memory": int, "smp": int,
    "numa": int, "scenario": str, "periods": int, "kexec": list, "kexec_rounds": int,
    "workload": str, "fragments": list, "expect": dict, "deadline": int, "target": str,
    "exercise": list, "exercise_threads": int, "selftest_period_ms": int, "passes": int,
}
EXPECT_KEYS = ("gbpages", "debug_pagealloc", "direct_map_all_4k")


def cmdline_problem(cmdline: str) -> str | None:
    """Why `cmdline` cannot be a cell's kernel command line; None when it can.

    Quotes, semicolons, `$(...)` are fine: the line reaches QEMU as one argv
    word, never through a shell. What the kernel would read differently from
    what the harness checks in /proc/cmdline afterwards is refused here.
    """
    bad = CONTROL_RE.search(cmdline)
    if bad:
        return (f"has a control character {bad.group()!r}: a kernel command line is one "
                "line of text")
    if cmdline.count('"') % 2:
        return ('has an unbalanced double quote: the kernel would read the rest of the '
                'line as one value')
    if len(cmdline.encode()) > CMDLINE_MAX:
        return (f"is {len(cmdline.encode())} bytes; with the harness's own words the kernel "
                f"takes {CMDLINE_MAX} at most")
    return None


def _shown(value: object) -> str:
    """A value quoted for an error line: a 20 MB string must not become a 20 MB line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


@dataclass(frozen=True)
class Matrix:
    path: Path
    description: str
    cells: tuple[Cell, ...]


class _Where:
    """Error lines that name the file, the cell and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, cell: str | None, key: str | None, problem: str, hint: str = "") -> UserError:
        where = str(self.path)
        if cell is not None:
            where += f": cell {_shown(cell)}"
        if key is not None:
            where += f": key {key!r}"
        return UserError(f"{where}: {problem}", hint)


def load(path: Path) -> Matrix:
    where = _Where(path)
    doc = read_toml(path, "matrix", "give a TOML file of [[cell]] tables")
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise where.fail(None, unknown[0], "unknown top-level key",
                         f"allowed: {', '.join(sorted(TOP_KEYS))}")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise where.fail(None, "defaults", "must be a table")
    _check_keys(where, "[defaults]", defaults, allow_name=False)
    raw_cells = doc.get("cell", [])
    if not isinstance(raw_cells, list) or not raw_cells:
        raise where.fail(None, "cell", "no [[cell]] tables", "declare at least one cell")
    cells: list[Cell] = []
    seen: set[str] = set()
    for n, raw in enumerate(raw_cells, 1):
        if not isinstance(raw, dict):
            raise where.fail(f"#{n}", None, "a cell must be a table")
        name = raw.get("name")
        label = name if isinstance(name, str) else f"#{n}"
        _check_keys(where, label, raw, allow_name=True)
        if not isinstance(name, str):
            raise where.fail(label, "name", "missing")
        if not NAME_RE.fullmatch(name):
            raise where.fail(name, "name", "use letters, digits, '.', '_' and '-' "
                                           "(128 at most)")
        if name in seen:
            raise where.fail(name, "name", "a second cell has this name")
        seen.add(name)
        merged = {**defaults, **raw}
        # the defaults' periods are for stock cells, their passes for fast ones
        if merged.get("selftest_period_ms") and "periods" not in raw:
            merged.pop("periods", None)
        if not merged.get("selftest_period_ms") and "passes" not in raw:
            merged.pop("passes", None)
        cells.append(_cell(where, name, merged))
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise where.fail(None, "description", "must be a string")
    return Matrix(path, description, tuple(cells))


def _check_keys(where: _Where, label: str, raw: dict[str, Any], allow_name: bool) -> None:
    for key, value in raw.items():
        if key not in CELL_KEYS or (key == "name" and not allow_name):
            raise where.fail(label, key, "unknown key",
                             f"cell keys: {', '.join(sorted(CELL_KEYS))}")
        want = CELL_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, want):
            raise where.fail(label, key, f"must be {'an' if want is int else 'a'} "
                                         f"{_type_name(want)}, not {_shown(value)}")


def _type_name(t: type) -> str:
    return {str: "string", int: "integer", list: "list", dict: "table"}[t]


def _positive(where: _Where, name: str, raw: dict[str, Any], key: str, default: int,
              low: int = 1) -> int:
    value: int = raw.get(key, default)
    if value < low:
        raise where.fail(name, key, f"must be at least {low}, not {value}")
    return value


def _cell(where: _Where, name: str, raw: dict[str, Any]) -> Cell:
    arch_name = raw.get("arch")
    if arch_name is None:
        raise where.fail(name, "arch", "missing", f"one of {', '.join(ARCHES)}")
    if arch_name not in ARCHES:
        raise where.fail(name, "arch", f"unknown arch {_shown(arch_name)}",
                         f"one of {', '.join(ARCHES)}")
    arch = get_arch(arch_name)
    scenario = raw.get("scenario", "cpa")
    if scenario not in SCENARIOS:
        raise where.fail(name, "scenario", f"unknown scenario {_shown(scenario)}",
                         f"one of {', '.join(SCENARIOS)}")
    cmdline = raw.get("cmdline", "")
    problem = cmdline_problem(cmdline)
    if problem:
        raise where.fail(name, "cmdline", problem)
    fragments = list(KERNEL_FRAGMENTS[arch_name])
    for f in raw.get("fragments", []):
        if not isinstance(f, str):
            raise where.fail(name, "fragments", f"entries must be strings, not {_shown(f)}")
        try:
            # read now: a bad line in a user's fragment is found before any build
            kconfig.parse_fragment(kconfig.fragment_path(f))
        except UserError as e:
            raise where.fail(name, "fragments", e.message, e.hint) from None
        if f not in fragments:
            fragments.append(f)
    kexec = raw.get("kexec", [])
    for method in kexec:
        if not isinstance(method, str) or method not in METHODS:
            raise where.fail(name, "kexec", f"unknown method {_shown(method)}",
                             f"one of {', '.join(METHODS)}")
        try:
            check_method(method, arch)
        except UserError as e:
            raise where.fail(name, "kexec", e.message, e.hint) from None
    expect_raw = raw.get("expect", {})
    for key, value in expect_raw.items():
        if key not in EXPECT_KEYS:
            raise where.fail(name, f"expect.{key}", "unknown key",
                             f"expect keys: {', '.join(EXPECT_KEYS)}")
        if not isinstance(value, bool):
            raise where.fail(name, f"expect.{key}", f"must be true or false, not {_shown(value)}")
    if expect_raw.get("gbpages") and arch.elf_class == 32:
        raise where.fail(name, "expect.gbpages", "GB pages exist on x86_64 only")
    smp = _positive(where, name, raw, "smp", 2)
    numa = _positive(where, name, raw, "numa", 1)
    if smp % numa:
        raise where.fail(name, "numa", f"{numa} nodes need a multiple of {numa} CPUs "
                                       f"(smp = {smp}): one socket per node")
    if scenario == "selfcheck" and kexec:
        raise where.fail(name, "kexec", "the selfcheck scenario does no kexec")
    modes = raw.get("exercise", [])
    for mode in modes:
        if not isinstance(mode, str) or mode not in EXERCISE_MODES:
            raise where.fail(name, "exercise", f"unknown mode {_shown(mode)}",
                             f"one of {', '.join(EXERCISE_MODES)}")
    if modes and scenario != "cpa":
        raise where.fail(name, "exercise", f"the {scenario} scenario runs no exerciser")
    period_ms, passes, periods = _fast_selftest(where, name, raw, scenario)
    cell = Cell(
        name=name, arch=arch_name, fragments=tuple(fragments), cmdline=cmdline,
        cpu=raw.get("cpu"), memory_mb=_positive(where, name, raw, "memory", 2048, low=64),
        smp=smp, numa_nodes=numa, scenario=scenario,
        periods=periods, expect=Expect(**expect_raw), kexec=tuple(kexec),
        kexec_rounds=_positive(where, name, raw, "kexec_rounds", 1),
        ssh=scenario == "cpa", workload=raw.get("workload", ""),
        deadline=_positive(where, name, raw, "deadline", 0, low=60) if "deadline" in raw
        else None, target=raw.get("target", ""), exercise=tuple(modes),
        exercise_threads=_positive(where, name, raw, "exercise_threads", 0, low=0))
    return fast_selftest.make_fast(cell, period_ms, passes) if period_ms else cell


def _fast_selftest(where: _Where, name: str, raw: dict[str, Any],
                   scenario: str) -> tuple[int, int, int]:
    """(period in ms, passes after the first, periods) of a cell: a fast
    self-test counts printed passes, so it takes no periods."""
    if fast_selftest.PARAM in raw.get("cmdline", ""):
        raise where.fail(name, "cmdline", f"{fast_selftest.PARAM} is set by the cell's "
                                          "selftest_period_ms", "set that key instead: it "
                                          "also patches the kernel to take it")
    if not raw.get("selftest_period_ms", 0):     # 0: a stock cell, whatever the defaults say
        if "passes" in raw:
            raise where.fail(name, "passes", "counts the fast self-test's passes",
                             "set selftest_period_ms too, or use periods")
        return 0, 0, _positive(where, name, raw, "periods", 1, low=0)
    if scenario != "cpa":
        raise where.fail(name, "selftest_period_ms", f"the {scenario} scenario watches "
                                                     "no self-test passes")
    if "periods" in raw:
        raise where.fail(name, "periods", "a fast self-test counts passes, not periods",
                         "use passes (each pass is printed)")
    period = _positive(where, name, raw, "selftest_period_ms", 0,
                       low=fast_selftest.MIN_PERIOD_MS)
    return period, _positive(where, name, raw, "passes", fast_selftest.DEFAULT_PASSES), 0
