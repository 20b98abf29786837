"""`memtrace watch`: one line (or JSON object) per failure, as it happens."""

from __future__ import annotations

from typing import Optional

import click

from .common import filter_options, guard, live_source


@click.command()
@filter_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def watch(pids: tuple[int, ...], cgroup: Optional[str], comm: Optional[str],
          duration: Optional[float], as_json: bool) -> None:
    """One line per failure, as it happens."""
    from ..views.watch import run_watch

    guard(lambda: run_watch(live_source(pids, cgroup, comm), duration=duration,
                            as_json=as_json))
