"""`memtrace report FILE`: summary tables and findings of a recording."""

from __future__ import annotations

import click

from ..errors import ReplayError
from .common import guard, log, skipped_line_warning


@click.command()
@click.argument("path", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def report(path: str, as_json: bool) -> None:
    """Summary tables and findings of a recording (memtrace record, or watch --json).

    The counts are the exact in-kernel totals of its summary line, or, when it has none
    (the recording was killed), what its failure lines add up to; the output says which.
    Lines that cannot be read are named on stderr and skipped."""
    from ..recording.reader import RecordingReader, open_recording
    from ..recording.report import build_report
    from ..views.report import run_report

    def body() -> None:
        try:
            with open_recording(path) as f:
                reader = RecordingReader(
                    f, warn=lambda n, why: log(skipped_line_warning(path, n, why)))
                rep = build_report(path, reader)
        except ReplayError as e:
            raise ReplayError(f"{path}: {e}", e.exit_code) from None
        except OSError as e:
            raise ReplayError(f"{path}: cannot read it ({e.strerror})") from None
        run_report(rep, as_json=as_json)

    guard(body)
