#!/usr/bin/env python3
"""What `memtrace leaks` costs a malloc-heavy process, and how it compares with bcc's
memleak.

Workload: bench/malloc_heavy.c (built with gcc -O2 into bench/out/malloc_heavy): a loop
of one free and one malloc of a varied small size per iteration, with a small rotating
window of live blocks. It prints "ready", waits for SIGUSR1 (so a tracer can attach
first), runs its iterations and prints "elapsed <s>" (the loop only).

Configurations (all by default; --only picks one group):

  growth     memtrace leaks --mode growth (raw tracepoints on sys_exit and page faults,
             nothing on the allocator), on a heavy run sized so that it takes ~1 s
             untraced. Target: at most 1.05x.
  malloc     memtrace leaks --mode malloc --sample 1 (exact) and --sample 16 (uprobes and
             uretprobes on malloc/free/calloc/realloc/...), on a smaller run.
  memleak    bcc's memleak (memleak-bpfcc -p PID, default settings), on the same smaller
             run. memtrace's malloc mode must be no slower: median ratio memtrace-malloc
             over median ratio memleak <= 1.0.

Each configuration is measured in pairs: an untraced run and a traced run of the same
workload, the order alternating (untraced first in even pairs, traced first in odd
ones). Each pair gives a ratio traced/untraced; the report gives the median over pairs.
Rounds interleave the configurations (pair i of every configuration, then pair i+1), so
slow drift of the machine lands on all of them alike.

A traced run: start the workload, wait for "ready", start the tracer with -p PID, wait
for its attached line and until it has stopped opening fds (memleak prints its line
before it attaches its probes), settle, send SIGUSR1, read "elapsed", stop the tracer
(SIGINT, SIGKILL after 10 s), reap the workload. An untraced run is the same without
the tracer.

Prints a table, then one JSON line with every number (also written to
bench/out/leaks_results.json). Progress goes to stderr; tracer output goes to
bench/out/leaks_<config>.log. Every process it starts is stopped on exit, Ctrl-C and
SIGTERM included.

Run as root: python3 bench/leaks_bench.py [--pairs N] [--quick]
[--only growth|malloc|memleak].
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
SRC = BENCH / "malloc_heavy.c"
BIN = OUT / "malloc_heavy"
RESULTS = OUT / "leaks_results.json"

READY_TIMEOUT_S = 180.0   # bcc compiles at start-up: slow on a loaded 2-core box
STABLE_S = 0.75           # the tracer's fd count unchanged this long: it has attached
SETTLE_S = 0.5            # then this long before the workload starts its loop
STOP_TIMEOUT_S = 10.0     # SIGINT, then SIGKILL
RUN_TIMEOUT_S = 900.0     # one timed loop, however slow the tracer makes it
GAP_S = 0.2               # between runs

MEMTRACE_READY = re.compile(r"memtrace leaks: .*Ctrl-C to stop")
MEMLEAK_READY = re.compile(r"Attaching to pid \d+, Ctrl\+C to quit\.")
ELAPSED = re.compile(r"^elapsed ([0-9.]+) cpu ([0-9.]+)")

# BPF program types that hook tracepoints, kprobes/uprobes or functions: another
# tracer's programs of these types skew a run (cgroup/LSM/network ones are ignored).
TRACING_TYPES = {"kprobe", "tracepoint", "raw_tracepoint", "raw_tracepoint_writable",
                 "perf_event", "tracing"}

# Ids of the BPF programs this script's tracers loaded: kept after they stop, since the
# kernel may still list a program for a moment after its process has exited.
OWN_PROG_IDS: set[int] = set()

# Every process this script started and has not reaped yet: pid -> (Popen, kind).
_CHILDREN: dict[int, tuple[subprocess.Popen, str]] = {}


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes
_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int):
    """preexec_fn: the child gets `sig` if this script dies without cleaning up (even
    SIGKILL), so no tracer outlives the benchmark."""
    libc = ctypes.CDLL(None, use_errno=True)

    def fn() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    return fn


def spawn(argv: list[str], kind: str, death_sig: int, **kw) -> subprocess.Popen:
    # Own session: a Ctrl-C in the terminal reaches only this script, which then stops
    # its children in order (tracer first, with SIGINT).
    p = subprocess.Popen(argv, start_new_session=True, preexec_fn=_die_with_parent(death_sig),
                         **kw)
    _CHILDREN[p.pid] = (p, kind)
    return p


def stop(p: Optional[subprocess.Popen], sig: int = signal.SIGINT,
         timeout: float = STOP_TIMEOUT_S) -> Optional[int]:
    """Send sig, wait up to timeout, then SIGKILL its process group; always reaps.
    Returns the exit code."""
    if p is None:
        return None
    try:
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"  bench: pid {p.pid} still running {timeout:.0f}s after signal {sig}: "
                    "killing it")
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # its own session: pgid == pid
                except ProcessLookupError:
                    pass
                p.wait()
    finally:
        _CHILDREN.pop(p.pid, None)
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()
    return p.returncode


def stop_all() -> None:
    # Tracers first (they hold probes on the workloads), then the workloads.
    for kind in ("tracer", "workload"):
        for p, k in list(_CHILDREN.values()):
            if k == kind:
                stop(p, signal.SIGINT if kind == "tracer" else signal.SIGKILL)


def _on_terminate(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def cpu_s(pid: int) -> Optional[float]:
    """CPU time of all the process's threads so far, in seconds (schedstat: ns)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    except OSError:
        return None
    return total / 1e9


def cpu_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat; steal
    (time the hypervisor gave to someone else) counts as busy: it was not ours."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8])  # guest time is already included in user
    return (total - idle) / hz, total / hz


def background_cores(seconds: float) -> float:
    """How many CPUs others kept busy over `seconds` (this script sleeps meanwhile)."""
    b0, _ = cpu_busy_s()
    t0 = time.monotonic()
    time.sleep(seconds)
    b1, _ = cpu_busy_s()
    return (b1 - b0) / (time.monotonic() - t0)


def wait_quiet(timeout: float, max_load: float) -> dict:
    """Wait (up to timeout) until no other tracer's programs are loaded and other
    processes keep less than max_load CPUs busy. The machine is shared: another
    session's benchmark or test run would otherwise take CPU from one side of a pair."""
    t0 = time.monotonic()
    warned = False
    while True:
        load = background_cores(1.0)
        others = [f"{name} (id {i})" for i, name in loaded_tracing_programs().items()
                  if i not in OWN_PROG_IDS]
        waited = time.monotonic() - t0
        quiet = load <= max_load and not others
        if quiet or waited > timeout:
            if not quiet:
                log(f"  bench: not quiet after {timeout:.0f}s (others busy {load:.2f} CPUs"
                    + (f", {', '.join(others[:3])}" if others else "") + "): measuring anyway")
            return {"waited_s": round(waited, 1), "load_before": round(load, 2),
                    "programs_before": others[:8]}
        if not warned:
            log(f"  bench: waiting for a quieter machine (others busy {load:.2f} CPUs"
                + (f", {', '.join(others[:3])}" if others else "") + ") ...")
            warned = True
        time.sleep(2.0)


def perf_event_fds(pid: int) -> int:
    """The process's perf_event fds: one per uprobe, uretprobe or perf-event tracepoint."""
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[perf_event]":
                    n += 1
            except OSError:
                continue
    except OSError:
        return -1
    return n


def own_prog_ids(pid: int) -> set[int]:
    ids = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return ids
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            for line in open(f"/proc/{pid}/fdinfo/{fd}"):
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except (OSError, ValueError, IndexError):
            continue
    return ids


def loaded_tracing_programs() -> dict[int, str]:
    """Loaded BPF programs that hook tracing events: id -> name ({} without bpftool)."""
    tool = shutil.which("bpftool")
    if not tool:
        return {}
    try:
        r = subprocess.run([tool, "prog", "show", "-j"], capture_output=True, text=True,
                           timeout=30)
        progs = json.loads(r.stdout or "[]") if r.returncode == 0 else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}
    return {int(p["id"]): str(p.get("name", "?")) for p in progs
            if "id" in p and p.get("type") in TRACING_TYPES}


def bcc_kernel_source() -> Optional[str]:
    """The header tree memtrace compiles against when the running kernel has no headers
    of its own (BCC_KERNEL_SOURCE): memleak is given the same, or bcc cannot compile it."""
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return os.environ["BCC_KERNEL_SOURCE"]
    sys.path.insert(0, str(ROOT))
    try:
        from tracer.host.system import find_headers  # memtrace's own lookup (and merge)

        h = find_headers()
        return str(h.path) if h.generic else None
    except Exception as e:  # noqa: BLE001 - no headers: memleak will say so itself
        log(f"bench: warning: no kernel headers found for memleak: {e}")
        return None
    finally:
        sys.path.remove(str(ROOT))


# ---------------------------------------------------------------- workload
def build() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    if BIN.exists() and BIN.stat().st_mtime >= SRC.stat().st_mtime:
        return
    cc = os.environ.get("CC", "gcc")
    r = subprocess.run([cc, "-O2", "-Wall", "-o", str(BIN), str(SRC)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"could not build {SRC}: {r.stderr.strip()}")


def _readline(p: subprocess.Popen, timeout: float, what: str) -> str:
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    if not ready:
        raise BenchError(f"malloc_heavy (pid {p.pid}): no {what} line after {timeout:.0f}s")
    line = p.stdout.readline().decode(errors="replace")  # unbuffered: select stays true
    if not line:
        raise BenchError(f"malloc_heavy (pid {p.pid}) exited (code {p.poll()}) "
                         f"before its {what} line")
    return line


def start_workload(iters: int) -> subprocess.Popen:
    p = spawn([str(BIN), str(iters)], "workload", signal.SIGKILL, stdin=subprocess.DEVNULL,
              stdout=subprocess.PIPE, bufsize=0, cwd=ROOT)
    line = _readline(p, 30.0, "ready")
    if line.strip() != "ready":
        raise BenchError(f"malloc_heavy said {line.strip()!r}, not ready")
    return p


def timed_loop(p: subprocess.Popen, tracer_pid: Optional[int] = None) -> dict:
    """SIGUSR1 to a ready workload: its elapsed and CPU seconds, the tracer's CPU
    seconds meanwhile, and how many CPUs everything else kept busy meanwhile."""
    tr0 = cpu_s(tracer_pid) if tracer_pid else None
    b0, _ = cpu_busy_s()
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGUSR1)
    line = _readline(p, RUN_TIMEOUT_S, "elapsed")
    wall = time.monotonic() - t0
    b1, _ = cpu_busy_s()
    tr1 = cpu_s(tracer_pid) if tracer_pid else None
    m = ELAPSED.match(line)
    if not m:
        raise BenchError(f"malloc_heavy said {line.strip()!r}, not elapsed")
    r = {"elapsed_s": float(m.group(1)), "cpu_s": float(m.group(2))}
    if tr0 is not None and tr1 is not None:
        r["tracer_cpu_s"] = round(tr1 - tr0, 4)
    # /proc/stat counts in clock ticks (10 ms): meaningless for very short loops.
    if wall >= 0.2:
        others = (b1 - b0) - r["cpu_s"] - r.get("tracer_cpu_s", 0.0)
        r["others_cores"] = round(max(0.0, others) / wall, 2)
    return r


# ---------------------------------------------------------------- tracers
class Config:
    def __init__(self, name: str, label: str, group: str, argv: list[str],
                 ready: re.Pattern, iters: int, env: Optional[dict[str, str]] = None):
        self.name, self.label, self.group = name, label, group
        self.argv, self.ready, self.iters = argv, ready, iters
        self.env = env or {}
        self.log_path = OUT / f"leaks_{name}.log"
        self.pairs: list[dict] = []


def start_tracer(cfg: Config, pid: int) -> tuple[subprocess.Popen, dict]:
    """Start the tracer on pid; return once it is attached: its line printed, its fd
    count stable for STABLE_S, then SETTLE_S more."""
    argv = [a.replace("{pid}", str(pid)) for a in cfg.argv]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **cfg.env)  # memleak print()s its line
    t0 = time.monotonic()
    with open(cfg.log_path, "ab") as logf:
        logf.write(f"\n=== {' '.join(argv)}\n".encode())
        logf.flush()
        tr = spawn(argv, "tracer", signal.SIGTERM, stdin=subprocess.DEVNULL, stdout=logf,
                   stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        start = logf.tell()
    deadline = t0 + READY_TIMEOUT_S
    while True:
        with open(cfg.log_path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        if cfg.ready.search(text):
            break
        if tr.poll() is not None or time.monotonic() > deadline:
            code = stop(tr)
            tail = " | ".join(text.strip().splitlines()[-5:])
            raise BenchError(f"{cfg.label} did not attach (exit {code}): {tail}")
        time.sleep(0.05)
    ready_s = time.monotonic() - t0
    # memleak prints its line before attaching; wait until the fds stop changing.
    last, since = fd_count(tr.pid), time.monotonic()
    while time.monotonic() - since < STABLE_S:
        time.sleep(0.05)
        n = fd_count(tr.pid)
        if n != last:
            last, since = n, time.monotonic()
        if tr.poll() is not None or time.monotonic() > deadline:
            code = stop(tr)
            raise BenchError(f"{cfg.label} exited (code {code}) while attaching")
    time.sleep(SETTLE_S)
    info = {"ready_s": round(ready_s, 3), "attached_s": round(time.monotonic() - t0, 3),
            "perf_event_fds": perf_event_fds(tr.pid), "prog_ids": own_prog_ids(tr.pid)}
    return tr, info


# ---------------------------------------------------------------- pairs
def untraced_run(cfg: Config) -> dict:
    w = start_workload(cfg.iters)
    try:
        return timed_loop(w)
    finally:
        stop(w, signal.SIGKILL, timeout=5)


def traced_run(cfg: Config) -> tuple[dict, dict]:
    w = start_workload(cfg.iters)
    tr = None
    try:
        tr, info = start_tracer(cfg, w.pid)
        if tr.poll() is not None:
            raise BenchError(f"{cfg.label} exited before the run (code {tr.returncode}); "
                             f"see {cfg.log_path}")
        r = timed_loop(w, tr.pid)
        # memtrace may stop by itself once the workload has exited: that is fine.
        died = tr.poll() is not None and tr.returncode != 0
        info["tracer_exit"] = stop(tr)
        tr = None
        if died:
            raise BenchError(f"{cfg.label} failed during the run (code {info['tracer_exit']});"
                             f" see {cfg.log_path}")
        return r, info
    finally:
        stop(tr)
        stop(w, signal.SIGKILL, timeout=5)


def measure_pair(cfg: Config, i: int, args) -> dict:
    """One pair, untraced first when i is even, after waiting for a quiet machine. A pair
    is noisy when another tracer's programs were loaded around it, or other processes
    kept more than --max-load CPUs busy during one of its timed loops; a noisy pair is
    measured again up to --retries times, then kept and flagged."""
    for attempt in range(args.retries + 1):
        quiet = wait_quiet(args.quiet_timeout, args.max_load)
        before = loaded_tracing_programs()
        info: dict = {}
        if i % 2 == 0:
            time.sleep(GAP_S)
            u = untraced_run(cfg)
            time.sleep(GAP_S)
            t, info = traced_run(cfg)
        else:
            time.sleep(GAP_S)
            t, info = traced_run(cfg)
            time.sleep(GAP_S)
            u = untraced_run(cfg)
        after = loaded_tracing_programs()
        OWN_PROG_IDS.update(info.pop("prog_ids", set()))
        noise = sorted({f"{name} (id {pid})" for progs in (before, after)
                        for pid, name in progs.items() if pid not in OWN_PROG_IDS})
        for side, r in (("untraced", u), ("traced", t)):
            if r.get("others_cores", 0.0) > args.max_load:
                noise.append(f"others kept {r['others_cores']:.2f} CPUs busy during the "
                             f"{side} run")
        pair = {"pair": i + 1, "order": "untraced-first" if i % 2 == 0 else "traced-first",
                "untraced_s": u["elapsed_s"], "traced_s": t["elapsed_s"],
                "ratio": t["elapsed_s"] / u["elapsed_s"],
                "extra_ns_per_iter": (t["elapsed_s"] - u["elapsed_s"]) / cfg.iters * 1e9,
                "untraced_cpu_s": u["cpu_s"], "traced_cpu_s": t["cpu_s"],
                "untraced_others_cores": u.get("others_cores"),
                "traced_others_cores": t.get("others_cores"),
                "tracer_cpu_s": t.get("tracer_cpu_s"),
                "noisy": noise[:8], "attempt": attempt, **quiet, **info}
        if not noise or attempt == args.retries:
            return pair
        log(f"  bench: {cfg.name} pair {i + 1} was noisy ({'; '.join(noise[:3])}): "
            "measuring it again")
    raise AssertionError("unreachable")


def med(xs: list[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


def summarise(cfg: Config) -> dict:
    ps = cfg.pairs
    ratios = [p["ratio"] for p in ps]
    clean = [p["ratio"] for p in ps if not p["noisy"]]
    return {
        "label": cfg.label, "argv": cfg.argv, "iters": cfg.iters,
        "median_ratio": med(ratios),
        "min_ratio": min(ratios) if ratios else None,
        "max_ratio": max(ratios) if ratios else None,
        "median_ratio_clean_pairs": med(clean), "clean_pairs": len(clean),
        # The workload's own CPU seconds, traced over untraced: what the probes add to the
        # traced process, less sensitive than wall time to a machine others keep busy.
        "median_cpu_ratio": med([p["traced_cpu_s"] / p["untraced_cpu_s"] for p in ps
                                 if p.get("untraced_cpu_s")]),
        "median_untraced_s": med([p["untraced_s"] for p in ps]),
        "median_traced_s": med([p["traced_s"] for p in ps]),
        "median_extra_ns_per_iter": med([p["extra_ns_per_iter"] for p in ps]),
        "median_attach_s": med([p["attached_s"] for p in ps]),
        "median_others_cores": med([max(x for x in (p["untraced_others_cores"],
                                                     p["traced_others_cores"]) if x is not None)
                                    for p in ps if p["untraced_others_cores"] is not None
                                    or p["traced_others_cores"] is not None]),
        "median_tracer_cpu_s": med([p["tracer_cpu_s"] for p in ps
                                    if p.get("tracer_cpu_s") is not None]),
        "pairs": ps,
    }


# ---------------------------------------------------------------- calibration
def calibrate_growth(target_s: float) -> tuple[int, list[float]]:
    """Iterations for an untraced run of about target_s: the median ns/iteration of three
    untraced trial runs."""
    trial = 20_000_000
    per_iter = []
    for _ in range(3):
        w = start_workload(trial)
        try:
            per_iter.append(timed_loop(w)["elapsed_s"] / trial)
        finally:
            stop(w, signal.SIGKILL, timeout=5)
    ns = statistics.median(per_iter)
    iters = max(1_000_000, int(round(target_s / ns, -6)))
    return iters, [round(x * 1e9, 3) for x in per_iter]


def calibrate_malloc(cfg: Config, target_s: float) -> tuple[int, float]:
    """Iterations for a traced run of about target_s under cfg (memtrace's exact malloc
    mode): one traced trial run. Trap costs differ a lot between machines (a uprobe on an
    instruction the kernel cannot emulate single-steps, and a debug trap in a VM is
    slow), so a fixed size would take seconds on one box and minutes on another."""
    trial = 20_000
    r, _ = traced_run(Config(cfg.name, cfg.label, cfg.group, cfg.argv, cfg.ready,
                             trial, cfg.env))
    per_iter = r["elapsed_s"] / trial
    iters = int(min(5_000_000, max(10_000, round(target_s / per_iter, -4))))
    return iters, per_iter * 1e9


# ---------------------------------------------------------------- report
def fmt_ratio(x: Optional[float]) -> str:
    return "-" if x is None else (f"{x:.3f}x" if x < 10 else f"{x:.1f}x")


def report(results: dict) -> str:
    lines = []
    cfgs = results["configs"]
    lines.append("memtrace leaks on malloc_heavy: traced/untraced, median of "
                 f"{results['env']['pairs']} alternating pairs")
    hdr = (f"{'configuration':40} {'iters':>11} {'untraced s':>10} {'traced s':>9} "
           f"{'ratio':>9} {'range':>17} {'+ns/iter':>9} {'tracer cpu s':>12} {'others':>6} "
           f"{'noisy':>5}")
    lines += [hdr, "-" * len(hdr)]
    for s in cfgs.values():
        rng = f"{fmt_ratio(s['min_ratio'])}..{fmt_ratio(s['max_ratio'])}"
        noisy = len(s["pairs"]) - s["clean_pairs"]
        lines.append(f"{s['label']:40} {s['iters']:>11,} {s['median_untraced_s']:>10.4f} "
                     f"{s['median_traced_s']:>9.3f} {fmt_ratio(s['median_ratio']):>9} "
                     f"{rng:>17} {s['median_extra_ns_per_iter']:>9.1f} "
                     f"{s['median_tracer_cpu_s'] or 0:>12.3f} "
                     + (f"{s['median_others_cores']:>6.2f}" if s["median_others_cores"]
                        is not None else f"{'-':>6}") + f" {noisy:>5}")
    lines.append("(+ns/iter: extra time per malloc+free, traced - untraced; tracer cpu s: "
                 "the tracer's own CPU during the traced loop; others: CPUs that other "
                 "processes kept busy during the loops, where measurable)")
    lines.append("workload CPU seconds, traced/untraced (median over pairs): " + ", ".join(
        f"{name} {fmt_ratio(s.get('median_cpu_ratio'))}" for name, s in cfgs.items()))
    lines.append("")
    lines.append("per-pair ratios (U = untraced ran first, T = traced first):")
    for name, s in cfgs.items():
        lines.append(f"  {name:10} " + " ".join(
            f"{p['order'][0].upper()}{fmt_ratio(p['ratio'])}" + ("*" if p["noisy"] else "")
            for p in s["pairs"]))
    if any(p["noisy"] for s in cfgs.values() for p in s["pairs"]):
        lines.append("  (* noisy: another tracer's BPF programs were loaded around that pair, or "
                     "other processes kept more than --max-load CPUs busy during one of its "
                     "loops, even after --retries)")
    lines.append("")
    for c in results["checks"].values():
        lines.append(f"{c['what']}: {fmt_ratio(c['value'])} "
                     f"(must be <= {c['limit']}): {'PASS' if c['pass'] else 'FAIL'}")
    for k, v in results.get("derived", {}).items():
        lines.append(f"{k}: {v}")
    return "\n".join(lines)


def checks_and_derived(results: dict) -> None:
    cfgs = results["configs"]
    checks, derived = {}, {}
    if "growth" in cfgs and cfgs["growth"]["median_ratio"] is not None:
        v = cfgs["growth"]["median_ratio"]
        checks["growth"] = {"what": "growth mode slowdown", "value": v, "limit": 1.05,
                            "pass": v <= 1.05}
    mm = cfgs.get("memleak", {}).get("median_ratio")
    for name in ("malloc", "malloc16"):
        v = cfgs.get(name, {}).get("median_ratio")
        if v is not None and mm:
            checks[f"{name}_vs_memleak"] = {
                "what": f"{cfgs[name]['label']} / memleak (median ratios)",
                "value": v / mm, "limit": 1.0, "pass": v / mm <= 1.0}
            # The same comparison without the (ms-long, noisy) untraced denominators.
            derived[f"{name} / memleak, median traced seconds"] = round(
                cfgs[name]["median_traced_s"] / cfgs["memleak"]["median_traced_s"], 3)
    m1, m16 = cfgs.get("malloc"), cfgs.get("malloc16")
    if m1 and m16 and m1["median_extra_ns_per_iter"]:
        derived["sample 16 / sample 1, extra time per iteration"] = (
            f"{m16['median_extra_ns_per_iter'] / m1['median_extra_ns_per_iter']:.3f} "
            f"({m16['median_extra_ns_per_iter']:.0f} vs {m1['median_extra_ns_per_iter']:.0f} "
            "ns per malloc+free)")
    results["checks"], results["derived"] = checks, derived


# ---------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="memtrace leaks overhead vs bcc memleak (root).")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per configuration (8)")
    ap.add_argument("--quick", action="store_true", help="3 pairs, smaller runs")
    ap.add_argument("--only", choices=("growth", "malloc", "memleak"))
    ap.add_argument("--growth-iters", type=int, default=None,
                    help="iterations of the growth run (default: calibrated to ~1 s)")
    ap.add_argument("--malloc-iters", type=int, default=None,
                    help="iterations of the malloc/memleak run (default: calibrated "
                         "so a traced run takes ~4 s, ~1.5 s with --quick)")
    ap.add_argument("--retries", type=int, default=2,
                    help="re-measure a noisy pair up to this many times (default 2)")
    ap.add_argument("--max-load", type=float, default=0.5,
                    help="CPUs other processes may keep busy for a run to count as quiet "
                         "(default 0.5)")
    ap.add_argument("--quiet-timeout", type=float, default=120.0,
                    help="seconds to wait for a quiet machine before each pair (default 120)")
    ap.add_argument("--memtrace", default=shutil.which("memtrace") or "memtrace")
    ap.add_argument("--memleak", default="/usr/sbin/memleak-bpfcc")
    args = ap.parse_args(argv)
    pairs = args.pairs if args.pairs is not None else (3 if args.quick else 8)
    if pairs < 1 or args.retries < 0:
        ap.error("--pairs must be at least 1, --retries at least 0")
    if os.geteuid() != 0:
        log("bench: needs root (BPF)")
        return 1
    # Ctrl-C raises KeyboardInterrupt even when started from a shell that ignored SIGINT
    # (a background job); SIGTERM and SIGHUP do the same, so the finally block runs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_terminate)
    signal.signal(signal.SIGHUP, _on_terminate)

    results: dict = {"bench": "leaks", "env": {
        "kernel": platform.release(), "cpus": os.cpu_count(), "pairs": pairs,
        "quick": args.quick, "retries": args.retries, "loadavg_before": os.getloadavg()[0],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tracing_programs_loaded_at_start": sorted(loaded_tracing_programs().values()),
    }, "configs": {}}
    rc = 0
    try:
        build()
        configs: list[Config] = []
        groups = [args.only] if args.only else ["growth", "malloc", "memleak"]
        if "growth" in groups:
            if args.growth_iters:
                g_iters, trial = args.growth_iters, []
            else:
                log("bench: calibrating the growth run ...")
                wait_quiet(args.quiet_timeout, args.max_load)
                g_iters, trial = calibrate_growth(0.3 if args.quick else 1.0)
            results["env"]["growth_calibration_ns_per_iter"] = trial
            configs.append(Config("growth", "memtrace leaks --mode growth", "growth",
                                  [args.memtrace, "leaks", "-p", "{pid}", "--mode", "growth",
                                   "--json"], MEMTRACE_READY, g_iters))
        malloc_cfgs: list[Config] = []
        if "malloc" in groups:
            for name, n in (("malloc", 1), ("malloc16", 16)):
                malloc_cfgs.append(Config(name, f"memtrace leaks --mode malloc --sample {n}",
                                          "malloc",
                                          [args.memtrace, "leaks", "-p", "{pid}", "--mode",
                                           "malloc", "--sample", str(n), "--json"],
                                          MEMTRACE_READY, 0))
        if "memleak" in groups:
            if not os.path.exists(args.memleak):
                raise BenchError(f"{args.memleak} not found (Debian: bpfcc-tools)")
            src = bcc_kernel_source()
            results["env"]["memleak_bcc_kernel_source"] = src
            malloc_cfgs.append(Config("memleak", "bcc memleak (defaults)", "memleak",
                                      [args.memleak, "-p", "{pid}"], MEMLEAK_READY, 0,
                                      {"BCC_KERNEL_SOURCE": src} if src else None))
        if malloc_cfgs:
            if args.malloc_iters:
                m_iters = args.malloc_iters
            else:
                # Calibrated on memtrace's exact mode (memleak's own configuration with
                # --only memleak): a traced run of a few seconds.
                target = 1.5 if args.quick else 4.0
                log(f"bench: calibrating the malloc run (a traced run of ~{target:.0f} s) ...")
                wait_quiet(args.quiet_timeout, args.max_load)
                m_iters, ns = calibrate_malloc(malloc_cfgs[0], target)
                results["env"]["malloc_calibration"] = {
                    "config": malloc_cfgs[0].name, "traced_ns_per_iter": round(ns, 1),
                    "target_traced_s": target}
                log(f"bench: traced {ns / 1000:.1f} us per malloc+free: {m_iters:,} iterations")
            for cfg in malloc_cfgs:
                cfg.iters = m_iters
            configs += malloc_cfgs
        for cfg in configs:
            cfg.log_path.write_bytes(b"")
        t_start = time.monotonic()
        for i in range(pairs):
            for cfg in configs:
                p = measure_pair(cfg, i, args)
                cfg.pairs.append(p)
                log(f"  {cfg.name:9} pair {i + 1}/{pairs} ({p['order']}): untraced "
                    f"{p['untraced_s']:.4f}s traced {p['traced_s']:.3f}s ratio "
                    f"{fmt_ratio(p['ratio'])}" + ("  [noisy]" if p["noisy"] else ""))
        results["env"]["bench_s"] = round(time.monotonic() - t_start, 1)
        results["configs"] = {cfg.name: summarise(cfg) for cfg in configs}
        checks_and_derived(results)
    except KeyboardInterrupt:
        log("bench: interrupted; stopping everything it started")
        rc = 130
    except BenchError as e:
        log(f"bench: error: {e}")
        rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all()
    if rc:
        return rc
    print(report(results))
    line = json.dumps(results, sort_keys=True)
    print(line)
    RESULTS.write_text(line + "\n")
    return 0 if all(c["pass"] for c in results["checks"].values()) else 2


if __name__ == "__main__":
    sys.exit(main())
