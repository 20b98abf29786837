#!/usr/bin/env python3
"""memtrace's own peak memory under a storm of failures, and whether its counts stay exact.

For each of `memtrace watch --json` and `memtrace top` (plain tables: stdout is not a
terminal), with their output read and thrown away as fast as they write it (the
equivalent of `> /dev/null`):

  1. start memtrace and wait for its first output (its ready line or first table);
  2. run bench/enomem_storm.c: THREADS threads failing mmap with ENOMEM as fast as they
     can for SECONDS (millions of failures for 2 threads and 5 s on a quiet 2-core VM);
  3. wait 1 s, read its VmHWM (/proc/PID/status), stop it (SIGTERM) and take its whole
     life's peak RSS from wait4 (ru_maxrss: the final drain and summary included);
  4. compare the storm's exact ENOMEM count with memtrace's count for the storm's pid.

Its RSS is sampled every 0.25 s meanwhile, to show whether it levels off. Prints a table,
then one JSON line (also written to bench/out/peak_rss.json). Exit status 0 when every
run's peak RSS is within --limit-mib (200 by default) and every count exact, else 2.

Run as root: sudo .venv/bin/python bench/peak_rss.py [--threads 2] [--seconds 5]
[--runs 1] [--memtrace "memtrace"] [--args=--growth]; also `bench/run_all.py --only storm_rss`."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
STORM_SRC = BENCH / "enomem_storm.c"
STORM_BIN = OUT / "enomem_storm"
STORM_COMM = "mt-rss-storm"

READY_TIMEOUT_S = 180.0  # bcc compiles the BPF programs first; slow on a busy 2-core box
STOP_TIMEOUT_S = 30.0
SETTLE_S = 0.5  # after memtrace's first output, before the storm
CATCH_UP_S = 1.0  # after the storm, before memtrace is stopped
MODES = {"watch": ["watch", "--json"], "top": ["top"]}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def build_storm() -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    if not STORM_BIN.exists() or STORM_BIN.stat().st_mtime < STORM_SRC.stat().st_mtime:
        cc = os.environ.get("CC", "gcc")
        r = subprocess.run([cc, "-O2", "-Wall", "-pthread", "-o", str(STORM_BIN), str(STORM_SRC)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"could not build {STORM_SRC}: {r.stderr.strip()}")
    return STORM_BIN


@dataclass
class StormResult:
    pid: int
    threads: int
    seconds: int
    enomem: int
    other: int


_STORM_LINE = re.compile(r"enomem_storm pid=(\d+) threads=(\d+) seconds=(\d+) enomem=(\d+) "
                         r"other=(\d+)")


def run_storm(binary: Path, threads: int, seconds: int, comm: str = STORM_COMM) -> StormResult:
    """Run the storm to its end; its exact counts."""
    r = subprocess.run([str(binary), str(threads), str(seconds), comm], capture_output=True,
                       text=True, timeout=seconds + 60, stdin=subprocess.DEVNULL)
    m = _STORM_LINE.search(r.stdout)
    if m is None:
        raise BenchError(f"the storm printed no result (exit {r.returncode}): {r.stderr.strip()}")
    return StormResult(*(int(g) for g in m.groups()))


def proc_status_kib(pid: int, field_name: str) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class Drained:
    """A process whose stdout is read as fast as it writes and thrown away, except the
    last `keep` bytes (its summary)."""

    def __init__(self, argv: list[str], stderr_path: Path, keep: int = 1 << 18):
        self.keep = keep
        self.tail = bytearray()
        self.bytes_out = 0
        self.first_output = threading.Event()
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=err, cwd=ROOT)
        self.rusage_maxrss_kib: Optional[int] = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            self.bytes_out += len(chunk)
            self.tail += chunk
            del self.tail[:-self.keep]
            self.first_output.set()

    def stop(self) -> int:
        """SIGTERM, wait (SIGKILL after STOP_TIMEOUT_S); the exit status. Reaped with wait4,
        whose ru_maxrss is the process's peak RSS over its whole life."""
        if self.proc.returncode is not None:
            return self.proc.returncode
        try:
            self.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                log(f"bench: pid {self.proc.pid} ignored SIGTERM: killing it")
                self.proc.kill()
                pid, status, usage = os.wait4(self.proc.pid, 0)
                break
            time.sleep(0.05)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.rusage_maxrss_kib = int(usage.ru_maxrss)
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def text_tail(self) -> str:
        return bytes(self.tail).decode("utf-8", "replace")


class RssSampler:
    """VmRSS of a process every `period` seconds until stopped."""

    def __init__(self, pid: int, period: float = 0.25):
        self.pid = pid
        self.period = period
        self.samples: list[tuple[float, int]] = []  # (seconds since start, KiB)
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = proc_status_kib(self.pid, "VmRSS")
            if rss is not None:
                self.samples.append((round(time.monotonic() - self._t0, 2), rss))
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def counted_by_memtrace(mode: str, output: str, pid: int) -> Optional[int]:
    """memtrace's exact count of failures for `pid`, from the end of its output."""
    if mode == "watch":
        for line in reversed(output.splitlines()):
            if '"summary"' in line:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                row = obj.get("counts", {}).get("by_process", {}).get(str(pid))
                return int(row["failures"]) if row else 0
        return None
    # top's plain summary: a "Failures by process" table row "| pid | comm | count |"
    summary = output[output.rfind("memtrace summary"):] if "memtrace summary" in output else ""
    m = re.search(rf"^\|\s*{pid}\s*\|[^\n]*?\|\s*(\d+)\s*\|\s*$", summary, re.M)
    return int(m.group(1)) if m else None


@dataclass
class Run:
    mode: str
    argv: list[str]
    storm: Optional[dict] = None
    counted: Optional[int] = None
    exact: bool = False
    idle_rss_kib: Optional[int] = None  # just before the storm
    vmhwm_kib: Optional[int] = None  # just before SIGTERM
    peak_rss_kib: Optional[int] = None  # whole life (wait4)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    output_bytes: int = 0
    exit_status: Optional[int] = None
    stderr_tail: str = ""


def measure(memtrace: list[str], mode: str, threads: int, seconds: int, storm_bin: Path,
            extra: tuple[str, ...] = ()) -> Run:
    argv = memtrace + MODES[mode] + list(extra)
    run = Run(mode, argv)
    stderr_path = OUT / f"peak_rss_{mode}.stderr"
    p = Drained(argv, stderr_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not p.first_output.wait(0.1):
            if p.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{' '.join(argv)} did not start: "
                                 + stderr_path.read_text(errors="replace").strip()[-300:])
        time.sleep(SETTLE_S)
        run.idle_rss_kib = proc_status_kib(p.proc.pid, "VmRSS")
        sampler = RssSampler(p.proc.pid)
        try:
            storm = run_storm(storm_bin, threads, seconds)
            time.sleep(CATCH_UP_S)
            run.vmhwm_kib = proc_status_kib(p.proc.pid, "VmHWM")
        finally:
            sampler.stop()
        run.rss_samples = sampler.samples
        run.storm = asdict(storm)
    finally:
        run.exit_status = p.stop()
    run.peak_rss_kib = p.rusage_maxrss_kib
    run.output_bytes = p.bytes_out
    run.counted = counted_by_memtrace(mode, p.text_tail(), storm.pid)
    run.exact = run.counted == storm.enomem and storm.other == 0
    run.stderr_tail = stderr_path.read_text(errors="replace").strip()[-500:]
    return run


def memtrace_command(arg: Optional[str]) -> list[str]:
    if arg:
        return shlex.split(arg)
    exe = shutil.which("memtrace") or str(ROOT / ".venv" / "bin" / "memtrace")
    return [exe]


def table(runs: list[Run], limit_mib: float) -> str:
    lines = [f"memtrace peak RSS under an ENOMEM storm (limit {limit_mib:.0f} MiB)",
             f"  {'command':22s} {'storm ENOMEMs':>14s} {'counted':>10s} {'idle':>9s} "
             f"{'VmHWM':>9s} {'peak (life)':>11s}  RSS over the storm (MiB)"]
    for r in runs:
        s = r.storm or {}
        curve = [kib for _, kib in r.rss_samples]
        step = max(1, len(curve) // 8)
        shown = " ".join(f"{kib / 1024:.0f}" for kib in curve[::step])
        lines.append(
            f"  {' '.join(['memtrace', *MODES[r.mode]]):22s} {s.get('enomem', 0):>14,d} "
            f"{'n/a' if r.counted is None else f'{r.counted:,d}':>10s} "
            f"{(r.idle_rss_kib or 0) / 1024:>7.1f}Mi {(r.vmhwm_kib or 0) / 1024:>7.1f}Mi "
            f"{(r.peak_rss_kib or 0) / 1024:>9.1f}Mi  {shown}"
            + ("" if r.exact else "  COUNT NOT EXACT"))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="memtrace's peak RSS under an ENOMEM storm (root).")
    ap.add_argument("--threads", type=int, default=2, help="storm threads (default 2)")
    ap.add_argument("--seconds", type=int, default=5, help="storm length (default 5)")
    ap.add_argument("--runs", type=int, default=1, help="runs per command (default 1)")
    ap.add_argument("--only", choices=tuple(MODES), help="measure one command")
    ap.add_argument("--limit-mib", type=float, default=200.0,
                    help="the peak RSS memtrace must stay within (default 200)")
    ap.add_argument("--memtrace", default=None,
                    help="how to run memtrace (default: memtrace on PATH)")
    ap.add_argument("--args", default="",
                    help="more arguments for each command, e.g. --args=--growth")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        log("bench: needs root (BPF): run it with sudo")
        return 1
    if args.threads < 1 or args.seconds < 1 or args.runs < 1:
        ap.error("--threads, --seconds and --runs must be at least 1")
    results = measure_all(memtrace_command(args.memtrace), args.threads, args.seconds, args.runs,
                          [args.only] if args.only else list(MODES), args.limit_mib,
                          tuple(shlex.split(args.args)))
    print(table([Run(**r) for r in results["runs"]], args.limit_mib), flush=True)
    line = json.dumps(results, sort_keys=True)
    (OUT / "peak_rss.json").write_text(line + "\n")
    print(line, flush=True)
    return 0 if results["ok"] else 2


def measure_all(memtrace: list[str], threads: int, seconds: int, runs: int, modes: list[str],
                limit_mib: float, extra: tuple[str, ...] = ()) -> dict:
    """Every mode `runs` times; a JSON-ready dict (also what run_all.py reports)."""
    storm_bin = build_storm()
    done: list[Run] = []
    for i in range(runs):
        for mode in modes:
            log(f"  peak RSS: {mode} run {i + 1}/{runs}: {threads} threads x {seconds} s ...")
            r = measure(memtrace, mode, threads, seconds, storm_bin, extra)
            log(f"  peak RSS: {mode}: {(r.peak_rss_kib or 0) / 1024:.1f} MiB, storm "
                f"{(r.storm or {}).get('enomem')} ENOMEMs, counted {r.counted}")
            done.append(r)
    limit_kib = limit_mib * 1024
    ok = all(r.exact and r.peak_rss_kib is not None and r.peak_rss_kib <= limit_kib
             for r in done)
    return {"threads": threads, "seconds": seconds, "limit_mib": limit_mib, "ok": ok,
            "max_peak_rss_mib": max((r.peak_rss_kib or 0) for r in done) / 1024 if done else None,
            "runs": [asdict(r) for r in done]}


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"bench: error: {e}")
        sys.exit(1)
