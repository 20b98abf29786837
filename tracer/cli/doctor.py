"""`memtrace doctor`: what this host supports and whether each probe attaches."""

from __future__ import annotations

import sys

import click

from .common import guard


@click.command()
def doctor() -> None:
    """What this host supports, and whether each probe attaches. Exit 0 when the core ones do."""
    from ..kernel.doctor import examine
    from ..views.doctor import render_doctor

    sys.exit(guard(lambda: render_doctor(examine())))
