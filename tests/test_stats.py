"""harness.stats on files captured from real guests (tests/data/stats/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.probes import stats

DATA = Path(__file__).parent / "data" / "stats"
GUESTS = {  # capture prefix -> arch
    "x86_64-gbpages": "x86_64",
    "x86_64-debug-pagealloc": "x86_64",
    "i386-pae": "i386-pae",
    "i386": "i386",
}
STAGES = ("boot", "selftest")
CAPTURES = [(g, s) for g in GUESTS for s in STAGES]


def read(guest: str, stage: str, name: str) -> str:
    return (DATA / f"{guest}-{stage}-{name}.txt").read_text()


def runner_for(guest: str, stage: str,
               missing: tuple[str, ...] = ()) -> stats.Runner:
    """A command runner answering collect()'s commands from the captured files."""
    by_path = {path: name for name, path in stats.GUEST_FILES.items()}
    seen: list[str] = []

    def run(command: str) -> tuple[int, str]:
        seen.append(command)
        path = next(p for p in by_path if p in command)
        name = by_path[path]
        if name in missing:
            return 0, stats.ABSENT + "\n"
        return 0, read(guest, stage, name)
    return run


# --- /proc/meminfo ----------------------------------------------------------

def test_meminfo_gbpages_boot() -> None:
    assert stats.parse_meminfo(read("x86_64-gbpages", "boot", "meminfo")) == {
        "DirectMap4k": 14208, "DirectMap2M": 3131392, "DirectMap1G": 3145728}


def test_meminfo_gbpages_selftest_split_gb_pages() -> None:
    before = stats.parse_meminfo(read("x86_64-gbpages", "boot", "meminfo"))
    after = stats.parse_meminfo(read("x86_64-gbpages", "selftest", "meminfo"))
    assert after == {"DirectMap4k": 501632, "DirectMap2M": 3692544, "DirectMap1G": 2097152}
    assert stats.delta(before, after) == {
        "DirectMap1G": -1048576, "DirectMap2M": 561152, "DirectMap4k": 487424}


def test_meminfo_debug_pagealloc_all_4k() -> None:
    mi = stats.parse_meminfo(read("x86_64-debug-pagealloc", "selftest", "meminfo"))
    assert mi == {"DirectMap4k": 2097024, "DirectMap2M": 0}   # no DirectMap1G line at all


def test_meminfo_i386_nopae_has_4M_not_2M() -> None:
    mi = stats.parse_meminfo(read("i386", "boot", "meminfo"))
    assert mi == {"DirectMap4k": 16376, "DirectMap4M": 888832}


def test_meminfo_i386_pae_has_2M() -> None:
    mi = stats.parse_meminfo(read("i386-pae", "selftest", "meminfo"))
    assert mi == {"DirectMap4k": 456696, "DirectMap2M": 450560}


def test_meminfo_ignores_other_lines() -> None:
    assert stats.parse_meminfo("MemTotal:  100 kB\nHugepagesize: 2048 kB\n") == {}


# --- /proc/vmstat -----------------------------------------------------------

@pytest.mark.parametrize(("guest", "stage"), CAPTURES)
def test_vmstat_has_every_counter(guest: str, stage: str) -> None:
    vm = stats.parse_vmstat(read(guest, stage, "vmstat"))
    assert sorted(vm) == ["direct_map_level2_splits", "direct_map_level3_splits",
                          "nr_tlb_local_flush_all", "nr_tlb_local_flush_one",
                          "nr_tlb_remote_flush", "nr_tlb_remote_flush_received"]


@pytest.mark.parametrize("guest", list(GUESTS))
def test_vmstat_no_splits_counted_at_boot(guest: str) -> None:
    vm = stats.parse_vmstat(read(guest, "boot", "vmstat"))
    assert vm["direct_map_level2_splits"] == vm["direct_map_level3_splits"] == 0


@pytest.mark.parametrize(("guest", "level2", "level3"), [
    ("x86_64-gbpages", 238, 1),
    ("x86_64-debug-pagealloc", 0, 0),     # nothing large left to split
    ("i386-pae", 219, 0),
    ("i386", 167, 0),
])
def test_vmstat_splits_after_selftest(guest: str, level2: int, level3: int) -> None:
    vm = stats.parse_vmstat(read(guest, "selftest", "vmstat"))
    assert (vm["direct_map_level2_splits"], vm["direct_map_level3_splits"]) == (level2, level3)


def test_vmstat_tlb_flushes_grow_over_selftest() -> None:
    d = stats.delta(stats.parse_vmstat(read("x86_64-gbpages", "boot", "vmstat")),
                    stats.parse_vmstat(read("x86_64-gbpages", "selftest", "vmstat")))
    assert d == {"direct_map_level2_splits": 238, "direct_map_level3_splits": 1,
                 "nr_tlb_local_flush_all": 15, "nr_tlb_local_flush_one": 2736,
                 "nr_tlb_remote_flush": 557, "nr_tlb_remote_flush_received": 558}


def test_vmstat_without_vm_event_counters_is_empty() -> None:
    # tinyconfig's VM_EVENT_COUNTERS=n leaves only the nr_* gauges.
    assert stats.parse_vmstat("nr_free_pages 1000\nnr_zone_inactive_anon 3\n") == {}


# --- cpa_stats --------------------------------------------------------------

def test_cpa_stats_gbpages() -> None:
    before = stats.parse_cpa_stats(read("x86_64-gbpages", "boot", "cpa_stats"))
    after = stats.parse_cpa_stats(read("x86_64-gbpages", "selftest", "cpa_stats"))
    assert before == {"1g_checked": 3, "1g_sameprot": 2, "1g_preserved": 0,
                      "2m_checked": 27, "2m_sameprot": 0, "2m_preserved": 22,
                      "4k_set_checked": 3701}
    assert stats.delta(before, after) == {
        "1g_checked": 1, "1g_preserved": 0, "1g_sameprot": 0, "2m_checked": 238,
        "2m_preserved": 0, "2m_sameprot": 0, "4k_set_checked": 24542}


@pytest.mark.parametrize(("guest", "large_checked", "set_checked"), [
    ("x86_64-debug-pagealloc", 14, 528871),
    ("i386-pae", 230, 31090),
    ("i386", 170, 31529),
])
def test_cpa_stats_after_selftest(guest: str, large_checked: int, set_checked: int) -> None:
    cs = stats.parse_cpa_stats(read(guest, "selftest", "cpa_stats"))
    assert len(cs) == 7
    assert cs["1g_checked"] == 0
    assert (cs["2m_checked"], cs["4k_set_checked"]) == (large_checked, set_checked)


# --- the page-table dump ----------------------------------------------------

def test_ptdump_gbpages_boot_has_one_gb_page() -> None:
    s = stats.summarize_ptdump(read("x86_64-gbpages", "boot", "ptdump"), "x86_64")
    assert s == {"DirectMap4k": 10112, "DirectMap2M": 3135488, "DirectMap1G": 1048576,
                 "runs": 18, "unmapped_4k_kB": 128, "holes_kB": 1048576, "other_kB": 0}
    # everything the guest's 4 GiB maps, less the 128K the firmware keeps below 3 GiB
    assert s["DirectMap4k"] + s["DirectMap2M"] + s["DirectMap1G"] == 4 * 1024 * 1024 - 128


def test_ptdump_gbpages_selftest_split_the_gb_page() -> None:
    s = stats.summarize_ptdump(read("x86_64-gbpages", "selftest", "ptdump"), "x86_64")
    assert s["DirectMap1G"] == 0
    assert s["DirectMap2M"] == 1805 * 2048           # the self-test's "large 1805"
    assert s["DirectMap4k"] == 497536
    assert s["runs"] == 396


def test_ptdump_debug_pagealloc_all_4k() -> None:
    s = stats.summarize_ptdump(read("x86_64-debug-pagealloc", "selftest", "ptdump"), "x86_64")
    assert s["DirectMap2M"] == s["DirectMap1G"] == s["other_kB"] == 0
    # most of the direct map is free, and DEBUG_PAGEALLOC unmaps free pages
    assert s["DirectMap4k"] == 64064
    assert s["unmapped_4k_kB"] == 2026112


def test_ptdump_i386_nopae_uses_4M_pages() -> None:
    boot = stats.summarize_ptdump(read("i386", "boot", "ptdump"), "i386")
    assert boot == {"DirectMap4k": 16376, "DirectMap4M": 888832, "runs": 10,
                    "unmapped_4k_kB": 0, "holes_kB": 0, "other_kB": 0}
    after = stats.summarize_ptdump(read("i386", "selftest", "ptdump"), "i386")
    assert after["DirectMap4M"] == 50 * 4096        # the self-test's "large 50"
    assert after["DirectMap4k"] == 175102 * 4       # and its "4k 175102"


def test_ptdump_i386_pae_uses_2M_pages() -> None:
    s = stats.summarize_ptdump(read("i386-pae", "selftest", "ptdump"), "i386-pae")
    assert s["DirectMap2M"] == 220 * 2048 and s["DirectMap4k"] == 114174 * 4
    assert "DirectMap1G" not in s and "DirectMap4M" not in s


@pytest.mark.parametrize(("guest", "stage"), [c for c in CAPTURES if c[0] != "x86_64-gbpages"])
def test_ptdump_agrees_with_meminfo_without_gbpages(guest: str, stage: str) -> None:
    mi = stats.parse_meminfo(read(guest, stage, "meminfo"))
    s = stats.summarize_ptdump(read(guest, stage, "ptdump"), GUESTS[guest])
    if guest == "x86_64-debug-pagealloc":
        # meminfo counts the unmapped free pages' 4k entries too
        mapped = s["DirectMap4k"] + s["unmapped_4k_kB"]
        assert 0 <= mi["DirectMap4k"] - mapped < 8 * 1024
    else:
        assert stats.direct_map_disagreement(
            stats.Snapshot("x", meminfo=mi, ptdump=s)) == {k: 0 for k in mi}


def test_meminfo_overcounts_gb_pages_on_x86_64() -> None:
    # A finding these files show: 6.12's DirectMap1G counts 2 GiB that no page table maps.
    for stage, expected in (("boot", 2097152), ("selftest", 2097152)):
        snap = stats.Snapshot(
            stage, meminfo=stats.parse_meminfo(read("x86_64-gbpages", stage, "meminfo")),
            ptdump=stats.summarize_ptdump(read("x86_64-gbpages", stage, "ptdump"), "x86_64"))
        assert stats.direct_map_disagreement(snap)["DirectMap1G"] == expected


def test_ptdump_streams_from_an_open_file() -> None:
    path = DATA / "x86_64-gbpages-selftest-ptdump.txt"
    with open(path) as f:
        streamed = stats.summarize_ptdump(f, "x86_64")
    assert streamed == stats.summarize_ptdump(path.read_text(), "x86_64")


def test_ptdump_ignores_other_sections() -> None:
    text = read("i386", "boot", "ptdump")
    direct = text[text.index("---[ Kernel Mapping ]---"):text.index("---[ vmalloc() Area ]---")]
    assert stats.summarize_ptdump(direct, "i386") == stats.summarize_ptdump(text, "i386")
    # the same dump read as x86_64 has no "Low Kernel Mapping" section at all
    assert stats.summarize_ptdump(text, "x86_64") == {}


def test_ptdump_robust_to_garbage_and_crlf() -> None:
    text = read("i386-pae", "boot", "ptdump")
    noisy = "\r\n".join(["garbage", *text.splitlines()[:6], "0xzz-0x12 ???",
                         *text.splitlines()[6:]])
    assert stats.summarize_ptdump(noisy, "i386-pae") == \
        stats.summarize_ptdump(text, "i386-pae")


def test_ptdump_unknown_arch() -> None:
    with pytest.raises(ValueError, match="unknown arch"):
        stats.summarize_ptdump("", "arm64")


# --- taint ------------------------------------------------------------------

def test_tainted_x86_64_warn() -> None:
    value = stats.parse_tainted(read("x86_64-gbpages", "boot", "tainted"))
    assert value == 512
    assert stats.taint_letters(value) == "W"
    assert [f.name for f in stats.taint_flags(value)] == ["WARN"]


def test_tainted_i386_clean() -> None:
    for guest in ("i386", "i386-pae"):
        value = stats.parse_tainted(read(guest, "selftest", "tainted"))
        assert value == 0 and stats.taint_letters(value) == ""


def test_taint_table_matches_kernel_and_unknown_bits() -> None:
    assert [f.letter for f in stats.TAINT_FLAGS] == list("PFSRMBUDAWCIOELKXTN")
    assert stats.taint_letters((1 << 0) | (1 << 7) | (1 << 9) | (1 << 25)) == "PDW?"
    assert stats.taint_flags(1 << 25)[0].name == "bit 25"


# --- delta ------------------------------------------------------------------

def test_delta_keys_in_either() -> None:
    assert stats.delta({"a": 1, "b": 5}, {"b": 7, "c": 2}) == {"a": -1, "b": 2, "c": 2}


# --- collect ----------------------------------------------------------------

@pytest.mark.parametrize(("guest", "stage"), CAPTURES)
def test_collect_reads_everything(guest: str, stage: str) -> None:
    snap = stats.collect(runner_for(guest, stage), label=stage, arch=GUESTS[guest])
    assert snap.absent == [] and snap.errors == {}
    assert snap.meminfo == stats.parse_meminfo(read(guest, stage, "meminfo"))
    assert snap.vmstat == stats.parse_vmstat(read(guest, stage, "vmstat"))
    assert snap.cpa_stats == stats.parse_cpa_stats(read(guest, stage, "cpa_stats"))
    assert snap.ptdump == stats.summarize_ptdump(read(guest, stage, "ptdump"), GUESTS[guest])
    assert snap.tainted == (512 if guest.startswith("x86_64") else 0)


@pytest.mark.parametrize("guest", list(GUESTS))
def test_collect_guesses_the_arch(guest: str) -> None:
    guessed = stats.collect(runner_for(guest, "selftest"))
    assert guessed.ptdump == stats.collect(runner_for(guest, "selftest"),
                                           arch=GUESTS[guest]).ptdump


def test_collect_records_absent_files() -> None:
    # e.g. a kernel without DEBUG_FS, X86_CPA_STATISTICS or PTDUMP_DEBUGFS
    snap = stats.collect(runner_for("i386", "boot", missing=("cpa_stats", "ptdump")),
                         label="boot", arch="i386")
    assert snap.absent == ["cpa_stats", "ptdump"]
    assert snap.cpa_stats is None and snap.ptdump is None
    assert snap.meminfo == {"DirectMap4k": 16376, "DirectMap4M": 888832}


def test_collect_records_read_errors() -> None:
    def run(command: str) -> tuple[int, str]:
        if "cpa_stats" in command:
            return 1, "cat: can't open '/sys/kernel/debug/x86/cpa_stats': Permission denied\n"
        if "tainted" in command:
            return 0, "not a number\n"
        return 0, ""
    snap = stats.collect(run, arch="x86_64")
    assert snap.errors["cpa_stats"].startswith("status 1: cat: can't open")
    assert "tainted" in snap.errors and snap.tainted is None
    assert snap.meminfo == {} and snap.ptdump == {}


def test_collect_commands_are_quoted_and_test_existence() -> None:
    commands: list[str] = []

    def run(command: str) -> tuple[int, str]:
        commands.append(command)
        return 0, stats.ABSENT
    snap = stats.collect(run)
    assert snap.absent == list(stats.GUEST_FILES)
    assert commands[0] == ("if [ -e /proc/meminfo ]; then cat /proc/meminfo; "
                           f"else echo {stats.ABSENT}; fi")


def test_snapshot_json_round_trip() -> None:
    snap = stats.collect(runner_for("x86_64-gbpages", "selftest"), label="after", arch="x86_64")
    doc = json.loads(json.dumps(snap.to_json()))
    assert doc["taint_letters"] == "W"
    assert doc["ptdump"]["DirectMap1G"] == 0
    assert stats.Snapshot.from_json(doc) == snap


def test_snapshot_delta() -> None:
    before = stats.collect(runner_for("i386", "boot"), label="boot", arch="i386")
    after = stats.collect(runner_for("i386", "selftest"), label="selftest", arch="i386")
    d = stats.snapshot_delta(before, after)
    assert d["vmstat"]["direct_map_level2_splits"] == 167
    assert d["meminfo"] == {"DirectMap4M": 204800 - 888832, "DirectMap4k": 700408 - 16376}
    assert d["ptdump"]["DirectMap4M"] == d["meminfo"]["DirectMap4M"]
