"""User-space unwinding of captured x86-64 stack snapshots: .eh_frame CFI, frame pointers, ELF symbols."""

from __future__ import annotations

import bisect
import io
import lzma
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from elftools.common.exceptions import DWARFError, ELFError
from elftools.elf.elffile import ELFFile

__all__ = [
    "CfaRow",
    "Mapping",
    "Module",
    "Rule",
    "Segment",
    "Unwinder",
    "load_bias",
    "parse_maps",
]

# DWARF register numbers on x86-64 (System V psABI, figure 3.36).
RBX = 3
RBP = 6
RSP = 7
RA = 16  # the return address column (rip)
_CALLEE_SAVED = (RBX, RBP, 12, 13, 14, 15)

_MASK64 = (1 << 64) - 1
_PAGE = 4096
_PF_X = 1
_DEBUG_ROOT = "/usr/lib/debug"
_MODULE_CACHE_SIZE = 256

_U16 = struct.Struct("<H")
_S16 = struct.Struct("<h")
_U32 = struct.Struct("<I")
_S32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_S64 = struct.Struct("<q")
_SYM64 = struct.Struct("<IBBHQQ")  # Elf64_Sym: name, info, other, shndx, value, size

# Symbol types and bindings worth naming a frame after.
_STT_FUNC = 2
_STT_GNU_IFUNC = 10
# When several names share an address: GLOBAL before WEAK before LOCAL.
_BIND_RANK = {1: 0, 2: 1, 0: 2}


# --------------------------------------------------------------------------------------------
# /proc/PID/maps and load bias


@dataclass(frozen=True)
class Mapping:
    """One executable, file-backed mapping of a process: [start, end) maps the file from offset."""

    start: int
    end: int
    offset: int
    path: str


def parse_maps(text: str) -> list[Mapping]:
    """The executable file-backed mappings of a /proc/PID/maps text, in address order.

    Non-executable mappings are not needed: the load bias follows from an executable
    mapping's own file offset and the ELF program headers (see load_bias)."""
    out: list[Mapping] = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        span, perms, offset, _dev, _inode, path = parts
        if len(perms) < 3 or perms[2] != "x" or not path.startswith("/"):
            continue
        start, sep, end = span.partition("-")
        try:
            m = Mapping(int(start, 16), int(end, 16), int(offset, 16), path.rstrip("\n"))
        except ValueError:
            continue
        if sep and m.end > m.start:
            out.append(m)
    out.sort(key=lambda m: m.start)
    return out


@dataclass(frozen=True)
class Segment:
    """A PT_LOAD program header."""

    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int


def load_bias(segments: list[Segment], start: int, offset: int) -> Optional[int]:
    """Load bias (runtime address - ELF vaddr) of a mapping at `start` of file bytes from `offset`.

    The mapping's first byte is file offset `offset`; inside the PT_LOAD segment whose
    page-rounded file range holds that offset, file offset o is at vaddr p_vaddr - p_offset + o,
    so bias = start - (p_vaddr - p_offset + offset). This is right for PIE executables and
    shared objects (bias = base address), non-PIE executables (bias 0), linkers whose
    segments have p_vaddr != p_offset (lld), and mappings split by mprotect."""
    best: Optional[Segment] = None
    for seg in segments:
        lo = seg.offset & ~(_PAGE - 1)
        hi = seg.offset + max(seg.filesz, 1)
        if lo <= offset < hi and (best is None or (seg.flags & _PF_X and not best.flags & _PF_X)):
            best = seg
    if best is None:
        return None
    return start - (best.vaddr - best.offset + offset)


# --------------------------------------------------------------------------------------------
# Call frame information (.eh_frame / .debug_frame) parsing


class _CFIError(Exception):
    """Malformed or unsupported call frame information."""


@dataclass(frozen=True)
class Rule:
    """How to recover a register of the caller: kind is one of undefined, same_value, offset
    (saved at CFA+arg), val_offset (value is CFA+arg), register (in register arg),
    expression (saved at the address the DWARF expression computes), val_expression."""

    kind: str
    arg: int = 0
    expr: bytes = b""


@dataclass(frozen=True)
class CfaRow:
    """One row of a CFI table, valid from `pc` (an ELF vaddr) to the next row.

    CFA = register cfa_reg + cfa_offset, or the value of cfa_expr when that is set."""

    pc: int
    cfa_reg: int
    cfa_offset: int
    cfa_expr: Optional[bytes] = None
    rules: dict[int, Rule] = field(default_factory=dict)
    signal: bool = False  # the FDE is a signal trampoline: the caller's pc is exact


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _sleb(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            if b & 0x40:
                result -= 1 << shift
            return result, pos


# DW_EH_PE_* value formats of a fixed size: absptr, udata2/4/8, sdata2/4/8.
_FIXED_ENCODINGS = {0x00: _U64, 0x02: _U16, 0x03: _U32, 0x04: _U64, 0x0A: _S16, 0x0B: _S32,
                    0x0C: _S64}


def _read_encoded(data: bytes, pos: int, enc: int, base: int) -> tuple[int, int]:
    """Decode a DW_EH_PE_* encoded pointer at data[pos]; `base` is the vaddr of data[0]."""
    if enc == 0xFF:  # DW_EH_PE_omit
        return 0, pos
    start = pos
    fmt = enc & 0x0F
    fixed = _FIXED_ENCODINGS.get(fmt)
    if fixed is not None:
        value = fixed.unpack_from(data, pos)[0]
        pos += fixed.size
    elif fmt == 0x01:
        value, pos = _uleb(data, pos)
    elif fmt == 0x09:
        value, pos = _sleb(data, pos)
    else:
        raise _CFIError(f"pointer encoding {enc:#x}")
    app = enc & 0x70
    if app == 0x10:  # DW_EH_PE_pcrel
        value += base + start
    elif app != 0x00:
        raise _CFIError(f"pointer application {enc:#x}")
    return value & _MASK64, pos


@dataclass
class _CIE:
    code_align: int
    data_align: int
    ra_reg: int
    fde_enc: int
    has_aug_data: bool
    signal: bool
    insns: tuple[int, int]  # [start, end) of the initial instructions in the section


@dataclass
class _State:
    cfa_reg: int
    cfa_offset: int
    cfa_expr: Optional[bytes]
    rules: dict[int, Rule]

    def copy(self) -> _State:
        return _State(self.cfa_reg, self.cfa_offset, self.cfa_expr, dict(self.rules))


class _FrameTable:
    """The FDE index of one .eh_frame or .debug_frame section; FDE rows decoded on first use."""

    def __init__(self, data: bytes, addr: int, is_eh: bool):
        self.data = data
        self.addr = addr  # vaddr of the section (for pcrel pointers)
        self.is_eh = is_eh
        self._cies: dict[int, Optional[_CIE]] = {}
        self._rows: dict[int, tuple[list[int], list[CfaRow]]] = {}
        entries: list[tuple[int, int, int]] = []
        try:
            self._scan(entries)
        except (_CFIError, IndexError, struct.error, ValueError):
            pass  # keep the FDEs read before the damage
        entries.sort()
        self.starts = [e[0] for e in entries]
        self.ends = [e[1] for e in entries]
        self.offsets = [e[2] for e in entries]

    def __len__(self) -> int:
        return len(self.starts)

    def _header(self, pos: int) -> tuple[int, int, int, bool]:
        """(body start, entry end, CIE id / pointer, 64-bit format) of the entry at pos."""
        data = self.data
        length = _U32.unpack_from(data, pos)[0]
        wide = length == 0xFFFFFFFF
        if wide:
            length = _U64.unpack_from(data, pos + 4)[0]
            body = pos + 12
        else:
            body = pos + 4
        end = body + length
        if end > len(data):
            raise _CFIError("entry runs past the section")
        if wide and not self.is_eh:
            ident = _U64.unpack_from(data, body)[0]
        else:
            ident = _U32.unpack_from(data, body)[0]
        return body, end, ident, wide

    def _is_cie(self, ident: int, wide: bool) -> bool:
        if self.is_eh:
            return ident == 0
        return ident == (0xFFFFFFFFFFFFFFFF if wide else 0xFFFFFFFF)

    def _scan(self, entries: list[tuple[int, int, int]]) -> None:
        data = self.data
        pos = 0
        size = len(data)
        while pos + 4 <= size:
            if _U32.unpack_from(data, pos)[0] == 0:
                if self.is_eh:
                    break  # zero terminator
                pos += 4
                continue
            body, end, ident, wide = self._header(pos)
            if not self._is_cie(ident, wide):
                cie_off = (body - ident) if self.is_eh else ident
                cie = self._cie(cie_off)
                if cie is not None:
                    p = body + (8 if wide and not self.is_eh else 4)
                    start, p = _read_encoded(data, p, cie.fde_enc, self.addr)
                    length, p = _read_encoded(data, p, cie.fde_enc & 0x0F, self.addr)
                    if length > 0 and start > 0:
                        entries.append((start, start + length, pos))
            pos = end

    def _cie(self, off: int) -> Optional[_CIE]:
        if off in self._cies:
            return self._cies[off]
        try:
            cie: Optional[_CIE] = self._parse_cie(off)
        except (_CFIError, IndexError, struct.error, ValueError):
            cie = None
        self._cies[off] = cie
        return cie

    def _parse_cie(self, off: int) -> Optional[_CIE]:
        data = self.data
        body, end, ident, wide = self._header(off)
        if not self._is_cie(ident, wide):
            return None
        pos = body + (8 if wide and not self.is_eh else 4)
        version = data[pos]
        pos += 1
        aug_end = data.index(b"\0", pos, end)
        aug = bytes(data[pos:aug_end])
        pos = aug_end + 1
        if aug == b"eh":
            pos += 8
        elif aug and not aug.startswith(b"z"):
            return None  # unknown augmentation: the rest of the CIE cannot be read
        if version >= 4:
            pos += 2  # address_size, segment_selector_size
        code_align, pos = _uleb(data, pos)
        data_align, pos = _sleb(data, pos)
        if version == 1:
            ra_reg = data[pos]
            pos += 1
        else:
            ra_reg, pos = _uleb(data, pos)
        fde_enc = 0x00
        signal = False
        has_aug_data = aug.startswith(b"z")
        if has_aug_data:
            aug_len, pos = _uleb(data, pos)
            p = pos
            for ch in aug[1:]:
                if ch == ord("R"):
                    fde_enc = data[p]
                    p += 1
                elif ch == ord("P"):
                    enc = data[p]
                    _, p = _read_encoded(data, p + 1, enc & 0x0F, self.addr)
                elif ch == ord("L"):
                    p += 1
                elif ch == ord("S"):
                    signal = True
                elif ch not in (ord("B"), ord("G")):
                    break
            pos += aug_len
        return _CIE(code_align, data_align, ra_reg, fde_enc, has_aug_data, signal, (pos, end))

    def find(self, vaddr: int) -> Optional[int]:
        """Index of the FDE covering vaddr."""
        i = bisect.bisect_right(self.starts, vaddr) - 1
        if i >= 0 and vaddr < self.ends[i]:
            return i
        return None

    def row(self, vaddr: int) -> Optional[CfaRow]:
        i = self.find(vaddr)
        if i is None:
            return None
        decoded = self._rows.get(i)
        if decoded is None:
            try:
                rows = self._decode(i)
            except (_CFIError, IndexError, struct.error, ValueError):
                rows = []
            decoded = ([r.pc for r in rows], rows)
            self._rows[i] = decoded
        pcs, rows = decoded
        j = bisect.bisect_right(pcs, vaddr) - 1
        return rows[j] if j >= 0 else None

    def _decode(self, index: int) -> list[CfaRow]:
        data = self.data
        start, end_pc, off = self.starts[index], self.ends[index], self.offsets[index]
        body, end, ident, wide = self._header(off)
        cie = self._cie((body - ident) if self.is_eh else ident)
        if cie is None:
            return []
        pos = body + (8 if wide and not self.is_eh else 4)
        _, pos = _read_encoded(data, pos, cie.fde_enc, self.addr)
        _, pos = _read_encoded(data, pos, cie.fde_enc & 0x0F, self.addr)
        if cie.has_aug_data:
            aug_len, pos = _uleb(data, pos)
            pos += aug_len
        state = _State(RSP, 0, None, {})
        self._execute(cie, cie.insns[0], cie.insns[1], start, state, None, None)
        initial = dict(state.rules)
        rows: list[CfaRow] = []
        loc = self._execute(cie, pos, end, start, state, initial, rows)
        if loc < end_pc:
            rows.append(self._snapshot(loc, state, cie))
        return rows

    @staticmethod
    def _snapshot(loc: int, state: _State, cie: _CIE) -> CfaRow:
        return CfaRow(
            loc, state.cfa_reg, state.cfa_offset, state.cfa_expr, dict(state.rules), cie.signal
        )

    def _execute(
        self,
        cie: _CIE,
        pos: int,
        end: int,
        loc: int,
        state: _State,
        initial: Optional[dict[int, Rule]],
        rows: Optional[list[CfaRow]],
    ) -> int:
        """Run CFA instructions data[pos:end] from location loc; append a row at each advance."""
        data = self.data
        caf = cie.code_align
        daf = cie.data_align
        rules = state.rules
        stack: list[_State] = []

        def advance(new_loc: int) -> None:
            if rows is not None and new_loc > loc:
                rows.append(self._snapshot(loc, state, cie))

        while pos < end:
            op = data[pos]
            pos += 1
            high = op & 0xC0
            if high == 0x40:  # DW_CFA_advance_loc
                new = loc + (op & 0x3F) * caf
                advance(new)
                loc = new
            elif high == 0x80:  # DW_CFA_offset
                n, pos = _uleb(data, pos)
                rules[op & 0x3F] = Rule("offset", n * daf)
            elif high == 0xC0:  # DW_CFA_restore
                self._restore(rules, initial, op & 0x3F)
            elif op == 0x00:  # nop
                pass
            elif op == 0x01:  # set_loc
                new, pos = _read_encoded(data, pos, cie.fde_enc, self.addr)
                advance(new)
                loc = new
            elif op in (0x02, 0x03, 0x04):  # advance_loc1/2/4
                if op == 0x02:
                    delta = data[pos]
                    pos += 1
                elif op == 0x03:
                    delta = _U16.unpack_from(data, pos)[0]
                    pos += 2
                else:
                    delta = _U32.unpack_from(data, pos)[0]
                    pos += 4
                new = loc + delta * caf
                advance(new)
                loc = new
            elif op == 0x05:  # offset_extended
                reg, pos = _uleb(data, pos)
                n, pos = _uleb(data, pos)
                rules[reg] = Rule("offset", n * daf)
            elif op == 0x06:  # restore_extended
                reg, pos = _uleb(data, pos)
                self._restore(rules, initial, reg)
            elif op == 0x07:  # undefined
                reg, pos = _uleb(data, pos)
                rules[reg] = Rule("undefined")
            elif op == 0x08:  # same_value
                reg, pos = _uleb(data, pos)
                rules[reg] = Rule("same_value")
            elif op == 0x09:  # register
                reg, pos = _uleb(data, pos)
                other, pos = _uleb(data, pos)
                rules[reg] = Rule("register", other)
            elif op == 0x0A:  # remember_state
                stack.append(state.copy())
            elif op == 0x0B:  # restore_state
                if not stack:
                    raise _CFIError("restore_state without remember_state")
                saved = stack.pop()
                state.cfa_reg, state.cfa_offset, state.cfa_expr = (
                    saved.cfa_reg,
                    saved.cfa_offset,
                    saved.cfa_expr,
                )
                rules.clear()
                rules.update(saved.rules)
            elif op == 0x0C:  # def_cfa
                state.cfa_reg, pos = _uleb(data, pos)
                state.cfa_offset, pos = _uleb(data, pos)
                state.cfa_expr = None
            elif op == 0x0D:  # def_cfa_register
                state.cfa_reg, pos = _uleb(data, pos)
                state.cfa_expr = None
            elif op == 0x0E:  # def_cfa_offset
                state.cfa_offset, pos = _uleb(data, pos)
            elif op == 0x0F:  # def_cfa_expression
                n, pos = _uleb(data, pos)
                state.cfa_expr = bytes(data[pos : pos + n])
                pos += n
            elif op == 0x10 or op == 0x16:  # expression, val_expression
                reg, pos = _uleb(data, pos)
                n, pos = _uleb(data, pos)
                kind = "expression" if op == 0x10 else "val_expression"
                rules[reg] = Rule(kind, 0, bytes(data[pos : pos + n]))
                pos += n
            elif op == 0x11:  # offset_extended_sf
                reg, pos = _uleb(data, pos)
                s, pos = _sleb(data, pos)
                rules[reg] = Rule("offset", s * daf)
            elif op == 0x12:  # def_cfa_sf
                state.cfa_reg, pos = _uleb(data, pos)
                s, pos = _sleb(data, pos)
                state.cfa_offset = s * daf
                state.cfa_expr = None
            elif op == 0x13:  # def_cfa_offset_sf
                s, pos = _sleb(data, pos)
                state.cfa_offset = s * daf
            elif op == 0x14:  # val_offset
                reg, pos = _uleb(data, pos)
                n, pos = _uleb(data, pos)
                rules[reg] = Rule("val_offset", n * daf)
            elif op == 0x15:  # val_offset_sf
                reg, pos = _uleb(data, pos)
                s, pos = _sleb(data, pos)
                rules[reg] = Rule("val_offset", s * daf)
            elif op == 0x2E:  # GNU_args_size
                _, pos = _uleb(data, pos)
            elif op == 0x2F:  # GNU_negative_offset_extended
                reg, pos = _uleb(data, pos)
                n, pos = _uleb(data, pos)
                rules[reg] = Rule("offset", -n * daf)
            else:
                raise _CFIError(f"CFA opcode {op:#x}")
        return loc

    @staticmethod
    def _restore(rules: dict[int, Rule], initial: Optional[dict[int, Rule]], reg: int) -> None:
        if initial is not None and reg in initial:
            rules[reg] = initial[reg]
        else:
            rules.pop(reg, None)


# --------------------------------------------------------------------------------------------
# DWARF expressions (CFA and register rules: PLT entries, signal trampolines, realigned stacks)


def _signed(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


def _eval_expr(
    expr: bytes,
    regs: dict[int, int],
    read: Callable[[int], Optional[int]],
    initial: Optional[int] = None,
) -> Optional[int]:
    """Value of a DWARF location expression, or None when it needs something unknown."""
    stack: list[int] = [] if initial is None else [initial]
    pos = 0
    steps = 0
    n = len(expr)
    try:
        while pos < n:
            steps += 1
            if steps > 256:
                return None
            op = expr[pos]
            pos += 1
            if 0x30 <= op <= 0x4F:  # lit0..lit31
                stack.append(op - 0x30)
            elif 0x70 <= op <= 0x8F or op == 0x92:  # breg0..breg31, bregx
                if op == 0x92:
                    reg, pos = _uleb(expr, pos)
                else:
                    reg = op - 0x70
                off, pos = _sleb(expr, pos)
                if reg not in regs:
                    return None
                stack.append((regs[reg] + off) & _MASK64)
            elif op in (0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F):  # const1u .. const8s
                size = 1 << ((op - 0x08) >> 1)
                value = int.from_bytes(expr[pos : pos + size], "little", signed=bool(op & 1))
                if pos + size > n:
                    return None
                pos += size
                stack.append(value & _MASK64)
            elif op == 0x03:  # addr
                stack.append(_U64.unpack_from(expr, pos)[0])
                pos += 8
            elif op == 0x10:  # constu
                v, pos = _uleb(expr, pos)
                stack.append(v & _MASK64)
            elif op == 0x11:  # consts
                v, pos = _sleb(expr, pos)
                stack.append(v & _MASK64)
            elif op == 0x06:  # deref
                word = read(stack.pop())
                if word is None:
                    return None
                stack.append(word)
            elif op == 0x12:  # dup
                stack.append(stack[-1])
            elif op == 0x13:  # drop
                stack.pop()
            elif op == 0x14:  # over
                stack.append(stack[-2])
            elif op == 0x15:  # pick
                stack.append(stack[-1 - expr[pos]])
                pos += 1
            elif op == 0x16:  # swap
                stack[-1], stack[-2] = stack[-2], stack[-1]
            elif op == 0x17:  # rot
                stack[-1], stack[-2], stack[-3] = stack[-2], stack[-3], stack[-1]
            elif op == 0x19:  # abs
                stack.append(abs(_signed(stack.pop())) & _MASK64)
            elif op == 0x1F:  # neg
                stack.append(-stack.pop() & _MASK64)
            elif op == 0x20:  # not
                stack.append(~stack.pop() & _MASK64)
            elif op == 0x23:  # plus_uconst
                v, pos = _uleb(expr, pos)
                stack.append((stack.pop() + v) & _MASK64)
            elif op in _BINARY_OPS:
                b = stack.pop()
                a = stack.pop()
                result = _BINARY_OPS[op](a, b)
                if result is None:
                    return None
                stack.append(result & _MASK64)
            elif op == 0x2F:  # skip
                pos += 2 + _S16.unpack_from(expr, pos)[0]
            elif op == 0x28:  # bra
                target = pos + 2 + _S16.unpack_from(expr, pos)[0]
                pos = target if stack.pop() else pos + 2
            elif op == 0x96:  # nop
                pass
            else:
                return None  # register values (DW_OP_reg*), pieces, TLS ...: not for unwinding
    except (IndexError, struct.error):
        return None
    return stack[-1] if stack else None


def _div(a: int, b: int) -> Optional[int]:
    if b == 0:
        return None
    sa, sb = _signed(a), _signed(b)
    q = abs(sa) // abs(sb)
    return q if (sa < 0) == (sb < 0) else -q


_BINARY_OPS: dict[int, Callable[[int, int], Optional[int]]] = {
    0x1A: lambda a, b: a & b,
    0x1B: _div,
    0x1C: lambda a, b: a - b,
    0x1D: lambda a, b: a % b if b else None,
    0x1E: lambda a, b: a * b,
    0x21: lambda a, b: a | b,
    0x22: lambda a, b: a + b,
    0x24: lambda a, b: a << b if b < 64 else 0,
    0x25: lambda a, b: a >> b,
    0x26: lambda a, b: _signed(a) >> min(b, 63),
    0x27: lambda a, b: a ^ b,
    0x29: lambda a, b: int(a == b),
    0x2A: lambda a, b: int(_signed(a) >= _signed(b)),
    0x2B: lambda a, b: int(_signed(a) > _signed(b)),
    0x2C: lambda a, b: int(_signed(a) <= _signed(b)),
    0x2D: lambda a, b: int(_signed(a) < _signed(b)),
    0x2E: lambda a, b: int(a != b),
}


# --------------------------------------------------------------------------------------------
# ELF modules


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
        self._tables: Optional[list[_FrameTable]] = None
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

    def frame_tables(self) -> list[_FrameTable]:
        if self._tables is None:
            tables: list[_FrameTable] = []
            try:
                with open(self.path, "rb") as f:
                    elf = ELFFile(f)
                    for name, is_eh in ((".eh_frame", True), (".debug_frame", False)):
                        sec = _section(elf, name)
                        if sec is not None:
                            table = _FrameTable(sec.data(), sec["sh_addr"], is_eh)
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


# --------------------------------------------------------------------------------------------
# Unwinding


class Unwinder:
    """Unwinds stack snapshots of one process (its executable mappings) and symbolises frames.

    `root` prefixes the mapping paths when opening files, e.g. "/proc/PID/root" for a process
    in another mount namespace."""

    def __init__(self, maps: list[Mapping], max_frames: int = 64, root: str = ""):
        self.max_frames = max_frames
        self.root = root
        self._resolved: dict[Mapping, tuple[Optional[Module], int]] = {}
        self._maps: list[Mapping] = []
        self._starts: list[int] = []
        self.update_maps(maps)

    def update_maps(self, maps: list[Mapping]) -> None:
        """Replace the process's mappings (after dlopen/munmap); known modules stay cached."""
        self._maps = sorted(maps, key=lambda m: m.start)
        self._starts = [m.start for m in self._maps]
        keep = set(self._maps)
        self._resolved = {m: r for m, r in self._resolved.items() if m in keep}

    def _lookup(self, addr: int) -> Optional[tuple[Mapping, Optional[Module], int]]:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0 or addr >= self._maps[i].end:
            return None
        mapping = self._maps[i]
        resolved = self._resolved.get(mapping)
        if resolved is None:
            module = Module.get(self.root + mapping.path)
            bias = module.load_bias(mapping) if module is not None else None
            resolved = (module, bias) if module is not None and bias is not None else (None, 0)
            self._resolved[mapping] = resolved
        return mapping, resolved[0], resolved[1]

    def _walk(self, ip: int, sp: int, bp: int, stack: bytes) -> list[tuple[int, bool]]:
        """(address, exact) per frame; exact is False for return addresses (look up at addr-1)."""
        lo = sp
        hi = sp + len(stack)

        def read(addr: int) -> Optional[int]:
            if lo <= addr and addr + 8 <= hi:
                return int(_U64.unpack_from(stack, addr - lo)[0])
            return None

        regs: dict[int, int] = {RSP: sp, RA: ip}
        if bp:
            regs[RBP] = bp
        pc = ip
        exact = True
        out: list[tuple[int, bool]] = []
        while pc and len(out) < self.max_frames:
            out.append((pc, exact))
            if len(out) >= self.max_frames:
                break
            step = self._step(pc, exact, regs, read)
            if step is None:
                break
            new_regs, exact = step
            new_pc = new_regs.get(RA, 0)
            if new_regs.get(RSP, 0) <= regs[RSP]:
                break
            regs = new_regs
            pc = new_pc
        return out

    def _step(
        self, pc: int, exact: bool, regs: dict[int, int], read: Callable[[int], Optional[int]]
    ) -> Optional[tuple[dict[int, int], bool]]:
        """The caller's registers and whether its pc is exact, or None to stop."""
        lookup = pc if exact else pc - 1
        found = self._lookup(lookup)
        row = None
        if found is not None and found[1] is not None:
            row = found[1].cfa_row(lookup - found[2])
        if row is not None:
            return self._step_cfi(row, regs, read)
        return self._step_fp(regs, read)

    @staticmethod
    def _step_cfi(
        row: CfaRow, regs: dict[int, int], read: Callable[[int], Optional[int]]
    ) -> Optional[tuple[dict[int, int], bool]]:
        if row.cfa_expr is not None:
            cfa = _eval_expr(row.cfa_expr, regs, read)
        elif row.cfa_reg in regs:
            cfa = (regs[row.cfa_reg] + row.cfa_offset) & _MASK64
        else:
            cfa = None
        if cfa is None:
            return None
        new: dict[int, int] = {r: regs[r] for r in _CALLEE_SAVED if r in regs}
        new[RSP] = cfa
        new.pop(RA, None)
        if RA not in row.rules:  # no rule: the psABI's default, saved at CFA-8
            ra = read((cfa - 8) & _MASK64)
            if ra is not None:
                new[RA] = ra
        for reg, rule in row.rules.items():
            value: Optional[int]
            kind = rule.kind
            if kind == "offset":
                value = read((cfa + rule.arg) & _MASK64)
            elif kind == "val_offset":
                value = (cfa + rule.arg) & _MASK64
            elif kind == "register":
                value = regs.get(rule.arg)
            elif kind == "same_value":
                value = regs.get(reg)
            elif kind == "expression":
                addr = _eval_expr(rule.expr, regs, read, cfa)
                value = read(addr) if addr is not None else None
            elif kind == "val_expression":
                value = _eval_expr(rule.expr, regs, read, cfa)
            else:  # undefined
                value = None
            if value is None:
                new.pop(reg, None)
            else:
                new[reg] = value
        if RA not in new:
            return None  # undefined return address (outermost frame) or unreadable
        return new, row.signal

    @staticmethod
    def _step_fp(
        regs: dict[int, int], read: Callable[[int], Optional[int]]
    ) -> Optional[tuple[dict[int, int], bool]]:
        bp = regs.get(RBP)
        if bp is None:
            return None
        ra = read(bp + 8)
        saved_bp = read(bp)
        if ra is None or saved_bp is None:
            return None
        return {RSP: bp + 16, RA: ra, RBP: saved_bp}, False

    def unwind(self, ip: int, sp: int, bp: int, stack: bytes) -> list[int]:
        """Frame addresses innermost first: ip, then return addresses.

        `stack` is a copy of user memory [sp, sp + len(stack)) taken with the registers."""
        return [addr for addr, _ in self._walk(ip, sp, bp, stack)]

    def symbolize(self, addr: int, first: bool = False) -> tuple[str, str, Optional[str]]:
        """(function, module basename, "file:line" or None) of a frame address.

        Return addresses (first=False) are looked up at addr-1, inside the call instruction.
        Without a symbol, the function is the address in hex: relative to the module (its ELF
        vaddr) when the module is known, which stays stable across ASLR, else absolute."""
        lookup = addr if first else addr - 1
        found = self._lookup(lookup)
        if found is None:
            return f"0x{addr:x}", "[unknown]", None
        mapping, module, bias = found
        module_name = os.path.basename(mapping.path)
        if module is None:
            return f"0x{addr:x}", module_name, None
        vaddr = lookup - bias
        name = module.symbol(vaddr)
        if name is None and not first:  # a signal trampoline is entered by return, past a gap
            name = module.symbol(vaddr + 1)
        if name is None:
            name = f"0x{addr - bias:x}"
        return name, module_name, module.source(vaddr)

    def frames_with_source(
        self, ip: int, sp: int, bp: int, stack: bytes
    ) -> list[tuple[str, Optional[str]]]:
        """("function (module)", "file:line" or None) per frame, innermost first."""
        out: list[tuple[str, Optional[str]]] = []
        for addr, exact in self._walk(ip, sp, bp, stack):
            name, module, source = self.symbolize(addr, first=exact)
            out.append((f"{name} ({module})", source))
        return out

    def format(self, addr: int, first: bool = False) -> str:
        """One frame address as "function (module)"."""
        name, module, _source = self.symbolize(addr, first=first)
        return f"{name} ({module})"

    def frames(self, ip: int, sp: int, bp: int, stack: bytes) -> list[str]:
        """The frames as "function (module)", innermost first."""
        return [text for text, _ in self.frames_with_source(ip, sp, bp, stack)]


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


class ProcessUnwinders:
    """One Unwinder per process, made from its /proc/PID/maps and refreshed on demand."""

    def __init__(self, max_processes: int = 256, proc: str = "/proc"):
        self.max_processes = max_processes
        self.proc = proc
        self._by_pid: OrderedDict[int, Unwinder] = OrderedDict()

    def get(self, pid: int, refresh: bool = False) -> Unwinder:
        u = self._by_pid.get(pid)
        if u is not None and not refresh:
            self._by_pid.move_to_end(pid)
            return u
        try:
            with open(f"{self.proc}/{pid}/maps") as f:
                maps = parse_maps(f.read())
        except OSError:
            maps = []
        if u is None:
            u = self._by_pid[pid] = Unwinder(maps, root=self._root(pid))
            while len(self._by_pid) > self.max_processes:
                self._by_pid.popitem(last=False)
        elif maps:
            u.update_maps(maps)
        return u

    def _root(self, pid: int) -> str:
        """The process's filesystem root when it is not ours (a container), else ""."""
        try:
            theirs, ours = os.stat(f"{self.proc}/{pid}/root/"), os.stat("/")
        except OSError:
            return ""
        same = (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)
        return "" if same else f"{self.proc}/{pid}/root"

    def symbolize(self, pid: int, addrs: Sequence[int]) -> list[str]:
        """Frame addresses (frame 0 exact, the rest return addresses) as "function (module)";
        the maps are read again once if a frame lies in no known mapping."""
        u = self.get(pid)
        out = [u.format(a, first=(i == 0)) for i, a in enumerate(addrs)]
        if any(f.endswith("([unknown])") for f in out):
            u = self.get(pid, refresh=True)
            out = [u.format(a, first=(i == 0)) for i, a in enumerate(addrs)]
        return out
