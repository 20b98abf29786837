"""Tests for tracer.btf against synthetic BTF blobs (plus one check on the real kernel's)."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tracer.kernel.btf import Btf, BtfError, load_vmlinux

pytestmark = pytest.mark.unit

VMLINUX = "/sys/kernel/btf/vmlinux"

# BTF kinds (include/uapi/linux/btf.h).
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO = 9, 10, 11, 12, 13
TYPE_TAG, ENUM64 = 18, 19


class BtfBuilder:
    """Emits a BTF blob type by type; each add_* returns the new type id."""

    def __init__(self, endian: str = "<") -> None:
        self.endian = endian
        self.strings = bytearray(b"\0")
        self.string_offs: dict[str, int] = {"": 0}
        self.types: list[bytes] = []

    def s(self, text: str) -> int:
        """Offset of `text` in the string section, adding it if new."""
        if text not in self.string_offs:
            self.string_offs[text] = len(self.strings)
            self.strings += text.encode() + b"\0"
        return self.string_offs[text]

    def _add(
        self,
        name: str,
        kind: int,
        vlen: int,
        size_or_type: int,
        tail: bytes = b"",
        kflag: bool = False,
    ) -> int:
        info = (int(kflag) << 31) | (kind << 24) | vlen
        self.types.append(struct.pack(self.endian + "III", self.s(name), info, size_or_type) + tail)
        return len(self.types)

    def int_(
        self, name: str, size: int, signed: bool = False, bits: int | None = None, bit_off: int = 0
    ) -> int:
        enc = (1 if signed else 0) << 24 | bit_off << 16 | (size * 8 if bits is None else bits)
        return self._add(name, INT, 0, size, struct.pack(self.endian + "I", enc))

    def ptr(self, target: int) -> int:
        return self._add("", PTR, 0, target)

    def modifier(self, kind: int, target: int, name: str = "") -> int:
        return self._add(name, kind, 0, target)

    def typedef(self, name: str, target: int) -> int:
        return self._add(name, TYPEDEF, 0, target)

    def array(self, elem: int, index: int, nelems: int) -> int:
        return self._add("", ARRAY, 0, 0, struct.pack(self.endian + "III", elem, index, nelems))

    def composite(
        self,
        name: str,
        size: int,
        members: Sequence[tuple[str, int, int, int]],
        union: bool = False,
        kflag: bool = True,
    ) -> int:
        """members: (name, type id, bit offset, bitfield size)."""
        tail = b""
        for mname, mtype, bit_off, bitfield in members:
            off = (bitfield << 24 | bit_off) if kflag else bit_off
            tail += struct.pack(self.endian + "III", self.s(mname), mtype, off)
        kind = UNION if union else STRUCT
        return self._add(name, kind, len(members), size, tail, kflag)

    def enum(self, name: str, values: Sequence[tuple[str, int]], signed: bool = False) -> int:
        fmt = self.endian + ("Ii" if signed else "II")
        tail = b"".join(struct.pack(fmt, self.s(n), v) for n, v in values)
        return self._add(name, ENUM, len(values), 4, tail, signed)

    def enum64(self, name: str, values: Sequence[tuple[str, int]]) -> int:
        tail = b"".join(
            struct.pack(self.endian + "III", self.s(n), v & 0xFFFFFFFF, v >> 32) for n, v in values
        )
        return self._add(name, ENUM64, len(values), 8, tail)

    def fwd(self, name: str, union: bool = False) -> int:
        return self._add(name, FWD, 0, 0, kflag=union)

    def func_proto(self, ret: int, params: Sequence[tuple[str, int]]) -> int:
        tail = b"".join(struct.pack(self.endian + "II", self.s(n), t) for n, t in params)
        return self._add("", FUNC_PROTO, len(params), ret, tail)

    def build(self, magic: int = 0xEB9F, version: int = 1) -> bytes:
        types = b"".join(self.types)
        header = struct.pack(
            self.endian + "HBBIIIII",
            magic,
            version,
            0,
            24,
            0,
            len(types),
            len(types),
            len(self.strings),
        )
        return header + types + bytes(self.strings)


def sample(endian: str = "<") -> bytes:
    """A small BTF exercising every feature the reader is asked about."""
    b = BtfBuilder(endian)
    int_t = b.int_("int", 4, signed=True)
    ulong = b.int_("long unsigned int", 8)
    char = b.int_("char", 1, signed=True)
    arr = b.array(int_t, int_t, 4)  # int[4]
    anon_union = b.composite("", 8, [("a", int_t, 0, 0), ("b", ulong, 0, 0)], union=True)
    u64 = b.typedef("u64", ulong)
    inner = b.composite("inner", 8, [("x", int_t, 0, 0), ("y", int_t, 32, 0)])
    outer_ptr = 14  # forward reference, added below
    outer = b.composite(
        "outer",
        56,
        [
            ("first", int_t, 0, 0),
            ("flags", int_t, 32, 3),  # int flags:3
            ("", anon_union, 64, 0),  # union { int a; unsigned long b; }
            ("arr", arr, 128, 0),
            ("in", inner, 256, 0),
            ("total", u64, 320, 0),
            ("next", outer_ptr, 384, 0),
        ],
    )
    b.enum("colors", [("RED", 0), ("GREEN", 1), ("BLUE", 4), ("HIGH", 0xFFFFFFFF)])
    b.enum64("big", [("HUGE", 1 << 40)])
    void_ptr = b.ptr(0)
    const_char = b.modifier(CONST, char)
    const_char_ptr = b.ptr(const_char)
    assert b.ptr(outer) == outer_ptr
    proto = b.func_proto(
        0,
        [
            ("__data", void_ptr),
            ("o", outer_ptr),
            ("n", int_t),
            ("total", u64),
            ("msg", const_char_ptr),
        ],
    )
    b.typedef("btf_trace_foo", b.ptr(proto))
    b.enum("signs", [("NEG", -2), ("POS", 7)], signed=True)
    b.fwd("fwdonly")
    # Old-style (no kind_flag) struct whose bitfield lives in the INT encoding.
    int3 = b.int_("int", 4, signed=True, bits=3)
    b.composite("legacy", 8, [("plain", int_t, 0, 0), ("bits", int3, 32, 0)], kflag=False)
    b.typedef("outer_t", b.modifier(VOLATILE, outer))
    b.typedef("gfp_t", b.int_("unsigned int", 4))
    b.composite("empty", 0, [])
    b.typedef("btf_trace_notptr", int_t)
    return b.build()


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.from_bytes(sample())


def test_counts_types(btf: Btf) -> None:
    assert btf.nr_types == 27


@pytest.mark.parametrize(
    ("path", "offset"),
    [
        ("first", 0),
        ("a", 8),  # inside the anonymous union
        ("b", 8),
        ("arr", 16),
        ("arr[0]", 16),
        ("arr[3]", 28),
        ("in", 32),
        ("in.y", 36),
        ("total", 40),
        ("next", 48),
    ],
)
def test_member_offset(btf: Btf, path: str, offset: int) -> None:
    assert btf.member_offset("outer", path) == offset


def test_member_offset_through_struct_prefix_and_typedef(btf: Btf) -> None:
    assert btf.member_offset("struct outer", "total") == 40
    assert btf.member_offset("outer_t", "arr[1]") == 20


@pytest.mark.parametrize(
    ("member", "size"),
    [
        ("first", 4),
        ("a", 4),
        ("b", 8),
        ("arr", 16),
        ("arr[2]", 4),
        ("in", 8),
        ("total", 8),
        ("next", 8),
    ],
)
def test_member_size(btf: Btf, member: str, size: int) -> None:
    assert btf.member_size("outer", member) == size


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("outer", 56),
        ("struct outer", 56),
        ("inner", 8),
        ("u64", 8),
        ("int", 4),
        ("char", 1),
        ("long unsigned int", 8),
        ("outer_t", 56),
        ("gfp_t", 4),
        ("enum colors", 4),
        ("big", 8),
        ("empty", 0),
    ],
)
def test_sizeof(btf: Btf, name: str, size: int) -> None:
    assert btf.sizeof(name) == size


def test_has_struct_and_member(btf: Btf) -> None:
    assert btf.has_struct("outer")
    assert btf.has_struct("struct inner")
    assert not btf.has_struct("fwdonly")  # only declared
    assert not btf.has_struct("nope")
    assert btf.has_member("outer", "a")
    assert btf.has_member("outer", "flags")  # a bitfield is still a member
    assert btf.has_member("outer", "arr[3]")
    assert not btf.has_member("outer", "arr[4]")
    assert not btf.has_member("outer", "missing")
    assert not btf.has_member("nope", "a")


@pytest.mark.parametrize("path", ["flags", "bits"])
def test_bitfield_has_no_offset(btf: Btf, path: str) -> None:
    struct_name = "outer" if path == "flags" else "legacy"
    with pytest.raises(BtfError, match=path):
        btf.member_offset(struct_name, path)
    with pytest.raises(BtfError):
        btf.member_size(struct_name, path)


def test_legacy_struct_plain_member(btf: Btf) -> None:
    assert btf.member_offset("legacy", "plain") == 0


@pytest.mark.parametrize(
    ("struct_name", "path", "needle"),
    [
        ("nope", "a", "nope"),
        ("outer", "missing", "missing"),
        ("outer", "arr[4]", "index 4"),
        ("outer", "first[0]", "not an array"),
        ("outer", "total.x", "not a struct"),
        ("outer", "arr[", "bad member path"),
        ("outer", "", "bad member path"),
    ],
)
def test_member_offset_errors(btf: Btf, struct_name: str, path: str, needle: str) -> None:
    with pytest.raises(BtfError, match=needle):
        btf.member_offset(struct_name, path)


def test_sizeof_missing(btf: Btf) -> None:
    with pytest.raises(BtfError, match="nosuchtype"):
        btf.sizeof("nosuchtype")


def test_enums(btf: Btf) -> None:
    assert btf.enum_value("RED") == 0
    assert btf.enum_value("BLUE") == 4
    assert btf.enum_value("HIGH") == 0xFFFFFFFF  # unsigned enum
    assert btf.enum_value("NEG") == -2  # kind_flag: signed enum
    assert btf.enum_value("HUGE") == 1 << 40
    assert btf.enumerators("GR") == {"GREEN": 1}
    assert btf.enumerators("") == {
        "RED": 0,
        "GREEN": 1,
        "BLUE": 4,
        "HIGH": 0xFFFFFFFF,
        "HUGE": 1 << 40,
        "NEG": -2,
        "POS": 7,
    }
    assert btf.enumerators("XYZ") == {}
    with pytest.raises(BtfError, match="PURPLE"):
        btf.enum_value("PURPLE")


def test_tracepoint_params(btf: Btf) -> None:
    assert btf.tracepoint_params("foo") == ["struct outer *", "int", "u64", "const char *"]
    assert btf.tracepoint_params("bar") is None
    with pytest.raises(BtfError):
        btf.tracepoint_params("notptr")


def test_big_endian_blob() -> None:
    be = Btf.from_bytes(sample(">"))
    assert be.member_offset("outer", "arr[3]") == 28
    assert be.enum_value("NEG") == -2
    assert be.enum_value("HUGE") == 1 << 40
    assert be.tracepoint_params("foo") == ["struct outer *", "int", "u64", "const char *"]


def test_type_names() -> None:
    b = BtfBuilder()
    char = b.int_("char", 1)
    cp = b.ptr(char)
    cpp = b.ptr(cp)
    const_ptr = b.modifier(CONST, cp)
    user_tag = b.modifier(TYPE_TAG, char, "user")
    user_ptr = b.ptr(user_tag)
    arr = b.array(char, char, 16)
    fwd_union = b.fwd("u", union=True)
    fn = b.func_proto(char, [("x", cp), ("", 0)])
    fn_ptr = b.ptr(fn)
    anon = b.composite("", 0, [])
    btf = Btf.from_bytes(b.build())
    assert btf.type_name(cpp) == "char **"
    assert btf.type_name(const_ptr) == "char * const"
    assert btf.type_name(user_ptr) == "char *"
    assert btf.type_name(arr) == "char[16]"
    assert btf.type_name(fwd_union) == "union u"
    assert btf.type_name(fn_ptr) == "char (*)(char *, ...)"
    assert btf.type_name(anon) == "struct {...}"


def test_first_complete_struct_wins() -> None:
    b = BtfBuilder()
    int_t = b.int_("int", 4)
    b.composite("dup", 0, [])
    b.composite("dup", 8, [("x", int_t, 32, 0)])
    b.composite("dup", 4, [("y", int_t, 0, 0)])
    btf = Btf.from_bytes(b.build())
    assert btf.sizeof("dup") == 8
    assert btf.member_offset("dup", "x") == 4


def test_bad_magic() -> None:
    data = bytearray(sample())
    data[0:2] = b"\x00\x00"
    with pytest.raises(BtfError, match="magic"):
        Btf.from_bytes(bytes(data))


def test_bad_version() -> None:
    with pytest.raises(BtfError, match="version"):
        Btf.from_bytes(BtfBuilder().build(version=2))


def test_every_truncation_is_rejected() -> None:
    data = sample()
    for cut in range(len(data)):
        with pytest.raises(BtfError):
            Btf.from_bytes(data[:cut])


def test_truncated_type_record() -> None:
    b = BtfBuilder()
    b.int_("int", 4)
    good = b.build()
    types_len = struct.unpack_from("<I", good, 12)[0]
    # Claim the type section is 2 bytes shorter: the INT's encoding word no longer fits.
    bad = good[:12] + struct.pack("<I", types_len - 2) + good[16:]
    with pytest.raises(BtfError, match="truncated"):
        Btf.from_bytes(bad)


def test_unknown_kind() -> None:
    b = BtfBuilder()
    b.types.append(struct.pack("<III", 0, 31 << 24, 0))
    with pytest.raises(BtfError, match="kind 31"):
        Btf.from_bytes(b.build())


def test_name_offset_out_of_range() -> None:
    b = BtfBuilder()
    b.types.append(struct.pack("<III", 999, STRUCT << 24, 0))
    with pytest.raises(BtfError, match="999"):
        Btf.from_bytes(b.build())


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "btf"
    path.write_bytes(sample())
    assert Btf.load(str(path)).member_offset("outer", "in.x") == 32


def test_load_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent")
    with pytest.raises(BtfError, match="absent"):
        Btf.load(missing)


def test_load_corrupt_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "corrupt"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(BtfError, match="corrupt"):
        Btf.load(str(path))


@pytest.mark.bpf
@pytest.mark.skipif(not os.access(VMLINUX, os.R_OK), reason="no readable kernel BTF")
def test_real_vmlinux(request: pytest.FixtureRequest) -> None:
    # The module-wide unit mark also lands here: keep the unit tier off the real kernel.
    markexpr = request.config.getoption("markexpr") or ""
    if markexpr and "bpf" not in markexpr:
        pytest.skip("reads the running kernel's BTF: bpf tier only")
    start = time.perf_counter()
    btf = Btf.load(VMLINUX)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"parsing {VMLINUX} took {elapsed:.2f}s"
    assert btf.member_offset("pt_regs", "orig_ax") == 120
    assert isinstance(btf.enum_value("memory_cgrp_id"), int)
    params = btf.tracepoint_params("mm_page_alloc")
    assert params is not None and len(params) == 4
    assert params[0].endswith("*")
    assert load_vmlinux() is load_vmlinux()
