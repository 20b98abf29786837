"""`memtrace explain PID`: headroom against every limit, without tracing."""

from __future__ import annotations

import sys

import click

from ..errors import ExplainError
from .common import guard


@click.command()
@click.argument("pid", type=int)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def explain(pid: int, as_json: bool) -> None:
    """How close process PID is to each limit that can fail its next allocation.

    No tracing: works without root for your own processes. Exit status 1 when a limit
    is more than 90% used, so it can gate scripts."""
    from ..views.explain import run_explain

    def body() -> int:
        if pid <= 0:
            raise ExplainError(f"no such process: {pid}", exit_code=1)
        return run_explain(pid, as_json)

    sys.exit(guard(body))
