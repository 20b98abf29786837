"""The boundary between the BPF C and Python: every constant and struct of bpf/memtrace.h is
defined there once, read by tracer/kernel/abi.py, and mirrored member by member."""

from __future__ import annotations

import ctypes as ct
import re
from pathlib import Path

import pytest

from tracer.kernel import abi
from tracer.model.leaks import ALLOCATORS

pytestmark = pytest.mark.unit

HEADER = abi.bpf_dir() / "memtrace.h"
HEADER_TEXT = HEADER.read_text()
PROGRAMS = sorted(abi.bpf_dir().glob("*.bpf.c"))

# name -> value text of every MT_*/LK_* #define of the header, read more loosely than abi's
# parser so that a value it cannot read shows up here.
DEFINES = dict(re.findall(r"^#define\s+((?:MT|LK)_\w+)[ \t]+([^/\n]*?)\s*(?:/\*.*)?$",
                          HEADER_TEXT, re.M))
# ctypes type of each fixed-width C type the header may use.
CTYPES = {"__u8": ct.c_uint8, "__u16": ct.c_uint16, "__u32": ct.c_uint32, "__u64": ct.c_uint64,
          "__s8": ct.c_int8, "__s16": ct.c_int16, "__s32": ct.c_int32, "__s64": ct.c_int64,
          "char": ct.c_char}


def _without_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def _header_structs() -> dict[str, list[tuple[str, str, list[str]]]]:
    """struct name -> [(C type, member, [array dimensions])] in declaration order."""
    out = {}
    for name, body in re.findall(r"^struct (\w+) \{(.*?)^\};", _without_comments(HEADER_TEXT),
                                 re.M | re.S):
        members = []
        for decl in filter(None, (d.strip() for d in body.split(";"))):
            m = re.fullmatch(r"((?:struct\s+)?\w+)\s+(\w+)((?:\s*\[\s*\w+\s*\])*)", decl)
            assert m, f"struct {name}: cannot read member declaration {decl!r}"
            members.append((m.group(1), m.group(2), re.findall(r"\[\s*(\w+)\s*\]", m.group(3))))
        out[name] = members
    return out


def _names_in_abi() -> set[str]:
    return set(re.findall(r'\bC\["(\w+)"\]', Path(abi.__file__).read_text()))


def _prefixed(prefix: str) -> dict[str, int]:
    return {name: value for name, value in abi.C.items() if name.startswith(prefix)}


def test_every_constant_abi_names_is_in_the_header():
    names = _names_in_abi()
    assert names, "abi.py reads no constant from the header"
    assert sorted(names - DEFINES.keys()) == []


def test_the_parser_reads_every_constant_of_the_header():
    """Constants are typed once, in C: each must be a literal abi.py can read."""
    assert DEFINES.keys() == abi.C.keys()
    for name, text in DEFINES.items():
        assert abi.C[name] == int(re.sub(r"(?i)u?l*$", "", text), 0), name


def test_no_program_redefines_a_header_constant():
    for program in PROGRAMS:
        redefined = set(re.findall(r"^#define\s+(\w+)", program.read_text(), re.M)) & DEFINES.keys()
        assert redefined == set(), program.name


def test_every_program_includes_the_header():
    assert PROGRAMS
    for program in PROGRAMS:
        assert '#include "memtrace.h"' in program.read_text(), program.name


@pytest.mark.parametrize("table, prefix", [
    (abi.KIND_NAMES, "MT_KIND_"),
    (abi.DECISION_NAMES, "MT_DECISION_"),
])
def test_name_tables_cover_the_header(table, prefix):
    assert sorted(table) == sorted(_prefixed(prefix).values())
    assert len(set(table.values())) == len(table)


@pytest.mark.parametrize("table, prefix", [
    (abi.DROP_NAMES, "MT_DROP_"),
    (abi.LEAK_DROP_NAMES, "LK_DROP_"),
])
def test_drop_names_cover_every_reason(table, prefix):
    """Drop reasons index a per-CPU array of <prefix>MAX slots: every slot has a name."""
    reasons = _prefixed(prefix)
    limit = reasons.pop(prefix + "MAX")
    assert sorted(table) == sorted(reasons.values()) == list(range(limit))
    assert len(set(table.values())) == len(table)


def test_every_leak_event_kind_is_named_by_abi():
    kinds = _prefixed("LK_EV_")
    assert kinds
    for name, value in kinds.items():
        assert getattr(abi, name) == value, name


def test_allocator_numbers_index_the_models_allocators():
    numbers = _prefixed("LK_FN_")
    assert len(numbers) == len(ALLOCATORS)
    for index, name in enumerate(ALLOCATORS):
        assert numbers[f"LK_FN_{name.upper()}"] == index, name


@pytest.mark.parametrize("name", ["MT_MAX_LINKED", "MT_MSG_LEN"])
def test_masked_bounds_are_powers_of_two(name):
    """The BPF code bounds indexes and lengths with & (bound - 1)."""
    value = abi.C[name]
    assert value > 0 and value & (value - 1) == 0


def test_every_header_struct_is_mirrored():
    assert sorted(_header_structs()) == sorted(abi.MIRRORED)


@pytest.mark.parametrize("struct", sorted(abi.MIRRORED))
def test_mirror_declares_the_headers_members(struct):
    """Names, order, types and array lengths; offsets as compiled are tests/bpf/test_abi.py's."""
    names = {mirror: name for name, mirror in abi.MIRRORED.items()}
    fields = abi.MIRRORED[struct]._fields_
    declared = _header_structs()[struct]
    assert [f[0] for f in fields] == [d[1] for d in declared]
    for (member, ctype), (c_type, _, dims) in zip(fields, declared):
        for dim in dims:
            assert issubclass(ctype, ct.Array), member
            assert ctype._length_ == (int(dim) if dim.isdigit() else abi.C[dim]), member
            ctype = ctype._type_
        if c_type.startswith("struct "):
            assert names.get(ctype) == c_type.split()[1], member
        else:
            assert ctype is CTYPES[c_type], member


@pytest.mark.parametrize("struct", sorted(abi.MIRRORED))
def test_mirrors_have_no_implicit_padding(struct):
    """Explicit pad members keep one layout on BPF and x86_64, and make a member added
    in C change the struct's size."""
    mirror = abi.MIRRORED[struct]
    assert ct.sizeof(mirror) == sum(ct.sizeof(t) for _, t in mirror._fields_)
