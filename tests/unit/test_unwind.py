"""Stack unwinding of captured snapshots: maps parsing, load bias, CFI, frame pointers, symbols."""

from __future__ import annotations

import os
import platform
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
from elftools.dwarf.callframe import FDE
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from tracer.unwind.cfi import _eval_expr
from tracer.unwind.elf import Module
from tracer.unwind.maps import Mapping, Segment, load_bias, parse_maps
from tracer.unwind.unwinder import Unwinder

pytestmark = pytest.mark.unit

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "unwind_snapshot.c"
x86_64_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 unwinding only")

# name: (gcc flags, built with -g, frame pointers only: no CFI for the fixture's own code)
VARIANTS: dict[str, tuple[list[str], bool]] = {
    "fp_pie_g": (["-O2", "-fno-omit-frame-pointer", "-fPIE", "-pie", "-g"], True),
    "nofp_pie": (["-O2", "-fomit-frame-pointer", "-fPIE", "-pie"], False),
    "fp_nopie": (["-O2", "-fno-omit-frame-pointer", "-no-pie"], False),
    "nofp_nopie_g": (["-O2", "-fomit-frame-pointer", "-no-pie", "-g"], True),
    # No .eh_frame for the fixture's functions: they unwind by frame pointer, glibc by CFI.
    "fp_nocfi_pie": (
        [
            "-O2",
            "-fno-omit-frame-pointer",
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
            "-fPIE",
            "-pie",
        ],
        False,
    ),
}


@dataclass
class Snapshot:
    binary: Path
    ip: int
    sp: int
    bp: int
    stack: bytes
    maps: str


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: cannot build the unwind fixture")
    return tmp_path_factory.mktemp("unwind")


def compile_variant(build_dir: Path, name: str) -> Path:
    binary = build_dir / f"unwind_snapshot_{name}"
    if not binary.exists():
        flags, _ = VARIANTS[name]
        proc = subprocess.run(
            ["gcc", *flags, "-o", str(binary), str(FIXTURE)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            pytest.skip(f"gcc {' '.join(flags)} failed: {proc.stderr.strip()[:300]}")
    return binary


def take_snapshot(build_dir: Path, name: str) -> Snapshot:
    binary = compile_variant(build_dir, name)
    out = build_dir / f"{name}.snap"
    subprocess.run([str(binary), str(out)], check=True, timeout=30)
    data = out.read_bytes()
    ip, sp, bp, n = struct.unpack_from("<4Q", data)
    return Snapshot(binary, ip, sp, bp, data[32 : 32 + n], data[32 + n :].decode())


def ordered_positions(frames: list[str], wanted: list[list[str]]) -> list[int]:
    """Index of the first frame matching each group (any of its substrings), in order."""
    positions = []
    start = 0
    for group in wanted:
        for i in range(start, len(frames)):
            if any(w in frames[i] for w in group):
                positions.append(i)
                start = i + 1
                break
        else:
            raise AssertionError(f"no frame matching {group} after position {start}: {frames}")
    return positions


def function_vaddr(path: Path, name: str) -> int:
    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        syms = symtab.get_symbol_by_name(name)
        assert syms is not None and len(syms) == 1, name
        return int(syms[0]["st_value"])


def libc_path() -> Optional[str]:
    with open("/proc/self/maps") as f:
        for m in parse_maps(f.read()):
            if os.path.basename(m.path).startswith("libc.so"):
                return m.path
    return None


# ------------------------------------------------------------------------------------------
# /proc/PID/maps and load bias

MAPS_TEXT = """\
555555554000-555555555000 r--p 00000000 fd:01 1048602                    /usr/bin/app
555555555000-555555556000 r-xp 00001000 fd:01 1048602                    /usr/bin/app
555555556000-555555557000 r--p 00002000 fd:01 1048602                    /usr/bin/app
555555559000-55555557a000 rw-p 00000000 00:00 0                          [heap]
7ffff7dd3000-7ffff7df9000 r--p 00000000 fd:01 1315004                    /usr/lib/x86_64-linux-gnu/libc.so.6
7ffff7df9000-7ffff7f4e000 r-xp 00026000 fd:01 1315004                    /usr/lib/x86_64-linux-gnu/libc.so.6
7ffff7f4e000-7ffff7fa1000 r--p 0017b000 fd:01 1315004                    /usr/lib/x86_64-linux-gnu/libc.so.6
7ffff7fa8000-7ffff7fa9000 r-xp 00000000 00:00 0
7ffff7fc5000-7ffff7fc7000 r-xp 00000000 00:00 0                          [vdso]
7ffff7fc8000-7ffff7fc9000 r-xp 00001000 fd:01 777                        /opt/my app/lib x.so
7ffff7fca000-7ffff7fcb000 r-xp 00000000 fd:01 778                        /tmp/gone.so (deleted)
7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0                          [stack]
garbage line
"""


def test_parse_maps_keeps_executable_file_backed_mappings() -> None:
    maps = parse_maps(MAPS_TEXT)
    assert maps == [
        Mapping(0x555555555000, 0x555555556000, 0x1000, "/usr/bin/app"),
        Mapping(0x7FFFF7DF9000, 0x7FFFF7F4E000, 0x26000, "/usr/lib/x86_64-linux-gnu/libc.so.6"),
        Mapping(0x7FFFF7FC8000, 0x7FFFF7FC9000, 0x1000, "/opt/my app/lib x.so"),
        Mapping(0x7FFFF7FCA000, 0x7FFFF7FCB000, 0x0, "/tmp/gone.so (deleted)"),
    ]


def test_load_bias_for_pie_non_pie_lld_and_split_mappings() -> None:
    pie = [
        Segment(0x0, 0x0, 0x638, 0x638, 4),
        Segment(0x1000, 0x1000, 0x1F5, 0x1F5, 5),
        Segment(0x2DE8, 0x3DE8, 0x258, 0x260, 6),
    ]
    assert load_bias(pie, 0x555555555000, 0x1000) == 0x555555554000
    assert load_bias(pie, 0x555555554000, 0x0) == 0x555555554000
    # A data segment whose vaddr is a page above its file offset.
    assert load_bias(pie, 0x555555557000, 0x2000) == 0x555555554000
    non_pie = [Segment(0x0, 0x400000, 0x4F8, 0x4F8, 4), Segment(0x1000, 0x401000, 0x1D5, 0x1D5, 5)]
    assert load_bias(non_pie, 0x401000, 0x1000) == 0
    # lld: segments not page-aligned in the file, vaddr = file offset + 0x1000.
    lld = [Segment(0x0, 0x0, 0x5F0, 0x5F0, 4), Segment(0x5F0, 0x15F0, 0x2A0, 0x2A0, 5)]
    assert load_bias(lld, 0x7F0000001000, 0x0) == 0x7F0000000000
    # A text segment split into two VMAs (mprotect): the second VMA starts mid-segment.
    big = [Segment(0x0, 0x0, 0x1000, 0x1000, 4), Segment(0x1000, 0x1000, 0x8000, 0x8000, 5)]
    assert load_bias(big, 0x7F0000004000, 0x4000) == 0x7F0000000000
    assert load_bias(big, 0x7F0000004000, 0x20000) is None


@x86_64_only
def test_pie_load_bias_and_symbols_from_fake_maps(build_dir: Path) -> None:
    binary = compile_variant(build_dir, "nofp_pie")
    module = Module.get(str(binary))
    assert module is not None
    assert Module.get(str(binary)) is module  # cached by path, inode, mtime
    base = 0x5612_3400_0000
    lines = []
    for seg in module.segments:
        lo = seg.vaddr & ~0xFFF
        hi = (seg.vaddr + seg.memsz + 0xFFF) & ~0xFFF
        perms = "r-xp" if seg.flags & 1 else "r--p"
        lines.append(
            f"{base + lo:x}-{base + hi:x} {perms} {seg.offset & ~0xFFF:08x} fd:01 42 {binary}"
        )
    maps = parse_maps("\n".join(lines))
    assert maps and all(module.load_bias(m) == base for m in maps)
    unwinder = Unwinder(maps)
    for name in ("level1", "level2", "main"):
        addr = base + function_vaddr(binary, name) + 4
        assert unwinder.symbolize(addr, first=True) == (name, binary.name, None)
    # A return address just past a function's last byte belongs to that function.
    assert unwinder.symbolize(base + function_vaddr(binary, "level1") + 1)[0] == "level1"
    assert unwinder.symbolize(0x1000) == ("0x1000", "[unknown]", None)


def test_update_maps_brings_in_late_loaded_libraries() -> None:
    path = libc_path()
    if path is None:
        pytest.skip("no libc.so mapped in this process")
    module = Module.get(path)
    assert module is not None
    text_seg = next(s for s in module.segments if s.flags & 1)
    base = 0x7F00_0000_0000
    mapping = Mapping(
        base + (text_seg.vaddr & ~0xFFF),
        base + text_seg.vaddr + text_seg.filesz,
        text_seg.offset & ~0xFFF,
        path,
    )
    unwinder = Unwinder([])
    addr = mapping.start + 0x100
    assert unwinder.symbolize(addr, first=True)[1] == "[unknown]"
    unwinder.update_maps([mapping])
    assert unwinder.symbolize(addr, first=True)[1] == os.path.basename(path)
    assert module.load_bias(mapping) == base


# ------------------------------------------------------------------------------------------
# CFI


@x86_64_only
def test_cfi_rows_agree_with_pyelftools_on_libc() -> None:
    path = libc_path()
    if path is None:
        pytest.skip("no libc.so mapped in this process")
    module = Module(path)
    checked = 0
    with open(path, "rb") as f:
        entries = ELFFile(f).get_dwarf_info(follow_links=False).EH_CFI_entries()
        for fde in entries:
            if not isinstance(fde, FDE):
                continue
            try:
                table = fde.get_decoded().table
            except Exception:  # pyelftools lacks some GNU opcodes: nothing to compare with
                continue
            for line in table:
                row = module.cfa_row(line["pc"])
                assert row is not None, hex(line["pc"])
                cfa = line["cfa"]
                if cfa.expr is not None:
                    assert row.cfa_expr is not None
                else:
                    assert (row.cfa_reg, row.cfa_offset) == (cfa.reg, cfa.offset), hex(line["pc"])
                regs = {k: v for k, v in line.items() if isinstance(k, int)}
                assert set(regs) == set(row.rules), hex(line["pc"])
                for reg, rule in regs.items():
                    assert row.rules[reg].kind == rule.type.lower()
                    if rule.type in ("OFFSET", "VAL_OFFSET", "REGISTER"):
                        assert row.rules[reg].arg == rule.arg
                checked += 1
    assert checked > 1000


def test_plt_cfa_expression() -> None:
    # DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_lit11; DW_OP_ge;
    # DW_OP_lit3; DW_OP_shl; DW_OP_plus: rsp+8, or rsp+16 past the push in a PLT entry.
    expr = bytes([0x77, 0x08, 0x80, 0x00, 0x3F, 0x1A, 0x3B, 0x2A, 0x33, 0x24, 0x22])

    def no_memory(addr: int) -> Optional[int]:
        return None

    assert _eval_expr(expr, {7: 0x7000, 16: 0x401024}, no_memory) == 0x7008
    assert _eval_expr(expr, {7: 0x7000, 16: 0x40102B}, no_memory) == 0x7010
    assert _eval_expr(expr, {16: 0x40102B}, no_memory) is None  # rsp unknown
    # DW_OP_breg7 16; DW_OP_deref (a realigned frame): reads the snapshot.
    assert _eval_expr(bytes([0x77, 0x10, 0x06]), {7: 0x7000}, {0x7010: 0x9999}.get) == 0x9999


# ------------------------------------------------------------------------------------------
# Frame pointers and stop conditions (no modules: every frame unwinds by frame pointer)


def fp_stack() -> bytes:
    words = [0x7010, 0x1111, 0x7020, 0x2222, 0x7020, 0x3333]  # [saved rbp, return address] x 3
    return struct.pack("<6Q", *words)


def test_frame_pointer_fallback_and_stops() -> None:
    unwinder = Unwinder([])
    # The last frame's saved rbp points to itself: sp would not grow, so the walk ends.
    assert unwinder.unwind(0xAAAA, 0x7000, 0x7000, fp_stack()) == [0xAAAA, 0x1111, 0x2222, 0x3333]
    assert Unwinder([], max_frames=2).unwind(0xAAAA, 0x7000, 0x7000, fp_stack()) == [0xAAAA, 0x1111]
    assert unwinder.unwind(0, 0x7000, 0x7000, fp_stack()) == []
    assert unwinder.unwind(0xAAAA, 0x7000, 0x9000, fp_stack()) == [0xAAAA]  # rbp outside the copy
    assert unwinder.unwind(0xAAAA, 0x7000, 0, fp_stack()) == [0xAAAA]  # no rbp
    assert unwinder.unwind(0xAAAA, 0x7000, 0x7000, b"") == [0xAAAA]
    assert unwinder.frames(0xAAAA, 0x7000, 0x7000, fp_stack()[:16]) == [
        "0xaaaa ([unknown])",
        "0x1111 ([unknown])",
    ]


# ------------------------------------------------------------------------------------------
# Real snapshots: glibc without frame pointers in the middle of the chain


@x86_64_only
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_unwind_real_snapshot(build_dir: Path, variant: str) -> None:
    snap = take_snapshot(build_dir, variant)
    _, with_debug = VARIANTS[variant]
    maps = parse_maps(snap.maps)
    unwinder = Unwinder(maps)
    frames_src = unwinder.frames_with_source(snap.ip, snap.sp, snap.bp, snap.stack)
    frames = [text for text, _ in frames_src]
    exe = snap.binary.name
    assert frames[0] == f"level3 ({exe})", frames
    pos = ordered_positions(
        frames,
        [
            [f"level3 ({exe})"],
            [f"level2 ({exe})"],
            [f"compare ({exe})"],
            ["qsort", "msort"],
            [f"level1 ({exe})"],
            [f"main ({exe})"],
        ],
    )
    libc_frames = frames[pos[2] + 1 : pos[4]]
    assert libc_frames and all("(libc.so" in f for f in libc_frames), frames
    assert pos[1] == 1 and pos[2] == 2 and pos[5] == pos[4] + 1, frames

    own = [
        src
        for text, src in frames_src
        if text.endswith(f"({exe})") and not text.startswith("_start")
    ]
    if with_debug:
        assert all(src and src.startswith("unwind_snapshot.c:") for src in own), frames_src
    else:
        assert all(src is None for src in own), frames_src

    addrs = unwinder.unwind(snap.ip, snap.sp, snap.bp, snap.stack)
    assert addrs[0] == snap.ip and len(addrs) == len(frames)
    exe_map = next(m for m in maps if m.path == str(snap.binary))
    module = Module.get(exe_map.path)
    assert module is not None
    bias = module.load_bias(exe_map)
    assert bias is not None
    if variant == "fp_nocfi_pie":  # the fixture's own frames really went by frame pointer
        assert module.cfa_row(snap.ip - bias) is None
    else:
        assert module.cfa_row(snap.ip - bias) is not None
    if "nopie" in variant:
        assert bias == 0
