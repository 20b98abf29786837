"""Unwinding of captured x86-64 stack snapshots (CFI, else frame pointers) and frame symbolisation."""

from __future__ import annotations

import bisect
import os
import struct
from collections import OrderedDict
from typing import Callable, Optional, Sequence

from .cfi import RA, RBP, RSP, caller_registers
from .elf import Module
from .maps import Mapping, parse_maps

__all__ = ["ProcessUnwinders", "Unwinder"]

_STACK_WORD = struct.Struct("<Q")  # one 64-bit little-endian slot of the copied stack


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
                return int(_STACK_WORD.unpack_from(stack, addr - lo)[0])
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
            return caller_registers(row, regs, read)
        return self._step_fp(regs, read)

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

    def symbolize(self, addr: int, first: bool = False, with_source: bool = True
                  ) -> tuple[str, str, Optional[str]]:
        """(function, module basename, "file:line" or None) of a frame address.

        Return addresses (first=False) are looked up at addr-1, inside the call instruction.
        Without a symbol, the function is the address in hex: relative to the module (its ELF
        vaddr) when the module is known, which stays stable across ASLR, else absolute.
        `with_source` False leaves file:line out (None): reading a module's line table is most
        of the cost of naming its first frame."""
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
        return name, module_name, module.source(vaddr) if with_source else None

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


# Processes whose unwinders are kept (least recently used dropped first). Each holds its
# mappings and references to the ELF modules it resolved, so the bound is what keeps a host
# with many short-lived failing processes from growing memtrace without end.
MAX_PROCESSES = 64


class ProcessUnwinders:
    """One Unwinder per process, made from its /proc/PID/maps and refreshed on demand; at
    most `max_processes` of them, the least recently used dropped first."""

    def __init__(self, max_processes: int = MAX_PROCESSES, proc: str = "/proc"):
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

    def forget(self) -> None:
        """Drop every process's unwinder and the shared cache of ELF modules (symbols, CFI,
        line tables): all of it is rebuilt on demand. Used to give memory back when memtrace
        itself runs out of it."""
        self._by_pid.clear()
        Module._cache.clear()  # the class-wide cache of parsed ELF files (see Module.get)

    def __len__(self) -> int:
        return len(self._by_pid)

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
