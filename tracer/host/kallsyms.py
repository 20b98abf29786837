"""Kernel addresses to function names from /proc/kallsyms, held compactly (a few MiB for the
whole table, where a table of strings and objects costs tens)."""

from __future__ import annotations

import bisect
import re
from array import array
from typing import Optional

from .system import release_free_heap

KALLSYMS = "/proc/kallsyms"

# "ffffffff81000000 T _stext" or, for a module, "ffffffffc0201000 t name\t[module]"
_LINE = re.compile(rb"^([0-9a-fA-F]+) \S+ ([^\s]+)", re.M)
_NAME = re.compile(rb"[^\s]+")


def _read_all(path: str) -> bytearray:
    """The whole file in one buffer. procfs reports no size and hands out a page per read:
    reading into one reused buffer keeps the pieces from littering the C heap."""
    out = bytearray()
    piece = bytearray(1 << 16)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(piece)
            if not n:
                break
            out += memoryview(piece)[:n]
    return out


class KernelSymbols:
    """The kernel's symbol table, read once on first use and kept as the file's own text
    plus two arrays (each symbol's address and where its name starts in the text): one
    object per table, not one per symbol, so reading it leaves little behind. Addresses
    below the first symbol, or zero addresses (kptr_restrict hides them from this reader),
    have no name."""

    def __init__(self, path: str = KALLSYMS):
        self.path = path
        self._addrs: Optional[array] = None
        self._names = array("I")  # where each symbol's name starts in _text, address order
        self._text = bytearray()

    def _load(self) -> None:
        try:
            text = _read_all(self.path)
        except OSError:
            text = bytearray()
        lines = text.count(b"\n") + 1
        addrs = array("Q", bytes(8 * lines))  # sized once: no growth, no copies
        names = array("I", bytes(4 * lines))
        n = 0
        ordered = True
        last = 0
        for m in _LINE.finditer(text):
            addr = int(m.group(1), 16)
            if not addr:
                continue
            if addr < last:
                ordered = False
            addrs[n], names[n], last = addr, m.start(2), addr
            n += 1
        del addrs[n:], names[n:]
        if not ordered:  # the kernel lists them in order; sort only if it did not
            order = sorted(range(n), key=addrs.__getitem__)  # stable: the first name wins
            addrs = array("Q", (addrs[i] for i in order))
            names = array("I", (names[i] for i in order))
        self._addrs, self._names, self._text = addrs, names, text
        release_free_heap()  # what reading it freed

    def name(self, addr: int) -> Optional[str]:
        """The symbol containing addr (the nearest at or below it), or None."""
        if self._addrs is None:
            self._load()
        assert self._addrs is not None
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return None
        # Several names at one address: the first the kernel lists (aliases follow it).
        while i > 0 and self._addrs[i - 1] == self._addrs[i]:
            i -= 1
        m = _NAME.match(self._text, self._names[i])
        return m.group(0).decode("utf-8", "replace") if m else None

    def forget(self) -> None:
        """Drop the table (read again on next use)."""
        self._addrs = None
        self._names = array("I")
        self._text = bytearray()
