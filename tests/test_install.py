"""A non-editable install (`pip install .`) carries everything the harness reads:
its fragments, option knowledge, guest files and known issues ship inside the
package, and are found there when no checkout sits beside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json
from harness import paths
from harness.console import known
from harness.image import initramfs
from harness.kernel import kconfig, options
print(json.dumps({
    "package": str(paths.PACKAGE),
    "configs": str(paths.CONFIGS_DIR), "guest": str(paths.GUEST_DIR),
    "known_issues": str(paths.KNOWN_ISSUES),
    "fragments": kconfig.shipped_fragments(),
    "features": sorted(options.load().features),
    "known": len(known.load(paths.KNOWN_ISSUES)),
    "init": (paths.GUEST_DIR / "init").read_text().startswith("#!"),
    "overlay": sorted(p.name for p in (paths.GUEST_DIR / "overlay" / "etc").iterdir()),
}))
"""


def test_a_wheel_install_finds_its_shipped_files(tmp_path: Path) -> None:
    # From a copy of what git tracks: the build leaves nothing in the checkout.
    src = tmp_path / "src"
    for name in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.splitlines():
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(src)], check=True, capture_output=True)
    shutil.rmtree(src)      # nothing of the checkout is left to fall back on
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPA_HARNESS")}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    got = json.loads(out)
    pkg = site / "harness"
    assert got["package"] == str(pkg)
    assert got["configs"] == str(pkg / "shipped_configs")
    assert got["guest"] == str(pkg / "shipped_guest")
    assert got["known_issues"] == str(pkg / "shipped_ci" / "known-issues.toml")
    assert set(got["fragments"]) == {p.stem for p in (ROOT / "kernel-configs").glob("*.config")}
    assert "lkdtm" in got["features"] and got["known"] > 0 and got["init"]
    assert got["overlay"] == sorted(p.name for p in (ROOT / "guest/overlay/etc").iterdir())
    # and the program runs from there
    listed = subprocess.run([sys.executable, "-m", "harness", "run", "--list"], cwd=tmp_path,
                            env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "x86_64-gbpages" in listed.stdout
