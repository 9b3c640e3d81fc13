"""Optional symbolization: `func+0x12/0x40` frames gain file:line from a vmlinux.

The address of a frame is its function's address in .symtab plus the offset;
the DWARF line programs (.debug_line, read with pyelftools) map it to a source
line. A call-trace frame is a return address, which points after the call, so
it is looked up one byte earlier; a RIP/EIP frame is looked up exactly (as
scripts/decode_stacktrace.sh does for the faulting instruction). A function
name that .symtab has several times (static functions) is resolved by the
frame's size, or left alone.

Without debug info the frames stay as they are and the Analysis says why
(`symbolized: false`, `symbolize_note`).
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from elftools.common.exceptions import DWARFError, ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from harness.console.model import Analysis, Failure, Frame
from harness.errors import UserError

Symbols = dict[str, list[tuple[int, int]]]


class LineTable:
    """Address ranges of the line programs' rows, for lookup by address."""

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int, str, int]] = []
        self._starts: list[int] = []
        self._sorted = True

    def add_sequence(self, rows: Iterable[tuple[int, str, int]], end_address: int) -> None:
        """One DWARF line sequence: rows (address, file, line) and its end_sequence address."""
        ordered = sorted(rows, key=lambda r: r[0])
        for i, (start, file, line) in enumerate(ordered):
            end = ordered[i + 1][0] if i + 1 < len(ordered) else end_address
            if end > start:
                self._ranges.append((start, end, file, line))
        self._sorted = False

    def lookup(self, address: int) -> tuple[str, int] | None:
        if not self._sorted:
            self._ranges.sort()
            self._starts = [r[0] for r in self._ranges]
            self._sorted = True
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        start, end, file, line = self._ranges[i]
        if start <= address < end:
            return file, line
        return None

    def __len__(self) -> int:
        return len(self._ranges)


def frame_address(frame: Frame, symbols: Symbols, is_rip: bool) -> int | None:
    """The address to look up for a frame, or None if its symbol is unknown or ambiguous."""
    entries = symbols.get(frame.function)
    if not entries:
        return None
    if len(entries) > 1:
        entries = [e for e in entries if e[1] == frame.size]
        if len(entries) != 1:
            return None
    address = entries[0][0] + frame.offset
    if not is_rip and frame.offset > 0:
        address -= 1
    return address


def load_symbols(elf: ELFFile) -> Symbols | None:
    table = elf.get_section_by_name(".symtab")
    if not isinstance(table, SymbolTableSection):
        return None
    symbols: Symbols = {}
    for sym in table.iter_symbols():
        kind = sym["st_info"]["type"]
        if kind == "STT_NOTYPE" and not sym["st_size"]:
            continue  # labels, not functions
        if kind not in ("STT_FUNC", "STT_NOTYPE") or not sym.name:
            continue
        if sym["st_shndx"] in ("SHN_UNDEF", "SHN_ABS", "SHN_COMMON"):
            continue
        symbols.setdefault(sym.name, []).append((sym["st_value"], sym["st_size"]))
    return symbols


def _decode(name: Any) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _file_names(lineprog: Any, comp_dir: str | None) -> list[str]:
    version = lineprog.header["version"]
    dirs = [_decode(d) for d in lineprog.header["include_directory"]]
    names: list[str] = []
    for entry in lineprog.header["file_entry"]:
        name = _decode(entry.name)
        index = entry.dir_index
        directory = ""
        if version >= 5:
            directory = dirs[index] if index < len(dirs) else ""
        elif index > 0 and index - 1 < len(dirs):
            directory = dirs[index - 1]
        path = name if name.startswith("/") or not directory else f"{directory}/{name}"
        if comp_dir and path.startswith(comp_dir.rstrip("/") + "/"):
            path = path[len(comp_dir.rstrip("/")) + 1:]
        names.append(os.path.normpath(path))
    return names


def build_line_table(elf: ELFFile, addresses: set[int]) -> LineTable:
    """The rows of the compilation units that cover `addresses` (all CUs without aranges)."""
    dwarf = elf.get_dwarf_info()
    table = LineTable()
    cus: Iterable[Any]
    aranges = dwarf.get_aranges() if elf.get_section_by_name(".debug_aranges") else None
    if aranges is not None:
        offsets = {aranges.cu_offset_at_addr(a) for a in addresses}
        cus = [dwarf.get_CU_at(o) for o in sorted(o for o in offsets if o is not None)]
    else:
        cus = dwarf.iter_CUs()
    for cu in cus:
        lineprog = dwarf.line_program_for_CU(cu)
        if lineprog is None:
            continue
        comp_dir_attr = cu.get_top_DIE().attributes.get("DW_AT_comp_dir")
        comp_dir = _decode(comp_dir_attr.value) if comp_dir_attr is not None else None
        names = _file_names(lineprog, comp_dir)
        base = 0 if lineprog.header["version"] >= 5 else 1
        rows: list[tuple[int, str, int]] = []
        for entry in lineprog.get_entries():
            state = entry.state
            if state is None:
                continue
            if state.end_sequence:
                if rows and any(rows[0][0] <= a < state.address for a in addresses):
                    table.add_sequence(rows, state.address)
                rows = []
                continue
            index = state.file - base
            file = names[index] if 0 <= index < len(names) else "??"
            rows.append((state.address, file, state.line))
    return table


def _symbolize_frame(frame: Frame, symbols: Symbols, table: LineTable, is_rip: bool) -> Frame:
    address = frame_address(frame, symbols, is_rip)
    if address is None:
        return frame
    found = table.lookup(address)
    if found is None:
        return frame
    return dataclasses.replace(frame, file=found[0], line=found[1])


def _frames_of(failure: Failure) -> list[tuple[Frame, bool]]:
    frames = [(f, False) for f in failure.frames]
    if failure.rip is not None:
        frames.append((failure.rip, True))
    return frames


def _note(analysis: Analysis, note: str) -> Analysis:
    analysis.symbolized = False
    analysis.symbolize_note = note
    return analysis


def symbolize(analysis: Analysis, vmlinux_path: str | os.PathLike[str]) -> Analysis:
    """Add file:line to the frames of every failure; record why not if impossible."""
    path = Path(vmlinux_path)
    if path.is_dir():
        raise UserError(f"{path} is a directory", "give the path of a vmlinux file")
    try:
        stream: BinaryIO = path.open("rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file", "check the path of the vmlinux") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}",
                        "check the file's permissions") from None
    with stream:
        try:
            elf = ELFFile(stream)
            symbols = load_symbols(elf)
        except (ELFError, DWARFError, ValueError) as e:
            return _note(analysis, f"{path.name} is not a readable ELF file: {e}")
        if symbols is None:
            return _note(analysis, f"{path.name} has no .symtab")
        if elf.get_section_by_name(".debug_line") is None:
            return _note(analysis, f"{path.name} has no .debug_line (built without debug info)")
        failures = [f for boot in analysis.boots for f in boot.failures]
        addresses = {
            a for f in failures for fr, is_rip in _frames_of(f)
            if (a := frame_address(fr, symbols, is_rip)) is not None
        }
        try:
            table = build_line_table(elf, addresses) if addresses else LineTable()
        except (ELFError, DWARFError, ValueError, KeyError, IndexError) as e:
            return _note(analysis, f"{path.name}: cannot read its DWARF line programs: {e}")
    for boot in analysis.boots:
        boot.failures = [
            dataclasses.replace(
                f,
                frames=tuple(_symbolize_frame(fr, symbols, table, False) for fr in f.frames),
                rip=_symbolize_frame(f.rip, symbols, table, True) if f.rip else None,
            )
            for f in boot.failures
        ]
    analysis.symbolized = True
    analysis.symbolize_note = None if addresses else "no frames to symbolize"
    return analysis
