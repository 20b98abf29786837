"""The `memtrace` command line: the click group; each command is a thin module beside this one."""

from __future__ import annotations

import click

from .. import __version__
from . import doctor, explain, export, leaks, record, report, top, watch


class DefaultToTop(click.Group):
    """`memtrace` and `memtrace -p 123` mean `memtrace top ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h",
                                                                          "--version")):
            args = ["top", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultToTop, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memtrace")
def main() -> None:
    """Live tracer of memory-allocation failures: every ENOMEM, kernel allocation failure,
    OOM kill and memory cgroup limit hit, per process, cgroup and allocation order.

    Without a command, runs `top`: the live dashboard."""


for command in (top.top, watch.watch, explain.explain, leaks.leaks, export.export,
                doctor.doctor, record.record, report.report):
    main.add_command(command)

if __name__ == "__main__":
    main()
