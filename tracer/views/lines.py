"""`memtrace watch`: one human-readable line per failure."""

from __future__ import annotations

import datetime as dt

from ..diagnose.growth import what_grew
from ..model.decode import format_bytes, order_to_bytes
from ..model.failures import Failure, KernelFailure
from .terminal import inert


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


def kernel_failure_phrase(k: KernelFailure) -> str:
    """'an order-8 GFP_KERNEL_ACCOUNT page allocation' and the like."""
    if k.kind == "page_alloc":
        what = f"an order-{k.order} {k.gfp} page allocation"
    elif k.kind == "slab":
        size = f"{format_bytes(k.size)} " if k.size else ""
        cache = f"from {k.cache} " if k.cache else ""
        what = f"a {size}slab allocation {cache}({k.gfp})"
    elif k.kind == "vmalloc":
        what = f"a {format_bytes(k.size or 0)} vmalloc"
    elif k.kind == "percpu":
        what = f"a {format_bytes(k.size or 0)} percpu allocation"
    else:
        what = f"a {k.kind} allocation"
    return what + " failed"


def who(f: Failure) -> str:
    cg = f" cgroup {f.cgroup}" if f.cgroup else ""
    return f"pid {f.pid} ({f.comm}){cg}"


def describe(f: Failure) -> str:
    """The failure in one sentence, without time, made inert: it quotes what the traced
    system named (comm, cgroup path, slab cache, kernel text)."""
    if f.kind == "syscall":
        err = f.errno or "no errno (old break returned)"
        size = f" asking {format_bytes(f.size)}" if f.size else ""
        text = f"{f.syscall}() -> {err}{size}, {who(f)}"
        if f.linked:
            text += " because " + " and ".join(kernel_failure_phrase(k) for k in f.linked)
    elif f.kind == "page_alloc":
        text = (f"page allocation order {f.order} ({format_bytes(order_to_bytes(f.order or 0))}) "
                f"{f.gfp} failed, {who(f)}")
    elif f.kind == "slab":
        cache = f" from {f.detail['cache']}" if f.detail.get("cache") else ""
        text = f"slab allocation of {format_bytes(f.size or 0)}{cache} ({f.gfp}) failed, {who(f)}"
    elif f.kind in ("vmalloc", "percpu"):
        text = f"{f.kind} allocation of {format_bytes(f.size or 0)} failed, {who(f)}"
    elif f.kind == "oom_kill":
        rss = format_bytes(int(f.detail.get("rss_bytes", 0)))
        constraint = f.detail.get("constraint")
        text = f"OOM kill of {who(f)}, rss {rss}" + (f", {constraint}" if constraint else "")
    elif f.kind == "memcg":
        text = (f"memory cgroup {f.cgroup} hit its limit: {f.detail.get('event')} "
                f"+{f.detail.get('increase')} (total {f.detail.get('total')})")
    else:
        text = f"{f.kind} failure, {who(f)}"
    if f.kind != "syscall" and f.syscall:
        text += f" inside {f.syscall}() -> {f.errno}"
    return inert(text)


def grew_phrase(f: Failure) -> str:
    """What grew before an OOM kill, made inert ("" when nothing was seen growing)."""
    return inert(what_grew(f.grew, f.pid))


def format_line(f: Failure) -> str:
    line = f"{_when(f.time)} {inert(f.kind):<10} {describe(f)}"
    if f.cause:
        line += f"  [cause: {inert(f.cause)}]"
    grew = grew_phrase(f)
    if grew:  # on the same line: one line per failure, whatever the names hold
        line += f"  [what grew: {grew}]"
    return line
