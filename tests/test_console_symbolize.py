"""Symbolization: address lookup, ELF files without debug info, a real DWARF object."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness.console import Analysis, Boot, ConsoleParser, Failure, Frame
from harness.console.symbolize import LineTable, frame_address, symbolize
from harness.errors import UserError

WARNING = (
    "[    5.000000] ------------[ cut here ]------------\n"
    "[    5.000001] WARNING: CPU: 0 PID: 1 at frob.c:5 frob_leaf+0x8/0x1a\n"
    "[    5.000002] RIP: 0010:frob_leaf+0x8/0x1a\n"
    "[    5.000003] Call Trace:\n"
    "[    5.000004]  frob_caller+0x12/0x20\n"
    "[    5.000005]  unknown_func+0x1/0x2\n"
    "[    5.000006] ---[ end trace 0000000000000000 ]---\n"
)


def analysis_with_warning() -> Analysis:
    p = ConsoleParser()
    p.feed(WARNING)
    return p.finish()


def make_elf(path: Path, symbols: list[tuple[str, int, int]], with_symtab: bool = True) -> Path:
    """A minimal ELF64 x86-64 executable: .text and, optionally, .symtab; no debug info."""
    shstrtab = b"\0.text\0.symtab\0.strtab\0.shstrtab\0"
    names = {n: shstrtab.index(n.encode() + b"\0") for n in
             (".text", ".symtab", ".strtab", ".shstrtab")}
    strtab = b"\0"
    syms = [bytes(24)]
    for name, addr, size in symbols:
        offset = len(strtab)
        strtab += name.encode() + b"\0"
        syms.append(struct.pack("<IBBHQQ", offset, 0x12, 0, 1, addr, size))
    symtab = b"".join(syms)
    text = bytes(0x100)
    blobs = [text, symtab, strtab, shstrtab] if with_symtab else [text, shstrtab]
    data = bytearray(64)
    offsets = []
    for blob in blobs:
        offsets.append(len(data))
        data += blob
    shoff = len(data)
    headers = [bytes(64)]
    headers.append(struct.pack("<IIQQQQIIQQ", names[".text"], 1, 6, 0x1000, offsets[0],
                               len(text), 0, 0, 16, 0))
    if with_symtab:
        headers.append(struct.pack("<IIQQQQIIQQ", names[".symtab"], 2, 0, 0, offsets[1],
                                   len(symtab), 3, 1, 8, 24))
        headers.append(struct.pack("<IIQQQQIIQQ", names[".strtab"], 3, 0, 0, offsets[2],
                                   len(strtab), 0, 0, 1, 0))
    headers.append(struct.pack("<IIQQQQIIQQ", names[".shstrtab"], 3, 0, 0, offsets[-1],
                               len(shstrtab), 0, 0, 1, 0))
    data += b"".join(headers)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    data[:64] = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x1000, 0, shoff, 0, 64, 56, 0,
                                    64, len(headers), len(headers) - 1)
    path.write_bytes(bytes(data))
    return path


def test_line_table_lookup() -> None:
    table = LineTable()
    table.add_sequence([(0x1000, "a.c", 10), (0x1008, "a.c", 11), (0x1010, "a.c", 12)], 0x1020)
    table.add_sequence([(0x2000, "b.c", 1)], 0x2004)
    assert table.lookup(0x0fff) is None
    assert table.lookup(0x1000) == ("a.c", 10)
    assert table.lookup(0x1007) == ("a.c", 10)
    assert table.lookup(0x1008) == ("a.c", 11)
    assert table.lookup(0x101f) == ("a.c", 12)
    assert table.lookup(0x1020) is None
    assert table.lookup(0x2003) == ("b.c", 1)
    assert table.lookup(0x2004) is None
    assert len(table) == 4


def test_frame_address() -> None:
    symbols = {"f": [(0x1000, 0x40)], "dup": [(0x2000, 0x10), (0x3000, 0x20)]}
    frame = Frame("f", 0x12, 0x40)
    assert frame_address(frame, symbols, is_rip=True) == 0x1012
    # A return address points after the call: look up the call itself.
    assert frame_address(frame, symbols, is_rip=False) == 0x1011
    assert frame_address(Frame("f", 0, 0x40), symbols, is_rip=False) == 0x1000
    assert frame_address(Frame("dup", 4, 0x20), symbols, is_rip=True) == 0x3004
    assert frame_address(Frame("dup", 4, 0x30), symbols, is_rip=True) is None
    assert frame_address(Frame("nope", 4, 0x30), symbols, is_rip=True) is None


def test_vmlinux_without_debug_info(tmp_path: Path) -> None:
    vmlinux = make_elf(tmp_path / "vmlinux", [("frob_leaf", 0x1000, 0x1a),
                                              ("frob_caller", 0x1020, 0x20)])
    analysis = analysis_with_warning()
    before = analysis.to_json()
    symbolize(analysis, vmlinux)
    assert analysis.symbolized is False
    assert analysis.symbolize_note == "vmlinux has no .debug_line (built without debug info)"
    doc = analysis.to_json()
    assert doc["symbolized"] is False
    assert doc["boots"] == before["boots"]


def test_vmlinux_without_symtab(tmp_path: Path) -> None:
    vmlinux = make_elf(tmp_path / "vmlinux", [], with_symtab=False)
    analysis = symbolize(analysis_with_warning(), vmlinux)
    assert (analysis.symbolized, analysis.symbolize_note) == (False, "vmlinux has no .symtab")


def test_not_an_elf_file(tmp_path: Path) -> None:
    bogus = tmp_path / "vmlinux"
    bogus.write_bytes(b"this is not an ELF file" * 10)
    analysis = symbolize(analysis_with_warning(), bogus)
    assert analysis.symbolized is False
    assert analysis.symbolize_note is not None and "not a readable ELF" in (
        analysis.symbolize_note)


def test_missing_vmlinux_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        symbolize(analysis_with_warning(), tmp_path / "nope")
    with pytest.raises(UserError):
        symbolize(analysis_with_warning(), tmp_path)


def test_parse_path_with_vmlinux(tmp_path: Path) -> None:
    from harness.console import parse_path
    log = tmp_path / "console.log"
    log.write_text(WARNING)
    vmlinux = make_elf(tmp_path / "vmlinux", [("frob_leaf", 0x1000, 0x1a)])
    analysis = parse_path(log, vmlinux=vmlinux)
    assert analysis.symbolized is False and analysis.boots[0].failures


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc for a DWARF object")
def test_object_with_dwarf(tmp_path: Path) -> None:
    source = tmp_path / "frob.c"
    source.write_text(
        "int counter;\n"                 # 1
        "\n"                             # 2
        "int frob_leaf(int x)\n"         # 3
        "{\n"                            # 4
        "\tcounter += x;\n"              # 5
        "\treturn counter * 2;\n"        # 6
        "}\n"                            # 7
        "\n"                             # 8
        "int frob_caller(int y)\n"       # 9
        "{\n"                            # 10
        "\tint r = frob_leaf(y);\n"      # 11
        "\treturn r + 1;\n"              # 12
        "}\n")                           # 13
    obj = tmp_path / "frob.o"
    subprocess.run(["gcc", "-g", "-O0", "-fno-pie", "-c", str(source), "-o", str(obj)],
                   check=True, cwd=tmp_path)
    analysis = Analysis(boots=[Boot(index=0, first_line=1, last_line=1)])
    rip = Frame("frob_leaf", 0, 0x20)
    call = Frame("frob_caller", 0x12, 0x20)
    analysis.boots[0].failures.append(Failure(
        kind="warning", title="WARNING in frob_leaf", line=1, first_line=1, last_line=1,
        report=(), frames=(call, Frame("not_there", 1, 2)), rip=rip))
    symbolize(analysis, obj)
    assert analysis.symbolized is True and analysis.symbolize_note is None
    failure = analysis.boots[0].failures[0]
    assert failure.rip is not None
    assert (failure.rip.file, failure.rip.line) == ("frob.c", 4)
    called = failure.frames[0]
    assert called.file == "frob.c" and called.line == 11
    assert (failure.frames[1].file, failure.frames[1].line) == (None, None)
    assert analysis.to_json()["boots"][0]["failures"][0]["rip"]["line"] == 4
