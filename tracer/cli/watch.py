"""`memtrace watch`: one line (or JSON object) per failure, as it happens."""

from __future__ import annotations

from typing import Optional

import click

from .common import (
    filter_options,
    growth_option,
    guard,
    live_source,
    oom_score_option,
    slab_hooks_option,
)


@click.command()
@filter_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@growth_option
@slab_hooks_option
@oom_score_option
def watch(pids: tuple[int, ...], cgroup: Optional[str], comm: Optional[str],
          duration: Optional[float], as_json: bool, growth: bool, slab_hooks: str,
          oom_score_adj: int) -> None:
    """One line per failure, as it happens."""
    from ..views.watch import run_watch

    guard(lambda: run_watch(live_source(pids, cgroup, comm, oom_score_adj, growth=growth,
                                        slab_hooks=slab_hooks),
                            duration=duration, as_json=as_json))
