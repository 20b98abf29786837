#!/usr/bin/env python3
"""memtrace's benchmarks: what tracing costs the traced, measured in one run.

Sections (all by default; --only picks one):

  storm      bench/storm.c (mmap/touch/munmap loop + millions of getppid syscalls),
             untraced vs the floor (bench/floor.py: minimal programs on the same hot
             hooks) and vs `memtrace watch --json`. Pairs (untraced, traced) alternate
             their order; each ratio is traced/untraced within a pair, and the report
             gives the median over pairs, for wall time (whole run and each phase) and
             for CPU time (the storm's own, BPF included, plus the tracer process's
             during the run: steadier on a shared VM). Then one extra run under each
             tracer with BPF run-time stats on (per-program run counts and ns per run).
  realistic  bench/realistic.py (build and serialise a few hundred MB of Python
             objects), untraced vs memtrace, in pairs the same way.
  startup    time from starting `memtrace watch --json` to its ready line, its exit
             time, its peak RSS, and its BPF maps (memlock) and programs.
  server     a real network server under its own benchmark client: Debian's redis-server
             and redis-benchmark (20 clients, SET/GET, loopback), rounds of seven arms
             side by side (untraced, the bare sys_exit hook, the floor, `memtrace watch`,
             `watch --no-growth`, `watch --slab-hooks always`, `memtrace export`), order
             alternating; throughput ratios arm/untraced per round, medians and ranges over
             at least 4 rounds. Then one more run under the bare hook, the floor,
             memtrace and memtrace --no-growth with BPF run-time stats on: each program's ns
             per run and the tracer process's CPU, the exact side of a noisy comparison.
             Installs the two packages with bench/setup.sh when missing.
  storm_rss  memtrace's own peak RSS under an ENOMEM storm (bench/peak_rss.py: 2 threads
             failing mmap for 5 s) for `watch --json` and `top`, and whether its counts
             stay exact; the limit is 200 MiB.

memtrace's peak RSS (VmHWM) is read just before each of its runs is stopped, in every
section. Prints a table, then one JSON line with every number (also written to
bench/out/results.json). Every process it starts is stopped on exit, Ctrl-C included.

Run as root: sudo make bench, or python bench/run_all.py [--pairs N] [--quick]
[--only storm|realistic|startup|server|storm_rss].
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
STORM_SRC = BENCH / "storm.c"
STORM_BIN = OUT / "storm"

READY_TIMEOUT_S = 180.0  # compiling with bcc on a loaded 2-core box can take a while
STOP_TIMEOUT_S = 15.0
SETTLE_S = 0.5  # after a tracer is ready, before the workload starts
GAP_S = 0.2  # between any two runs

# Every process this script starts, so the finally block can stop them all.
_CHILDREN: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- processes
def spawn(argv: list[str], **kw) -> subprocess.Popen:
    p = subprocess.Popen(argv, **kw)
    _CHILDREN.append(p)
    return p


def stop_process(p: subprocess.Popen, sig: int = signal.SIGTERM,
                 timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM (or sig), wait, then SIGKILL; reaps the process either way."""
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"bench: pid {p.pid} ignored signal {sig} for {timeout:.0f}s: killing it")
            p.kill()
            p.wait()
        except ProcessLookupError:
            pass
    if p in _CHILDREN:
        _CHILDREN.remove(p)


def stop_all_children() -> None:
    for p in list(_CHILDREN):
        stop_process(p)


def _on_terminate(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def proc_status_kib(pid: int, field: str) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_ns(pid: int) -> Optional[int]:
    """CPU time of all the process's threads so far (schedstat: ns, not clock ticks)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    except OSError:
        return None
    return total


def _fdinfo(pid: int, kind: str) -> list[dict[str, str]]:
    """fdinfo of the process's fds that are BPF objects of this kind (bpf-map, bpf-prog)."""
    out = []
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return out
    for fd in fds:
        try:
            if os.readlink(fd) != f"anon_inode:{kind}":
                continue
            info = {}
            for line in Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().splitlines():
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
            out.append(info)
        except OSError:
            continue
    return out


def _bpftool(*args: str) -> list[dict]:
    tool = shutil.which("bpftool")
    if not tool:
        return []
    try:
        r = subprocess.run([tool, *args, "-j"], capture_output=True, text=True, timeout=30)
        return json.loads(r.stdout or "[]") if r.returncode == 0 else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []


def bpf_maps_of(pid: int) -> list[dict]:
    """The BPF maps a process holds: id, name, type, entries and memlock bytes."""
    names = {m.get("id"): m for m in _bpftool("map", "show")}
    maps = []
    for info in _fdinfo(pid, "bpf-map"):
        map_id = int(info.get("map_id", -1))
        shown = names.get(map_id, {})
        maps.append({
            "id": map_id,
            "name": shown.get("name", "?"),
            "type": shown.get("type", info.get("map_type", "?")),
            "max_entries": int(info.get("max_entries", 0)),
            "key_size": int(info.get("key_size", 0)),
            "value_size": int(info.get("value_size", 0)),
            "bytes_memlock": int(shown.get("bytes_memlock", info.get("memlock", 0))),
        })
    return sorted(maps, key=lambda m: -m["bytes_memlock"])


def bpf_progs_of(pid: int) -> list[dict]:
    """The BPF programs a process holds: id, name, run counters, memlock, verified insns."""
    shown = {p.get("id"): p for p in _bpftool("prog", "show")}
    progs = []
    for info in _fdinfo(pid, "bpf-prog"):
        prog_id = int(info.get("prog_id", -1))
        p = shown.get(prog_id, {})
        progs.append({
            "id": prog_id,
            "name": p.get("name", "?"),
            "run_cnt": int(info.get("run_cnt", p.get("run_cnt", 0))),
            "run_time_ns": int(info.get("run_time_ns", p.get("run_time_ns", 0))),
            "bytes_memlock": int(info.get("memlock", 0)),
            "verified_insns": int(info.get("verified_insns", 0)),
            "bytes_jited": int(p.get("bytes_jited", 0)),
        })
    return sorted(progs, key=lambda p: p["name"])


# Ids of the BPF programs this script's own tracers loaded (kept after they stop: the
# kernel may list a program for a moment after its process exits).
OWN_PROG_IDS: set[int] = set()
# Other tracers' programs still loaded after waiting --quiet-timeout for them: taken
# as part of the machine (a resident agent), no longer waited for.
RESIDENT_PROG_IDS: set[int] = set()
TRACER_PREFIXES = ("mt_", "floor_")
# Program types that hook tracepoints, kprobes/uprobes or functions: another tracer's
# (cgroup, network and LSM programs, such as systemd's, are not counted).
TRACING_TYPES = ("raw_tracepoint", "raw_tracepoint_writable", "tracepoint", "kprobe",
                 "perf_event", "tracing")


def loaded_programs() -> dict[int, tuple[str, str]]:
    """Every loaded BPF program: id -> (name, type)."""
    return {int(p["id"]): (str(p.get("name", "")), str(p.get("type", "")))
            for p in _bpftool("prog", "show") if "id" in p}


def foreign_programs(progs: Optional[dict[int, tuple[str, str]]] = None) -> list[str]:
    """Other tracers' programs (not this script's): they would skew every measurement."""
    progs = loaded_programs() if progs is None else progs
    return [f"{name or '?'} (id {i})" for i, (name, kind) in sorted(progs.items())
            if i not in OWN_PROG_IDS and i not in RESIDENT_PROG_IDS
            and (name.startswith(TRACER_PREFIXES) or kind in TRACING_TYPES)]


def wait_quiet(timeout: float) -> float:
    """Wait until no other tracer's programs are loaded; the seconds waited. Programs
    still there after `timeout` are taken as resident and not waited for again."""
    t0 = time.monotonic()
    warned = False
    while True:
        progs = loaded_programs()
        others = foreign_programs(progs)
        if not others:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            log(f"  bench: still not quiet after {timeout:.0f}s; taking these as resident "
                f"from now on: {others[:6]}")
            RESIDENT_PROG_IDS.update(i for i, (name, kind) in progs.items()
                                     if i not in OWN_PROG_IDS)
            return time.monotonic() - t0
        if not warned:
            log(f"  bench: waiting for other tracers to go away: {others[:3]}...")
            warned = True
        time.sleep(1.0)


class BpfStats:
    """BPF run-time stats on while held (BPF_ENABLE_STATS): off again when closed or
    when this process dies, whatever kernel.bpf_stats_enabled said before."""

    SYS_BPF = {"x86_64": 321, "aarch64": 280}
    BPF_ENABLE_STATS = 32
    BPF_STATS_RUN_TIME = 0

    def __init__(self) -> None:
        self.fd = -1
        nr = self.SYS_BPF.get(platform.machine())
        if nr is None:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        attr = ctypes.create_string_buffer(8)  # enable_stats.type = BPF_STATS_RUN_TIME
        ctypes.c_uint32.from_buffer(attr).value = self.BPF_STATS_RUN_TIME
        fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(self.BPF_ENABLE_STATS), attr,
                          ctypes.c_uint(len(attr)))
        self.fd = fd if fd >= 0 else -1

    @property
    def on(self) -> bool:
        return self.fd >= 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---------------------------------------------------------------- tracers
class Tracer:
    """A background tracer: started, waited for until ready, stopped with SIGTERM."""

    def __init__(self, name: str, argv: list[str], is_ready: Callable[[str], bool],
                 ready_on_stderr: bool = False):
        self.name = name
        self.argv = argv
        self.is_ready = is_ready
        # memtrace export says it is ready on stderr: read that stream instead, and copy
        # it to the log file (stdout then goes to the file directly).
        self.ready_on_stderr = ready_on_stderr
        self.proc: Optional[subprocess.Popen] = None
        self.ready_line = ""
        self.ready_s = 0.0
        self.stop_s = 0.0
        self.peak_rss_kib: Optional[int] = None
        # CPU the tracer used from its ready line to its stop, and that interval.
        self.cpu_ns = 0
        self.traced_s = 0.0
        self._cpu0: Optional[int] = None
        self._t0 = 0.0
        self._ready = threading.Event()
        self._reader: Optional[threading.Thread] = None
        self.stderr_path = OUT / f"{name}.stderr"

    def _read(self, stream, t0: float) -> None:
        # Reads stdout to the end, so the tracer never blocks on a full pipe; after the
        # ready line everything is discarded (the equivalent of > /dev/null). A stderr
        # stream is copied to the log file instead.
        copy = open(self.stderr_path, "a") if self.ready_on_stderr else None
        try:
            for line in stream:
                if copy is not None:
                    copy.write(line)
                    copy.flush()
                if not self._ready.is_set() and self.is_ready(line):
                    self.ready_s = time.monotonic() - t0
                    self.ready_line = line.strip()
                    self._ready.set()
        finally:
            stream.close()
            if copy is not None:
                copy.close()

    def start(self) -> "Tracer":
        self._ready.clear()
        with open(self.stderr_path, "w") as err:
            t0 = time.monotonic()
            if self.ready_on_stderr:
                self.proc = spawn(self.argv, stdin=subprocess.DEVNULL, stdout=err,
                                  stderr=subprocess.PIPE, text=True, bufsize=1, cwd=ROOT)
            else:
                self.proc = spawn(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=err, text=True, bufsize=1, cwd=ROOT)
        stream = self.proc.stderr if self.ready_on_stderr else self.proc.stdout
        self._reader = threading.Thread(target=self._read, args=(stream, t0), daemon=True)
        self._reader.start()
        deadline = t0 + READY_TIMEOUT_S
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.stderr_path.read_text(errors="replace").strip().splitlines()[-5:]
                raise BenchError(f"{self.name} did not get ready: " + " | ".join(tail))
        OWN_PROG_IDS.update(p["id"] for p in bpf_progs_of(self.proc.pid))
        self._cpu0, self._t0 = cpu_ns(self.proc.pid), time.monotonic()
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.peak_rss_kib = proc_status_kib(self.proc.pid, "VmHWM")
        cpu1 = cpu_ns(self.proc.pid)
        if self._cpu0 is not None and cpu1 is not None:
            self.cpu_ns, self.traced_s = cpu1 - self._cpu0, time.monotonic() - self._t0
        else:
            self.cpu_ns, self.traced_s = 0, 0.0
        self._cpu0 = None
        t0 = time.monotonic()
        stop_process(self.proc)
        self.stop_s = time.monotonic() - t0
        if self._reader is not None:
            self._reader.join(timeout=5)
        self.proc = None


def memtrace_argv(arg: Optional[str]) -> list[str]:
    if arg:
        return arg.split()
    exe = shutil.which("memtrace") or str(ROOT / ".venv" / "bin" / "memtrace")
    return [exe, "watch", "--json"]


def venv_python() -> str:
    py = ROOT / ".venv" / "bin" / "python"
    return str(py) if py.exists() else sys.executable


def is_memtrace_ready(line: str) -> bool:
    if '"ready"' not in line:
        return False
    try:
        return json.loads(line).get("type") == "ready"
    except ValueError:
        return False


def make_memtrace(args) -> Tracer:
    return Tracer("memtrace", memtrace_argv(args.memtrace), is_memtrace_ready)


def make_memtrace_nogrowth(args) -> Tracer:
    """memtrace as make_memtrace runs it, with its growth tracking off (--no-growth): what
    growth tracking costs is the difference between the two."""
    argv = memtrace_argv(args.memtrace)
    return Tracer("memtrace_nogrowth", [*argv, "--no-growth"], is_memtrace_ready)


def make_floor() -> Tracer:
    return Tracer("floor", [venv_python(), str(BENCH / "floor.py")],
                  lambda line: line.strip() == "ready")


def make_bare_sys_exit() -> Tracer:
    """The bare syscall hook: floor.bpf.c's sys_exit program alone."""
    return Tracer("sys_exit", [venv_python(), str(BENCH / "floor.py"), "--only-sys-exit"],
                  lambda line: line.strip() == "ready")


def make_export(args, port: int) -> Tracer:
    """`memtrace export` on a loopback port (nobody scrapes it during the run)."""
    argv = memtrace_argv(args.memtrace)
    base = argv[:argv.index("watch")] if "watch" in argv else argv  # the command alone
    return Tracer("export", [*base, "export", "--listen", f"127.0.0.1:{port}"],
                  lambda line: "metrics on http" in line, ready_on_stderr=True)


# ---------------------------------------------------------------- workloads
_KV = re.compile(r"(\w+)=([0-9.]+)")


def run_workload(argv: list[str]) -> dict[str, float]:
    """Run one workload to the end; its own key=value timings (seconds) plus wall_s."""
    t0 = time.monotonic()
    p = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
              text=True, cwd=ROOT)
    out, err = p.communicate()
    wall = time.monotonic() - t0
    _CHILDREN.remove(p)
    if p.returncode != 0:
        raise BenchError(f"{argv[0]} exited {p.returncode}: {err.strip()[-300:]}")
    values = {k: float(v) for k, v in _KV.findall(out)}
    values["wall_s"] = wall
    return values


def guarded_run(workload: list[str]) -> tuple[dict[str, float], list[str]]:
    """run_workload, plus what else loaded BPF programs around it: other tracers'
    programs loaded at its start or end, or any program loaded while it ran (another
    session compiling and loading BPF: its CPU use and probes skew the timing)."""
    before = loaded_programs()
    r = run_workload(workload)
    after = loaded_programs()
    noise = foreign_programs(before) + foreign_programs(after)
    noise += [f"{name or '?'} (id {i}, new)" for i, (name, _) in sorted(after.items())
              if i not in before and i not in OWN_PROG_IDS]
    return r, sorted(set(noise))


def build_storm() -> list[str]:
    OUT.mkdir(parents=True, exist_ok=True)
    if not STORM_BIN.exists() or STORM_BIN.stat().st_mtime < STORM_SRC.stat().st_mtime:
        cc = os.environ.get("CC", "gcc")
        r = subprocess.run([cc, "-O2", "-Wall", "-o", str(STORM_BIN), str(STORM_SRC)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"could not build {STORM_SRC}: {r.stderr.strip()}")
    return [str(STORM_BIN)]


# ---------------------------------------------------------------- pairs
def measure_pair(i: int, workload: list[str], tracer: Tracer, args) -> tuple[dict, dict]:
    """One (untraced, traced) pair; untraced first on even i, traced first on odd i.

    Waits first until no other tracer is loaded; a pair during which another session
    loaded BPF programs is measured again (up to --retries times), then kept but
    counted in the results as noisy."""
    def untraced(noise: list[str]) -> dict:
        time.sleep(GAP_S)
        r, n = guarded_run(workload)
        noise.extend(n)
        return r

    def traced(noise: list[str]) -> dict:
        tracer.start()
        try:
            time.sleep(SETTLE_S)
            cpu0 = cpu_ns(tracer.proc.pid) if tracer.proc else None
            r, n = guarded_run(workload)
            cpu1 = cpu_ns(tracer.proc.pid) if tracer.proc else None
            noise.extend(n)
        finally:
            tracer.stop()
        if "cpu_s" in r and cpu0 is not None and cpu1 is not None:
            r["cpu_s"] += (cpu1 - cpu0) / 1e9  # the workload's CPU and the tracer's
        return r

    for attempt in range(args.retries + 1):
        wait_quiet(args.quiet_timeout)
        noise: list[str] = []
        if i % 2 == 0:
            u = untraced(noise)
            t = traced(noise)
        else:
            t = traced(noise)
            u = untraced(noise)
        if not noise:
            return u, t
        NOISE.append({"section": SECTION[0], "pair": i, "tracer": tracer.name,
                      "attempt": attempt,
                      "programs": noise[:6]})
        log(f"  bench: pair {i + 1} ({tracer.name}) overlapped other BPF activity "
            f"({', '.join(noise[:3])}); " +
            ("measuring it again" if attempt < args.retries else "keeping it"))
    u["noisy"] = t["noisy"] = 1.0
    return u, t


# Pairs that overlapped another session's BPF activity (each attempt).
NOISE: list[dict] = []
SECTION = [""]  # the section running, for NOISE


def med(xs: list[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


def summarise(pairs: list[tuple[dict, dict]], keys: tuple[str, ...]) -> dict:
    """Per key: median ratio traced/untraced over pairs, its range, and the untraced median."""
    out = {}
    for k in keys:
        ratios = [t[k] / u[k] for u, t in pairs if u.get(k) and k in t]
        clean = [t[k] / u[k] for u, t in pairs if u.get(k) and k in t and not u.get("noisy")]
        out[k] = {
            "ratio_median": med(ratios),
            "ratio_median_clean_pairs": med(clean),
            "clean_pairs": len(clean),
            "ratio_min": min(ratios) if ratios else None,
            "ratio_max": max(ratios) if ratios else None,
            "ratios": [round(r, 4) for r in ratios],
            "untraced_median_s": med([u[k] for u, _ in pairs if k in u]),
            "traced_median_s": med([t[k] for _, t in pairs if k in t]),
            "extra_median_s": med([t[k] - u[k] for u, t in pairs if k in u and k in t]),
        }
    return out


# ---------------------------------------------------------------- sections
class Results:
    def __init__(self) -> None:
        self.data: dict = {}
        self.memtrace_rss_kib: list[int] = []
        self.floor_rss_kib: list[int] = []
        self.memtrace_ready_s: list[float] = []
        # (section, tracer) -> [cpu ns, seconds] while tracing (ready to stop)
        self.cpu: dict[tuple[str, str], list[float]] = {}
        self.probes: Optional[list] = None
        self.maps: Optional[list] = None
        self.progs: Optional[list] = None

    def note_stop(self, tr: Tracer) -> None:
        rss = tr.peak_rss_kib
        if tr.traced_s > 0:
            acc = self.cpu.setdefault((SECTION[0], tr.name), [0.0, 0.0])
            acc[0] += tr.cpu_ns
            acc[1] += tr.traced_s
        if tr.name == "memtrace":
            if rss:
                self.memtrace_rss_kib.append(rss)
            self.memtrace_ready_s.append(tr.ready_s)
            if self.probes is None and tr.ready_line:
                try:
                    self.probes = json.loads(tr.ready_line).get("probes")
                except ValueError:
                    pass
        elif tr.name == "floor" and rss:
            self.floor_rss_kib.append(rss)

    def note_objects(self, tr: Tracer) -> None:
        """Maps and programs of a running memtrace (recorded once: they do not change)."""
        if tr.name == "memtrace" and self.maps is None and tr.proc is not None:
            self.maps = bpf_maps_of(tr.proc.pid)
            self.progs = bpf_progs_of(tr.proc.pid)


def tracked(tracer: Tracer, res: Results) -> Tracer:
    """Wrap stop() so every stop records the tracer's peak RSS and ready time."""
    stop = tracer.stop

    def stop_and_note() -> None:
        if tracer.proc is None:
            return
        res.note_objects(tracer)
        stop()
        res.note_stop(tracer)

    tracer.stop = stop_and_note  # type: ignore[method-assign]
    return tracer


STORM_KEYS = ("total_s", "mmap_s", "syscall_s", "cpu_s")


def section_storm(args, res: Results) -> dict:
    workload = build_storm()
    floor = tracked(make_floor(), res)
    mt = tracked(make_memtrace(args), res)
    mtn = tracked(make_memtrace_nogrowth(args), res)
    floor_pairs: list = []
    mt_pairs: list = []
    mtn_pairs: list = []
    for i in range(args.pairs):
        order = [("floor", floor, floor_pairs), ("memtrace", mt, mt_pairs),
                 ("memtrace_nogrowth", mtn, mtn_pairs)]
        if i % 2:
            order.reverse()
        for name, tracer, into in order:
            u, t = measure_pair(i, workload, tracer, args)
            into.append((u, t))
            log(f"  storm pair {i + 1}/{args.pairs} {name:8s}: untraced {u['total_s']:.3f}s "
                f"traced {t['total_s']:.3f}s  ratio {t['total_s'] / u['total_s']:.3f}")
    fl = summarise(floor_pairs, STORM_KEYS)
    mtr = summarise(mt_pairs, STORM_KEYS)
    mtn_s = summarise(mtn_pairs, STORM_KEYS)
    first = floor_pairs[0][0]
    iters, calls = first.get("iters", 0), first.get("syscalls", 0)
    out = {
        "workload": {"iters": iters, "syscalls": calls, "region_kib": first.get("region_kib")},
        "pairs": args.pairs,
        "floor": fl,
        "memtrace": mtr,
        "memtrace_minus_floor": {
            k: (mtr[k]["ratio_median"] - fl[k]["ratio_median"])
            for k in STORM_KEYS if mtr[k]["ratio_median"] and fl[k]["ratio_median"]},
        # Round by round (round i has one floor pair and one memtrace pair, measured
        # back to back): median of memtrace's ratio minus the floor's.
        "memtrace_minus_floor_by_round": {
            k: med([mt_pairs[i][1][k] / mt_pairs[i][0][k] - floor_pairs[i][1][k]
                    / floor_pairs[i][0][k] for i in range(min(len(mt_pairs), len(floor_pairs)))])
            for k in STORM_KEYS},
        "memtrace_nogrowth": mtn_s,
        # What growth tracking costs: memtrace's ratio minus memtrace --no-growth's, in
        # points of the untraced time, from the medians and round by round (with the range
        # of the per-round differences).
        "growth_cost": {
            k: (mtr[k]["ratio_median"] - mtn_s[k]["ratio_median"])
            for k in STORM_KEYS if mtr[k]["ratio_median"] and mtn_s[k]["ratio_median"]},
        "growth_cost_by_round": {
            k: _by_round(mt_pairs, mtn_pairs, k) for k in STORM_KEYS},
        # Extra time per unit of work (median over pairs of traced - untraced).
        "extra_ns_per_syscall": {
            "floor": fl["syscall_s"]["extra_median_s"] * 1e9 / calls if calls else None,
            "memtrace": mtr["syscall_s"]["extra_median_s"] * 1e9 / calls if calls else None,
            "memtrace_nogrowth": (mtn_s["syscall_s"]["extra_median_s"] * 1e9 / calls
                                  if calls else None)},
        "extra_ns_per_mmap_iter": {
            "floor": fl["mmap_s"]["extra_median_s"] * 1e9 / iters if iters else None,
            "memtrace": mtr["mmap_s"]["extra_median_s"] * 1e9 / iters if iters else None,
            "memtrace_nogrowth": (mtn_s["mmap_s"]["extra_median_s"] * 1e9 / iters
                                  if iters else None)},
    }
    if not args.no_bpf_stats:
        out["bpf_stats"] = storm_bpf_stats(args, workload, res)
    return out


def _by_round(a_pairs: list, b_pairs: list, k: str) -> dict:
    """Round by round (round i has one pair of each, measured back to back): the median,
    minimum and maximum of a's ratio minus b's."""
    diffs = [a_pairs[i][1][k] / a_pairs[i][0][k] - b_pairs[i][1][k] / b_pairs[i][0][k]
             for i in range(min(len(a_pairs), len(b_pairs)))]
    return {"median": med(diffs), "min": min(diffs) if diffs else None,
            "max": max(diffs) if diffs else None}


def storm_bpf_stats(args, workload: list[str], res: Results) -> dict:
    """One extra storm run under each tracer with BPF run-time stats on: how often each
    program ran and its mean cost. Not part of the ratios (stats add their own cost)."""
    def one_run() -> tuple[dict, list[str]]:
        r, noise = guarded_run(workload)
        return {"storm_total_s": r["total_s"], "wall_s": r["total_s"]}, noise
    return bpf_stats_runs(args, res, (make_floor(), make_memtrace(args),
                                      make_memtrace_nogrowth(args)), one_run)


def bpf_stats_runs(args, res: Results, tracers, one_run: Callable[[], tuple[dict, list[str]]]
                   ) -> dict:
    """one_run() once under each tracer with BPF run-time stats on (BPF_ENABLE_STATS): each
    program's runs and mean ns per run, the time in all of them per second of the run, and
    the tracer process's own CPU over the run. Exact where throughput ratios are noisy: the
    same work under two tracers, each one's kernel-side cost in ns. Stats add their own cost
    to every run (two clock reads), the same for every tracer."""
    stats = BpfStats()
    if not stats.on:
        return {"error": "BPF_ENABLE_STATS failed (kernel too old or not permitted)"}
    out: dict = {}
    try:
        for tracer in tracers:
            tracer = tracked(tracer, res)
            for attempt in range(args.retries + 1):
                wait_quiet(args.quiet_timeout)
                tracer.start()
                try:
                    time.sleep(SETTLE_S)
                    before = {p["id"]: p for p in bpf_progs_of(tracer.proc.pid)}
                    cpu0 = cpu_ns(tracer.proc.pid) or 0
                    r, noise = one_run()
                    cpu = ((cpu_ns(tracer.proc.pid) or cpu0) - cpu0) / 1e9
                    after = bpf_progs_of(tracer.proc.pid)
                finally:
                    tracer.stop()
                if not noise:
                    break
                log(f"  bench: BPF stats run ({tracer.name}) overlapped other BPF activity; "
                    + ("measuring it again" if attempt < args.retries else "keeping it"))
            progs = {}
            for p in after:
                b = before.get(p["id"], {"run_cnt": 0, "run_time_ns": 0})
                cnt = p["run_cnt"] - b["run_cnt"]
                ns = p["run_time_ns"] - b["run_time_ns"]
                progs[p["name"]] = {"run_cnt": cnt, "run_time_ns": ns,
                                    "ns_per_run": ns / cnt if cnt else None}
            prog_ms = sum(p["run_time_ns"] for p in progs.values()) / 1e6
            out[tracer.name] = {**r, "programs": progs, "noisy": bool(noise),
                                "prog_time_ms": prog_ms,
                                "prog_ms_per_s": prog_ms / r["wall_s"] if r["wall_s"] else None,
                                "tracer_cpu_ms_per_s": (cpu * 1e3 / r["wall_s"]
                                                        if r["wall_s"] else None)}
    finally:
        stats.close()
    return out


def section_realistic(args, res: Results) -> dict:
    workload = [sys.executable, str(BENCH / "realistic.py")]
    mt = tracked(make_memtrace(args), res)
    pairs = []
    for i in range(args.pairs):
        u, t = measure_pair(i, workload, mt, args)
        pairs.append((u, t))
        log(f"  realistic pair {i + 1}/{args.pairs}: untraced {u['total_s']:.3f}s "
            f"traced {t['total_s']:.3f}s  ratio {t['total_s'] / u['total_s']:.3f}")
    s = summarise(pairs, ("total_s", "build_s", "serialise_s", "wall_s"))
    return {"pairs": args.pairs, "rows": pairs[0][0].get("rows"),
            "workload_peak_rss_mib": pairs[0][0].get("peak_rss_mib"), "memtrace": s}


def section_startup(args, res: Results) -> dict:
    n = args.startups
    mt = tracked(make_memtrace(args), res)
    ready, stops, rss = [], [], []
    for i in range(n):
        wait_quiet(args.quiet_timeout)
        time.sleep(GAP_S)
        mt.start()
        try:
            time.sleep(1.0)  # idle, as a user's memtrace mostly is
            res.note_objects(mt)
        finally:
            mt.stop()
        ready.append(mt.ready_s)
        stops.append(mt.stop_s)
        if mt.peak_rss_kib:
            rss.append(mt.peak_rss_kib)
        log(f"  startup {i + 1}/{n}: ready after {mt.ready_s:.3f}s, stopped in {mt.stop_s:.3f}s"
            f", VmHWM {(mt.peak_rss_kib or 0) / 1024:.1f} MiB")
    return {"runs": n, "ready_s_median": med(ready), "ready_s": [round(x, 4) for x in ready],
            "stop_s_median": med(stops), "idle_peak_rss_kib_median": med(rss)}


# ---------------------------------------------------------------- server
# memtrace: `watch` as users run it (slab hooks adaptive: detached while nothing fails;
# growth tracked); memtrace_nogrowth: `watch --no-growth`; memtrace_full: `watch
# --slab-hooks always`, every slab hook attached all the time.
SERVER_ARMS = ("untraced", "sys_exit", "floor", "memtrace", "memtrace_nogrowth",
               "memtrace_full", "export")
SERVER_KEYS = ("rps", "set_rps", "get_rps")
REDIS_CLIENTS = 20
REDIS_RUN_TIMEOUT_S = 120.0  # one redis-benchmark run; it takes a few seconds


def ensure_redis() -> tuple[str, str]:
    """redis-server and redis-benchmark, installed by bench/setup.sh when missing."""
    server, client = shutil.which("redis-server"), shutil.which("redis-benchmark")
    if server and client:
        return server, client
    log("bench: the server benchmark needs redis-server and redis-benchmark (Debian's "
        "redis-server and redis-tools packages, for the benchmark only): installing them "
        "with bench/setup.sh")
    r = subprocess.run(["bash", str(BENCH / "setup.sh")], stdin=subprocess.DEVNULL)
    server, client = shutil.which("redis-server"), shutil.which("redis-benchmark")
    if r.returncode != 0 or not server or not client:
        raise BenchError("could not install redis-server and redis-tools (bench/setup.sh); "
                         "install them with apt-get, or skip this section")
    return server, client


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(server: str, port: int) -> subprocess.Popen:
    """A private redis-server on 127.0.0.1:port: no persistence, nothing written but its log."""
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(OUT),
            "--logfile", str(OUT / "redis-server.log")]
    p = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not _redis_ping(port):
        if p.poll() is not None or time.monotonic() > deadline:
            stop_process(p)
            raise BenchError(f"redis-server did not start on 127.0.0.1:{port} (see "
                             f"{OUT / 'redis-server.log'})")
        time.sleep(0.1)
    return p


def redis_benchmark(client: str, port: int, requests: int) -> dict[str, float]:
    """One bounded redis-benchmark run (20 clients, SET then GET): requests per second."""
    argv = [client, "-h", "127.0.0.1", "-p", str(port), "-c", str(REDIS_CLIENTS),
            "-n", str(requests), "-t", "set,get", "--csv"]
    t0 = time.monotonic()
    p = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
              text=True)
    try:
        out, err = p.communicate(timeout=REDIS_RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_process(p, signal.SIGKILL)
        raise BenchError(f"redis-benchmark took longer than {REDIS_RUN_TIMEOUT_S:.0f}s") from None
    _CHILDREN.remove(p)
    rps: dict[str, float] = {}
    for row in out.splitlines():
        cells = [c.strip('"') for c in row.split(",")]
        if len(cells) >= 2 and cells[0] in ("SET", "GET"):
            try:
                rps[cells[0]] = float(cells[1])
            except ValueError:
                pass
    if p.returncode != 0 or set(rps) != {"SET", "GET"} or min(rps.values()) <= 0:
        raise BenchError(f"redis-benchmark exited {p.returncode} without SET and GET rates: "
                         f"{(err or out).strip()[-300:]}")
    # Both tests together: all requests over the time they took.
    busy = requests / rps["SET"] + requests / rps["GET"]
    return {"rps": 2 * requests / busy, "set_rps": rps["SET"], "get_rps": rps["GET"],
            "wall_s": time.monotonic() - t0}


def cpu_measured_run(run_once: Callable[[], dict], requests: int, pids: list[int]) -> dict:
    """run_once()'s result plus the CPU every process involved spent per request: the
    client's (a child reaped by the run: RUSAGE_CHILDREN), the server's and the tracer's
    (schedstat). BPF programs run in the context of the process they trace, so their time
    is in there too. Steadier than throughput on a VM whose CPUs are shared: time spent
    waiting for a CPU is not counted."""
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = [cpu_ns(p) or 0 for p in pids]
    r = run_once()
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = sum((cpu_ns(p) or b) - b for p, b in zip(pids, before)) / 1e9
    spent += (after_children.ru_utime - before_children.ru_utime
              + after_children.ru_stime - before_children.ru_stime)
    return {**r, "cpu_us_per_request": spent * 1e6 / requests}


def section_server(args, res: Results) -> dict:
    """redis-server under redis-benchmark, untraced and under six tracers, side by side:
    each round runs every arm once (order reversed in odd rounds); each arm's ratio is its
    throughput over the untraced throughput of the same round."""
    server, client = ensure_redis()
    rounds = max(args.pairs, 4)
    requests = args.server_requests or (100_000 if args.quick else 200_000)
    tracers: dict[str, Optional[Tracer]] = {
        "untraced": None,
        "sys_exit": tracked(make_bare_sys_exit(), res),
        "floor": tracked(make_floor(), res),
        "memtrace": tracked(make_memtrace(args), res),
        "memtrace_nogrowth": tracked(make_memtrace_nogrowth(args), res),
        "memtrace_full": tracked(Tracer("memtrace_full", [*memtrace_argv(args.memtrace),
                                                          "--slab-hooks", "always"],
                                        is_memtrace_ready), res),
        "export": tracked(make_export(args, free_loopback_port()), res),
    }
    port = free_loopback_port()
    redis = start_redis(server, port)
    version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    per_round: list[dict] = []
    try:
        redis_benchmark(client, port, requests // 4)  # warm-up, not counted
        for i in range(rounds):
            order = list(SERVER_ARMS) if i % 2 == 0 else list(reversed(SERVER_ARMS))
            for attempt in range(args.retries + 1):
                wait_quiet(args.quiet_timeout)
                runs: dict = {}
                noise: list[str] = []
                for name in order:
                    tracer = tracers[name]
                    time.sleep(GAP_S)
                    if tracer is not None:
                        tracer.start()
                    try:
                        if tracer is not None:
                            time.sleep(SETTLE_S)
                        before = loaded_programs()
                        runs[name] = cpu_measured_run(
                            lambda: redis_benchmark(client, port, requests), 2 * requests,
                            [redis.pid] + ([tracer.proc.pid] if tracer and tracer.proc else []))
                        noise += bpf_noise(before, loaded_programs())
                    finally:
                        if tracer is not None:
                            tracer.stop()
                if not noise:
                    break
                NOISE.append({"section": SECTION[0], "pair": i, "tracer": "all arms",
                              "attempt": attempt, "programs": sorted(set(noise))[:6]})
                log(f"  bench: server round {i + 1} overlapped other BPF activity "
                    f"({', '.join(sorted(set(noise))[:3])}); " +
                    ("measuring it again" if attempt < args.retries else "keeping it"))
            runs["noisy"] = bool(noise)
            per_round.append(runs)
            base = runs["untraced"]["rps"]
            log(f"  server round {i + 1}/{rounds}: untraced {base:,.0f} req/s; " + ", ".join(
                f"{n} {runs[n]['rps'] / base:.3f}" for n in SERVER_ARMS[1:]))
        stats = None
        if not args.no_bpf_stats:
            def one_run() -> tuple[dict, list[str]]:
                before = loaded_programs()
                r = redis_benchmark(client, port, requests)
                return ({"rps": r["rps"], "wall_s": r["wall_s"]},
                        bpf_noise(before, loaded_programs()))
            stats = bpf_stats_runs(args, res, (make_bare_sys_exit(), make_floor(),
                                               make_memtrace(args), make_memtrace_nogrowth(args)),
                                   one_run)
    finally:
        stop_process(redis)
    arms = {}
    for name in SERVER_ARMS[1:]:
        arms[name] = {}
        for k in SERVER_KEYS:
            ratios = [r[name][k] / r["untraced"][k] for r in per_round]
            clean = [r[name][k] / r["untraced"][k] for r in per_round if not r["noisy"]]
            arms[name][k] = {
                "ratio_median": med(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "ratios": [round(x, 4) for x in ratios],
                "ratio_median_clean_rounds": med(clean), "clean_rounds": len(clean),
                "median_rps": med([r[name][k] for r in per_round])}
    for name in SERVER_ARMS[1:]:  # CPU per request: above 1 is a cost
        ratios = [r[name]["cpu_us_per_request"] / r["untraced"]["cpu_us_per_request"]
                  for r in per_round]
        arms[name]["cpu_per_request"] = {
            "ratio_median": med(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratios": [round(x, 4) for x in ratios],
            "median_us": med([r[name]["cpu_us_per_request"] for r in per_round])}
    untraced = {k: med([r["untraced"][k] for r in per_round]) for k in SERVER_KEYS}
    untraced["cpu_us_per_request"] = med([r["untraced"]["cpu_us_per_request"]
                                          for r in per_round])
    # What each arm costs beyond the bare hook, in points of the untraced throughput:
    # from the medians, and round by round (each round measures both back to back).
    beyond = {name: {"from_medians": arms["sys_exit"]["rps"]["ratio_median"]
                     - arms[name]["rps"]["ratio_median"],
                     "median_by_round": med([(r["sys_exit"]["rps"] - r[name]["rps"])
                                             / r["untraced"]["rps"] for r in per_round]),
                     # extra CPU per request beyond the bare hook's, in points of untraced
                     "cpu_by_round": med([(r[name]["cpu_us_per_request"]
                                           - r["sys_exit"]["cpu_us_per_request"])
                                          / r["untraced"]["cpu_us_per_request"]
                                          for r in per_round])}
              for name in ("floor", "memtrace", "memtrace_nogrowth", "memtrace_full",
                           "export")}
    # What growth tracking costs: memtrace --no-growth's throughput ratio minus memtrace's.
    growth_rounds = [(r["memtrace_nogrowth"]["rps"] - r["memtrace"]["rps"]) / r["untraced"]["rps"]
                     for r in per_round]
    growth = {"from_medians": arms["memtrace_nogrowth"]["rps"]["ratio_median"]
              - arms["memtrace"]["rps"]["ratio_median"],
              "median_by_round": med(growth_rounds), "min_by_round": min(growth_rounds),
              "max_by_round": max(growth_rounds),
              # memtrace's CPU per request minus memtrace --no-growth's, points of untraced
              "cpu_by_round": med([(r["memtrace"]["cpu_us_per_request"]
                                    - r["memtrace_nogrowth"]["cpu_us_per_request"])
                                   / r["untraced"]["cpu_us_per_request"] for r in per_round])}
    return {"workload": {"server": version.strip(), "clients": REDIS_CLIENTS,
                         "requests_per_test": requests, "tests": ["SET", "GET"],
                         "address": "127.0.0.1"},
            "rounds": rounds, "untraced_median": untraced, "arms": arms,
            "cost_beyond_sys_exit": beyond, "growth_cost": growth, "per_round": per_round,
            **({"bpf_stats": stats} if stats is not None else {})}


def bpf_noise(before: dict[int, tuple[str, str]], after: dict[int, tuple[str, str]]
              ) -> list[str]:
    """Other tracers' programs loaded at the start or end of a run, or loaded during it."""
    noise = foreign_programs(before) + foreign_programs(after)
    noise += [f"{name or '?'} (id {i}, new)" for i, (name, _) in sorted(after.items())
              if i not in before and i not in OWN_PROG_IDS]
    return sorted(set(noise))


def section_storm_rss(args, res: Results) -> dict:
    """memtrace's peak RSS under an ENOMEM storm (see bench/peak_rss.py)."""
    import peak_rss  # bench/ is this script's directory, first on sys.path

    argv = memtrace_argv(args.memtrace)
    base = argv[:argv.index("watch")] if "watch" in argv else argv  # the command, no subcommand
    wait_quiet(args.quiet_timeout)
    return peak_rss.measure_all(base, threads=2, seconds=5, runs=1, modes=list(peak_rss.MODES),
                                limit_mib=200.0)


# ---------------------------------------------------------------- report
def _r(x: Optional[float], fmt: str = "{:.3f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _pp(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x * 100:+.1f} pp"


def table(results: dict) -> str:
    env = results["env"]
    lines = [f"memtrace benchmarks: kernel {env['kernel']}, {env['cpus']} CPUs, "
             f"pairs {env['pairs']}, load before {env['loadavg_before']}"]
    nz = results.get("noise", {})
    if nz.get("pairs_redone") or nz.get("noisy_pairs_kept"):
        lines.append(f"other BPF activity overlapped {nz['pairs_redone']} pair(s), measured "
                     f"again; {nz['noisy_pairs_kept']} noisy pair(s) kept after "
                     f"{env['retries']} retries")
    if env.get("resident_programs"):
        lines.append("note: other tracers stayed loaded past --quiet-timeout and were taken "
                     f"as resident (program ids {env['resident_programs']})")
    if env.get("foreign_programs"):
        lines.append("note: other sessions' tracer programs were loaded when it started "
                     f"(each pair waited for them to go): {env['foreign_programs']}")
    st = results.get("storm")
    if st:
        w = st["workload"]
        u = {k: st["memtrace"][k]["untraced_median_s"] for k in STORM_KEYS}
        lines += ["",
                  f"storm: {w['iters']:.0f} x mmap/touch/munmap {w['region_kib']:.0f} KiB + "
                  f"{w['syscalls']:.0f} getppid; untraced median {_r(u['total_s'])}s "
                  f"(mmap {_r(u['mmap_s'])}s, syscalls {_r(u['syscall_s'])}s, CPU "
                  f"{_r(u.get('cpu_s'))}s)",
                  f"  {'median ratio (range)':24s} {'total':>22s} {'mmap phase':>22s} "
                  f"{'syscall phase':>22s} {'CPU storm+tracer':>22s}"]
        for name in ("floor", "memtrace", "memtrace_nogrowth"):
            if name not in st:
                continue
            cells = []
            for k in STORM_KEYS:
                s = st[name][k]
                cells.append(f"{_r(s['ratio_median'])} ({_r(s['ratio_min'])}-"
                             f"{_r(s['ratio_max'])})")
            noisy = st["pairs"] - st[name]["total_s"]["clean_pairs"]
            lines.append(f"  {name + ' / untraced':24s} " + " ".join(f"{c:>22s}" for c in cells)
                         + (f"  ({noisy} noisy pair(s) kept; clean-only total "
                            f"{_r(st[name]['total_s']['ratio_median_clean_pairs'])})"
                            if noisy else ""))
        d = st["memtrace_minus_floor"]
        lines.append(f"  {'memtrace - floor':24s} " +
                     " ".join(f"{_pp(d.get(k)):>22s}" for k in STORM_KEYS))
        d = st["memtrace_minus_floor_by_round"]
        lines.append(f"  {'  (median by round)':24s} " +
                     " ".join(f"{_pp(d.get(k)):>22s}" for k in STORM_KEYS))
        if "growth_cost" in st:
            d = st["growth_cost"]
            lines.append(f"  {'growth (on - off)':24s} " +
                         " ".join(f"{_pp(d.get(k)):>22s}" for k in STORM_KEYS))
            d = st["growth_cost_by_round"]
            lines.append(f"  {'  (median by round)':24s} " + " ".join(
                f"{_pp(d[k]['median']) + ' (' + _pp(d[k]['min']) + '..' + _pp(d[k]['max']) + ')':>22s}"
                for k in STORM_KEYS))
        ens, enm = st["extra_ns_per_syscall"], st["extra_ns_per_mmap_iter"]
        lines.append(f"  extra per getppid: floor {_r(ens['floor'], '{:.1f}')} ns, memtrace "
                     f"{_r(ens['memtrace'], '{:.1f}')} ns;  extra per mmap iteration: floor "
                     f"{_r(enm['floor'], '{:.0f}')} ns, memtrace {_r(enm['memtrace'], '{:.0f}')} ns")
        lines += bpf_stats_lines(st.get("bpf_stats"), "storm")
    rl = results.get("realistic")
    if rl:
        s = rl["memtrace"]
        lines += ["",
                  f"realistic: build + json/pickle {rl['rows']:.0f} rows (peak RSS "
                  f"{rl['workload_peak_rss_mib']:.0f} MiB); untraced median "
                  f"{_r(s['total_s']['untraced_median_s'])}s",
                  f"  memtrace / untraced: {_r(s['total_s']['ratio_median'])} "
                  f"({_r(s['total_s']['ratio_min'])}-{_r(s['total_s']['ratio_max'])}); "
                  f"build {_r(s['build_s']['ratio_median'])}, serialise "
                  f"{_r(s['serialise_s']['ratio_median'])}"
                  + (f"  ({rl['pairs'] - s['total_s']['clean_pairs']} noisy pair(s) kept; "
                     f"clean-only {_r(s['total_s']['ratio_median_clean_pairs'])})"
                     if s["total_s"]["clean_pairs"] < rl["pairs"] else "")]
    sv = results.get("server")
    if sv:
        lines += [""] + server_table(sv)
    mt = results["memtrace"]
    lines.append("")
    sr = results.get("storm_rss")
    if sr:
        lines.append(f"peak RSS under an ENOMEM storm ({sr['threads']} threads x {sr['seconds']} s"
                     f", limit {sr['limit_mib']:.0f} MiB): " + "; ".join(
                         f"{r['mode']} {(r['peak_rss_kib'] or 0) / 1024:.1f} MiB (storm "
                         f"{(r['storm'] or {}).get('enomem', 0):,} ENOMEMs, counted "
                         f"{'exactly' if r['exact'] else r['counted']})" for r in sr["runs"]))
    if results.get("startup"):
        su = results["startup"]
        lines.append(f"startup: ready line after {_r(su['ready_s_median'])}s (median of "
                     f"{su['runs']}: {su['ready_s']}); stops in {_r(su['stop_s_median'])}s")
    if mt.get("ready_s_median") is not None:
        lines.append(f"memtrace ready time over all its runs: median {_r(mt['ready_s_median'])}s,"
                     f" max {_r(mt['ready_s_max'])}s ({mt['runs']} runs)")
    if mt.get("peak_rss_kib_max"):
        lines.append(f"memtrace peak RSS (VmHWM before stop): median "
                     f"{mt['peak_rss_kib_median'] / 1024:.1f} MiB, max "
                     f"{mt['peak_rss_kib_max'] / 1024:.1f} MiB"
                     + (f"; floor.py (bcc alone) {mt['floor_peak_rss_kib_median'] / 1024:.1f} MiB"
                        if mt.get("floor_peak_rss_kib_median") else ""))
    if results.get("tracer_cpu"):
        lines.append("tracer CPU from ready to stop (ms of CPU per s): " + ", ".join(
            f"{k} {_r(v['cpu_ms_per_s'], '{:.1f}')}" for k, v in results["tracer_cpu"].items()))
    if mt.get("maps"):
        total = mt["maps_bytes_memlock"]
        lines.append(f"memtrace BPF maps: {len(mt['maps'])}, {total / 1048576:.2f} MiB memlock "
                     "in all:")
        for m in mt["maps"]:
            lines.append(f"    {m['name']:16s} {str(m['type']):14s} {m['max_entries']:>7d} "
                         f"entries {m['bytes_memlock'] / 1024:>9.1f} KiB")
    if mt.get("programs"):
        lines.append("memtrace BPF programs: " + ", ".join(
            f"{p['name']} ({p['verified_insns']} insns verified, {p['bytes_jited']} B jited)"
            for p in mt["programs"]))
    return "\n".join(lines)


def server_table(sv: dict) -> list[str]:
    w, u = sv["workload"], sv["untraced_median"]
    lines = [f"server: {w['server'].split(' sha=')[0]}, redis-benchmark {w['clients']} clients "
             f"x {w['requests_per_test']:,} SET + GET on {w['address']}, {sv['rounds']} rounds; "
             f"untraced median {u['rps']:,.0f} req/s (SET {u['set_rps']:,.0f}, "
             f"GET {u['get_rps']:,.0f})",
             f"  {'throughput ratio (range)':24s} {'SET+GET':>22s} {'SET':>22s} {'GET':>22s}"]
    for name in SERVER_ARMS[1:]:
        a = sv["arms"][name]
        cells = [f"{_r(a[k]['ratio_median'])} ({_r(a[k]['ratio_min'])}-{_r(a[k]['ratio_max'])})"
                 for k in SERVER_KEYS]
        noisy = sv["rounds"] - a["rps"]["clean_rounds"]
        lines.append(f"  {name + ' / untraced':24s} " + " ".join(f"{c:>22s}" for c in cells)
                     + (f"  ({noisy} noisy round(s) kept; clean-only "
                        f"{_r(a['rps']['ratio_median_clean_rounds'])})" if noisy else ""))
    lines.append(f"  {'CPU per request (range)':24s} untraced median "
                 f"{_r(u.get('cpu_us_per_request'), '{:.2f}')} us (server + client + tracer)")
    for name in SERVER_ARMS[1:]:
        c = sv["arms"][name].get("cpu_per_request")
        if c:
            lines.append(f"  {name + ' / untraced':24s} {_r(c['ratio_median'])} "
                         f"({_r(c['ratio_min'])}-{_r(c['ratio_max'])})")
    g = sv.get("growth_cost")
    if g:
        lines.append(f"  growth tracking (memtrace --no-growth - memtrace, points of untraced "
                     f"throughput): {_pp(g['from_medians'])} from the medians, "
                     f"{_pp(g['median_by_round'])} by round ({_pp(g['min_by_round'])}.."
                     f"{_pp(g['max_by_round'])}); CPU per request {_pp(g.get('cpu_by_round'))} "
                     "by round")
    b = sv["cost_beyond_sys_exit"]
    lines.append("  cost beyond the bare sys_exit hook (points of untraced throughput; from the "
                 "medians / median by round; CPU per request by round): " + ", ".join(
                     f"{n} {_pp(v['from_medians'])} / {_pp(v['median_by_round'])}; "
                     f"{_pp(v.get('cpu_by_round'))}" for n, v in b.items()))
    bs = sv.get("bpf_stats")
    lines += bpf_stats_lines(bs, "server")
    if bs and "error" not in bs and "sys_exit" in bs:
        def cpu(v: dict) -> float:
            return (v["prog_ms_per_s"] or 0) + (v["tracer_cpu_ms_per_s"] or 0)
        base = cpu(bs["sys_exit"])
        lines.append("  CPU beyond the bare sys_exit hook (BPF programs + the tracer process, "
                     "ms per s of the run; 2000 is both CPUs): " + ", ".join(
                         f"{n} {cpu(v) - base:+.1f}" for n, v in bs.items() if n != "sys_exit"))
    return lines


def bpf_stats_lines(bs: Optional[dict], what: str) -> list[str]:
    """The table's lines for one section's BPF run-time stats runs."""
    if not bs:
        return []
    if "error" in bs:
        return [f"  BPF run-time stats: {bs['error']}"]
    lines = [f"  BPF run-time stats, one extra {what} run each (runs x mean ns/run; counts are "
             "system-wide):"]
    for tr, v in bs.items():
        progs = ", ".join(f"{n} {p['run_cnt']} x {_r(p['ns_per_run'], '{:.0f}')}"
                          for n, p in v["programs"].items() if p["run_cnt"])
        lines.append(f"    {tr}: {progs or 'no runs counted'}; {v['prog_time_ms']:.0f} ms in "
                     f"BPF programs ({_r(v.get('prog_ms_per_s'), '{:.1f}')} ms/s), tracer "
                     f"process {_r(v.get('tracer_cpu_ms_per_s'), '{:.1f}')} ms/s"
                     + (" (noisy)" if v.get("noisy") else ""))
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="memtrace's overhead benchmarks (root).")
    ap.add_argument("--pairs", type=int, default=8, help="pairs per comparison (default 8)")
    ap.add_argument("--quick", action="store_true", help="3 pairs: a smoke run")
    ap.add_argument("--only", choices=("storm", "realistic", "startup", "server", "storm_rss"))
    ap.add_argument("--server-requests", type=int, default=None,
                    help="redis-benchmark requests per test and run (default 200000; "
                         "100000 with --quick)")
    ap.add_argument("--startups", type=int, default=5, help="startup runs (default 5)")
    ap.add_argument("--no-bpf-stats", action="store_true",
                    help="skip the extra storm and server runs with BPF run-time stats on")
    ap.add_argument("--retries", type=int, default=3,
                    help="re-measure a pair that overlapped other BPF activity (default 3)")
    ap.add_argument("--quiet-timeout", type=float, default=300.0,
                    help="seconds to wait for other tracers to go away before a pair")
    ap.add_argument("--memtrace", default=None,
                    help="memtrace command line (default: memtrace watch --json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.pairs = 3
        args.startups = 3
    if args.pairs < 1 or args.startups < 1 or args.retries < 0:
        ap.error("--pairs and --startups must be at least 1, --retries at least 0")
    if args.server_requests is not None and args.server_requests < 1000:
        ap.error("--server-requests must be at least 1000")
    if os.geteuid() != 0:
        log("bench: needs root (BPF): run it with sudo")
        return 1
    OUT.mkdir(parents=True, exist_ok=True)

    signal.signal(signal.SIGTERM, _on_terminate)
    signal.signal(signal.SIGHUP, _on_terminate)
    res = Results()
    results: dict = {"env": {
        "kernel": platform.release(), "cpus": os.cpu_count(), "pairs": args.pairs,
        "retries": args.retries, "python": platform.python_version(),
        "loadavg_before": os.getloadavg()[0],
        "memtrace_cmd": " ".join(memtrace_argv(args.memtrace)),
        "foreign_programs": foreign_programs(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }}
    if results["env"]["foreign_programs"]:
        log("bench: warning: other tracers' programs are loaded and would skew the "
            f"untraced baseline: {results['env']['foreign_programs']}")
    sections = {"storm": section_storm, "realistic": section_realistic,
                "startup": section_startup, "server": section_server,
                "storm_rss": section_storm_rss}
    rc = 0
    try:
        for name, fn in sections.items():
            if args.only and name != args.only:
                continue
            log(f"bench: {name} ...")
            SECTION[0] = name
            t0 = time.monotonic()
            results[name] = fn(args, res)
            log(f"bench: {name} done in {time.monotonic() - t0:.0f}s")
    except KeyboardInterrupt:
        log("bench: interrupted; stopping everything it started")
        rc = 130
    except BenchError as e:
        log(f"bench: error: {e}")
        rc = 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all_children()

    rss = res.memtrace_rss_kib
    results["memtrace"] = {
        "runs": len(res.memtrace_ready_s),
        "ready_s_median": med(res.memtrace_ready_s),
        "ready_s_max": max(res.memtrace_ready_s) if res.memtrace_ready_s else None,
        "peak_rss_kib_median": med(rss),
        "peak_rss_kib_max": max(rss) if rss else None,
        "floor_peak_rss_kib_median": med(res.floor_rss_kib),
        "probes": res.probes,
        "maps": res.maps,
        "maps_bytes_memlock": sum(m["bytes_memlock"] for m in res.maps or []),
        "programs": res.progs,
    }
    results["tracer_cpu"] = {
        f"{sec}/{name}": {"cpu_s": round(ns / 1e9, 4), "traced_s": round(secs, 2),
                          "cpu_ms_per_s": round(ns / 1e6 / secs, 3) if secs else None}
        for (sec, name), (ns, secs) in sorted(res.cpu.items())}
    results["noise"] = {
        "events": NOISE,
        "noisy_pairs_kept": sum(1 for e in NOISE if e["attempt"] == args.retries),
        "pairs_redone": sum(1 for e in NOISE if e["attempt"] < args.retries),
    }
    not_attached = [p["name"] for p in res.probes or []
                    if p.get("status") not in ("attached", "standby")]
    if not_attached:
        results["memtrace"]["probes_not_attached"] = not_attached
    results["env"]["loadavg_after"] = os.getloadavg()[0]
    results["env"]["complete"] = rc == 0
    left = foreign_programs()
    if left:
        results["env"]["programs_left_loaded"] = left
    if RESIDENT_PROG_IDS:
        results["env"]["resident_programs"] = sorted(RESIDENT_PROG_IDS)
    print(table(results), flush=True)
    if not_attached:
        print(f"note: memtrace probes not attached: {not_attached}")
    if left:
        print(f"note: other sessions' tracer programs were loaded at the end (none of this "
              f"script's are left): {left}")
    line = json.dumps(results, sort_keys=True, default=str)
    (OUT / "results.json").write_text(line + "\n")
    print(line, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
