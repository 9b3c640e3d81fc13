from __future__ import annotations

from pathlib import Path

import pytest

from harness.arches import ARCHES
from harness.errors import UserError
from harness.kernel import kconfig
from harness.kernel import options as kconfig_options
from harness.kernel.build import fragments_for

FAKE_KCONFIG = """\
menuconfig RUNTIME_TESTING_MENU
\tbool "Runtime testing"

if RUNTIME_TESTING_MENU

config LKDTM
\ttristate "Linux Kernel Dump Test Tool Module"
\tdepends on DEBUG_FS && \\
\t\tDEBUG_KERNEL
\thelp
\t  depends on NOTHING_IN_HELP is ignored? no: help text is indented prose.

endif # RUNTIME_TESTING_MENU

menu "Memory Debugging"
\tdepends on DEBUG_KERNEL

config DEBUG_PAGEALLOC
\tbool "Debug page memory allocations"
\tdepends on ARCH_SUPPORTS_DEBUG_PAGEALLOC

endmenu

config DEBUG_KERNEL
\tbool "Kernel debugging"

config DEBUG_FS
\tbool "Debug Filesystem"
"""


GATE_ONLY = "[gates]\noptions = [\"RUNTIME_TESTING_MENU\"]"
# No knowledge at all: every option essential, one name each.
NONE = kconfig_options.parse("")
KNOWN = kconfig_options.parse("""
[renamed]
NEW_PTI = ["OLD_PTI"]
[gates]
options = ["SOME_MENU"]
[wanted.lkdtm]
title = "LKDTM"
options = ["LKDTM"]
without = "selfcheck cannot provoke failures"
""")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "Kconfig.debug").write_text(FAKE_KCONFIG)
    (tmp_path / "arch" / "arm").mkdir(parents=True)
    (tmp_path / "arch" / "arm" / "Kconfig").write_text("config LKDTM\n\tdepends on ARM_ONLY\n")
    return tmp_path


def test_parse_lines() -> None:
    assert kconfig.parse_line("CONFIG_A=y", "f") == kconfig.Option("CONFIG_A", "y", "f")
    assert kconfig.parse_line("# CONFIG_B is not set", "f") == kconfig.Option("CONFIG_B", "n", "f")
    assert kconfig.parse_line("# a comment", "f") is None
    assert kconfig.parse_line("CONFIG_S=\"a b\"", "f") == kconfig.Option("CONFIG_S", '"a b"', "f")
    with pytest.raises(UserError, match="f:3: not a Kconfig line"):
        kconfig.parse_line("LKDTM=y", "f", 3)


def test_merge_later_overrides_and_records(tmp_path: Path) -> None:
    a = tmp_path / "a.config"
    b = tmp_path / "b.config"
    a.write_text("CONFIG_X=y\nCONFIG_Y=y\n")
    b.write_text("# CONFIG_X is not set\n")
    merged = kconfig.merge([a, b], ["CONFIG_Z=y", "W=m"])
    assert merged.options["CONFIG_X"].value == "n"
    assert merged.options["CONFIG_W"].value == "m"
    assert [(o.origin, n.origin) for o, n in merged.overrides] == [("a.config", "b.config")]
    assert "# CONFIG_X is not set\n" in merged.text()


def test_apply_replaces_earlier_lines(tmp_path: Path) -> None:
    cfg = tmp_path / ".config"
    cfg.write_text("CONFIG_A=y\n# CONFIG_BUG is not set\nCONFIG_C=y\n")
    merged = kconfig.merge([], ["CONFIG_BUG=y", "# CONFIG_C is not set"])
    kconfig.apply(cfg, merged, NONE)
    assert kconfig.read_config(cfg) == {"CONFIG_A": "y", "CONFIG_BUG": "y", "CONFIG_C": "n"}


def test_apply_writes_every_name_of_a_renamed_option(tmp_path: Path) -> None:
    cfg = tmp_path / ".config"
    cfg.write_text("# CONFIG_OLD_PTI is not set\n")
    kconfig.apply(cfg, kconfig.merge([], ["CONFIG_NEW_PTI=y"]), KNOWN)
    assert kconfig.read_config(cfg) == {"CONFIG_NEW_PTI": "y", "CONFIG_OLD_PTI": "y"}


def test_dropped_option_names_fragment_and_unmet_dependency(tree: Path) -> None:
    merged = kconfig.merge([], ["CONFIG_LKDTM=y", "CONFIG_DEBUG_KERNEL=y"])
    final = {"CONFIG_DEBUG_KERNEL": "y"}       # olddefconfig dropped LKDTM
    dropped = kconfig.check_survival(merged, final, tree, NONE).dropped
    assert len(dropped) == 1
    line = dropped[0].line()
    assert line.startswith("CONFIG_LKDTM=y (from --set) did not survive olddefconfig")
    # the enclosing `if` is the unmet part; DEBUG_KERNEL holds and is not blamed;
    # the arm-only definition is not read
    assert "RUNTIME_TESTING_MENU [=n]" in line
    assert "DEBUG_FS [=n]" in line
    assert "DEBUG_KERNEL [=y]" not in line
    assert "ARM_ONLY" not in line
    assert "lib/Kconfig.debug:6" in line


def test_menu_dependency_is_inherited(tree: Path) -> None:
    merged = kconfig.merge([], ["CONFIG_DEBUG_PAGEALLOC=y"])
    dropped = kconfig.check_survival(merged, {"CONFIG_ARCH_SUPPORTS_DEBUG_PAGEALLOC": "y"}, tree,
                                     NONE).dropped
    assert "DEBUG_KERNEL [=n]" in dropped[0].depends


def test_unknown_symbol(tree: Path) -> None:
    dropped = kconfig.check_survival(kconfig.merge([], ["CONFIG_NOPE=y"]), {}, tree, NONE).dropped
    assert "not defined in this tree's Kconfig" in dropped[0].depends


def test_survivor_and_unset_requests_pass(tree: Path) -> None:
    merged = kconfig.merge([], ["CONFIG_DEBUG_KERNEL=y", "# CONFIG_DEBUG_FS is not set"])
    got = kconfig.check_survival(merged, {"CONFIG_DEBUG_KERNEL": "y"}, tree, NONE)
    assert (got.dropped, got.unavailable) == ([], [])


def test_a_renamed_option_survives_under_either_name(tree: Path) -> None:
    for asked in ("CONFIG_NEW_PTI=y", "CONFIG_OLD_PTI=y"):
        merged = kconfig.merge([], [asked])
        for final in ({"CONFIG_NEW_PTI": "y"}, {"CONFIG_OLD_PTI": "y"}):
            got = kconfig.check_survival(merged, final, tree, KNOWN)
            assert (got.dropped, got.unavailable) == ([], []), (asked, final)
    # ...and when neither name survives, both are named
    got = kconfig.check_survival(kconfig.merge([], ["CONFIG_NEW_PTI=y"]), {}, tree, KNOWN)
    assert "under any of its names (NEW_PTI, OLD_PTI)" in got.dropped[0].line()


def test_a_gate_the_tree_lacks_is_not_needed(tree: Path) -> None:
    got = kconfig.check_survival(kconfig.merge([], ["CONFIG_SOME_MENU=y"]), {}, tree, KNOWN)
    assert (got.dropped, got.unavailable) == ([], [])
    # a gate the tree defines but dropped is as essential as any option
    got = kconfig.check_survival(kconfig.merge([], ["CONFIG_RUNTIME_TESTING_MENU=y"]), {}, tree,
                                 kconfig_options.parse(GATE_ONLY))
    assert [d.option.name for d in got.dropped] == ["CONFIG_RUNTIME_TESTING_MENU"]


def test_a_wanted_option_that_drops_is_unavailable_not_an_error(tree: Path) -> None:
    merged = kconfig.merge([], ["CONFIG_LKDTM=y", "CONFIG_DEBUG_KERNEL=y"])
    got = kconfig.check_survival(merged, {"CONFIG_DEBUG_KERNEL": "y"}, tree, KNOWN)
    assert got.dropped == []
    [u] = got.unavailable
    line = u.line("6.1.192")
    assert line.startswith("LKDTM unavailable on 6.1.192: CONFIG_LKDTM depends on ")
    assert "RUNTIME_TESTING_MENU [=n]" in line and "selfcheck cannot provoke" in line
    assert u.to_json()["feature"] == "lkdtm" and u.to_json()["options"] == ["CONFIG_LKDTM"]


def test_shipped_knowledge_covers_the_renames_and_features_it_names() -> None:
    known = kconfig_options.load()
    assert known.names("PAGE_TABLE_ISOLATION") == ("MITIGATION_PAGE_TABLE_ISOLATION",
                                                   "PAGE_TABLE_ISOLATION")
    assert known.feature_of("HARDLOCKUP_DETECTOR_BUDDY").name == "buddy-hardlockup"
    assert known.feature_of("CPA_DEBUG") is None        # essential
    assert known.feature_of("DEBUG_PAGEALLOC") is None  # essential
    # every wanted option is asked for by some shipped fragment
    from harness.cells import KERNEL_FRAGMENTS
    asked = {n.removeprefix("CONFIG_") for arch in ARCHES.values()
             for n in kconfig.merge(fragments_for(arch, list(KERNEL_FRAGMENTS[arch.name])))
             .options}
    for f in known.features.values():
        assert set(f.options) & asked, f.name


def test_expressions() -> None:
    final = {"CONFIG_A": "y", "CONFIG_M": "m", "CONFIG_S": "foo"}
    assert kconfig._holds("A && M", final)
    assert not kconfig._holds("A && !M", final)
    assert kconfig._holds("B || (A && !B)", final)
    assert kconfig._holds('S = "foo"', final)
    assert kconfig._holds("B != y", final)


def test_shipped_fragments_parse_and_agree() -> None:
    """No two shipped fragments of one arch's kernel ask for different values."""
    from harness.cells import KERNEL_FRAGMENTS
    for arch in ARCHES.values():
        merged = kconfig.merge(fragments_for(arch, list(KERNEL_FRAGMENTS[arch.name])))
        assert merged.overrides == [], arch.name
        assert merged.options["CONFIG_BUG"].value == "y"
        assert merged.options["CONFIG_CPA_DEBUG"].value == "y"
        assert merged.options["CONFIG_VM_EVENT_COUNTERS"].value == "y"


def test_unknown_fragment_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown config fragment 'nope'"):
        kconfig.fragment_path("nope")


def test_docs_name_every_essential_option_and_wanted_feature() -> None:
    """docs/kconfig.md says why each essential option is essential: it must list them all."""
    from harness.cells import KERNEL_FRAGMENTS
    from harness.paths import PROJECT_ROOT
    doc = (PROJECT_ROOT / "docs" / "kconfig.md").read_text()
    known = kconfig_options.load()
    for arch in ARCHES.values():
        for name, opt in kconfig.merge(fragments_for(arch,
                                                     list(KERNEL_FRAGMENTS[arch.name]))).options.items():
            sym = name.removeprefix("CONFIG_")
            if opt.value == "n" or known.is_gate(sym):
                continue
            assert f"`{sym}`" in doc, sym
    for f in known.features.values():
        assert f"| {f.name} |" in doc, f.name
