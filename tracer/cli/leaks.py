"""`memtrace leaks`: which code paths hold or grow a running process's memory."""

from __future__ import annotations

from typing import Optional

import click

from ..errors import UsageError
from .common import check_pids, guard, log


@click.command()
@click.option("-p", "--pid", "pids", type=int, multiple=True, required=True,
              help="Process to profile (repeatable, up to 4); its children are followed.")
@click.option("--mode", type=click.Choice(["growth", "malloc"]), default="growth",
              show_default=True,
              help="growth: what grows the process (mmap, brk, sampled first touches), "
                   "nearly free; malloc: exact outstanding allocations via allocator uprobes.")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="Stop by itself after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per interval.")
@click.option("--folded", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write collapsed stacks (flamegraph.pl, speedscope) here on exit.")
@click.option("--flamegraph", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write an interactive HTML flame graph here on exit.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True)
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="Stacks shown.")
@click.option("--fault-period", type=click.IntRange(min=1), default=64, show_default=True,
              help="growth mode: sample one write fault in N.")
@click.option("--sample", type=click.IntRange(min=1), default=1, show_default=True,
              help="malloc mode: track one allocation in N (1 = exact).")
@click.option("--min-age", type=click.FloatRange(min=0), default=0.0,
              help="malloc mode: only allocations at least this many seconds old.")
@click.option("--min-size", type=click.IntRange(min=0), default=0,
              help="malloc mode: ignore smaller allocations.")
@click.option("--max-size", type=click.IntRange(min=1), default=None,
              help="malloc mode: ignore larger allocations.")
def leaks(pids: tuple[int, ...], mode: str, duration: Optional[float], as_json: bool,
          folded: Optional[str], flamegraph: Optional[str], interval: float, top: int,
          fault_period: int, sample: int, min_age: float, min_size: int,
          max_size: Optional[int]) -> None:
    """Which code paths hold or grow a running process's memory, live, without restarting it."""
    from ..kernel.leaks import LeakSource
    from ..views.leaks import run_leaks

    def body() -> None:
        check_pids(pids)
        if len(set(pids)) > 4:
            raise UsageError("at most 4 processes with -p (their children are followed "
                             "automatically)")
        src = LeakSource(list(pids), mode, log=log, fault_period=fault_period, sample=sample,
                         min_size=min_size, max_size=max_size, min_age=min_age)
        run_leaks(src, duration=duration, as_json=as_json, interval=interval, folded=folded,
                  flamegraph=flamegraph, top=top, log=log)

    guard(body)
