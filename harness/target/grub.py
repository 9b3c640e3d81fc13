"""The `grub-reboot` boot method: the kernel under test booted once by the
box's own GRUB, so that any later reset lands on the default entry.

The kernel and initramfs are in the scratch directory (box_target.SCRATCH),
as for kexec. The one thing written outside it is the one-shot entry:
/boot/grub/custom.cfg, which the grub.cfg that Debian's update-grub generates
sources on every boot (41_custom), holding one menuentry whose id carries the
cell's nonce. `grub-reboot ID` sets `next_entry` in grubenv; GRUB's own
grub.cfg (00_header) boots it once and clears it before booting, so a reset,
a `reboot -f` or a power cycle after that lands on the default entry. The
entry is left behind, harmless: it is never the default, its nonce is spent,
and the next cell's entry replaces it. A custom.cfg the harness did not
write is never touched: the cell is refused instead.

GRUB reads the scratch directory itself, so the entry finds it the way
update-grub's entries find /boot: `grub-probe` names its file system (by UUID,
with the modules for its partition map, abstraction and file system) and
`grub-mkrelpath` its path inside that file system, so /var on a file system
of its own is found too. A scratch directory GRUB cannot read (tmpfs) is a
user error before anything is written.

Each kernel argument is one single-quoted GRUB word, so nothing in a command
line is GRUB script (`$`, `;`, `{`, `#`...). GRUB's `linux` command rewrites
arguments that hold a backslash or a quote (it escapes them for the kernel),
so the kernel would not see the command line the cell asked for: those are
refused, with kexec as the way to boot them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from harness.errors import UserError

# Where stock Debian's grub.cfg looks for an administrator's own entries
ENTRY_FILE = "/boot/grub/custom.cfg"
GRUB_CFG = "/boot/grub/grub.cfg"
# The first line of the entry file: a custom.cfg without it is not ours
MARK = "# cpa-harness: the one-shot entry for the kernel under test (grub-reboot)"
UUID_RE = re.compile(r"^[0-9A-Za-z-]{1,64}$")
MODULE_RE = re.compile(r"^[a-z0-9_]{1,32}$")
# what GRUB's `linux` escapes (grub_create_loader_cmdline), and control characters
UNSAFE_RE = re.compile(r"[\\'\"\x00-\x08\x0a-\x1f\x7f]")


# Not an orderly `reboot`: on the way down Debian's kexec-tools (LOAD_KEXEC=true
# by default) load the distribution's kernel and `kexec -e` it on any reboot
# (/etc/init.d/kexec-load, kexec), so GRUB never runs and next_entry stays set
# for a later reset. `reboot -f` under systemd stops no service but still
# unmounts or remounts the file systems read-only, which writes the journal
# out to where GRUB reads them (GRUB does not replay an ext4 journal: the new
# entry, grubenv and the kernel must be in place). A kernel already loaded for
# kexec is unloaded first, in case the reboot would execute it.
REBOOT = "sync; if command -v kexec >/dev/null; then kexec -u; fi; reboot -f"


def entry_id(nonce: str) -> str:
    return f"cpa-harness-{nonce}"


def quote(word: str) -> str:
    """One GRUB word, taken literally: GRUB's single quotes work as the shell's
    (no escapes inside; a quote is closed, escaped and reopened)."""
    return "'" + word.replace("'", "'\\''") + "'"


def kernel_words(cmdline: str, box: str) -> list[str]:
    """The command line as GRUB `linux` arguments that reach the kernel as they are."""
    bad = UNSAFE_RE.search(cmdline)
    if bad:
        raise UserError(f"box {box!r}: boot = \"grub-reboot\" cannot pass the command line "
                        f"character {bad.group()!r}: GRUB's linux command escapes it, so the "
                        "kernel would see another command line",
                        "drop it from the cell's cmdline, or use boot = \"kexec_load\"")
    return cmdline.split()


@dataclass(frozen=True)
class Place:
    """Where GRUB finds the scratch directory: a file system and a path in it."""

    uuid: str
    path: str                   # inside that file system, as grub-mkrelpath says
    modules: tuple[str, ...]    # partition map, abstraction and file system, to insmod


def place(uuid: str, path: str, partmap: str, abstraction: str, fs: str) -> Place:
    """From grub-probe's and grub-mkrelpath's answers on the box, checked."""
    uuid, path = uuid.strip(), path.strip()
    if not UUID_RE.fullmatch(uuid):
        raise ValueError(f"grub-probe gave no file system UUID: {uuid[:100]!r}")
    if not path.startswith("/") or "\n" in path:
        raise ValueError(f"grub-mkrelpath gave no path: {path[:100]!r}")
    modules = ([f"part_{p}" for p in partmap.split()] + abstraction.split() + fs.split())
    bad = [m for m in modules if not MODULE_RE.fullmatch(m)]
    if bad or not fs.split():
        raise ValueError(f"grub-probe gave no GRUB module for the file system: {bad or fs!r}")
    return Place(uuid, path, tuple(dict.fromkeys(modules)))


def entry(nonce: str, where: Place, image: str, initrd: str, words: list[str]) -> str:
    """The entry file: one menuentry for the kernel under test. `image` and
    `initrd` are names in the scratch directory."""
    lines = [MARK,
             "# Booted once by grub-reboot; never the default. The next cell's entry replaces it.",
             f"menuentry 'cpa-harness: the kernel under test' --id {quote(entry_id(nonce))} {{",
             *(f"  insmod {m}" for m in where.modules),
             f"  search --no-floppy --fs-uuid --set=root {quote(where.uuid)}",
             "  echo 'cpa-harness: booting the kernel under test'",
             f"  linux {quote(where.path.rstrip('/') + '/' + image)}"
             + "".join(f" {quote(w)}" for w in words),
             f"  initrd {quote(where.path.rstrip('/') + '/' + initrd)}",
             "}"]
    return "\n".join(lines) + "\n"


# --- commands on the box (its shell, over ssh) -------------------------------

def probe_commands(scratch: str) -> dict[str, str]:
    """What the entry needs to know, one command each (the answer on stdout)."""
    q = shlex.quote(scratch)
    return {"uuid": f"grub-probe --target=fs_uuid {q}",
            "partmap": f"grub-probe --target=partmap {q}",
            "abstraction": f"grub-probe --target=abstraction {q}",
            "fs": f"grub-probe --target=fs {q}",
            "path": f"grub-mkrelpath {q}"}


def preflight_command() -> str:
    """Exit 0 when the box's GRUB can boot a one-shot entry from ENTRY_FILE:
    grub-reboot exists, grub.cfg honours next_entry and sources custom.cfg,
    and ENTRY_FILE is absent or ours. The reason otherwise, on stdout."""
    cfg, f = shlex.quote(GRUB_CFG), shlex.quote(ENTRY_FILE)
    return (f"command -v grub-reboot >/dev/null || {{ echo 'grub-reboot is missing'; exit 1; }}; "
            f"[ -f {cfg} ] || {{ echo '{GRUB_CFG} is missing'; exit 1; }}; "
            f"grep -q next_entry {cfg} || {{ echo '{GRUB_CFG} does not honour next_entry'; "
            "exit 1; }; "
            f"grep -q custom.cfg {cfg} || {{ echo '{GRUB_CFG} does not source custom.cfg'; "
            "exit 1; }; "
            f"[ ! -e {f} ] || head -n 1 {f} | grep -qxF {shlex.quote(MARK)} || "
            f"{{ echo '{ENTRY_FILE} is not the harness'\"'\"'s'; exit 1; }}")


def set_next_command(nonce: str) -> str:
    """grub-reboot, then proof that grubenv names the entry for the next boot."""
    e = shlex.quote(entry_id(nonce))
    return (f"grub-reboot {e} && grub-editenv list | grep -qxF "
            f"{shlex.quote('next_entry=' + entry_id(nonce))}")
