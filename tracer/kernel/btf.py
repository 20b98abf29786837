"""Pure-Python reader of kernel BTF: struct offsets, sizes, enum values and tracepoint args."""

from __future__ import annotations

import functools
import re
from struct import Struct, unpack_from

from ..errors import HostError

__all__ = ["VMLINUX_BTF", "Btf", "BtfError", "load_vmlinux"]

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"

BTF_MAGIC = 0xEB9F
_HDR_MIN_LEN = 24  # magic, version, flags, hdr_len, type_off, type_len, str_off, str_len

# Kinds (include/uapi/linux/btf.h).
KIND_VOID = 0  # only ever type id 0, never encoded
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# Bytes following the 12-byte btf_type: fixed part, and per-vlen-item part (-1: unknown kind).
_FIXED_EXTRA = [-1] * 32
_VLEN_EXTRA = [0] * 32
for _kind, _fixed, _per in (
    (KIND_INT, 4, 0),
    (KIND_PTR, 0, 0),
    (KIND_ARRAY, 12, 0),
    (KIND_STRUCT, 0, 12),
    (KIND_UNION, 0, 12),
    (KIND_ENUM, 0, 8),
    (KIND_FWD, 0, 0),
    (KIND_TYPEDEF, 0, 0),
    (KIND_VOLATILE, 0, 0),
    (KIND_CONST, 0, 0),
    (KIND_RESTRICT, 0, 0),
    (KIND_FUNC, 0, 0),
    (KIND_FUNC_PROTO, 0, 8),
    (KIND_VAR, 4, 0),
    (KIND_DATASEC, 0, 12),
    (KIND_FLOAT, 0, 0),
    (KIND_DECL_TAG, 4, 0),
    (KIND_TYPE_TAG, 0, 0),
    (KIND_ENUM64, 0, 12),
):
    _FIXED_EXTRA[_kind] = _fixed
    _VLEN_EXTRA[_kind] = _per

# Kinds that only qualify or rename another type: followed to reach the real type.
_MODIFIERS = frozenset((KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG))
_COMPOSITES = (KIND_STRUCT, KIND_UNION)
_MAX_DEPTH = 64  # type chains / nesting deeper than this mean a malformed (cyclic) BTF

_COMPONENT_RE = re.compile(r"\s*([A-Za-z_]\w*)\s*((?:\[\s*\d+\s*\]\s*)*)$")
_INDEX_RE = re.compile(r"\[\s*(\d+)\s*\]")


class BtfError(HostError):
    """The BTF is missing or malformed, or does not contain what was looked for: a kernel
    memtrace cannot read its layouts from (a one-line error, like every HostError)."""


class Btf:
    """Parsed BTF blob: types are indexed by offset and decoded lazily on lookup."""

    def __init__(self, data: bytes) -> None:
        """Parse `data` (a raw BTF blob); use `load` or `from_bytes` rather than this."""
        self._data = data
        if len(data) < _HDR_MIN_LEN:
            raise BtfError(f"BTF data truncated: {len(data)} bytes, header needs {_HDR_MIN_LEN}")
        if unpack_from("<H", data, 0)[0] == BTF_MAGIC:
            endian = "<"
        elif unpack_from(">H", data, 0)[0] == BTF_MAGIC:
            endian = ">"
        else:
            raise BtfError(
                f"bad BTF magic 0x{unpack_from('<H', data, 0)[0]:04x} (expected 0x{BTF_MAGIC:04x})"
            )
        self._u32x3 = Struct(endian + "III")
        self._u32x2 = Struct(endian + "II")
        self._u32 = Struct(endian + "I")
        self._i32 = Struct(endian + "i")

        version, _flags, hdr_len, type_off, type_len, str_off, str_len = unpack_from(
            endian + "BBIIIII", data, 2
        )
        self.version: int = version
        if version != 1:
            raise BtfError(f"unsupported BTF version {version} (expected 1)")
        if hdr_len < _HDR_MIN_LEN or hdr_len > len(data):
            raise BtfError(f"bad BTF header length {hdr_len} for {len(data)} bytes of data")
        type_start = hdr_len + type_off
        type_end = type_start + type_len
        str_start = hdr_len + str_off
        str_end = str_start + str_len
        if type_end > len(data) or str_end > len(data):
            raise BtfError(
                f"BTF data truncated: sections end at {max(type_end, str_end)}, "
                f"data has {len(data)} bytes"
            )
        if str_len == 0 or data[str_start] != 0:
            raise BtfError("bad BTF string section: must start with an empty string")
        self._str_start = str_start
        self._str_end = str_end

        # offs[type_id] = offset of that btf_type in data; id 0 is void (no record).
        offs: list[int] = [0]
        tags: dict[str, int] = {}  # struct/union tag -> first complete type id
        enums: dict[str, int] = {}  # enum tag -> type id
        typedefs: dict[str, int] = {}
        base: dict[str, int] = {}  # int/float name -> type id
        enum_ids: list[int] = []  # every ENUM/ENUM64, for the lazy enumerator index
        named = frozenset(
            (KIND_STRUCT, KIND_UNION, KIND_TYPEDEF, KIND_ENUM, KIND_ENUM64, KIND_INT, KIND_FLOAT)
        )
        fixed_extra = _FIXED_EXTRA
        vlen_extra = _VLEN_EXTRA
        unpack = self._u32x3.unpack_from
        find = data.find
        append = offs.append
        pos = type_start
        while pos < type_end:
            if pos + 12 > type_end:
                raise BtfError(f"BTF type section truncated at type {len(offs)}")
            name_off, info, _size = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            extra = fixed_extra[kind]
            if extra < 0:
                raise BtfError(f"unknown BTF kind {kind} at type {len(offs)}")
            append(pos)
            if kind in named:
                tid = len(offs) - 1
                if kind in (KIND_ENUM, KIND_ENUM64):
                    enum_ids.append(tid)
                if name_off:
                    s = str_start + name_off
                    if s >= str_end:
                        raise BtfError(f"BTF name offset {name_off} out of range at type {tid}")
                    e = find(b"\0", s, str_end)
                    if e < 0:
                        raise BtfError(f"unterminated BTF string at offset {name_off}")
                    name = data[s:e].decode("utf-8", "replace")
                    if kind in (KIND_STRUCT, KIND_UNION):
                        prev = tags.get(name)
                        # First definition wins, but one with members beats an empty one.
                        if prev is None or (
                            info & 0xFFFF and not unpack(data, offs[prev])[1] & 0xFFFF
                        ):
                            tags[name] = tid
                    elif kind == KIND_TYPEDEF:
                        typedefs.setdefault(name, tid)
                    elif kind in (KIND_ENUM, KIND_ENUM64):
                        enums.setdefault(name, tid)
                    else:
                        base.setdefault(name, tid)
            pos += 12 + extra + vlen_extra[kind] * (info & 0xFFFF)
        if pos != type_end:
            raise BtfError(f"BTF type section truncated at type {len(offs) - 1}")
        self._offs = offs
        self._tags = tags
        self._enums = enums
        self._typedefs = typedefs
        self._base = base
        self._enum_ids = enum_ids
        self._enumerators: dict[str, int] | None = None
        self._ptr_size: int | None = None

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def load(cls, path: str = VMLINUX_BTF) -> Btf:
        """Read and parse the BTF file at `path` (default: the running kernel's)."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise BtfError(f"cannot read BTF file {path}: {exc.strerror or exc}") from exc
        try:
            return cls(data)
        except BtfError as exc:
            raise BtfError(f"{path}: {exc}") from None

    @classmethod
    def from_bytes(cls, data: bytes) -> Btf:
        """Parse a BTF blob held in memory."""
        return cls(bytes(data))

    @property
    def nr_types(self) -> int:
        """Number of types, not counting void (type id 0)."""
        return len(self._offs) - 1

    # ---- public lookups -----------------------------------------------------------------

    def has_struct(self, name: str) -> bool:
        """Whether a struct or union called `name` ("foo" or "struct foo") is defined."""
        return self._composite_id(name) is not None

    def has_member(self, struct: str, member: str) -> bool:
        """Whether `struct` has `member` (searching anonymous structs/unions; bitfields count)."""
        try:
            self._walk(struct, member, allow_bitfield=True)
        except BtfError:
            return False
        return True

    def member_offset(self, struct: str, path: str) -> int:
        """Byte offset of member `path` ("field", "arr[4]", "a.b") in `struct`."""
        return self._walk(struct, path)[0]

    def member_size(self, struct: str, member: str) -> int:
        """Size in bytes of member `member` of `struct` (of one element if indexed)."""
        _, tid = self._walk(struct, member)
        return self._type_size(tid, f"{struct}.{member}")

    def sizeof(self, name: str) -> int:
        """Size of a struct/union/enum/typedef/base type ("task_struct", "gfp_t", "int")."""
        tid = self._named_type_id(name)
        if tid is None:
            raise BtfError(f"BTF has no type named {name!r}")
        return self._type_size(tid, name)

    def enum_value(self, name: str) -> int:
        """Value of the enumerator `name`, from whichever enum defines it."""
        try:
            return self._enumerator_index()[name]
        except KeyError:
            raise BtfError(f"BTF has no enumerator named {name!r}") from None

    def enumerators(self, prefix: str) -> dict[str, int]:
        """All enumerators whose name starts with `prefix`, name -> value."""
        return {k: v for k, v in self._enumerator_index().items() if k.startswith(prefix)}

    def tracepoint_type_id(self, name: str) -> int | None:
        """The type id of raw tracepoint `name`'s btf_trace_ typedef (a tp_btf program's
        attach_btf_id), None if the kernel has no such tracepoint."""
        return self._typedefs.get("btf_trace_" + name)

    def tracepoint_params(self, name: str) -> list[str] | None:
        """C type names of raw tracepoint `name`'s arguments (after the context pointer)."""
        tid = self.tracepoint_type_id(name)
        if tid is None:
            return None
        ptr = self._strip(tid)
        if not ptr or self._type(ptr)[1] != KIND_PTR:
            raise BtfError(f"btf_trace_{name} is not a function pointer typedef")
        proto = self._strip_tags(self._type(ptr)[3])
        _, kind, vlen, _ = self._type(proto) if proto else (0, 0, 0, 0)
        if kind != KIND_FUNC_PROTO:
            raise BtfError(f"btf_trace_{name} is not a function pointer typedef")
        params = self._params(proto, vlen)
        return params[1:]

    # ---- internals: raw access ----------------------------------------------------------

    def _type(self, tid: int) -> tuple[int, int, int, int]:
        """(name_off, kind, vlen, size-or-type) of type `tid`."""
        if tid <= 0 or tid >= len(self._offs):
            raise BtfError(f"BTF type id {tid} out of range")
        name_off, info, st = self._u32x3.unpack_from(self._data, self._offs[tid])
        return name_off, (info >> 24) & 0x1F, info & 0xFFFF, st

    def _kflag(self, tid: int) -> bool:
        """The kind_flag bit of type `tid`."""
        return bool(self._u32x3.unpack_from(self._data, self._offs[tid])[1] & 0x80000000)

    def _str(self, off: int) -> str:
        """The string at offset `off` of the string section."""
        s = self._str_start + off
        if off < 0 or s >= self._str_end:
            raise BtfError(f"BTF name offset {off} out of range")
        e = self._data.find(b"\0", s, self._str_end)
        if e < 0:
            raise BtfError(f"unterminated BTF string at offset {off}")
        return self._data[s:e].decode("utf-8", "replace")

    def _strip(self, tid: int) -> int:
        """Follow typedef/const/volatile/restrict/type_tag from `tid` to the underlying type."""
        for _ in range(_MAX_DEPTH):
            if tid == 0:
                return 0
            _, kind, _, st = self._type(tid)
            if kind not in _MODIFIERS:
                return tid
            tid = st
        raise BtfError(f"BTF type chain too deep at type {tid}")

    def _pointer_size(self) -> int:
        """Size of a pointer: BTF does not record it, so use the size of `long`."""
        if self._ptr_size is None:
            size = 8
            for name in ("long unsigned int", "long int", "unsigned long", "long"):
                tid = self._base.get(name)
                if tid is not None:
                    size = self._type(tid)[3]
                    break
            self._ptr_size = size
        return self._ptr_size

    def _type_size(self, tid: int, what: str) -> int:
        """Size in bytes of type `tid` (`what` names it in errors)."""
        mult = 1
        for _ in range(_MAX_DEPTH):
            if tid == 0:
                raise BtfError(f"{what}: void has no size")
            _, kind, _, st = self._type(tid)
            if kind in (
                KIND_INT,
                KIND_FLOAT,
                KIND_STRUCT,
                KIND_UNION,
                KIND_ENUM,
                KIND_ENUM64,
                KIND_DATASEC,
            ):
                return mult * st
            if kind == KIND_PTR:
                return mult * self._pointer_size()
            if kind in _MODIFIERS:
                tid = st
                continue
            if kind == KIND_ARRAY:
                elem, _index, nelems = self._u32x3.unpack_from(self._data, self._offs[tid] + 12)
                mult *= nelems
                tid = elem
                continue
            raise BtfError(f"{what}: BTF type {tid} (kind {kind}) has no size")
        raise BtfError(f"{what}: BTF type chain too deep")

    # ---- internals: names -----------------------------------------------------------------

    def _composite_id(self, name: str) -> int | None:
        """Type id of struct/union `name` ("foo", "struct foo", or a typedef to one)."""
        name = name.strip()
        for prefix in ("struct ", "union "):
            if name.startswith(prefix):
                return self._tags.get(name[len(prefix) :].strip())
        tid = self._tags.get(name)
        if tid is None and name in self._typedefs:
            stripped = self._strip(self._typedefs[name])
            if stripped and self._type(stripped)[1] in _COMPOSITES:
                tid = stripped
        return tid

    def _named_type_id(self, name: str) -> int | None:
        """Type id for a C type name: tag (optionally prefixed), typedef or base type."""
        name = " ".join(name.split())
        if name.startswith("enum "):
            return self._enums.get(name[5:])
        if name.startswith(("struct ", "union ")):
            return self._composite_id(name)
        for table in (self._tags, self._typedefs, self._base, self._enums):
            tid = table.get(name)
            if tid is not None:
                return tid
        return None

    def _enumerator_index(self) -> dict[str, int]:
        """name -> value of every enumerator (built on first use; first definition wins)."""
        if self._enumerators is None:
            index: dict[str, int] = {}
            data = self._data
            u32x2 = self._u32x2.unpack_from
            u32x3 = self._u32x3.unpack_from
            i32 = self._i32.unpack_from
            for tid in self._enum_ids:
                base = self._offs[tid]
                _, info, _ = u32x3(data, base)
                kind = (info >> 24) & 0x1F
                signed = bool(info & 0x80000000)
                vlen = info & 0xFFFF
                pos = base + 12
                if kind == KIND_ENUM:
                    for _ in range(vlen):
                        name_off, uval = u32x2(data, pos)
                        val = i32(data, pos + 4)[0] if signed else uval
                        index.setdefault(self._str(name_off), val)
                        pos += 8
                else:
                    for _ in range(vlen):
                        name_off, lo, hi = u32x3(data, pos)
                        val = (hi << 32) | lo
                        if signed and val >= 1 << 63:
                            val -= 1 << 64
                        index.setdefault(self._str(name_off), val)
                        pos += 12
            self._enumerators = index
        return self._enumerators

    # ---- internals: members ---------------------------------------------------------------

    def _find_member(self, tid: int, name: bytes, depth: int = 0) -> tuple[int, int, int] | None:
        """(bit offset, type id, bitfield size or 0) of `name` in struct/union `tid`, or None.

        Anonymous struct/union members are searched recursively, as C does.
        """
        if depth > _MAX_DEPTH:
            raise BtfError(f"BTF struct nesting too deep at type {tid}")
        data = self._data
        base = self._offs[tid]
        _, info, _ = self._u32x3.unpack_from(data, base)
        kflag = bool(info & 0x80000000)
        vlen = info & 0xFFFF
        unpack = self._u32x3.unpack_from
        str_start = self._str_start
        key = name + b"\0"
        pos = base + 12
        for _ in range(vlen):
            name_off, mtid, moff = unpack(data, pos)
            pos += 12
            if name_off == 0:
                inner = self._strip(mtid)
                if inner and self._type(inner)[1] in _COMPOSITES:
                    found = self._find_member(inner, name, depth + 1)
                    if found is not None:
                        bit_off = (moff & 0xFFFFFF) if kflag else moff
                        return found[0] + bit_off, found[1], found[2]
                continue
            if not data.startswith(key, str_start + name_off):
                continue
            if kflag:
                return moff & 0xFFFFFF, mtid, moff >> 24
            return moff, mtid, self._legacy_bitfield_size(mtid)
        return None

    def _legacy_bitfield_size(self, mtid: int) -> int:
        """Bitfield width encoded the pre-kind_flag way (in the INT itself), else 0."""
        inner = self._strip(mtid)
        if not inner:
            return 0
        _, kind, _, size = self._type(inner)
        if kind != KIND_INT:
            return 0
        (enc,) = self._u32.unpack_from(self._data, self._offs[inner] + 12)
        nr_bits = enc & 0xFF
        if (enc >> 16) & 0xFF or nr_bits != size * 8:
            return nr_bits or 1
        return 0

    def _walk(self, struct: str, path: str, allow_bitfield: bool = False) -> tuple[int, int]:
        """(byte offset, type id) of member `path` of `struct`; raises BtfError if absent."""
        tid = self._composite_id(struct)
        if tid is None:
            raise BtfError(f"BTF has no struct or union named {struct!r}")
        where = struct
        offset = 0
        for component in path.split("."):
            m = _COMPONENT_RE.match(component)
            if m is None:
                raise BtfError(f"bad member path {path!r} for struct {struct!r}")
            field, indices = m.group(1), m.group(2)
            cur = self._strip(tid)
            if not cur or self._type(cur)[1] not in _COMPOSITES:
                raise BtfError(f"{where} is not a struct or union (looking for {field!r})")
            found = self._find_member(cur, field.encode())
            if found is None:
                raise BtfError(f"BTF struct {where!r} has no member {field!r}")
            bit_off, tid, bitfield = found
            where = f"{where}.{field}"
            if bitfield or bit_off % 8:
                if allow_bitfield and not indices:
                    offset += bit_off // 8
                    continue
                raise BtfError(f"{struct}.{path}: {field!r} is a bitfield, it has no byte offset")
            offset += bit_off // 8
            for idx_text in _INDEX_RE.findall(indices):
                idx = int(idx_text)
                arr = self._strip(tid)
                if not arr or self._type(arr)[1] != KIND_ARRAY:
                    raise BtfError(f"{where} is not an array (in {struct}.{path})")
                elem, _index, nelems = self._u32x3.unpack_from(self._data, self._offs[arr] + 12)
                if nelems and idx >= nelems:
                    raise BtfError(f"{struct}.{path}: index {idx} out of range [0, {nelems})")
                offset += idx * self._type_size(elem, where)
                tid = elem
                where = f"{where}[{idx}]"
        return offset, tid

    # ---- internals: C type names ----------------------------------------------------------

    def _params(self, proto: int, vlen: int) -> list[str]:
        """C type names of the parameters of FUNC_PROTO `proto` ("..." for varargs)."""
        out: list[str] = []
        pos = self._offs[proto] + 12
        for _ in range(vlen):
            name_off, ptid = self._u32x2.unpack_from(self._data, pos)
            pos += 8
            out.append("..." if ptid == 0 and name_off == 0 else self.type_name(ptid))
        return out

    def type_name(self, tid: int, depth: int = 0) -> str:
        """C-ish spelling of type `tid`: "struct page *", "const void *", "gfp_t", "int"."""
        if depth > _MAX_DEPTH:
            raise BtfError(f"BTF type chain too deep at type {tid}")
        if tid == 0:
            return "void"
        name_off, kind, vlen, st = self._type(tid)
        if kind in (KIND_INT, KIND_FLOAT, KIND_TYPEDEF):
            return self._str(name_off)
        if kind in (KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FWD):
            if kind == KIND_FWD:
                tag = "union" if self._kflag(tid) else "struct"
            else:
                tag = {KIND_STRUCT: "struct", KIND_UNION: "union"}.get(kind, "enum")
            return f"{tag} {self._str(name_off) if name_off else '{...}'}"
        if kind == KIND_PTR:
            target = self._strip_tags(st)
            if target and self._type(target)[1] == KIND_FUNC_PROTO:
                _, _, pvlen, ret = self._type(target)
                args = ", ".join(self._params(target, pvlen)) or "void"
                return f"{self.type_name(ret, depth + 1)} (*)({args})"
            inner = self.type_name(st, depth + 1)
            return inner + "*" if inner.endswith("*") else inner + " *"
        if kind in (KIND_CONST, KIND_VOLATILE, KIND_RESTRICT):
            qual = {KIND_CONST: "const", KIND_VOLATILE: "volatile"}.get(kind, "restrict")
            inner = self.type_name(st, depth + 1)
            return f"{inner} {qual}" if inner.endswith("*") else f"{qual} {inner}"
        if kind == KIND_TYPE_TAG:
            return self.type_name(st, depth + 1)
        if kind == KIND_ARRAY:
            elem, _index, nelems = self._u32x3.unpack_from(self._data, self._offs[tid] + 12)
            return f"{self.type_name(elem, depth + 1)}[{nelems}]"
        if kind == KIND_FUNC_PROTO:
            args = ", ".join(self._params(tid, vlen)) or "void"
            return f"{self.type_name(st, depth + 1)} ({args})"
        return self._str(name_off)

    def _strip_tags(self, tid: int) -> int:
        """Follow TYPE_TAGs only (pointer annotations such as __user/__rcu)."""
        for _ in range(_MAX_DEPTH):
            if tid == 0 or self._type(tid)[1] != KIND_TYPE_TAG:
                return tid
            tid = self._type(tid)[3]
        raise BtfError(f"BTF type chain too deep at type {tid}")


@functools.lru_cache(maxsize=1)
def load_vmlinux() -> Btf:
    """The running kernel's BTF, parsed once per process."""
    return Btf.load(VMLINUX_BTF)
