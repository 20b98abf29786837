"""Process mappings: executable file-backed ranges of /proc/PID/maps and their ELF load bias."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["Mapping", "Segment", "load_bias", "parse_maps"]

_PAGE = 4096
_PF_X = 1


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
