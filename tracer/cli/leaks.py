"""`memtrace leaks`: which code paths hold or grow memory, of chosen processes or of all."""

from __future__ import annotations

from typing import Optional

import click

from ..errors import UsageError
from ..model.leaks import DEFAULT_SAMPLE_BYTES, RATE_WINDOW
from .common import check_pids, guard, log, oom_score_option, protect_from_oom_killer


@click.command()
@click.option("-p", "--pid", "pids", type=int, multiple=True,
              help="Process to profile (repeatable, up to 4); its children are followed.")
@click.option("--all", "all_processes", is_flag=True,
              help="growth mode: every process on the host, new ones included.")
@click.option("--cgroup", default=None, metavar="PATH",
              help="With --all: only the processes in this cgroup or below it (a directory "
                   "under /sys/fs/cgroup, or a path relative to its hierarchy).")
@click.option("--mode", type=click.Choice(["growth", "malloc"]), default="growth",
              show_default=True,
              help="growth: what grows the process (first touches of memory, mappings, heap), "
                   "sampled by bytes, nearly free; malloc: exact outstanding allocations via "
                   "allocator uprobes.")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="Stop by itself after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per interval.")
@click.option("--folded", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write collapsed stacks (flamegraph.pl, speedscope) here on exit.")
@click.option("--flamegraph", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write an interactive HTML flame graph here on exit.")
@click.option("--pprof", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write a gzipped pprof profile (go tool pprof, Pyroscope, Parca) here on exit.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True)
@click.option("--window", type=click.FloatRange(min=1.0), default=RATE_WINDOW,
              show_default=True, help="Growth rates are over the last this many seconds.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="Stacks shown.")
@click.option("--sample-bytes", type=click.IntRange(min=1, max=1 << 30),
              default=DEFAULT_SAMPLE_BYTES, show_default=True,
              help="growth mode: one sample per this many bytes on average (a Poisson "
                   "process over the bytes); 1 samples every event.")
@click.option("--sample", type=click.IntRange(min=1), default=1, show_default=True,
              help="malloc mode: track one allocation in N (1 = exact).")
@click.option("--min-age", type=click.FloatRange(min=0), default=0.0,
              help="malloc mode: only allocations at least this many seconds old.")
@click.option("--min-size", type=click.IntRange(min=0), default=0,
              help="malloc mode: ignore smaller allocations.")
@click.option("--max-size", type=click.IntRange(min=1), default=None,
              help="malloc mode: ignore larger allocations.")
@oom_score_option
def leaks(pids: tuple[int, ...], all_processes: bool, cgroup: Optional[str], mode: str,
          duration: Optional[float], as_json: bool, folded: Optional[str],
          flamegraph: Optional[str], pprof: Optional[str], interval: float, window: float,
          top: int, sample_bytes: int, sample: int, min_age: float, min_size: int,
          max_size: Optional[int], oom_score_adj: int) -> None:
    """Which code paths hold or grow memory, live, without restarting anything: of chosen
    processes (-p) or of every process on the host (--all)."""
    from ..kernel.leaks import LeakSource
    from ..views.leaks import run_leaks

    def body() -> None:
        if pids and all_processes:
            raise UsageError("--all traces every process: give it without -p")
        if cgroup is not None and not all_processes:
            raise UsageError("--cgroup narrows --all: give --all with it")
        if not pids and not all_processes:
            raise UsageError("give the processes to profile with -p PID, or --all")
        if all_processes and mode != "growth":
            raise UsageError("--all works in growth mode only")
        if cgroup is not None:
            from ..host.cgroups import CgroupResolver

            try:
                CgroupResolver().resolve_user_path(cgroup)  # a bad path: one line, up front
            except LookupError as e:
                raise UsageError(str(e)) from e
        check_pids(pids)
        if len(set(pids)) > 4:
            raise UsageError("at most 4 processes with -p (their children are followed "
                             "automatically)")
        protect_from_oom_killer(oom_score_adj)
        src = LeakSource(list(pids), mode, log=log, sample_bytes=sample_bytes, sample=sample,
                         min_size=min_size, max_size=max_size, min_age=min_age,
                         all_processes=all_processes, cgroup=cgroup, rate_window=window)
        run_leaks(src, duration=duration, as_json=as_json, interval=interval, folded=folded,
                  flamegraph=flamegraph, pprof=pprof, top=top, log=log)

    guard(body)
