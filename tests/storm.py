"""The ENOMEM storm (bench/enomem_storm.c) for the bpf and e2e tiers: threads failing mmap as
fast as they can for a few seconds, reporting their exact count."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests import needs

SOURCE = Path(__file__).resolve().parents[1] / "bench" / "enomem_storm.c"
_RESULT = re.compile(r"enomem_storm pid=(\d+) threads=(\d+) seconds=(\d+) enomem=(\d+) other=(\d+)")


@dataclass(frozen=True)
class StormResult:
    pid: int
    enomem: int  # mmap calls that failed with ENOMEM, exactly
    other: int  # calls that did anything else (0 unless overcommit is off)


def build(tmp: Path) -> Path:
    needs.program("gcc", "gcc")
    out = tmp / "enomem_storm"
    subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", str(out), str(SOURCE)], check=True)
    return out


def start(binary: Path, threads: int, seconds: int, comm: str) -> subprocess.Popen:
    return subprocess.Popen([str(binary), str(threads), str(seconds), comm],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def finish(proc: subprocess.Popen, timeout: float) -> StormResult:
    """Wait for a started storm; its counts (the test fails if it printed none)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"the storm did not end within {timeout}s") from None
    m = _RESULT.search(out)
    assert m is not None and proc.returncode == 0, \
        f"the storm failed (exit {proc.returncode}): {out!r} {err!r}"
    pid, _threads, _seconds, enomem, other = (int(g) for g in m.groups())
    return StormResult(pid, enomem, other)
