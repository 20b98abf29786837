"""Call frame information (.eh_frame / .debug_frame): CFA rows, register rules, DWARF expressions."""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from typing import Callable, Optional

__all__ = ["RA", "RBP", "RBX", "RSP", "CfaRow", "FrameTable", "Rule", "caller_registers"]

# DWARF register numbers on x86-64 (System V psABI, figure 3.36).
RBX = 3
RBP = 6
RSP = 7
RA = 16  # the return address column (rip)
_CALLEE_SAVED = (RBX, RBP, 12, 13, 14, 15)

_MASK64 = (1 << 64) - 1

_U16 = struct.Struct("<H")
_S16 = struct.Struct("<h")
_U32 = struct.Struct("<I")
_S32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_S64 = struct.Struct("<q")


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


class FrameTable:
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
# Applying a row: the caller's registers


def caller_registers(
    row: CfaRow, regs: dict[int, int], read: Callable[[int], Optional[int]]
) -> Optional[tuple[dict[int, int], bool]]:
    """The caller's registers by the rules of `row`, and whether its pc is exact (a signal
    frame), or None when its CFA or return address cannot be recovered.

    `regs` maps DWARF register numbers to values; `read` is the word at an address, or None."""
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
