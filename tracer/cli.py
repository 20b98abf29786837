"""The `memtrace` command line: thin click commands that call into the modules doing the work."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional

import click

from . import __version__


class DefaultToTop(click.Group):
    """`memtrace` and `memtrace -p 123` mean `memtrace top ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h",
                                                                          "--version")):
            args = ["top", *args]
        return super().parse_args(ctx, args)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"memtrace: error: {message}", err=True)
    sys.exit(code)


def log(message: str) -> None:
    click.echo(message, err=True)


def filter_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--duration", type=click.FloatRange(min=0), default=None,
                     help="Stop by itself after this many seconds.")(f)
    f = click.option("--comm", default=None, help="Only processes with this command name.")(f)
    f = click.option("--cgroup", default=None,
                     help="Only this cgroup and its children (path under the cgroup mount, "
                          "or the directory itself).")(f)
    f = click.option("-p", "--pid", "pids", type=int, multiple=True,
                     help="Only this process (repeatable).")(f)
    return f


def build_filter(pids: tuple[int, ...], cgroup: Optional[str], comm: Optional[str]):
    from .cgroups import CgroupResolver
    from .model import Filter

    for pid in pids:
        if pid <= 0 or not os.path.exists(f"/proc/{pid}"):
            fail(f"no such process: {pid}")
    cg_path = None
    if cgroup is not None:
        try:
            _h, cg_path = CgroupResolver().resolve_user_path(cgroup)
        except LookupError as e:
            fail(str(e))
    return Filter(pids=frozenset(pids), cgroup=cg_path, comm=comm)


def live_source(filt):
    from .collector import LiveSource

    return LiveSource(filt, log=log)


def guard(fn: Callable[[], Any]) -> Any:
    """Run a command body, turning the host problems users can fix into one-line errors."""
    from .host import HostError

    try:
        return fn()
    except HostError as e:
        fail(str(e))
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)


@click.group(cls=DefaultToTop, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memtrace")
def main() -> None:
    """Live tracer of memory-allocation failures: every ENOMEM, kernel allocation failure,
    OOM kill and memory cgroup limit hit, per process, cgroup and allocation order.

    Without a command, runs `top`: the live dashboard."""


@main.command()
@filter_options
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between dashboard refreshes.")
@click.option("--replay", metavar="FILE", default=None,
              help="Drive the dashboard from a recording (memtrace record) instead of the kernel.")
@click.option("--speed", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Replay speed: 1 = real time, 2 = twice as fast, 0 = as fast as possible.")
def top(pids: tuple[int, ...], cgroup: Optional[str], comm: Optional[str],
        duration: Optional[float], interval: float, replay: Optional[str], speed: float) -> None:
    """Live dashboard of failures by process, cgroup, syscall and allocation order."""
    from .views.top import run_top

    if replay is not None:
        from .cli_record import replay_source

        if pids or cgroup or comm:
            fail("-p/--pid, --cgroup and --comm do not apply to --replay")
        guard(lambda: run_top(replay_source(replay, speed), duration=duration, interval=interval))
        return
    filt = build_filter(pids, cgroup, comm)
    guard(lambda: run_top(live_source(filt), duration=duration, interval=interval))


@main.command()
@filter_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def watch(pids: tuple[int, ...], cgroup: Optional[str], comm: Optional[str],
          duration: Optional[float], as_json: bool) -> None:
    """One line per failure, as it happens."""
    from .views.watch import run_watch

    filt = build_filter(pids, cgroup, comm)
    guard(lambda: run_watch(live_source(filt), duration=duration, as_json=as_json))


@main.command()
@click.argument("pid", type=int)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def explain(pid: int, as_json: bool) -> None:
    """How close process PID is to each limit that can fail its next allocation.

    No tracing: works without root for your own processes. Exit status 1 when a limit
    is more than 90% used, so it can gate scripts."""
    from .explain import ExplainError, run_explain

    if pid <= 0:
        fail(f"no such process: {pid}")
    try:
        sys.exit(run_explain(pid, as_json))
    except ExplainError as e:
        fail(str(e), code=2)


@main.command()
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
    from .collector import LeakSource
    from .views.leaks_view import run_leaks

    for pid in pids:
        if pid <= 0 or not os.path.exists(f"/proc/{pid}"):
            fail(f"no such process: {pid}")
    if len(set(pids)) > 4:
        fail("at most 4 processes with -p (their children are followed automatically)")

    def body() -> None:
        src = LeakSource(list(pids), mode, log=log, fault_period=fault_period, sample=sample,
                         min_size=min_size, max_size=max_size, min_age=min_age)
        run_leaks(src, duration=duration, as_json=as_json, interval=interval, folded=folded,
                  flamegraph=flamegraph, top=top, log=log)

    guard(body)


@main.command()
@filter_options
@click.option("--listen", default="127.0.0.1:9464", show_default=True,
              help="HOST:PORT for /metrics; binding beyond loopback is your explicit choice.")
@click.option("--max-cgroups", type=click.IntRange(min=1), default=50, show_default=True,
              help="Distinct cgroup label values; more are folded into \"other\" and counted.")
@click.option("--per-process", is_flag=True,
              help="Add a comm label (bounded by --max-processes); off by default.")
@click.option("--max-processes", type=click.IntRange(min=1), default=50, show_default=True)
def export(pids: tuple[int, ...], cgroup: Optional[str], comm: Optional[str],
           duration: Optional[float], listen: str, max_cgroups: int, per_process: bool,
           max_processes: int) -> None:
    """Serve Prometheus metrics of allocation failures (exact in-kernel counters)."""
    from .exporter import ListenError, parse_listen, run_export

    try:
        parse_listen(listen)
    except ListenError as e:
        fail(str(e))
    filt = build_filter(pids, cgroup, comm)

    def body() -> None:
        try:
            run_export(live_source(filt), listen=listen, max_cgroups=max_cgroups,
                       per_process=per_process, max_processes=max_processes, duration=duration,
                       log=log)
        except ListenError as e:
            fail(str(e))

    guard(body)


@main.command()
def doctor() -> None:
    """What this host supports, and whether each probe attaches. Exit 0 when the core ones do."""
    from .doctor import run_doctor

    sys.exit(guard(run_doctor))


from .cli_record import record, report  # noqa: E402  (needs filter_options above: no cycle)

main.add_command(record)
main.add_command(report)

if __name__ == "__main__":
    main()
