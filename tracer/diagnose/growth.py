"""What grew before an OOM kill, in words: the one place growth stacks become sentences
("pid 412 (hoarder) grew 61 MiB in 4 s through hoard_buffers <- main") for the diagnosis
and every view. Plain text: the views make it inert, the JSON keeps it exact."""

from __future__ import annotations

import re
from typing import Sequence

from ..model.decode import format_bytes
from ..model.leaks import Frames, Growth

GREW_SHOWN = 3  # growth stacks an explanation names; the JSON `grew` has them all
FRAMES_SHOWN = 3  # functions named per stack, innermost first
_NAME_LIMIT = 48  # a C++ name can run to hundreds of characters

# Frames of the C library, the dynamic loader and allocators: what grows memory on behalf of
# the program, not where the program asked for it.
_RUNTIME_MODULE = re.compile(r"\((?:libc[.-]|ld-linux|ld-[0-9]|libjemalloc|libtcmalloc)[^()]*\)$")
_STARTUP = ("__libc_start_call_main ", "__libc_start_main", "_start ")
_FUNCTION = re.compile(r"^(.*?) \([^()]*\)$")


def program_frames(frames: Frames) -> Frames:
    """The frames of the program itself: the C library's and allocator's innermost frames and
    the start-up frames outermost left out (all of them when nothing else is left)."""
    out = list(frames)
    while out and _RUNTIME_MODULE.search(out[0]):
        out.pop(0)
    while out and out[-1].startswith(_STARTUP):
        out.pop()
    return tuple(out) or tuple(frames)


def function_name(frame: str) -> str:
    """"hoard_buffers (hoarder)" -> "hoard_buffers": the name without its module, cut short
    when long. A frame without a symbol (an address) keeps its module: it says more."""
    m = _FUNCTION.match(frame)
    name = m.group(1) if m and m.group(1) and not m.group(1).startswith("0x") else frame
    return name if len(name) <= _NAME_LIMIT else name[: _NAME_LIMIT - 3] + "..."


def short_stack(frames: Frames, n: int = FRAMES_SHOWN) -> str:
    """"hoard_buffers <- main": the program's innermost n functions."""
    return " <- ".join(function_name(f) for f in program_frames(frames)[:n])


def grew_sentence(g: Growth) -> str:
    """One growth as a sentence: "pid 412 (hoarder) grew 61 MiB in 4 s through hoard_buffers
    <- main"."""
    span = f"in {g.seconds:.0f} s" if g.seconds >= 1 else "in under a second"
    through = short_stack(g.frames)
    return (f"pid {g.pid} ({g.comm}) grew {format_bytes(g.bytes)} {span}"
            + (f" through {through}" if through else ""))


def shown_growth(grew: Sequence[Growth], victim: int, n: int = GREW_SHOWN) -> list[Growth]:
    """The n growths an explanation names: the victim's largest first, and when the cgroup's
    other processes grew too (a memory cgroup OOM), room for the largest of them."""
    own = [g for g in grew if g.pid == victim]
    others = [g for g in grew if g.pid != victim]
    keep_own = min(len(own), n - min(1, len(others)))
    return own[:keep_own] + others[: n - keep_own]


def what_grew(grew: Sequence[Growth], victim: int, n: int = GREW_SHOWN) -> str:
    """"pid 412 (hoarder) grew 61 MiB in 4 s through hoard_buffers <- main; pid 413 (...)
    grew ... (+2 more)", or "" when nothing was seen growing."""
    shown = shown_growth(grew, victim, n)
    if not shown:
        return ""
    more = len(grew) - len(shown)
    return "; ".join(grew_sentence(g) for g in shown) + (f" (+{more} more)" if more else "")
