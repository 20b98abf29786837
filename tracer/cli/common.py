"""What every command shares: the filter options, one-line errors and exit codes, the source."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, NoReturn, Optional

import click

from ..errors import MemtraceError, UsageError
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


def live_source(pids: tuple[int, ...], cgroup: Optional[str], comm: Optional[str]) -> Any:
    """The kernel's failures, filtered as the options say (UsageError for a bad filter)."""
    from ..kernel.failures import LiveSource

    return LiveSource(build_filter(pids, cgroup, comm), log=log)
