"""`memtrace top`: the live dashboard, from the kernel or a recording."""

from __future__ import annotations

from typing import Any, Optional

import click

from ..errors import UsageError
from .common import (
    filter_options,
    growth_option,
    guard,
    live_source,
    log,
    oom_score_option,
    skipped_line_warning,
    slab_hooks_option,
)


def replay_source(path: str, speed: float) -> Any:
    """The source of `memtrace top --replay FILE --speed X`, with warnings for skipped lines;
    a recording that cannot be read ends the command (exit 2 for one from a newer memtrace)."""
    return guard(lambda: _open_replay(path, speed))


def _open_replay(path: str, speed: float) -> Any:
    from ..errors import ReplayError
    from ..recording.replay import ReplaySource

    def on_error(e: ReplayError) -> None:
        log(f"memtrace: warning: {path}: {e}; the replay stops there")

    try:
        return ReplaySource.open(path, speed, on_error=on_error,
                                 warn=lambda n, why: log(skipped_line_warning(path, n, why)))
    except ReplayError as e:
        raise ReplayError(f"{path}: {e}", e.exit_code) from None
    except OSError as e:
        raise ReplayError(f"{path}: cannot read it ({e.strerror})") from None


@click.command()
@filter_options
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between dashboard refreshes.")
@click.option("--replay", metavar="FILE", default=None,
              help="Drive the dashboard from a recording (memtrace record) instead of the kernel.")
@click.option("--speed", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Replay speed: 1 = real time, 2 = twice as fast, 0 = as fast as possible.")
@click.option("--probe-cost/--no-probe-cost", default=True, show_default=True,
              help="Show what memtrace's own probes cost (turns the kernel's BPF run-time "
                   "stats on while top runs: about two clock reads per probe event).")
@growth_option
@slab_hooks_option
@oom_score_option
def top(pids: tuple[int, ...], cgroup: Optional[str], comm: Optional[str],
        duration: Optional[float], interval: float, replay: Optional[str], speed: float,
        probe_cost: bool, growth: bool, slab_hooks: str, oom_score_adj: int) -> None:
    """Live dashboard of failures by process, cgroup, syscall and allocation order."""
    from ..views.top import run_top

    def body() -> None:
        if replay is not None:
            if pids or cgroup or comm:
                raise UsageError("-p/--pid, --cgroup and --comm do not apply to --replay")
            source = _open_replay(replay, speed)
        else:
            source = live_source(pids, cgroup, comm, oom_score_adj, probe_cost=probe_cost,
                                 growth=growth, slab_hooks=slab_hooks)
        # a recording has no growing processes to show: no growing panel for it
        run_top(source, duration=duration, interval=interval, growth=growth and replay is None)

    guard(body)
