"""ELF modules: program headers, CFI tables, function symbols, debug files and line tables."""

from __future__ import annotations

import bisect
import io
import lzma
import os
import struct
from collections import OrderedDict
from typing import Any, Optional, Sequence

from elftools.common.exceptions import DWARFError, ELFError
from elftools.elf.elffile import ELFFile

from .cfi import CfaRow, FrameTable
from .maps import Mapping, Segment, load_bias

__all__ = ["Module", "defined_functions", "first_argument_probe_offset"]

_DEBUG_ROOT = "/usr/lib/debug"
_MODULE_CACHE_SIZE = 256
_SYM64 = struct.Struct("<IBBHQQ")  # Elf64_Sym: name, info, other, shndx, value, size

# Symbol types and bindings worth naming a frame after.
_STT_FUNC = 2
_STT_GNU_IFUNC = 10
# When several names share an address: GLOBAL before WEAK before LOCAL.
_BIND_RANK = {1: 0, 2: 1, 0: 2}


def _section(elf: Any, name: str) -> Any:
    sec = elf.get_section_by_name(name)
    if sec is None or sec["sh_type"] == "SHT_NOBITS" or sec["sh_size"] == 0:
        return None
    return sec


def _read_symbols(elf: Any, name: str) -> list[tuple[int, int, int, str]]:
    """(address, size, binding rank, name) of the defined functions of a symbol table section."""
    sec = _section(elf, name)
    if sec is None or elf.elfclass != 64 or not elf.little_endian:
        return []
    strtab = elf.get_section(sec["sh_link"])
    if strtab is None or strtab["sh_type"] == "SHT_NOBITS":
        return []
    strs = strtab.data()
    data = sec.data()
    usable = len(data) - len(data) % _SYM64.size
    out: list[tuple[int, int, int, str]] = []
    for st_name, info, _other, shndx, value, size in _SYM64.iter_unpack(data[:usable]):
        kind = info & 0xF
        if (kind != _STT_FUNC and kind != _STT_GNU_IFUNC) or shndx == 0 or value == 0:
            continue
        end = strs.find(b"\0", st_name)
        sym = strs[st_name : end if end >= 0 else len(strs)].decode("utf-8", "replace")
        sym = sym.split("@", 1)[0]  # "__libc_start_main@@GLIBC_2.34": drop the symbol version
        if sym:
            out.append((value, size, _BIND_RANK.get(info >> 4, 3), sym))
    return out


# A line table: sorted addresses, the file basenames and line numbers starting there.
_LineTable = tuple[list[int], list[Optional[str]], list[int]]
_DWARF_ERRORS = (
    OSError,
    ELFError,
    DWARFError,
    struct.error,
    ValueError,
    KeyError,
    IndexError,
    AttributeError,
)


class Module:
    """One ELF file: program headers, and lazily its CFI table, function symbols and line table.

    Addresses given to and returned by a Module are ELF vaddrs (runtime address - load bias).
    `Module.get(path)` caches modules by path, inode, size and mtime."""

    _cache: OrderedDict[tuple[str, int, int, int, int], Optional[Module]] = OrderedDict()

    def __init__(self, path: str, debug_root: str = _DEBUG_ROOT):
        self.path = path
        self.debug_root = debug_root
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf["e_machine"] != "EM_X86_64":
                raise ELFError(f"{path}: not an x86-64 ELF file")
            self.segments = [
                Segment(s["p_offset"], s["p_vaddr"], s["p_filesz"], s["p_memsz"], s["p_flags"])
                for s in elf.iter_segments()
                if s["p_type"] == "PT_LOAD"
            ]
        self._tables: Optional[list[FrameTable]] = None
        self._syms: Optional[tuple[list[int], list[int], list[str]]] = None
        self._lines: dict[Optional[int], _LineTable] = {}
        self._dwarf_loaded = False
        self._dwarf_info: Any = None
        self._aranges: Any = None
        self._debug_file: Optional[str] = None
        self._debug_file_searched = False

    @classmethod
    def get(cls, path: str) -> Optional[Module]:
        """The cached Module of path, or None when it is not a readable x86-64 ELF file."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key in cls._cache:
            cls._cache.move_to_end(key)
            return cls._cache[key]
        try:
            module: Optional[Module] = cls(path)
        except (OSError, ELFError, struct.error, ValueError):
            module = None
        cls._cache[key] = module
        while len(cls._cache) > _MODULE_CACHE_SIZE:
            cls._cache.popitem(last=False)
        return module

    def load_bias(self, mapping: Mapping) -> Optional[int]:
        return load_bias(self.segments, mapping.start, mapping.offset)

    # -- CFI ---------------------------------------------------------------------------------

    def frame_tables(self) -> list[FrameTable]:
        if self._tables is None:
            tables: list[FrameTable] = []
            try:
                with open(self.path, "rb") as f:
                    elf = ELFFile(f)
                    for name, is_eh in ((".eh_frame", True), (".debug_frame", False)):
                        sec = _section(elf, name)
                        if sec is not None:
                            table = FrameTable(sec.data(), sec["sh_addr"], is_eh)
                            if len(table):
                                tables.append(table)
            except (OSError, ELFError, DWARFError, struct.error, ValueError):
                pass
            self._tables = tables
        return self._tables

    def cfa_row(self, vaddr: int) -> Optional[CfaRow]:
        """The CFI row in effect at vaddr (from .eh_frame, else .debug_frame), or None."""
        for table in self.frame_tables():
            if table.find(vaddr) is not None:
                return table.row(vaddr)
        return None

    # -- symbols -----------------------------------------------------------------------------

    def _find_debug_file(self, elf: Any) -> Optional[str]:
        """Separate debug info: /usr/lib/debug/.build-id/xx/yyyy.debug, or the .gnu_debuglink."""
        if self._debug_file_searched:
            return self._debug_file
        self._debug_file_searched = True
        candidates: list[str] = []
        for sec in elf.iter_sections():
            if sec["sh_type"] != "SHT_NOTE":
                continue
            for note in sec.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID" and isinstance(note["n_desc"], str):
                    bid = note["n_desc"]
                    candidates.append(
                        os.path.join(self.debug_root, ".build-id", bid[:2], bid[2:] + ".debug")
                    )
        link = _section(elf, ".gnu_debuglink")
        if link is not None:
            name = link.data().split(b"\0", 1)[0].decode("utf-8", "replace")
            if name:
                d = os.path.dirname(os.path.realpath(self.path))
                candidates += [
                    os.path.join(d, name),
                    os.path.join(d, ".debug", name),
                    os.path.join(self.debug_root, d.lstrip("/"), name),
                ]
        own = os.path.realpath(self.path)
        for cand in candidates:
            if os.path.isfile(cand) and os.path.realpath(cand) != own:
                self._debug_file = cand
                break
        return self._debug_file

    def _load_symbols(self) -> tuple[list[int], list[int], list[str]]:
        syms: list[tuple[int, int, int, str]] = []
        try:
            with open(self.path, "rb") as f:
                elf = ELFFile(f)
                syms = _read_symbols(elf, ".symtab")
                if not syms:
                    debug = self._find_debug_file(elf)
                    if debug is not None:
                        with open(debug, "rb") as g:
                            syms = _read_symbols(ELFFile(g), ".symtab")
                if not syms:
                    syms = _read_symbols(elf, ".dynsym")
                    mini = _section(elf, ".gnu_debugdata")  # MiniDebugInfo: xz-compressed ELF
                    if mini is not None:
                        try:
                            inner = ELFFile(io.BytesIO(lzma.decompress(mini.data())))
                            syms += _read_symbols(inner, ".symtab")
                        except (lzma.LZMAError, ELFError):
                            pass
        except (OSError, ELFError, struct.error, ValueError):
            pass
        syms.sort(key=lambda s: (s[0], s[2], -s[1], s[3].startswith("_"), s[3]))
        starts: list[int] = []
        sizes: list[int] = []
        names: list[str] = []
        for addr, size, _rank, name in syms:
            if starts and starts[-1] == addr:
                if sizes[-1] == 0:
                    sizes[-1] = size
                continue  # the best-ranked name of this address is already there
            starts.append(addr)
            sizes.append(size)
            names.append(name)
        for i, size in enumerate(sizes):  # sizeless symbols extend to the next one
            if size == 0 and i + 1 < len(starts):
                sizes[i] = starts[i + 1] - starts[i]
        return starts, sizes, names

    def symbol(self, vaddr: int) -> Optional[str]:
        """Name of the function containing vaddr (.symtab, debug file, else .dynsym)."""
        if self._syms is None:
            self._syms = self._load_symbols()
        starts, sizes, names = self._syms
        i = bisect.bisect_right(starts, vaddr) - 1
        for j in range(i, max(i - 8, -1), -1):  # a nearby earlier symbol may enclose vaddr
            if vaddr < starts[j] + sizes[j]:
                return names[j]
        return None

    # -- lines -------------------------------------------------------------------------------

    def _dwarf(self) -> Any:
        """The DWARFInfo with .debug_line (this file's, else the separate debug file's), or None."""
        if not self._dwarf_loaded:
            self._dwarf_loaded = True
            try:
                with open(self.path, "rb") as f:
                    elf = ELFFile(f)
                    if (
                        _section(elf, ".debug_line") is not None
                        and _section(elf, ".debug_info") is not None
                    ):
                        self._dwarf_info = elf.get_dwarf_info(
                            relocate_dwarf_sections=False, follow_links=False
                        )
                    else:
                        debug = self._find_debug_file(elf)
                        if debug is not None:
                            with open(debug, "rb") as g:
                                delf = ELFFile(g)
                                if _section(delf, ".debug_line") is not None:
                                    self._dwarf_info = delf.get_dwarf_info(
                                        relocate_dwarf_sections=False, follow_links=False
                                    )
                if self._dwarf_info is not None:
                    self._aranges = self._dwarf_info.get_aranges()
            except _DWARF_ERRORS:
                self._dwarf_info = None
                self._aranges = None
        return self._dwarf_info

    def _cu_lines(self, cu_offset: Optional[int]) -> _LineTable:
        """Line table of one compilation unit (by .debug_info offset), or of all of them (None)."""
        table = self._lines.get(cu_offset)
        if table is not None:
            return table
        rows: list[tuple[int, int, Optional[str], int]] = []
        dwarf = self._dwarf()
        try:
            cus = [dwarf.get_CU_at(cu_offset)] if cu_offset is not None else dwarf.iter_CUs()
            for cu in cus:
                self._line_rows(dwarf, cu, rows)
        except _DWARF_ERRORS:
            pass
        rows.sort(key=lambda r: (r[0], r[1]))
        table = ([r[0] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
        self._lines[cu_offset] = table
        return table

    @staticmethod
    def _line_rows(dwarf: Any, cu: Any, rows: list[tuple[int, int, Optional[str], int]]) -> None:
        prog = dwarf.line_program_for_CU(cu)
        if prog is None:
            return
        files = prog["file_entry"]
        first_file = 0 if prog["version"] >= 5 else 1
        names: dict[int, Optional[str]] = {}
        for entry in prog.get_entries():
            st = entry.state
            if st is None:
                continue
            if st.end_sequence:
                rows.append((st.address, 0, None, 0))
                continue
            name = names.get(st.file, "")
            if name == "":
                idx = st.file - first_file
                raw = files[idx].name if 0 <= idx < len(files) else None
                name = os.path.basename(raw.decode("utf-8", "replace")) if raw else None
                names[st.file] = name
            rows.append((st.address, 1, name, st.line))

    def source(self, vaddr: int) -> Optional[str]:
        """Source "file.c:42" of the instruction at vaddr when .debug_line covers it (basename only).

        With .debug_aranges only the line program of the unit holding vaddr is decoded."""
        if self._dwarf() is None:
            return None
        cu_offset: Optional[int] = None
        if self._aranges is not None:
            try:
                cu_offset = self._aranges.cu_offset_at_addr(vaddr)
            except _DWARF_ERRORS:
                cu_offset = None
            if cu_offset is None:
                return None
        addrs, files, lines = self._cu_lines(cu_offset)
        i = bisect.bisect_right(addrs, vaddr) - 1
        if i < 0 or files[i] is None or lines[i] <= 0:
            return None
        return f"{files[i]}:{lines[i]}"


def defined_functions(path: str, names: Sequence[str]) -> dict[str, int]:
    """ELF addresses of the named functions a file defines (dynamic symbols first)."""
    wanted = set(names)
    out: dict[str, int] = {}
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for table in (".dynsym", ".symtab"):
                for value, _size, _rank, name in _read_symbols(elf, table):
                    if name in wanted and name not in out:
                        out[name] = value
    except (OSError, ELFError):
        return {}
    return out


# Leading instructions a probe may step over without changing rdi (the first argument):
# the kernel single-steps them out of line on every hit (a debug trap, slow in VMs),
# while the conditional jump after `test %rdi,%rdi` is emulated.
_SKIPPABLE = (b"\x48\x85\xff",  # test %rdi,%rdi
              b"\xf3\x0f\x1e\xfa")  # endbr64


def first_argument_probe_offset(path: str, vaddr: int) -> int:
    """Where to probe a function that only reads its first argument (free): past leading
    instructions that do not change rdi and cannot be emulated, else at its entry."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            offsets = list(elf.address_offsets(vaddr, 16))
            if not offsets:
                return 0
            f.seek(offsets[0])
            code = f.read(16)
    except (OSError, ELFError):
        return 0
    pos = 0
    for _ in range(2):
        for ins in _SKIPPABLE:
            if code.startswith(ins, pos):
                pos += len(ins)
                break
        else:
            break
    return pos
