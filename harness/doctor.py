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
from harness.errors import HarnessError, InfraError, UserError
from harness.image import debian
from harness.kernel import build as kbuild
from harness.kernel import source
from harness.paths import GUEST_DIR
from harness.target import box, grub, lab, labgrid_place, qemu
from harness.target.ssh import SshError

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


def doctor_lab(path: Path, out: TextIO, connect: bool = True) -> int:
    """`doctor --lab FILE`: the lab file, and for each box what can be checked
    from this host (the ssh key, the pinned host key, its console and power
    commands on PATH) and, unless `connect` is false, what the box itself
    shows: ssh, console output after a newline, kexec-tools and kexec support,
    the running kernel. Power commands are looked for, never run: a check
    does not power-cycle a box."""
    boxes = lab.load(path).boxes        # a mistake in the file: UserError, exit 2
    problems = 0
    for b in boxes.values():
        found = _box_offline(b)
        if connect and not found:
            found, seen = _box_in_use_or_connected(b)
            for line in seen:
                out.write(f"ok       {b.name}: {line}\n")
        for problem in found:
            out.write(f"PROBLEM  {b.name}: {problem}\n")
        if not found:
            out.write(f"ok       {b.name}: {b.user}@{b.host}:{b.port}, console "
                      f"{b.console.describe()}, boot by {b.boot}, recovery by "
                      f"{b.recovery}\n")
        problems += len(found)
    if not connect:
        # Said, not implied: what a connection would show was not looked at.
        out.write("not checked (--offline): ssh login, console output, "
                  "kexec-tools, the running kernel\n")
    out.write("no problems found\n" if not problems else f"{problems} problem(s) found\n")
    return 0 if not problems else 3


def _box_offline(b: lab.Box) -> list[str]:
    found: list[str] = []
    try:
        paramiko.PKey.from_path(b.key)
    except (OSError, paramiko.SSHException, ValueError) as e:
        found.append(f"ssh key {b.key} does not load ({e}): give a private key file")
    if b.host_key_file is not None:
        try:
            box.pinned_key(b)
        except UserError as e:
            found.append(str(e).removeprefix(f"box {b.name!r}: "))
    commands = [("console", b.console.command)] if b.console.command else []
    for what, argv in [*commands, *b.power.items()]:
        if shutil.which(argv[0]) is None:
            found.append(f"{what}: {argv[0]} is not on this host's PATH: install it")
    return found


# Where the box keeps its kernel's configuration, for config = "box"
CONFIG_WHERE = ("if zcat /proc/config.gz >/dev/null 2>&1; then echo /proc/config.gz; "
                "elif [ -r \"/boot/config-$(uname -r)\" ]; then "
                "echo \"/boot/config-$(uname -r)\"; fi")


def _box_in_use_or_connected(b: lab.Box) -> tuple[list[str], list[str]]:
    """A box a cell has taken is not connected to: doctor would type into
    its console, or take its console session from it."""
    try:
        with labgrid_place.held(b, wait=0) as b:
            return _box_connected(b)
    except BlockingIOError:
        return ["in use by a cell on this host: not connected; run doctor again when "
                "it is done"], []
    except HarnessError as e:      # the labgrid place: busy, or not to be had
        return [e.line().removeprefix(f"box {b.name!r}: ")], []


def _box_connected(b: lab.Box) -> tuple[list[str], list[str]]:
    """Problems, and what was seen, of one box reached over ssh and its console."""
    found: list[str] = []
    seen: list[str] = []
    try:
        with box.connect(b, 30) as ssh:
            who = box.identify(ssh.runner(60))
            _, config = ssh.runner(60)(CONFIG_WHERE) if b.config == "box" else (0, "")
            grub_said = ssh.runner(60)(grub.preflight_command()) if b.boot == "grub-reboot" \
                else None
    except (HarnessError, SshError) as e:
        hint = getattr(e, "hint", "")
        return [f"{e}: {hint}" if hint else str(e)], seen
    seen.append(f"ssh: {who.vendor} {who.product}, {who.cpu_model}, "
                f"{who.memory_kb // 1024} MiB, {len(who.e820)} e820 lines")
    if grub_said is not None:
        status, why = grub_said
        if status != 0:
            found.append(f"boot by grub-reboot: {why.strip() or f'status {status}'}: see "
                         "docs/design.md, \"Lab boxes\", or boot it by kexec")
        else:
            seen.append(f"grub-reboot: its GRUB honours next_entry and sources "
                        f"{grub.ENTRY_FILE}")
    elif not who.kexec:
        found.append("kexec-tools are not installed on the box: apt install kexec-tools")
    elif not who.kexec_in_kernel:
        found.append(f"the running kernel {who.kernel} has no kexec support "
                     f"(/sys/kernel/kexec_loaded is missing): boot one with CONFIG_KEXEC")
    else:
        seen.append(f"kexec-tools: {who.kexec}")
    if b.config == "box" and not config.strip():
        found.append("its kernel's configuration is neither in /proc/config.gz nor in "
                     "/boot/config-$(uname -r), and the kernel under test is built from it: "
                     "install it, or set config = \"cell\"")
    elif config.strip():
        seen.append(f"kernel configuration: {config.strip()}")
    if b.known_good and who.kernel != b.known_good:
        found.append(f"runs {who.kernel}, not its known-good kernel {b.known_good}: "
                     f"boot it back, or correct known_good")
    else:
        seen.append(f"running kernel {who.kernel}"
                    + (" (the known-good one)" if b.known_good else " (no known_good given)"))
    try:
        prompt = box.console_answers(b)
    except InfraError as e:
        found.append(str(e))
    else:
        last = prompt.decode(errors="replace").strip().splitlines()[-1][-60:]
        seen.append(f"console answered a newline: {last!r}")
    return found, seen
