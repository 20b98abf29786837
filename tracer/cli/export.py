"""`memtrace export`: Prometheus metrics of the exact in-kernel counters."""

from __future__ import annotations

from typing import Optional

import click

from .common import (
    filter_options,
    growth_option,
    guard,
    live_source,
    log,
    oom_score_option,
    slab_hooks_option,
)


@click.command()
@filter_options
@click.option("--listen", default="127.0.0.1:9464", show_default=True,
              help="HOST:PORT for /metrics; binding beyond loopback is your explicit choice.")
@click.option("--max-cgroups", type=click.IntRange(min=1), default=50, show_default=True,
              help="Distinct cgroup label values; more are folded into \"other\" and counted.")
@click.option("--per-process", is_flag=True,
              help="Add a comm label (bounded by --max-processes); off by default.")
@click.option("--max-processes", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--probe-cost", is_flag=True,
              help="Export what memtrace's own probes cost (memtrace_probe_runs_total, "
                   "memtrace_probe_run_seconds_total): turns the kernel's BPF run-time stats "
                   "on while it runs, about two clock reads per probe event; off by default.")
@growth_option
@slab_hooks_option
@oom_score_option
def export(pids: tuple[int, ...], cgroup: Optional[str], comm: Optional[str],
           duration: Optional[float], listen: str, max_cgroups: int, per_process: bool,
           max_processes: int, probe_cost: bool, growth: bool, slab_hooks: str,
           oom_score_adj: int) -> None:
    """Serve Prometheus metrics of allocation failures (exact in-kernel counters)."""
    from ..views.prometheus import parse_listen, run_export

    def body() -> None:
        parse_listen(listen)
        run_export(live_source(pids, cgroup, comm, oom_score_adj, probe_cost=probe_cost,
                               slab_hooks=slab_hooks, growth=growth),
                   listen=listen, max_cgroups=max_cgroups,
                   per_process=per_process, max_processes=max_processes, duration=duration,
                   log=log)

    guard(body)
