"""Adaptive depth: when the expensive hooks (slab allocations) are attached, and why.

The slab tracepoints fire on every kmalloc and kmem_cache_alloc: on a network server
that is every packet buffer, and their programs cost a few points of throughput even when
they return at once. Failures are rare and recur, so memtrace keeps only the cheap hooks
(syscall exits, the page allocator, OOM kills) on all the time and attaches the slab hooks
while they can pay: once anything failed (the next failure of the kind is then explained
in full) and while memory is tight; it detaches them after a quiet period. This module
decides; LiveSource attaches and detaches (kernel/failures.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

ADAPTIVE = "adaptive"  # attached after a failure or while memory is tight
ALWAYS = "always"  # attached for the whole run (full depth, the floor's cost)
SLAB_HOOK_MODES = (ADAPTIVE, ALWAYS)

DEFAULT_QUIET = 300.0  # seconds without a reason to keep them before they are detached


@dataclass(frozen=True)
class Change:
    """A decision to attach (armed=True) or detach the hooks, with its reason."""

    armed: bool
    reason: str


class Arming:
    """Armed from a trigger until `quiet` seconds pass without another one."""

    def __init__(self, mode: str = ADAPTIVE, quiet: float = DEFAULT_QUIET):
        if mode not in SLAB_HOOK_MODES:
            raise ValueError(f"slab hooks: {mode!r} is not one of {', '.join(SLAB_HOOK_MODES)}")
        self.mode = mode
        self.quiet = quiet
        self.armed = mode == ALWAYS
        self.until = 0.0  # armed until this moment (monotonic), unless triggered again
        self.reason = "always attached" if self.armed else ""

    def trigger(self, now: float, reason: str) -> Optional[Change]:
        """A reason to have the hooks attached now (a failure, memory being tight)."""
        if self.mode == ALWAYS:
            return None
        self.until = max(self.until, now + self.quiet)
        if self.armed:
            return None
        self.armed = True
        self.reason = reason
        return Change(True, reason)

    def tick(self, now: float) -> Optional[Change]:
        """Detach once the quiet period passed without a trigger."""
        if self.mode == ALWAYS or not self.armed or now < self.until:
            return None
        self.armed = False
        quiet = f"{self.quiet:g} s without a failure or tight memory"
        self.reason = quiet
        return Change(False, quiet)

    def undo(self, now: float) -> None:
        """The attach failed: back to disarmed (a later trigger tries again)."""
        if self.mode == ALWAYS or not self.armed:
            return
        self.armed = False
