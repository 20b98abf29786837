"""The one place memtrace compiles and loads BPF programs (bcc), shared by every source.

Only tracer/kernel/ imports bcc, and within it only this module."""

from __future__ import annotations

from typing import Any, Callable

from ..errors import HostError
from . import abi


def load(source: str, cflags: list[str], what: str) -> Any:
    """Compile bpf/<source> with cflags and load it; HostError saying what could not load."""
    try:
        from bcc import BPF  # the one bcc import
    except ImportError as e:
        raise HostError(
            "bcc's Python bindings are missing: install python3-bpfcc (sudo make setup)") from e
    try:
        return BPF(src_file=str(abi.bpf_dir() / source).encode(), cflags=cflags)
    except Exception as e:  # bcc raises bare Exception on compile and load errors
        raise HostError(f"could not compile or load {what}: {e}") from e


class Loaded:
    """Owns a loaded BPF object: close() detaches every probe and frees the maps, once."""

    bpf: Any = None

    def close(self) -> None:
        if self.bpf is not None:
            try:
                self.bpf.cleanup()
            finally:
                self.bpf = None


class RingReader:
    """One ring buffer of a loaded program, read on its own (a libbpf ring buffer manager of
    its own, not the program's shared one): it can be drained from inside another ring
    buffer's callback (an OOM kill's event drains the growth ring buffer first), and polled
    without waiting on the others. `callback(data, size)` gets each record; a negative
    return ends the read (libbpf stops at it, the record that returned it consumed)."""

    def __init__(self, bpf: Any, name: str, callback: Callable[[Any, int], int]):
        from bcc.libbcc import _RINGBUF_CB_TYPE, lib  # the ring buffer calls bcc wraps

        def on_record(_ctx: Any, data: Any, size: int) -> int:
            return callback(data, size)

        self._lib = lib
        self._callback = _RINGBUF_CB_TYPE(on_record)  # kept: libbpf holds a pointer to it
        try:
            fd = bpf[name.encode()].map_fd
        except KeyError as e:
            raise HostError(f"no ring buffer {name} in the loaded program") from e
        self._manager = lib.bpf_new_ringbuf(fd, self._callback, None)
        if not self._manager:
            raise HostError(f"could not open the ring buffer {name}")

    def read(self) -> int:
        """Whatever the ring buffer holds now, without waiting: the records read (libbpf's
        count), or a negative number when a callback ended the read."""
        if not self._manager:
            return 0
        return int(self._lib.bpf_consume_ringbuf(self._manager))

    def close(self) -> None:
        if self._manager:
            self._lib.bpf_free_ringbuf(self._manager)
            self._manager = None
