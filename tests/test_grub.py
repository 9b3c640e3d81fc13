"""The grub-reboot boot method's pieces that need no box: the one-shot entry's
text (every kernel argument one literal GRUB word, whatever it holds), what is
refused before anything is written, and the commands the box is given, in
order, against a box that answers like the simulated one."""

from __future__ import annotations

import shlex
import textwrap
from pathlib import Path

import pytest

from harness.errors import InfraError, UserError
from harness.target import box, grub, lab
from harness.target.base import Timeouts
from harness.target.box_target import SCRATCH, BoxTarget, Health
from harness.target.ssh import Completed

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKDw4Sa61eMoJWOJJRZR3YaVg5gSmWdzQyqIkaX/9/V3"
UUID = "0f3c5b7e-1d2a-4c59-9b1e-5a6d7e8f9a0b"
WHERE = grub.Place(UUID, "/var/tmp/cpa-harness", ("part_msdos", "ext2"))
HOSTILE = "cpa_x=$root;reboot cpa_y={}#` cpa_z=a|b&c<d>e cpa_w=${prefix}"


def grub_words(line: str) -> list[str]:
    """A GRUB command line split into words. For what grub.quote() writes
    (single-quoted words, an escaped quote between them) GRUB's lexer and the
    shell's agree, so the shell's splitting stands in for it."""
    return shlex.split(line, posix=True)


def test_a_hostile_command_line_reaches_linux_word_for_word() -> None:
    words = grub.kernel_words(f"console=ttyS0,115200  {HOSTILE} cpa_harness.nonce=ab12", "b")
    text = grub.entry("ab12", WHERE, "bzImage", "initrd.cpio", words)
    [linux] = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("linux ")]
    assert grub_words(linux) == ["linux", "/var/tmp/cpa-harness/bzImage", "console=ttyS0,115200",
                                 *HOSTILE.split(), "cpa_harness.nonce=ab12"]
    # nothing of it outside quotes: no variable, no second command, no block
    for word in HOSTILE.split():
        assert f" '{word}'" in linux


def test_the_entry_finds_the_scratch_directory_by_uuid_with_its_modules() -> None:
    text = grub.entry("ab12", WHERE, "bzImage", "initrd.cpio", ["quiet"])
    assert text == textwrap.dedent(f"""\
        {grub.MARK}
        # Booted once by grub-reboot; never the default. The next cell's entry replaces it.
        menuentry 'cpa-harness: the kernel under test' --id 'cpa-harness-ab12' {{
          insmod part_msdos
          insmod ext2
          search --no-floppy --fs-uuid --set=root '{UUID}'
          echo 'cpa-harness: booting the kernel under test'
          linux '/var/tmp/cpa-harness/bzImage' 'quiet'
          initrd '/var/tmp/cpa-harness/initrd.cpio'
        }}
        """)


def test_a_quote_in_a_path_stays_inside_its_word() -> None:
    where = grub.Place(UUID, "/it's here", ("ext2",))
    text = grub.entry("ab12", where, "bzImage", "initrd.cpio", [])
    [initrd] = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("initrd ")]
    assert grub_words(initrd) == ["initrd", "/it's here/initrd.cpio"]
    assert grub.quote("it's") == "'it'\\''s'"


@pytest.mark.parametrize("char", ["\\", "'", '"', "\n", "\x1b"])
def test_what_grubs_linux_would_rewrite_is_refused(char: str) -> None:
    with pytest.raises(UserError) as e:
        grub.kernel_words(f"console=ttyS0 cpa_x=a{char}b", "b")
    assert e.value.line().startswith(f"box 'b': boot = \"grub-reboot\" cannot pass the command "
                                     f"line character {char!r}: GRUB's linux command escapes")
    assert 'boot = "kexec_load"' in e.value.line()


def test_what_grub_probe_said_is_checked() -> None:
    where = grub.place(f"{UUID}\n", "/var/tmp/cpa-harness\n", "msdos\n", "\n", "ext2\n")
    assert where == grub.Place(UUID, "/var/tmp/cpa-harness", ("part_msdos", "ext2"))
    # a scratch directory in a file system on LVM: its abstraction's module too
    assert grub.place(UUID, "/cpa-harness", "gpt", "lvm", "ext2").modules == \
        ("part_gpt", "lvm", "ext2")
    with pytest.raises(ValueError, match="no file system UUID"):
        grub.place("grub-probe: error: failed to get canonical path", "/x", "", "", "ext2")
    with pytest.raises(ValueError, match="no path"):
        grub.place(UUID, "var/tmp", "", "", "ext2")
    with pytest.raises(ValueError, match="no GRUB module"):
        grub.place(UUID, "/x", "", "", "")
    with pytest.raises(ValueError, match="no GRUB module"):
        grub.place(UUID, "/x", "msdos; reboot", "", "ext2")


# --- the commands, against a box that answers --------------------------------

class FakeBox:
    """The box over ssh: answers the grub commands as the simulated box does,
    records every command and every file put."""

    def __init__(self, preflight: tuple[int, str] = (0, ""), reboot: int = 0) -> None:
        self.commands: list[str] = []
        self.files: dict[str, bytes] = {}
        self.preflight, self.reboot = preflight, reboot

    def __enter__(self) -> FakeBox:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run(self, command: str, timeout: float) -> Completed:
        self.commands.append(command)
        q = shlex.quote(SCRATCH)
        answers = {grub.preflight_command(): self.preflight,
                   f"grub-probe --target=fs_uuid {q}": (0, UUID + "\n"),
                   f"grub-probe --target=partmap {q}": (0, "msdos\n"),
                   f"grub-probe --target=abstraction {q}": (0, "\n"),
                   f"grub-probe --target=fs {q}": (0, "ext2\n"),
                   f"grub-mkrelpath {q}": (0, SCRATCH + "\n")}
        if command in answers:
            status, out = answers[command]
            return Completed(status, out, "")
        if command.startswith("grub-reboot "):
            return Completed(self.reboot, "", "grub-editenv: error: cannot open" * self.reboot)
        return Completed(0, "", "")     # install -d, the reboot

    def put(self, local: Path, remote: str, mode: int = 0o644, timeout: float = 60.0) -> None:
        self.commands.append(f"put {remote}")
        self.files[remote] = local.read_bytes()


def a_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeBox,
             cmdline: str = "") -> BoxTarget:
    path = tmp_path / "lab.toml"
    path.write_text(f'[box.b]\nssh = "root@127.0.0.1:2"\nkey = "k"\nhost_key = "{KEY}"\n'
                    'console = "true"\nboot = "grub-reboot"\n')
    monkeypatch.setattr(box, "connect", lambda b, seconds: fake)
    (tmp_path / "bzImage").write_bytes(b"kernel")
    (tmp_path / "initrd").write_bytes(b"initrd")
    return BoxTarget(lab.load(path).box("b"), tmp_path / "bzImage", tmp_path / "initrd",
                     cmdline, tmp_path / "serial.log", None,
                     Timeouts(boot=5, first_pass=5, command=5, ssh=3), Health())


def test_the_entry_is_written_chosen_once_and_the_box_rebooted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBox()
    target = a_target(tmp_path, monkeypatch, fake, cmdline="cpa_x=$a;b")
    target._kexec()
    e = grub.entry_id(target.nonce)
    assert fake.commands[0] == grub.preflight_command()
    assert fake.commands[1].startswith(f"install -d -m 700 {SCRATCH}")
    assert fake.commands[2:4] == [f"put {SCRATCH}/bzImage", f"put {SCRATCH}/initrd.cpio"]
    assert fake.commands[4:9] == list(grub.probe_commands(SCRATCH).values())
    assert fake.commands[9:] == [
        f"put {grub.ENTRY_FILE}",
        f"grub-reboot {e} && grub-editenv list | grep -qxF next_entry={e}",
        f"(sleep 1; {grub.REBOOT}) </dev/null >/dev/null 2>&1 &"]
    text = fake.files[grub.ENTRY_FILE].decode()
    assert text.startswith(grub.MARK + "\n") and f"--id '{e}'" in text
    assert (f"linux '{SCRATCH}/bzImage' 'console=ttyS0,115200' 'cpa_x=$a;b' "
            f"'cpa_harness.nonce={target.nonce}'") in text
    # written only in the scratch directory and the entry file
    assert set(fake.files) == {f"{SCRATCH}/bzImage", f"{SCRATCH}/initrd.cpio", grub.ENTRY_FILE}
    assert target._under_test and target.kexec_at is not None


def test_a_box_whose_grub_cannot_take_the_entry_is_left_as_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBox(preflight=(1, "grub-reboot is missing\n"))
    target = a_target(tmp_path, monkeypatch, fake)
    with pytest.raises(UserError) as e:
        target._kexec()
    assert e.value.line().startswith("box 'b': boot = \"grub-reboot\": grub-reboot is missing: ")
    assert fake.commands == [grub.preflight_command()] and fake.files == {}
    assert not target._under_test


def test_a_command_line_grub_cannot_pass_is_refused_before_connecting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBox()
    target = a_target(tmp_path, monkeypatch, fake, cmdline='dyndbg="file x +p"')
    with pytest.raises(UserError, match="cannot pass the command line character"):
        target._kexec()
    assert fake.commands == []


def test_a_failing_grub_reboot_is_an_infra_error_and_no_reboot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBox(reboot=1)
    target = a_target(tmp_path, monkeypatch, fake)
    with pytest.raises(InfraError, match=r"grub-reboot cpa-harness-\w+ failed with status 1"):
        target._kexec()
    assert fake.commands[-1].startswith("grub-reboot ") and not target._under_test


def test_the_preflight_refuses_a_custom_cfg_the_harness_did_not_write(tmp_path: Path) -> None:
    """The preflight command itself, in a real shell, on a stand-in /boot/grub."""
    import subprocess
    grub_dir = tmp_path / "grub"
    grub_dir.mkdir()
    (grub_dir / "grub.cfg").write_text("if [ \"${next_entry}\" ]; then\nfi\n"
                                       "source ${config_directory}/custom.cfg\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "grub-reboot").write_text("#!/bin/sh\n")
    (bin_dir / "grub-reboot").chmod(0o755)
    command = grub.preflight_command().replace("/boot/grub", str(grub_dir))

    def run() -> tuple[int, str]:
        r = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                           env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
        return r.returncode, r.stdout.strip()

    assert run() == (0, "")                                   # no custom.cfg yet
    (grub_dir / "custom.cfg").write_text(grub.MARK + "\nmenuentry ...\n")
    assert run() == (0, "")                                   # ours: replaced
    (grub_dir / "custom.cfg").write_text("menuentry 'Windows' {\n}\n")
    assert run() == (1, f"{grub_dir}/custom.cfg is not the harness's")
    (grub_dir / "grub.cfg").write_text("menuentry 'Debian' {\n}\n")
    assert run() == (1, f"{grub_dir}/grub.cfg does not honour next_entry")
    (bin_dir / "grub-reboot").unlink()
    assert run() == (1, "grub-reboot is missing")
