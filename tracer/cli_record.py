"""`memtrace record` and `memtrace report` (click commands registered by cli.py), and the source of `top --replay`."""

from __future__ import annotations

import os
from typing import Any, Callable, NoReturn, Optional

import click

from .sources import Source


def _die(message: str, code: int = 1) -> NoReturn:
    from .cli import fail

    fail(message, code)
    raise SystemExit(code)  # fail() exits; this is for the type checker


def _filter_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """cli.filter_options, imported when the command is defined: cli.py registers these
    commands after defining it, so importing cli here at module level would be circular."""
    from .cli import filter_options

    return filter_options(f)


def skipped_line_warning(path: str, line: int, reason: str) -> str:
    return f"memtrace: warning: {path}: line {line}: {reason}; skipped"


class ByteSize(click.ParamType):
    """A size such as 100M or 1G (powers of 1024), in bytes."""

    name = "size"

    def convert(self, value: Any, param: Optional[click.Parameter],
                ctx: Optional[click.Context]) -> int:
        if isinstance(value, int):
            return value
        from .recording import parse_size

        try:
            return parse_size(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


@click.command()
@_filter_options
@click.option("-o", "--output", "path", required=True, metavar="FILE",
              type=click.Path(dir_okay=False),
              help="Write the recording here (replaced if it exists).")
@click.option("--max-size", type=ByteSize(), default="1G", show_default=True,
              help="Stop writing failure lines when the file reaches this size (K, M, G); "
                   "they are still counted in the final summary.")
def record(pids: tuple[int, ...], cgroup: Optional[str], comm: Optional[str],
           duration: Optional[float], path: str, max_size: int) -> None:
    """Record failures to FILE for `memtrace report` and `memtrace top --replay`.

    FILE gets the JSON lines of `watch --json`. Each line is written whole and the file is
    synced every second, so a crash or kill -9 leaves every complete line readable."""
    from .cli import build_filter, guard, live_source, log
    from .decoders import format_bytes
    from .recording import RecordingWriter, WriteError, run_record

    filt = build_filter(pids, cgroup, comm)
    existed = os.path.lexists(path)

    def on_limit() -> None:
        log(f"memtrace: warning: {path} reached --max-size {format_bytes(max_size)}: from now "
            "on failures are counted in the summary, not written")

    try:
        writer = RecordingWriter(path, max_size, on_limit=on_limit)
    except WriteError as e:
        _die(str(e))

    def body() -> None:
        try:
            run_record(live_source(filt), writer, duration=duration, log=log)
            writer.close()
        except WriteError as e:
            _die(f"{e} (the lines written so far are kept)")
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


@click.command()
@click.argument("path", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def report(path: str, as_json: bool) -> None:
    """Summary tables and findings of a recording (memtrace record, or watch --json).

    The counts are the exact in-kernel totals of its summary line, or, when it has none
    (the recording was killed), what its failure lines add up to; the output says which.
    Lines that cannot be read are named on stderr and skipped."""
    from .cli import guard, log
    from .recording import build_report
    from .sources import NewerRecordingError, RecordingReader, ReplayError, open_recording
    from .views.report import run_report

    try:
        with open_recording(path) as f:
            reader = RecordingReader(
                f, warn=lambda n, why: log(skipped_line_warning(path, n, why)))
            rep = build_report(path, reader)
    except NewerRecordingError as e:
        _die(f"{path}: {e}", code=2)
    except ReplayError as e:
        _die(f"{path}: {e}")
    except OSError as e:
        _die(f"{path}: cannot read it ({e.strerror})")
    guard(lambda: run_report(rep, as_json=as_json))


def replay_source(path: str, speed: float) -> Source:
    """The source of `memtrace top --replay FILE --speed X`: one-line errors (exit 2 for a
    recording from a newer memtrace, 1 for the rest), warnings for skipped lines."""
    from .cli import log
    from .sources import NewerRecordingError, ReplayError, ReplaySource

    def on_error(e: ReplayError) -> None:
        log(f"memtrace: warning: {path}: {e}; the replay stops there")

    try:
        return ReplaySource.open(path, speed, on_error=on_error,
                                 warn=lambda n, why: log(skipped_line_warning(path, n, why)))
    except NewerRecordingError as e:
        _die(f"{path}: {e}", code=2)
    except ReplayError as e:
        _die(f"{path}: {e}")
    except OSError as e:
        _die(f"{path}: cannot read it ({e.strerror})")
