"""The leaking C fixture (tests/fixtures/leaky.c): build it, start it, let it leak."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tests import needs

SOURCE = Path(__file__).resolve().parent / "fixtures" / "leaky.c"
LEAK_BYTES = 1024
PER_TICK = 500
TICKS = 8
TICK_US = 200_000


def build(tmp: Path, frame_pointers: bool) -> Path:
    needs.program("gcc", "gcc")
    out = tmp / ("leaky_fp" if frame_pointers else "leaky_nofp")
    fp = "-fno-omit-frame-pointer" if frame_pointers else "-fomit-frame-pointer"
    subprocess.run(["gcc", "-O2", "-g", fp, "-o", str(out), str(SOURCE)], check=True)
    return out


@dataclass
class Leaky:
    proc: subprocess.Popen
    pid: int
    lines: list[str] = field(default_factory=list)

    def go(self) -> None:
        os.kill(self.pid, signal.SIGUSR1)

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.strip())
            if line.startswith(prefix):
                return line.strip()
        raise AssertionError(f"fixture never said {prefix!r}: {self.lines}")

    def leaked(self) -> tuple[int, int]:
        line = self.wait_for("leaked")
        _, nbytes, blocks = line.split()
        return int(nbytes), int(blocks)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(binary: Path, env: Optional[dict] = None, ticks: int = TICKS, *,
          leak_bytes: int = LEAK_BYTES, per_tick: int = PER_TICK, tick_us: int = TICK_US,
          preexec_fn: Optional[Callable[[], None]] = None) -> Leaky:
    proc = subprocess.Popen([str(binary), str(leak_bytes), str(per_tick), str(ticks),
                             str(tick_us)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)
    fx = Leaky(proc, proc.pid)
    fx.wait_for("ready")
    return fx
