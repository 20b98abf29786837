#!/usr/bin/env python3
"""Load bench/floor.bpf.c: minimal raw-tracepoint programs on memtrace's hot hooks.

Attaches one program each to sys_exit, mm_page_alloc, kmalloc and kmem_cache_alloc
(the floor), or with --only-sys-exit to sys_exit alone (the bare syscall hook), prints
"ready" on stdout once all are attached, and stays attached until SIGTERM or SIGINT.
These are the baselines bench/run_all.py compares memtrace against.

Run as root: python bench/floor.py [--only-sys-exit]
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # the checkout's tracer package

HOOKS = (
    ("sys_exit", "floor_sys_exit"),
    ("mm_page_alloc", "floor_page_alloc"),
    ("kmalloc", "floor_kmalloc"),
    ("kmem_cache_alloc", "floor_kmem_cache"),
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the floor: trivial programs on memtrace's hot hooks")
    ap.add_argument("--only-sys-exit", action="store_true",
                    help="attach the sys_exit program alone (the bare syscall hook)")
    args = ap.parse_args(argv)
    hooks = HOOKS[:1] if args.only_sys_exit else HOOKS

    from tracer.errors import HostError
    from tracer.host import system

    try:
        system.require_root("the floor benchmark")
        system.prepare_headers()
    except HostError as e:
        print(f"floor: error: {e}", file=sys.stderr)
        return 1
    from bcc import BPF

    # Block the stop signals and wait for them synchronously: no race between a
    # check and a pause, and a signal that arrives while compiling is not lost.
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)

    bpf = BPF(src_file=str(BENCH / "floor.bpf.c").encode())
    try:
        for tp, fn in hooks:
            bpf.attach_raw_tracepoint(tp=tp.encode(), fn_name=fn.encode())
        print("ready", flush=True)
        signal.sigwait(stops)
        hits = [int(v.value) for v in bpf[b"floor_hits"].values()]
        print(f"stopped; failures seen per hook: {dict(zip([h[0] for h in hooks], hits))}",
              flush=True)
    finally:
        bpf.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
