"""The one place memtrace compiles and loads BPF programs (bcc), shared by every source.

Only tracer/kernel/ imports bcc, and within it only this module."""

from __future__ import annotations

from typing import Any

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
