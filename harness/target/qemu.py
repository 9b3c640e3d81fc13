"""The QEMU command line, and which accelerator really works on this host.

The command line is one pure function of its parameters, so it can be shown
(--show-command), compared with golden files, and never goes through a shell.

/dev/kvm can exist, open, and still hang guests (and `-cpu host` can abort on
an MSR), so KVM is trusted only after a guest has been seen running code under
it, within a short deadline. The answer is remembered per host.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.arches import Arch
from harness.errors import InfraError
from harness.files import write_json
from harness.proc import die_with_parent
from harness.target.serial import NONCE_PARAM, SerialView, new_nonce, ready_re

# Always on the guest's command line: the console on the first serial port, and
# a panic that ends QEMU (with -no-reboot) instead of leaving a dead guest.
BASE_CMDLINE = "console=ttyS0,115200 panic=-1"


@dataclass(frozen=True)
class QemuParams:
    arch: Arch
    accel: str                      # "kvm" or "tcg"
    cpu: str
    memory_mb: int
    smp: int
    cmdline: str                    # the cell's part; BASE_CMDLINE comes first
    kernel: Path
    initrd: Path
    ssh_port: int | None = None     # forwarded from 127.0.0.1 to the guest's port 22
    qmp_socket: Path | None = None
    numa_nodes: int = 1             # memory and CPUs split evenly between nodes
    extra: tuple[str, ...] = field(default_factory=tuple)
    # On the command line for guest/init to put in its markers (harness.serial)
    nonce: str = ""

    def full_cmdline(self) -> str:
        words = [BASE_CMDLINE, self.cmdline]
        if self.nonce:
            words.append(f"{NONCE_PARAM}={self.nonce}")
        return " ".join(w for w in words if w)


def qemu_argv(p: QemuParams) -> list[str]:
    argv = [
        p.arch.qemu,
        "-machine", p.arch.machine,
        "-accel", p.accel,
        "-cpu", p.cpu,
        "-m", str(p.memory_mb),
        "-smp", smp_arg(p.smp, p.numa_nodes),
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-serial", "stdio",
        "-no-reboot",
        "-kernel", str(p.kernel),
        "-initrd", str(p.initrd),
        "-append", p.full_cmdline(),
    ]
    if p.ssh_port is not None:
        argv += ["-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{p.ssh_port}-:22",
                 "-device", "virtio-net-pci,netdev=net0"]
    if p.qmp_socket is not None:
        # QEMU waits for the harness to connect (wait=on) and the guest for its
        # `cont` (-S), sent once QMP is negotiated: events before negotiation
        # are not sent, and a reset in the guest's first microseconds must be seen.
        argv += ["-qmp", f"unix:{p.qmp_socket},server=on,wait=on", "-S"]
    argv += numa_argv(p.numa_nodes, p.memory_mb, p.smp)
    return argv + list(p.extra)


def smp_arg(smp: int, nodes: int) -> str:
    """With NUMA nodes, one socket per node: CPUs of one socket share a last-level
    cache, and a kernel seeing LLC siblings on different nodes WARNs in
    topology_sane() ("llc-sibling CPU #0 is not on the same node") on a good kernel."""
    if nodes <= 1:
        return str(smp)
    return f"{smp},sockets={nodes},cores={smp // nodes},threads=1"


def numa_argv(nodes: int, memory_mb: int, smp: int) -> list[str]:
    """One RAM backend per node (QEMU dropped '-numa node,mem=' for current
    machine types); each node takes one socket's CPUs. The guest sees the nodes
    through ACPI SRAT."""
    if nodes <= 1:
        return []
    argv: list[str] = []
    per = smp // nodes
    for n in range(nodes):
        size = memory_mb // nodes + (memory_mb % nodes if n == nodes - 1 else 0)
        cpus = list(range(n * per, (n + 1) * per))
        argv += ["-object", f"memory-backend-ram,id=mem{n},size={size}M",
                 "-numa", f"node,nodeid={n},memdev=mem{n}"
                 + "".join(f",cpus={c}" for c in cpus)]
    return argv


def show_command(p: QemuParams) -> str:
    return shlex.join(qemu_argv(p))


def qemu_version(binary: str) -> str | None:
    if shutil.which(binary) is None:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0] if out else None


def require_qemu(arch: Arch) -> None:
    if shutil.which(arch.qemu) is None:
        raise InfraError(f"{arch.qemu} is not installed",
                         "run ci/setup.sh (or apt-get install qemu-system-x86)")


# --- the accelerator probe -----------------------------------------------------

# A 64 KiB firmware image whose reset vector writes 0x4B to an isa-debug-exit
# port: QEMU then exits with status (0x4B << 1) | 1 = 151. Seeing 151 proves the
# accelerator executed guest code, which /dev/kvm opening does not.
_PROBE_CODE = bytes([0xBA, 0xF4, 0x00,   # mov dx, 0xf4
                     0xB0, 0x4B,         # mov al, 0x4b
                     0xEE,               # out dx, al
                     0xF4, 0xEB, 0xFE])  # hlt; jmp $
PROBE_EXIT = 151
PROBE_DEADLINE = 10.0


def _probe_firmware(dir: Path) -> Path:
    img = bytearray(b"\xf4" * 65536)
    img[0xFFF0:0xFFF0 + len(_PROBE_CODE)] = _PROBE_CODE
    path = dir / "accel-probe.bin"
    path.write_bytes(bytes(img))
    return path


@dataclass(frozen=True)
class AccelChoice:
    accel: str      # what cells will use
    reason: str     # one line: why


def _host_key(qemu: str, cpu: str) -> str:
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                      if ln.startswith("model name")), "")
    except OSError:
        model = ""
    return "|".join([platform.node(), platform.release(), model, qemu_version(qemu) or qemu,
                     cpu])


def run_probe(qemu: str, accel: str, cpu: str, deadline: float = PROBE_DEADLINE) -> str | None:
    """None when the guest ran code under `accel`; otherwise what went wrong."""
    with tempfile.TemporaryDirectory(prefix="cpa-harness-probe.") as tmp:
        fw = _probe_firmware(Path(tmp))
        argv = [qemu, "-machine", "pc", "-accel", accel, "-cpu", cpu, "-m", "16",
                "-nodefaults", "-no-user-config", "-display", "none", "-bios", str(fw),
                "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                start_new_session=True, preexec_fn=die_with_parent)
        try:
            out, _ = proc.communicate(timeout=deadline)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return f"the probe guest hung for {deadline:.0f}s"
        return firmware_problem(proc.returncode, out)


def firmware_problem(returncode: int, out: str) -> str | None:
    """The firmware probe's answer from QEMU's exit code and output: None when
    the guest wrote the exit port (tests/data/qemu: what this host's QEMU says)."""
    if returncode == PROBE_EXIT:
        return None
    last = [ln for ln in out.splitlines() if ln.strip()][-1:] or [""]
    return f"the probe guest exited {returncode}: {last[0][:160]}"


KERNEL_PROBE_DEADLINE = 30.0
QEMU_SAYS = re.compile(r"qemu-system-[\w-]+: ")


def kernel_problem(returncode: int | None, seen: bytes, deadline: float) -> str:
    """Why the kernel probe failed, from its newest output: QEMU exited
    (returncode), or the deadline passed without the ready marker (None).
    QEMU's own lines (its stderr shares the pipe) are told apart from the
    kernel's: a host's CPUID warning is not the kernel's last word."""
    lines = [ln for ln in seen.decode(errors="replace").splitlines() if ln.strip()]
    if returncode is not None:
        return f"the guest exited {returncode}: {(lines or [''])[-1][:160]}"
    kernel = [ln for ln in lines if not QEMU_SAYS.match(ln)]
    own = [ln for ln in lines if QEMU_SAYS.match(ln)]
    said = f"last output: {kernel[-1][:100]!r}" if kernel else "the kernel printed nothing"
    if own:
        said += f"; QEMU said {own[-1][:100]!r}"
    return f"the kernel did not reach user space in {deadline:.0f}s ({said})"


def run_kernel_probe(arch: Arch, accel: str, cpu: str, kernel: Path, initrd: Path,
                     deadline: float = KERNEL_PROBE_DEADLINE) -> str | None:
    """None when `kernel` boots to the guest init's ready marker under `accel`.

    Seen on this project's hosts: KVM runs real-mode firmware, then hangs for
    good once the kernel's setup code leaves real mode. Only a real kernel
    reaching user space proves the accelerator works.
    """
    p = QemuParams(arch=arch, accel=accel, cpu=cpu, memory_mb=512, smp=1, cmdline="",
                   kernel=kernel, initrd=initrd, nonce=new_nonce())
    ready = ready_re(p.nonce)
    view = SerialView()
    argv = qemu_argv(p)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=die_with_parent)
    assert proc.stdout is not None
    seen = b""      # the newest raw output, for the error line
    end = time.monotonic() + deadline
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        while time.monotonic() < end:
            chunk = proc.stdout.read(65536)
            if chunk:
                seen = (seen + chunk)[-65536:]
                view.feed(chunk)
                view.trim(65536)
                if view.search(ready, 0):
                    return None
            elif proc.poll() is not None:
                return kernel_problem(proc.returncode, seen, deadline)
            else:
                time.sleep(0.1)
        return kernel_problem(None, seen, deadline)
    finally:
        proc.kill()
        proc.wait()


def choose_accel(arch: Arch, cpu: str, cache: Path, want: str = "auto",
                 refresh: bool = False, kernel: Path | None = None,
                 initrd: Path | None = None) -> AccelChoice:
    """KVM if it really runs guest code with this CPU model, else TCG, remembered per host.

    Without a kernel to boot only the firmware probe runs, and its answer is
    not remembered: it cannot prove that a kernel will run.
    """
    if want == "tcg":
        return AccelChoice("tcg", "TCG requested")
    memo = cache / "accel.json"
    key = _host_key(arch.qemu, cpu)
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if not refresh and key in known:
        entry = known[key]
        choice = AccelChoice(entry["accel"], entry["reason"] + " (remembered)")
    else:
        choice = _probe_kvm(arch, cpu, kernel, initrd)
        if kernel is None and choice.accel == "kvm":
            return choice
        known[key] = {"accel": choice.accel, "reason": choice.reason, "when": time.time()}
        write_json(memo, known)
    if want == "kvm" and choice.accel != "kvm":
        raise InfraError(f"KVM was requested but does not work here: {choice.reason}",
                         "use --accel auto or --accel tcg")
    return choice


def kvm_device_problem(dev: str = "/dev/kvm") -> str | None:
    """Why KVM cannot even be asked (no device, or one that does not open)."""
    if not os.path.exists(dev):
        return f"no {dev}"
    try:
        fd = os.open(dev, os.O_RDWR)
        os.close(fd)
    except OSError as e:
        return f"{dev} cannot be opened ({e.strerror})"
    return None


def _probe_kvm(arch: Arch, cpu: str, kernel: Path | None, initrd: Path | None) -> AccelChoice:
    qemu = arch.qemu
    device = kvm_device_problem()
    if device:
        return AccelChoice("tcg", f"{device}; using TCG")
    kvm_cpu = "host" if cpu == "max" else cpu
    problem = run_probe(qemu, "kvm", kvm_cpu)
    if problem:
        return AccelChoice("tcg", f"KVM probe with -cpu {kvm_cpu} failed ({problem}); "
                                  "using TCG")
    if kernel is None or initrd is None:
        return AccelChoice("kvm", f"KVM ran the firmware probe with -cpu {kvm_cpu}; a kernel "
                                  "boot will confirm it")
    problem = run_kernel_probe(arch, "kvm", cpu, kernel, initrd)
    if problem:
        return AccelChoice("tcg", f"KVM runs firmware but not a kernel with -cpu {cpu} "
                                  f"({problem}); using TCG")
    return AccelChoice("kvm", f"KVM booted the kernel to user space with -cpu {cpu}")
