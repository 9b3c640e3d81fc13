"""Guest statistics: the direct map, split and TLB flush counters, CPA statistics, taint.

Pure parsers of what the guest's files say, in the kernel's own words:

- /proc/meminfo: DirectMap4k/2M/4M/1G in kB (set_memory.c arch_report_meminfo);
- /proc/vmstat: direct_map_level{2,3}_splits and nr_tlb_* (mm/vmstat.c);
- /sys/kernel/debug/x86/cpa_stats: 1G/2M pages checked, sameprot, preserved and
  4K pages set-checked (set_memory.c, X86_CPA_STATISTICS);
- /sys/kernel/debug/page_tables/kernel: the kernel page tables, one line per
  run of like entries (arch/x86/mm/dump_pagetables.c, PTDUMP_DEBUGFS);
- /proc/sys/kernel/tainted: taint bits (kernel/panic.c taint_flags).

/proc/meminfo's DirectMap figures are counters the kernel keeps while it maps
and splits; the page-table dump is what is really mapped. They can disagree
(on 6.12 x86_64 with GB pages, meminfo's total exceeds the RAM), which is why
both are read.

collect() reads them all through any command runner returning (status,
output): the serial shell (Machine.run) or ssh (GuestSsh.runner). A file this
kernel does not have is recorded as absent, never raised.
"""

from __future__ import annotations

import io
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.probes import Runner

# --- /proc/meminfo ----------------------------------------------------------

DIRECTMAP_RE = re.compile(r"^(DirectMap(?:4k|2M|4M|1G)):\s+(\d+) kB\s*$", re.M)


def parse_meminfo(text: str) -> dict[str, int]:
    """The DirectMap lines present, in kB: e.g. {'DirectMap4k': 14208, 'DirectMap2M': ...}."""
    return {name: int(kb) for name, kb in DIRECTMAP_RE.findall(text)}


# --- /proc/vmstat -----------------------------------------------------------

VMSTAT_RE = re.compile(r"^(direct_map_level\d_splits|nr_tlb_\w+)\s+(\d+)\s*$", re.M)


def parse_vmstat(text: str) -> dict[str, int]:
    """direct_map_level2_splits, direct_map_level3_splits and every nr_tlb_* counter.

    All absent when VM_EVENT_COUNTERS is off (tinyconfig turns it off); the
    nr_tlb_* lines also need DEBUG_TLBFLUSH. The split counters count only
    splits after boot (system_state == SYSTEM_RUNNING).
    """
    return {name: int(v) for name, v in VMSTAT_RE.findall(text)}


# --- /sys/kernel/debug/x86/cpa_stats -----------------------------------------

# cpastats_show(): "1G pages checked:     %16lu" ... "4K pages set-checked: %16lu".
# On 32-bit the "2M" lines count the PMD-level large pages, 4M without PAE.
CPA_STATS_RE = re.compile(r"^(\d+[KMG]) pages ([A-Za-z-]+):\s+(\d+)\s*$", re.M)


def parse_cpa_stats(text: str) -> dict[str, int]:
    """cpa_stats as {'1g_checked': 3, '1g_sameprot': 2, ..., '4k_set_checked': 3701}."""
    return {f"{size.lower()}_{what.replace('-', '_')}": int(v)
            for size, what, v in CPA_STATS_RE.findall(text)}


# --- /sys/kernel/debug/page_tables/kernel -------------------------------------

PTDUMP_MARKER_RE = re.compile(r"^---\[ (.+) \]---\s*$")
# "0x%0*lx-0x%0*lx   %9lu%c " then printk_prot(): flags, then the level name.
PTDUMP_RANGE_RE = re.compile(
    r"^0x(?P<start>[0-9a-f]+)-0x(?P<end>[0-9a-f]+)\s+\d+[BKMGTPE]\s"
    r"(?P<flags>.*?)\s*(?P<level>pgd|p4d|pud|pmd|pte)\s*$")

# The address-space section that holds the direct map (address_markers[]).
DIRECT_MAP_SECTION: dict[str, str] = {
    "x86_64": "Low Kernel Mapping",
    "i386-pae": "Kernel Mapping",
    "i386": "Kernel Mapping",
}
# The size of a PMD-level large page, as meminfo names it.
LARGE_PAGE: dict[str, str] = {"x86_64": "2M", "i386-pae": "2M", "i386": "4M"}


def _lines(text: str | Iterable[str]) -> Iterable[str]:
    return io.StringIO(text) if isinstance(text, str) else text


def summarize_ptdump(text: str | Iterable[str], arch: str) -> dict[str, int]:
    """What maps the direct map, from the kernel page-table dump, in kB.

    Keys named as in /proc/meminfo so the two compare directly:
    DirectMap4k (present `pte` runs), DirectMap2M or DirectMap4M (`pmd` with
    PSE), DirectMap1G (`pud` with PSE, x86_64 only). Besides:

    - runs: lines of mapped (present) entries with like attributes and
      level: a measure of how fragmented the direct map is;
    - unmapped_4k_kB: not-present `pte` runs between mapped ones: the free
      pages DEBUG_PAGEALLOC unmaps, reserved pages;
    - holes_kB: not-present runs at higher levels between mapped ones (the PCI
      hole below 4 GiB); the unmapped rest of the section after the last
      mapping is not counted;
    - other_kB: present entries at any other level (none expected).

    Empty when the dump has no direct-map section. `text` may be a string or
    an iterable of lines (e.g. an open file): the dump is read once, line by
    line.
    """
    if arch not in DIRECT_MAP_SECTION:
        raise ValueError(f"unknown arch {arch!r}: one of {', '.join(DIRECT_MAP_SECTION)}")
    section = DIRECT_MAP_SECTION[arch]
    large = f"DirectMap{LARGE_PAGE[arch]}"
    out: dict[str, int] = {"DirectMap4k": 0, large: 0}
    if arch == "x86_64":
        out["DirectMap1G"] = 0
    out.update(runs=0, unmapped_4k_kB=0, holes_kB=0, other_kB=0)
    pending_4k = pending_holes = 0     # not-present runs not yet followed by a mapping
    inside = found = False
    for raw in _lines(text):
        line = raw.rstrip("\r\n")
        marker = PTDUMP_MARKER_RE.match(line)
        if marker:
            if inside:
                break
            inside = marker.group(1) == section
            found = found or inside
            continue
        if not inside:
            continue
        m = PTDUMP_RANGE_RE.match(line)
        if m is None:
            continue    # "... N entries skipped ...", or a garbled line
        start, end = int(m.group("start"), 16), int(m.group("end"), 16)
        if end <= start:    # the last run of the address space ends at 0
            end += 1 << (4 * len(m.group("end")))
        kb = (end - start) // 1024
        flags = m.group("flags").split()
        level = m.group("level")
        if "RW" not in flags and "ro" not in flags:
            if level == "pte":
                pending_4k += kb
            else:
                pending_holes += kb
            continue
        out["unmapped_4k_kB"] += pending_4k
        out["holes_kB"] += pending_holes
        pending_4k = pending_holes = 0
        out["runs"] += 1
        if level == "pte":
            out["DirectMap4k"] += kb
        elif level == "pmd" and "PSE" in flags:
            out[large] += kb
        elif level == "pud" and "PSE" in flags and arch == "x86_64":
            out["DirectMap1G"] += kb
        else:
            out["other_kB"] += kb
    return out if found else {}


# --- /proc/sys/kernel/tainted -----------------------------------------------

@dataclass(frozen=True)
class TaintFlag:
    bit: int
    letter: str
    name: str


# kernel/panic.c taint_flags[] (6.12), in bit order.
TAINT_FLAGS: tuple[TaintFlag, ...] = tuple(
    TaintFlag(bit, letter, name) for bit, (letter, name) in enumerate([
        ("P", "PROPRIETARY_MODULE"), ("F", "FORCED_MODULE"), ("S", "CPU_OUT_OF_SPEC"),
        ("R", "FORCED_RMMOD"), ("M", "MACHINE_CHECK"), ("B", "BAD_PAGE"), ("U", "USER"),
        ("D", "DIE"), ("A", "OVERRIDDEN_ACPI_TABLE"), ("W", "WARN"), ("C", "CRAP"),
        ("I", "FIRMWARE_WORKAROUND"), ("O", "OOT_MODULE"), ("E", "UNSIGNED_MODULE"),
        ("L", "SOFTLOCKUP"), ("K", "LIVEPATCH"), ("X", "AUX"), ("T", "RANDSTRUCT"),
        ("N", "TEST"),
    ]))


def parse_tainted(text: str) -> int:
    """/proc/sys/kernel/tainted: one decimal number."""
    return int(text.strip())


def taint_flags(value: int) -> list[TaintFlag]:
    """The flags set in `value`; a bit this table does not know becomes TaintFlag(bit, '?', ...)."""
    known = {f.bit: f for f in TAINT_FLAGS}
    return [known.get(bit, TaintFlag(bit, "?", f"bit {bit}"))
            for bit in range(value.bit_length()) if value >> bit & 1]


def taint_letters(value: int) -> str:
    """The letters of the set flags, e.g. 512 -> 'W' (a WARN happened)."""
    return "".join(f.letter for f in taint_flags(value))


# --- comparing --------------------------------------------------------------

def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """after - before for every key in either (a missing key counts as 0)."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(before.keys() | after.keys())}


def pagealloc_splits(boot: Snapshot, last: Snapshot) -> dict[str, Any]:
    """Under debug_pagealloc every page free unmaps the page from the direct
    map, which would need a split (and an allocation) of a large page: the
    kernel maps it all 4k from boot instead. The proof: the direct map's
    large sizes at boot (the page-table dump where the kernel has it), and the
    split counters from boot to `last`; any split is named with its counter."""
    dump = boot.ptdump or boot.meminfo or {}
    large = {k: v for k, v in dump.items()
             if k.startswith("DirectMap") and k != "DirectMap4k" and v}
    splits = {k: v for k, v in delta(boot.vmstat or {}, last.vmstat or {}).items()
              if k.startswith("direct_map_") and k.endswith("_splits")}
    return {"source": "page tables" if boot.ptdump else "/proc/meminfo",
            "large_at_boot_kb": large, "splits": splits, "until": last.label,
            "split": sum(splits.values()) > 0, "all_4k_at_boot": not large and bool(dump)}


# --- one snapshot of a guest ------------------------------------------------

GUEST_FILES: dict[str, str] = {
    "meminfo": "/proc/meminfo",
    "vmstat": "/proc/vmstat",
    "cpa_stats": "/sys/kernel/debug/x86/cpa_stats",
    "ptdump": "/sys/kernel/debug/page_tables/kernel",
    "tainted": "/proc/sys/kernel/tainted",
}
# Printed instead of the file's content when the file does not exist.
ABSENT = "CPA-HARNESS-ABSENT"



@dataclass
class Snapshot:
    label: str
    meminfo: dict[str, int] | None = None      # DirectMap*, kB
    vmstat: dict[str, int] | None = None       # split and TLB counters
    cpa_stats: dict[str, int] | None = None
    ptdump: dict[str, int] | None = None       # summarize_ptdump()
    tainted: int | None = None
    absent: list[str] = field(default_factory=list)         # files this kernel lacks
    errors: dict[str, str] = field(default_factory=dict)    # files that did not read

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "label": self.label,
            "meminfo": self.meminfo,
            "vmstat": self.vmstat,
            "cpa_stats": self.cpa_stats,
            "ptdump": self.ptdump,
            "tainted": self.tainted,
            "taint_letters": None if self.tainted is None else taint_letters(self.tainted),
            "absent": list(self.absent),
            "errors": dict(self.errors),
        }
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Snapshot:
        return cls(label=doc["label"], meminfo=doc.get("meminfo"), vmstat=doc.get("vmstat"),
                   cpa_stats=doc.get("cpa_stats"), ptdump=doc.get("ptdump"),
                   tainted=doc.get("tainted"), absent=list(doc.get("absent", [])),
                   errors=dict(doc.get("errors", {})))


def snapshot_delta(before: Snapshot, after: Snapshot) -> dict[str, dict[str, int]]:
    """delta() of each group both snapshots have."""
    out: dict[str, dict[str, int]] = {}
    for name in ("meminfo", "vmstat", "cpa_stats", "ptdump"):
        b, a = getattr(before, name), getattr(after, name)
        if b is not None and a is not None:
            out[name] = delta(b, a)
    return out


def direct_map_disagreement(s: Snapshot) -> dict[str, int]:
    """meminfo's DirectMap counters minus what the page tables map, kB, for each size."""
    if s.meminfo is None or not s.ptdump:
        return {}
    sizes = [k for k in s.meminfo.keys() | s.ptdump.keys() if k.startswith("DirectMap")]
    return {k: s.meminfo.get(k, 0) - s.ptdump.get(k, 0) for k in sorted(sizes)}


def guess_arch(meminfo_text: str, ptdump_text: str) -> str:
    """x86_64, i386-pae or i386, from what these files look like."""
    if "---[ Low Kernel Mapping ]---" in ptdump_text:
        return "x86_64"
    if re.search(r"^DirectMap4M:", meminfo_text, re.M):
        return "i386"
    if re.search(r"^DirectMap1G:", meminfo_text, re.M):
        return "x86_64"
    return "i386-pae"


def read_guest_file(run: Runner, path: str) -> tuple[str, str | None]:
    """('ok', text), ('absent', None) or ('error', message) for one guest file."""
    q = shlex.quote(path)
    status, output = run(f"if [ -e {q} ]; then cat {q}; else echo {ABSENT}; fi")
    if status != 0:
        first = output.strip().splitlines()[:1] or [""]
        return "error", f"status {status}: {first[0][:200]}"
    if output.strip() == ABSENT:
        return "absent", None
    return "ok", output


def collect(run: Runner, label: str = "", arch: str | None = None) -> Snapshot:
    """Read every statistics file through `run` (status, output) into a Snapshot.

    `arch` (x86_64, i386-pae, i386) says how to read the page-table dump;
    without it, it is guessed from the files.
    """
    snap = Snapshot(label=label)
    texts: dict[str, str] = {}
    for name, path in GUEST_FILES.items():
        state, text = read_guest_file(run, path)
        if state == "absent":
            snap.absent.append(name)
        elif state == "error" or text is None:
            snap.errors[name] = text or "no output"
        else:
            texts[name] = text
    if "meminfo" in texts:
        snap.meminfo = parse_meminfo(texts["meminfo"])
    if "vmstat" in texts:
        snap.vmstat = parse_vmstat(texts["vmstat"])
    if "cpa_stats" in texts:
        snap.cpa_stats = parse_cpa_stats(texts["cpa_stats"])
    if "ptdump" in texts:
        which = arch or guess_arch(texts.get("meminfo", ""), texts["ptdump"])
        snap.ptdump = summarize_ptdump(texts["ptdump"], which)
    if "tainted" in texts:
        try:
            snap.tainted = parse_tainted(texts["tainted"])
        except ValueError:
            snap.errors["tainted"] = f"not a number: {texts['tainted'].strip()[:80]!r}"
    return snap
