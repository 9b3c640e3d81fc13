"""A lab box's kernel from the box's own configuration, with the kernel's own
build system: Debian 6.1's configuration and `lsmod` as read from the
simulated box (tests/data/lab), brought to the Debian 6.12 tree, the modules
in use built in, the CPA fragments on top, the survival check passed."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import paths
from harness.arches import X86_64
from harness.kernel import build as kbuild
from harness.kernel import kconfig, source

pytestmark = pytest.mark.boot       # it needs the unpacked 6.12 tree

DATA = Path(__file__).parent / "data" / "lab"
CONFIG, LSMOD = DATA / "config-6.1.0-50-amd64", DATA / "lsmod-labbox.txt"


def request(base: Path | None, lsmod: Path | None) -> kbuild.BuildRequest:
    src = source.resolve(None, paths.cache_dir())
    return kbuild.BuildRequest(src, X86_64, kbuild.fragments_for(X86_64, ["cpa-test", "stats"],
                                                                 "box" if base else "base"),
                               base_config=base, lsmod=lsmod)


def test_the_box_configuration_with_its_modules_built_in(tmp_path: Path) -> None:
    req = request(CONFIG, LSMOD)
    config, survival = kbuild._configure(req, req.merged(), tmp_path / "scratch")
    assert survival.dropped == []
    final = kconfig.read_config(config)
    # the box's own choices stand: Debian's MAXSMP, its ORC unwinder
    assert final.get("CONFIG_MAXSMP") == "y" and final.get("CONFIG_NR_CPUS") == "8192"
    assert final.get("CONFIG_UNWINDER_ORC") == "y"
    # its modules in use are in the image; no module is left to load
    for module in ("CONFIG_VIRTIO_NET", "CONFIG_VIRTIO_BLK", "CONFIG_EXT4_FS"):
        assert final.get(module) == "y", module
    assert "m" not in final.values()
    # and the CPA self-test, on top
    assert final.get("CONFIG_CPA_DEBUG") == "y"
    assert final.get("CONFIG_KEXEC") == "y" and final.get("CONFIG_SERIAL_8250_CONSOLE") == "y"


def test_the_box_configuration_and_modules_are_in_the_key(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    own = kbuild.request_record(request(CONFIG, LSMOD), cache)
    cell = kbuild.request_record(request(None, None), cache)
    fewer = tmp_path / "lsmod"
    fewer.write_text("\n".join(LSMOD.read_text().splitlines()[:-1]) + "\n")
    other = kbuild.request_record(request(CONFIG, fewer), cache)
    assert len({own, cell, other}) == 3
    assert kbuild.request_record(request(CONFIG, LSMOD), cache) == own
