"""The ctypes mirrors of tracer/kernel/abi.py against the layout the compiler gave memtrace.h.

Each program is compiled by bcc with the flags the real build uses; the BTF bcc loads with
its maps records every struct's size and each member's offset and type as clang laid them
out for BPF, read back here with bpftool. A member that moves, grows, changes signedness or
is added on one side only fails the test of its struct."""

from __future__ import annotations

import ctypes as ct
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from tests import needs
from tracer.host import system as host
from tracer.kernel import abi
from tracer.kernel.btf import load_vmlinux
from tracer.kernel.build import BuildOptions, cflags, leak_cflags, read_layout
from tracer.kernel.probes import PLAN

pytestmark = pytest.mark.bpf

LAYOUT_PROGRAM = Path(__file__).with_name("abi_layout.bpf.c")
ALL_FAMILIES = frozenset(p.family for p in PLAN if p.family)
_MODIFIERS = ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG")
_STRUCT_NAMES = {mirror: name for name, mirror in abi.MIRRORED.items()}

Shape = tuple[Any, ...]  # ("int", size, signed) | ("char",) | ("array", n, elem) | ("struct", name)


@dataclass(frozen=True)
class Member:
    name: str
    bit_offset: int
    shape: Shape


@dataclass(frozen=True)
class StructLayout:
    size: int
    members: tuple[Member, ...]


@dataclass(frozen=True)
class Build:
    """One bcc compile: a source, its flags, and a map of it that carries the module's BTF."""

    name: str
    source: Path
    flags: tuple[str, ...]
    btf_map: str


def _bpftool() -> Optional[str]:
    found = shutil.which("bpftool")
    if found is None and Path("/usr/sbin/bpftool").is_file():
        found = "/usr/sbin/bpftool"
    return found


def _bpftool_json(bpftool: str, *args: str) -> Any:
    done = subprocess.run([bpftool, "-j", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"bpftool {' '.join(args)}: {done.stderr or done.stdout}"
    return json.loads(done.stdout)


def _map_id(fd: int) -> int:
    m = re.search(r"^map_id:\s*(\d+)", Path(f"/proc/self/fdinfo/{fd}").read_text(), re.M)
    assert m, f"no map_id in /proc/self/fdinfo/{fd}"
    return int(m.group(1))


def _btf_shape(types: dict[int, Any], tid: int) -> Shape:
    t = types[tid]
    while t["kind"] in _MODIFIERS:
        t = types[t["type_id"]]
    if t["kind"] == "INT":
        if t["name"] == "char":  # plain char: its signedness is the target's, not ours
            return ("char",)
        return ("int", t["size"], t["encoding"] == "SIGNED")
    if t["kind"] == "ARRAY":
        return ("array", t["nr_elems"], _btf_shape(types, t["type_id"]))
    if t["kind"] == "STRUCT":
        return ("struct", t["name"])
    return (t["kind"].lower(), t.get("name", ""))


def _compiled_structs(bpftool: str, btf_id: int) -> dict[str, StructLayout]:
    """Every mirrored struct found in BTF object `btf_id`, as the compiler laid it out."""
    types = {t["id"]: t for t in _bpftool_json(bpftool, "btf", "dump", "id", str(btf_id))["types"]}
    out: dict[str, StructLayout] = {}
    for t in types.values():
        if t["kind"] == "STRUCT" and t["name"] in abi.MIRRORED:
            members = tuple(
                Member(m["name"], m["bits_offset"],
                       _btf_shape(types, m["type_id"]) + ((("bitfield", m["bitfield_size"]),)
                                                          if m.get("bitfield_size") else ()))
                for m in t["members"])
            out[t["name"]] = StructLayout(t["size"], members)
    return out


def _ctypes_shape(t: Any) -> Shape:
    if issubclass(t, ct.Structure):
        return ("struct", _STRUCT_NAMES.get(t, t.__name__))
    if issubclass(t, ct.Array):
        return ("array", t._length_, _ctypes_shape(t._type_))
    if t is ct.c_char:
        return ("char",)
    return ("int", ct.sizeof(t), t(-1).value < 0)


def mirror_layout(struct: type[ct.Structure]) -> StructLayout:
    members = tuple(Member(name, getattr(struct, name).offset * 8, _ctypes_shape(ctype))
                    for name, ctype in struct._fields_)
    return StructLayout(ct.sizeof(struct), members)


def differences(mirror: StructLayout, compiled: StructLayout) -> list[str]:
    """What differs between a mirror and the compiled struct, one line per difference."""
    out = []
    if mirror.size != compiled.size:
        out.append(f"size: mirror {mirror.size}, compiled {compiled.size}")
    ours = {m.name: m for m in mirror.members}
    theirs = {m.name: m for m in compiled.members}
    for name in ours.keys() - theirs.keys():
        out.append(f"{name}: only in the mirror")
    for name in theirs.keys() - ours.keys():
        out.append(f"{name}: only in memtrace.h")
    for name in ours.keys() & theirs.keys():
        a, b = ours[name], theirs[name]
        if a.bit_offset != b.bit_offset:
            out.append(f"{name}: offset {a.bit_offset // 8} in the mirror, "
                       f"{b.bit_offset // 8} compiled")
        if a.shape != b.shape:
            out.append(f"{name}: type {a.shape} in the mirror, {b.shape} compiled")
    if not out and [m.name for m in mirror.members] != [m.name for m in compiled.members]:
        out.append("members in a different order")
    return sorted(out)


def _builds() -> list[Build]:
    layout = read_layout(load_vmlinux())
    tracer = tuple(cflags(layout, BuildOptions(families=ALL_FAMILIES)))
    leak = {mode: tuple(leak_cflags(layout, [os.getpid()], mode, sample=1,
                                    min_size=0, max_size=None))
            for mode in ("malloc", "growth")}
    return [
        Build("memtrace.bpf.c, every family", abi.bpf_dir() / "memtrace.bpf.c", tracer, "zeroes"),
        Build("leaks.bpf.c, malloc mode", abi.bpf_dir() / "leaks.bpf.c", leak["malloc"], "stats"),
        Build("memtrace.h with memtrace.bpf.c's flags", LAYOUT_PROGRAM, tracer,
              "layout_mt_event"),
        Build("memtrace.h with leaks.bpf.c's malloc flags", LAYOUT_PROGRAM, leak["malloc"],
              "layout_lk_event"),
        Build("memtrace.h with leaks.bpf.c's growth flags", LAYOUT_PROGRAM, leak["growth"],
              "layout_lk_event"),
    ]


@pytest.fixture(scope="module")
def compiled() -> Iterator[dict[str, dict[str, StructLayout]]]:
    """build name -> {struct name -> layout} for every mirrored struct in that build's BTF."""
    from bcc import BPF

    # bpftool reads back the BTF bcc compiled; set-up installs it where the distribution has it
    bpftool = _bpftool() or needs.program("bpftool", "bpftool")
    host.prepare_headers()
    out: dict[str, dict[str, StructLayout]] = {}
    for build in _builds():
        b = BPF(src_file=str(build.source).encode(), cflags=list(build.flags))
        try:  # the BTF lives as long as the maps: read it before cleanup
            info = _bpftool_json(bpftool, "map", "show", "id",
                                 str(_map_id(b[build.btf_map.encode()].map_fd)))
            assert "btf_id" in info, f"{build.name}: bcc loaded no BTF with its maps"
            out[build.name] = _compiled_structs(bpftool, info["btf_id"])
        finally:
            b.cleanup()
    yield out


@pytest.mark.parametrize("struct", sorted(abi.MIRRORED))
def test_mirror_matches_the_compiled_layout(compiled, struct):
    seen = {build: layouts[struct] for build, layouts in compiled.items() if struct in layouts}
    # The layout program holds every struct in a map, under each program's flags.
    assert sum(name.startswith("memtrace.h with") for name in seen) == 3, sorted(seen)
    mirror = mirror_layout(abi.MIRRORED[struct])
    for build, layout in seen.items():
        assert differences(mirror, layout) == [], f"struct {struct} in {build}"


def test_the_real_programs_carry_their_map_structs(compiled):
    """The real programs' BTF is checked too, not only the layout program's."""
    assert {"mt_event", "mt_syscall_key", "mt_kfail_key", "mt_pending", "mt_kfail",
            "mt_task_evidence", "mt_growth_cpu", "lk_span", "lk_event"} <= \
        compiled["memtrace.bpf.c, every family"].keys()
    assert {"lk_key", "lk_stats", "lk_alloc", "lk_entry"} <= \
        compiled["leaks.bpf.c, malloc mode"].keys()


def test_a_moved_or_retyped_member_is_caught(compiled):
    """The comparison itself: a mirror with two members swapped, or one of another
    signedness, differs from what was compiled."""
    real = compiled["memtrace.h with leaks.bpf.c's malloc flags"]["lk_key"]
    assert differences(mirror_layout(abi.LeakKey), real) == []

    class Swapped(ct.Structure):
        _fields_ = [("pid", ct.c_uint32), ("stack_id", ct.c_int32), ("caller", ct.c_uint64)]

    class Unsigned(ct.Structure):
        _fields_ = [("stack_id", ct.c_uint32), ("pid", ct.c_uint32), ("caller", ct.c_uint64)]

    assert differences(mirror_layout(Swapped), real) == [
        "pid: offset 0 in the mirror, 4 compiled", "stack_id: offset 4 in the mirror, 0 compiled"]
    assert differences(mirror_layout(Unsigned), real) == [
        "stack_id: type ('int', 4, False) in the mirror, ('int', 4, True) compiled"]
