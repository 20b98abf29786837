"""Where each process's code is, learned from the kernel as it happens (exec, executable file
mappings, fork), so a failure's user stack can be named after the process has exited and its
/proc/PID/maps is gone."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional, cast

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..unwind.elf import Module
from ..unwind.maps import Mapping

# Processes remembered (the least recently changed or used forgotten first), and executable
# mappings per process (a process mapping more code than this keeps its newest ones).
MAX_PROCESSES = 4096
MAX_MAPPINGS = 512
# Interpreters (PT_INTERP) remembered per executable.
MAX_INTERPRETERS = 256

_PAGE = 4096
_PF_X = 1


def decode_path(raw: bytes) -> Optional[str]:
    """A path as the kernel side writes it: components innermost first, each NUL-terminated,
    an empty one (or the end) closing them. None for what no real path looks like."""
    parts: list[str] = []
    for part in raw.split(b"\0"):
        if not part:
            break
        text = part.decode("utf-8", "surrogateescape")
        if "/" in text or text in (".", ".."):
            return None
        parts.append(text)
    if not parts:
        return None
    return "/" + "/".join(reversed(parts))


def code_mappings(path: str, bias: int) -> list[Mapping]:
    """The executable segments of the ELF file at `path`, loaded at `bias`, as mappings
    (what the kernel or the dynamic loader mapped for them)."""
    module = Module.get(path)
    if module is None:
        return []
    out = []
    for seg in module.segments:
        if not seg.flags & _PF_X:
            continue
        start = bias + (seg.vaddr & ~(_PAGE - 1))
        end = (bias + seg.vaddr + seg.memsz + _PAGE - 1) & ~(_PAGE - 1)
        if end > start:
            out.append(Mapping(start, end, seg.offset & ~(_PAGE - 1), path))
    return out


def _first_code_vaddr(path: str) -> Optional[int]:
    """The lowest vaddr of an executable segment: what the kernel's start_code is, relocated."""
    module = Module.get(path)
    if module is None:
        return None
    code = [seg.vaddr for seg in module.segments if seg.flags & _PF_X]
    return min(code) if code else None


def _first_load_vaddr(path: str) -> Optional[int]:
    module = Module.get(path)
    if module is None or not module.segments:
        return None
    return min(seg.vaddr for seg in module.segments) & ~(_PAGE - 1)


_interpreters: OrderedDict[str, Optional[str]] = OrderedDict()


def interpreter(path: str) -> Optional[str]:
    """The PT_INTERP of an executable (its dynamic loader), cached."""
    if path in _interpreters:
        _interpreters.move_to_end(path)
        return _interpreters[path]
    found: Optional[str] = None
    try:
        with open(path, "rb") as f:
            for seg in ELFFile(f).iter_segments():
                if seg["p_type"] == "PT_INTERP":
                    found = str(cast(Any, seg).get_interp_name())  # an InterpSegment
                    break
    except (OSError, ELFError, ValueError, UnicodeDecodeError):
        found = None
    _interpreters[path] = found
    while len(_interpreters) > MAX_INTERPRETERS:
        _interpreters.popitem(last=False)
    return found


@dataclass
class _Process:
    exe: Optional[str] = None
    start_code: int = 0
    interp_base: int = 0
    mapped: list[Mapping] = field(default_factory=list)
    generation: int = 0


class LearnedMaps:
    """The executable mappings of processes as the kernel reported them: set at exec, added to
    as files are mapped executable, inherited at fork. Bounded; never reads /proc."""

    def __init__(self, max_processes: int = MAX_PROCESSES, max_mappings: int = MAX_MAPPINGS):
        self.max_processes = max_processes
        self.max_mappings = max_mappings
        self._procs: OrderedDict[int, _Process] = OrderedDict()

    def __len__(self) -> int:
        return len(self._procs)

    def _put(self, pid: int, proc: _Process) -> None:
        self._procs[pid] = proc
        self._procs.move_to_end(pid)
        while len(self._procs) > self.max_processes:
            self._procs.popitem(last=False)

    def exec(self, pid: int, exe: str, start_code: int, interp_base: int) -> None:
        """pid exec'd `exe`: its code is at start_code, its interpreter's at interp_base."""
        self._put(pid, _Process(exe=exe, start_code=start_code, interp_base=interp_base))

    def mapped(self, pid: int, start: int, length: int, offset: int, path: str) -> None:
        """pid mapped `length` bytes of `path` from `offset` executable at `start`."""
        if length <= 0 or start + length > 1 << 64:
            return
        proc = self._procs.get(pid)
        if proc is None:
            proc = _Process()
        end = (start + length + _PAGE - 1) & ~(_PAGE - 1)
        # a new mapping replaces whatever it overlaps (MAP_FIXED over the loader's reservation)
        kept = [m for m in proc.mapped if m.end <= start or m.start >= end]
        kept.append(Mapping(start, end, offset, path))
        proc.mapped = kept[-self.max_mappings:]
        proc.generation += 1
        self._put(pid, proc)

    def forked(self, parent: int, child: int) -> None:
        proc = self._procs.get(parent)
        if proc is not None:
            self._put(child, _Process(proc.exe, proc.start_code, proc.interp_base,
                                      list(proc.mapped), 0))

    def knows(self, pid: int) -> bool:
        """Whether pid's code is known from its exec (or its parent's)."""
        proc = self._procs.get(pid)
        return proc is not None and proc.exe is not None

    def generation(self, pid: int) -> int:
        proc = self._procs.get(pid)
        return -1 if proc is None else proc.generation

    def maps(self, pid: int) -> list[Mapping]:
        """pid's executable mappings: the executable's and its interpreter's code (from their
        ELF program headers), then every file it mapped executable."""
        proc = self._procs.get(pid)
        if proc is None:
            return []
        out: list[Mapping] = []
        if proc.exe is not None:
            first = _first_code_vaddr(proc.exe)
            if first is not None and proc.start_code:
                out += code_mappings(proc.exe, proc.start_code - first)
            interp = interpreter(proc.exe)
            if interp and proc.interp_base:
                base = _first_load_vaddr(interp)
                if base is not None:
                    out += code_mappings(interp, proc.interp_base - base)
        for m in proc.mapped:
            out = [o for o in out if o.end <= m.start or o.start >= m.end]
            out.append(m)
        return sorted(out, key=lambda m: m.start)
