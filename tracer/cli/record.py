"""`memtrace record`: failures written to a crash-safe JSON-lines recording."""

from __future__ import annotations

import os
from typing import Any, Optional

import click

from ..errors import WriteError
from .common import (
    filter_options,
    growth_option,
    guard,
    live_source,
    log,
    oom_score_option,
    slab_hooks_option,
)


class ByteSize(click.ParamType):
    """A size such as 100M or 1G (powers of 1024), in bytes."""

    name = "size"

    def convert(self, value: Any, param: Optional[click.Parameter],
                ctx: Optional[click.Context]) -> int:
        if isinstance(value, int):
            return value
        from ..recording.writer import parse_size

        try:
            return parse_size(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


@click.command()
@filter_options
@click.option("-o", "--output", "path", required=True, metavar="FILE",
              type=click.Path(dir_okay=False),
              help="Write the recording here (replaced if it exists).")
@click.option("--max-size", type=ByteSize(), default="1G", show_default=True,
              help="Stop writing failure lines when the file reaches this size (K, M, G); "
                   "they are still counted in the final summary.")
@growth_option
@slab_hooks_option
@oom_score_option
def record(pids: tuple[int, ...], cgroup: Optional[str], comm: Optional[str],
           duration: Optional[float], path: str, max_size: int, growth: bool, slab_hooks: str,
           oom_score_adj: int) -> None:
    """Record failures to FILE for `memtrace report` and `memtrace top --replay`.

    FILE gets the JSON lines of `watch --json`. Each line is written whole and the file is
    synced every second, so a crash or kill -9 leaves every complete line readable."""
    from ..model.decode import format_bytes
    from ..recording.writer import RecordingWriter, run_record

    source = guard(lambda: live_source(pids, cgroup, comm, oom_score_adj, growth=growth,
                                       slab_hooks=slab_hooks))
    existed = os.path.lexists(path)

    def on_limit() -> None:
        log(f"memtrace: warning: {path} reached --max-size {format_bytes(max_size)}: from now "
            "on failures are counted in the summary, not written")

    writer = guard(lambda: RecordingWriter(path, max_size, on_limit=on_limit))

    def body() -> None:
        try:
            run_record(source, writer, duration=duration, log=log)
            writer.close()
        except WriteError as e:
            raise WriteError(f"{e} (the lines written so far are kept)") from None
        finally:
            try:
                writer.close()
            except WriteError:
                pass
            if writer.size == 0 and not existed:
                os.unlink(path)  # nothing recorded (memtrace could not start): no empty file

    guard(body)
    n = writer.failures
    note = f", {writer.dropped} more only counted (--max-size)" if writer.dropped else ""
    log(f"memtrace: recorded {n} failure{'' if n == 1 else 's'} ({format_bytes(writer.size)}"
        f"{note}) to {path}; `memtrace report {path}` sums it up")
