"""`cpa-harness doctor`: is this host able to build, boot and check kernels?
(`--lab FILE`: the lab file and its boxes instead.)

Each check prints one line; each problem says how to fix it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TextIO

import paramiko

from harness.arches import ARCHES, I386, X86_64
from harness.errors import HarnessError
from harness.image import debian
from harness.kernel import build as kbuild
from harness.kernel import source
from harness.paths import GUEST_DIR
from harness.target import lab, qemu

SETUP_HINT = "run ci/setup.sh"


def _compiles(flag: str) -> str | None:
    """None when gcc builds freestanding code for this word size."""
    try:
        r = subprocess.run(["gcc", flag, "-ffreestanding", "-c", "-x", "c", "-o", "/dev/null",
                            "-"], input="int f(void) { return sizeof(long); }\n",
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["failed"])[-1]


def _header(name: str) -> bool:
    return any(Path(d, name).exists() for d in ("/usr/include", "/usr/include/x86_64-linux-gnu"))


def _latest_kernel(cache: Path, arch: str) -> tuple[Path | None, Path | None]:
    """The newest cached kernel and initramfs of an arch: the accelerator probe boots them."""
    def newest(paths: list[Path]) -> Path | None:
        return max(paths, key=lambda p: p.stat().st_mtime) if paths else None
    kernel = newest([p for p in cache.glob(f"builds/{arch}-*/arch/x86/boot/bzImage")])
    initrd = newest(list(cache.glob(f"initramfs/{arch}-*.cpio")))
    return (kernel, initrd) if kernel and initrd else (None, None)


def doctor(cache: Path, tree: str | None, out: TextIO, refresh: bool = True) -> int:
    problems = 0

    def ok(what: str) -> None:
        out.write(f"ok       {what}\n")

    def bad(what: str, fix: str) -> None:
        nonlocal problems
        problems += 1
        out.write(f"PROBLEM  {what}: {fix}\n")

    for binary in sorted({a.qemu for a in ARCHES.values()}):
        v = qemu.qemu_version(binary)
        if v:
            ok(f"{binary}: {v}")
        else:
            bad(f"{binary} is missing", f"{SETUP_HINT} (apt-get install qemu-system-x86)")

    for arch in (X86_64, I386):
        if not qemu.qemu_version(arch.qemu):
            continue
        tcg = qemu.run_probe(arch.qemu, "tcg", arch.cpu)
        if tcg:
            bad(f"TCG cannot run the probe guest on {arch.qemu}: {tcg}",
                "reinstall qemu-system-x86")
        kernel, initrd = _latest_kernel(cache, arch.name)
        try:
            choice = qemu.choose_accel(arch, arch.cpu, cache, refresh=refresh, kernel=kernel,
                                       initrd=initrd)
        except HarnessError as e:
            bad(f"accelerator probe for {arch.qemu}", e.line())
            continue
        line = f"accelerator for {arch.qemu} -cpu {arch.cpu}: {choice.accel} ({choice.reason})"
        if choice.accel == "kvm":
            ok(line)
        else:
            out.write(f"note     {line}\n")

    missing = kbuild.check_host_tools()
    if missing:
        bad(f"build tools missing: {', '.join(missing)}", SETUP_HINT)
    else:
        ok(f"build tools: {', '.join(kbuild.HOST_TOOLS)}")
    for flag, name in (("-m64", "x86_64"), ("-m32", "i386")):
        err = _compiles(flag) if shutil.which("gcc") else "gcc missing"
        if err:
            bad(f"gcc cannot build {name} kernel code ({err})",
                f"{SETUP_HINT} (apt-get install gcc)")
        else:
            ok(f"gcc builds {name} code")
    for header, pkg in (("gelf.h", "libelf-dev"), ("openssl/ssl.h", "libssl-dev")):
        if _header(header):
            ok(f"{header} ({pkg})")
        else:
            bad(f"{header} missing", f"apt-get install {pkg}")

    try:
        if tree:
            src = source.from_tree(tree)
            ok(f"kernel source: {src.path} ({src.version}, {src.id})")
        else:
            tarball = source.find_debian_tarball()
            ok(f"kernel source: {tarball} (unpacked into the cache on first use)")
    except HarnessError as e:
        bad("kernel source", e.line())

    for darch in sorted({a.debian_arch for a in ARCHES.values()}):
        names = debian.read_package_list(GUEST_DIR / "packages.txt", darch)
        try:
            unreachable = debian.packages_reachable(names, darch)
        except HarnessError as e:
            bad(f"guest packages for {darch}", e.line())
            continue
        if unreachable:
            hint = ("dpkg --add-architecture i386 && apt-get update" if darch == "i386"
                    else "apt-get update")
            bad(f"guest packages for {darch} not available: {', '.join(unreachable)}", hint)
        else:
            ok(f"guest packages for {darch}: {', '.join(names)}")

    out.write("no problems found\n" if not problems else f"{problems} problem(s) found\n")
    return 0 if not problems else 3


def doctor_lab(path: Path, out: TextIO) -> int:
    """`doctor --lab FILE`: the lab file, and for each box what can be checked
    from this host without connecting: the ssh key, the pinned host key, and
    that its console and power commands exist here."""
    boxes = lab.load(path).boxes        # a mistake in the file: UserError, exit 2
    problems = 0
    for box in boxes.values():
        found: list[str] = []
        try:
            paramiko.PKey.from_path(box.key)
        except (OSError, paramiko.SSHException, ValueError) as e:
            found.append(f"ssh key {box.key} does not load ({e}): give a private key file")
        if box.host_key_file is not None:
            entry = box.host if box.port == 22 else f"[{box.host}]:{box.port}"
            try:
                pinned = paramiko.HostKeys(str(box.host_key_file)).lookup(entry)
            except OSError as e:
                found.append(f"host key file {box.host_key_file}: {e.strerror or e}")
            else:
                if not pinned:
                    found.append(f"host key file {box.host_key_file} has no key for {entry}: "
                                 f"add the line `ssh-keyscan` prints")
        commands = [("console", box.console.command)] if box.console.command else []
        for what, argv in [*commands, *box.power.items()]:
            if shutil.which(argv[0]) is None:
                found.append(f"{what}: {argv[0]} is not on this host's PATH: install it")
        for problem in found:
            out.write(f"PROBLEM  {box.name}: {problem}\n")
        if not found:
            out.write(f"ok       {box.name}: {box.user}@{box.host}:{box.port}, console "
                      f"{box.console.describe()}, boot by {box.boot}, recovery by "
                      f"{box.recovery}\n")
        problems += len(found)
    # Said, not implied: what a connection would show is not looked at yet.
    out.write("not checked (needs a connection to the box): ssh login, console output, "
              "kexec-tools, the running kernel\n")
    out.write("no problems found\n" if not problems else f"{problems} problem(s) found\n")
    return 0 if not problems else 3
