"""Expectations by kernel version: what a cell on an older kernel cannot check."""

from __future__ import annotations

from harness.kernel import facts as kernel_facts


def names(version: str) -> set[str]:
    return {f.name for f in kernel_facts.load() if not f.holds_for(version)}


def test_the_tested_trees() -> None:
    assert names("6.12.117") == set()
    assert names("6.1.192") == set()
    # 5.10 has no direct-map split counters in vmstat and no W^X check in CPA
    assert names("5.10.223") == {"vmstat-splits", "verify-rwx"}
    [line, _] = kernel_facts.unchecked("5.10.223")
    assert line.startswith("the direct-map split counters and their deltas: not checked on "
                           "5.10.223 (direct_map_level2_splits")
    assert line.endswith("is known for 6.1 on)")


def test_newer_and_older_kernels() -> None:
    assert names("6.18.0-rc3") == set()          # ranges without an end stay open
    assert names("5.4.0") == {f.name for f in kernel_facts.load()}
    assert len(kernel_facts.unchecked("")) == len(kernel_facts.load())   # unknown version


def test_an_upper_bound() -> None:
    facts = kernel_facts.parse('[[fact]]\nname = "x"\nwhat = "X"\nsince = "5.10"\n'
                               'until = "6.9"\nchecks = "x things"\n')
    assert kernel_facts.unchecked("6.8.1", facts) == []
    assert kernel_facts.unchecked("6.9", facts) == [
        "x things: not checked on 6.9 (X is known for 5.10 to before 6.9)"]


def test_flush_accounting_is_not_done_where_it_breaks_the_kernel() -> None:
    for arch in ("i386", "i386-pae"):
        for version in ("5.10.223", "6.1.192"):
            why = kernel_facts.avoided("flush-accounting", arch, version)
            assert why and why.startswith(f"not done on {arch} {version}: enabling the function")
            assert "int3 in __text_poke" in why
        assert kernel_facts.avoided("flush-accounting", arch, "6.12.117") is None
    assert kernel_facts.avoided("flush-accounting", "x86_64", "6.1.192") is None
    assert kernel_facts.avoided("flush-accounting", "i386", "") is None     # unknown: not
