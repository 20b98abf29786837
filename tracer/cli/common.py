"""What every command shares: the filter options, one-line errors and exit codes, the source."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, NoReturn, Optional

import click

from ..errors import MemtraceError, UsageError
from ..host.system import OOM_SCORE_ADJ_DEFAULT
from ..views.terminal import inert


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"memtrace: error: {inert(message)}", err=True)  # messages may quote traced names
    sys.exit(code)


def log(message: str) -> None:
    click.echo(inert(message), err=True)


def skipped_line_warning(path: str, line: int, reason: str) -> str:
    return f"memtrace: warning: {path}: line {line}: {reason}; skipped"


def guard(fn: Callable[[], Any]) -> Any:
    """Run a command body: every MemtraceError becomes one line on stderr and its exit status;
    a closed stdout (memtrace ... | head) ends quietly."""
    try:
        return fn()
    except MemtraceError as e:
        fail(str(e), e.exit_code)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
    except MemoryError:  # outside the loop, which recovers from it itself (e.g. compiling)
        fail("memtrace ran out of memory", 1)


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


def oom_score_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--oom-score-adj: how much less likely than other processes the OOM killer is to pick
    memtrace, which must outlive the memory exhaustion it watches."""
    return click.option(
        "--oom-score-adj", type=click.IntRange(-1000, 1000), default=OOM_SCORE_ADJ_DEFAULT,
        envvar="MEMTRACE_OOM_SCORE_ADJ", show_default=True, show_envvar=True,
        help="Lower memtrace's own oom_score_adj to this while it traces (kept if already "
             "lower), so the OOM killer picks other processes first; -1000 exempts it.")(f)


def slab_hooks_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--slab-hooks: the slab tracepoints fire on every kmalloc; attach them only while they
    can pay (adaptive) or for the whole run (always)."""
    return click.option(
        "--slab-hooks", type=click.Choice(["adaptive", "always"]), default="adaptive",
        envvar="MEMTRACE_SLAB_HOOKS", show_default=True, show_envvar=True,
        help="adaptive: attach the kmalloc/kmem_cache_alloc hooks after a failure or while "
             "memory is tight, detach them after 5 quiet minutes (a slab failure meanwhile "
             "is seen through its page allocation); always: keep them attached (every slab "
             "failure with its cache, at their cost on every allocation).")(f)


def growth_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--no-growth: turn off the always-on growth tracking (the `grew` of OOM kills, top's
    growing panel, the exporter's growing gauge), for hosts where its cost matters."""
    return click.option(
        "--growth/--no-growth", default=True, show_default=True,
        help="Track which processes grow, and through which stacks, so an OOM kill says "
             "what grew before it (`grew`) and top shows the processes growing fastest. "
             "--no-growth leaves its probes out (for hosts where their cost matters).")(f)


def protect_from_oom_killer(oom_score_adj: int) -> None:
    """Lower memtrace's OOM score before it loads anything (a note when it cannot). Only
    root can lower it, and only root traces: without root the tracer's error says it all."""
    from ..host.system import is_root, lower_oom_score

    if is_root():
        lower_oom_score(oom_score_adj, log)


def check_pids(pids: tuple[int, ...]) -> None:
    for pid in pids:
        if pid <= 0 or not os.path.exists(f"/proc/{pid}"):
            raise UsageError(f"no such process: {pid}")


def build_filter(pids: tuple[int, ...], cgroup: Optional[str], comm: Optional[str]) -> Any:
    from ..host.cgroups import CgroupResolver
    from ..model.failures import Filter

    check_pids(pids)
    cg_path = None
    if cgroup is not None:
        try:
            _h, cg_path = CgroupResolver().resolve_user_path(cgroup)
        except LookupError as e:
            raise UsageError(str(e)) from None
    return Filter(pids=frozenset(pids), cgroup=cg_path, comm=comm)


def live_source(pids: tuple[int, ...], cgroup: Optional[str], comm: Optional[str],
                oom_score_adj: int = OOM_SCORE_ADJ_DEFAULT, probe_cost: bool = False,
                slab_hooks: str = "adaptive", growth: bool = True) -> Any:
    """The kernel's failures, filtered as the options say (UsageError for a bad filter); it
    lowers memtrace's OOM score when it starts; `growth` False turns growth tracking off."""
    from ..kernel.failures import LiveSource

    return LiveSource(build_filter(pids, cgroup, comm), log=log, oom_score_adj=oom_score_adj,
                      probe_cost=probe_cost, slab_hooks=slab_hooks, growth=growth)
