"""memtrace living through its own trouble, without a kernel: MemoryError in the loop, bounded
reads of the ring buffer and bounded caches, a lowered OOM score, and header preparation
by several memtraces at once."""

from __future__ import annotations

import ctypes as ct
import io
import json
import multiprocessing
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from tests.unit.fixtures import FCNTL_FAIL, MMAP_FAIL, READY, SNAPSHOT
from tracer import cli
from tracer import run as loop
from tracer.host import kallsyms as host_kallsyms
from tracer.host import system as host
from tracer.kernel import abi
from tracer.kernel import failures as live
from tracer.model.failures import Failure, Snapshot
from tracer.model.totals import total_failures
from tracer.run import FakeSource, run
from tracer.unwind import unwinder as unwind
from tracer.unwind.elf import Module
from tracer.views.watch import run_watch

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------- the loop


class RunsOutOfMemory(FakeSource):
    """A FakeSource whose polls number `failing` raise MemoryError (before handing out a
    batch: the batch stays for the next poll), and that counts how often it shed memory."""

    def __init__(self, failing: set[int], **kw: Any):
        super().__init__(READY, batches=[[MMAP_FAIL], [FCNTL_FAIL], [MMAP_FAIL]],
                         snapshots=[Snapshot(), SNAPSHOT], **kw)
        self.failing = failing
        self.sheds = 0

    def poll(self, timeout: float = 0.1) -> list[Failure]:
        if self.polls + 1 in self.failing:
            self.polls += 1
            raise MemoryError()
        return super().poll(timeout)

    def shed_memory(self) -> None:
        self.sheds += 1


def test_memory_error_in_poll_is_reported_once_and_the_loop_goes_on(capsys):
    src = RunsOutOfMemory(failing={2, 4})
    out = io.StringIO()
    final = run_watch(src, duration=0.6, as_json=True, out=out)
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    # every batch still came through: a failed poll leaves its events for the next one
    assert [o["type"] for o in objs] == ["ready", "failure", "failure", "failure", "summary"]
    assert [o["pid"] for o in objs if o["type"] == "failure"] == [100, 200, 100]
    # the exact counts are the kernel's (the source's snapshot), untouched
    assert objs[-1]["counts"]["total"] == total_failures(SNAPSHOT) == 7
    assert final == SNAPSHOT
    assert src.sheds == 2 and src.closed
    assert capsys.readouterr().err == loop.OUT_OF_MEMORY_NOTE + "\n"  # said once, not twice


def test_memory_error_in_a_view_drops_that_batch_only():
    seen: list[list[Failure]] = []
    raised = [False]

    def on_failures(fs: list[Failure]) -> None:
        if not raised[0]:
            raised[0] = True
            raise MemoryError()
        seen.append(fs)

    notes: list[str] = []
    src = RunsOutOfMemory(failing=set())
    snap = run(src, duration=0.5, on_ready=lambda r: None, on_failures=on_failures,
               diagnose=False, log=notes.append)
    assert [[f.pid for f in fs] for fs in seen] == [[200], [100]]  # the first batch is lost
    assert notes == [loop.OUT_OF_MEMORY_NOTE] and src.sheds == 1
    assert snap == SNAPSHOT


def test_memory_error_in_a_tick_skips_that_tick():
    ticks: list[Snapshot] = []

    def on_tick(s: Snapshot) -> None:
        if not ticks:
            ticks.append(s)
            raise MemoryError()
        ticks.append(s)

    notes: list[str] = []
    run(RunsOutOfMemory(failing=set()), duration=0.5, on_ready=lambda r: None,
        on_failures=lambda fs: None, on_tick=on_tick, interval=0.1, diagnose=False,
        log=notes.append)
    assert len(ticks) >= 3 and notes == [loop.OUT_OF_MEMORY_NOTE]


def test_the_summary_is_taken_again_after_shedding_memory():
    class SnapshotOutOfMemoryOnce(RunsOutOfMemory):
        def __init__(self) -> None:
            super().__init__(failing=set())
            self.snapshot_calls = 0

        def snapshot(self) -> Snapshot:
            self.snapshot_calls += 1
            if self.snapshot_calls == 1:
                raise MemoryError()
            return SNAPSHOT

    notes: list[str] = []
    summaries: list[Snapshot] = []
    src = SnapshotOutOfMemoryOnce()
    run(src, duration=0.05, on_ready=lambda r: None, on_failures=lambda fs: None,
        on_summary=summaries.append, interval=10, diagnose=False, log=notes.append)
    assert summaries == [SNAPSHOT] and src.sheds == 1 and notes == [loop.OUT_OF_MEMORY_NOTE]


# --------------------------------------------------------------------------- the live source


class FakeRingBuffer:
    """What LiveSource uses of bcc's BPF object for its ring buffer, with libbpf's rule: the
    callback is called for each waiting record until it returns a negative value."""

    def __init__(self, callback: Callable[[Any, Any, int], int], records: int):
        self.callback = callback
        self.waiting = records
        self.event = abi.Event()
        self.event.kind = abi.C["MT_KIND_SYSCALL"]

    def ring_buffer_poll(self, timeout_ms: int) -> None:
        self.ring_buffer_consume()

    def ring_buffer_consume(self) -> None:
        while self.waiting:
            self.waiting -= 1  # consumed before the callback runs, as in libbpf
            if self.callback(None, ct.addressof(self.event), ct.sizeof(self.event)) < 0:
                return


def _live_source(records: int, convert: Callable[[Any], list[Failure]]
                 ) -> tuple[live.LiveSource, FakeRingBuffer]:
    """A LiveSource reading FakeRingBuffer records, each converted by `convert` (the event's
    decoding is tested elsewhere: here only what the reading does with the results)."""
    src = live.LiveSource()
    ring = FakeRingBuffer(src._on_event, records)
    src.bpf = ring
    src._convert = lambda e, *rest: convert(e)  # type: ignore[method-assign]
    src._poll_memcg = lambda: None  # type: ignore[method-assign]
    src._last_memcg_poll = time.monotonic() + 3600
    return src, ring


def test_a_poll_takes_a_bounded_batch_and_leaves_the_rest_in_the_kernel():
    """libbpf reads on while records keep coming: without a bound one poll of a storm never
    returned and kept every event it read in memory."""
    left = (live.MAX_DRAIN_BATCHES + 4) * live.MAX_BATCH + 7
    src, ring = _live_source(left, lambda e: [MMAP_FAIL])
    for _ in range(2):
        assert len(src.poll(0.1)) == live.MAX_BATCH
        left -= live.MAX_BATCH
        assert ring.waiting == left
    # the final drain takes what a ring buffer holds, not a storm that goes on
    assert len(src.drain()) == live.MAX_DRAIN_BATCHES * live.MAX_BATCH
    assert ring.waiting == 2 * live.MAX_BATCH + 7
    assert len(src.drain()) == 2 * live.MAX_BATCH + 7 and ring.waiting == 0


def test_a_drain_of_a_quiet_ring_buffer_takes_everything():
    src, ring = _live_source(live.MAX_BATCH + 3, lambda e: [MMAP_FAIL])
    assert len(src.drain()) == live.MAX_BATCH + 3 and ring.waiting == 0


def test_memory_error_while_converting_ends_the_poll_and_is_raised_by_it():
    calls = [0]

    def convert(_e: Any) -> list[Failure]:
        calls[0] += 1
        if calls[0] == 3:
            raise MemoryError()
        return [MMAP_FAIL]

    src, ring = _live_source(10, convert)
    src.user_symbols.get(os.getpid())
    with pytest.raises(MemoryError):
        src.poll(0.1)
    assert ring.waiting == 7  # it stopped reading at once
    src.shed_memory()
    assert len(src.user_symbols) == 0 and src._out == []
    assert len(src.poll(0.1)) == 7  # and reads on afterwards


def test_decode_errors_are_said_three_times_at_most():
    logged: list[str] = []

    def convert(_e: Any) -> list[Failure]:
        raise ValueError("odd")

    src, _ring = _live_source(50, convert)
    src.log = logged.append
    assert src.poll(0.1) == []
    assert len(logged) == 3 and logged[-1].endswith("(further ones not shown)")


def test_kernel_messages_kept_are_bounded():
    src = live.LiveSource()
    e = abi.Event()
    e.kind = abi.C["MT_KIND_KMSG"]
    e.actor_tid = 7
    e.msg = b"__vm_enough_memory: pid: 7, comm: x, bytes: 1 not enough memory"
    for _ in range(10 * live.MAX_KERNEL_MESSAGES):
        assert src._convert(e) == []
    assert len(src._kmsg) == live.MAX_KERNEL_MESSAGES


def test_unwinders_are_bounded_per_process_and_forgotten_on_demand(tmp_path):
    units = unwind.ProcessUnwinders(proc=str(tmp_path))  # no /proc/PID here: empty maps
    for pid in range(1, 3 * unwind.MAX_PROCESSES):
        units.get(pid)
    assert len(units) == unwind.MAX_PROCESSES
    Module.get("/bin/sh")
    assert Module._cache
    units.forget()
    assert len(units) == 0 and not Module._cache


def test_live_source_lowers_the_oom_score_before_compiling(monkeypatch):
    calls: list[Any] = []

    class Stop(Exception):
        pass

    def ensure_tracefs(_log: Any) -> bool:
        calls.append("tracefs")
        raise Stop()

    monkeypatch.setattr(host, "require_root", lambda what="": None)
    monkeypatch.setattr(host, "lower_oom_score", lambda v, log=None: calls.append(v))
    monkeypatch.setattr(host, "ensure_tracefs", ensure_tracefs)
    with pytest.raises(Stop):
        live.LiveSource(oom_score_adj=-123).start()
    assert calls == [-123, "tracefs"]
    calls.clear()
    with pytest.raises(Stop):
        live.LiveSource().start()  # None: the score is left as it is
    assert calls == ["tracefs"]


def test_kernel_symbols_name_the_function_around_an_address(tmp_path):
    table = tmp_path / "kallsyms"
    table.write_text(
        "ffffffff81000000 T _stext\n"
        "ffffffff81000000 T _text\n"  # an alias: the kernel's own traces name the first
        "ffffffff81001000 t __do_sys_vfork\n"
        "ffffffff81001000 T __x64_sys_vfork\n"
        "0000000000000000 t hidden\n"  # what kptr_restrict shows an unprivileged reader
        "ffffffff81002000 T pipe_resize_ring\n"
        "ffffffffc0201000 t ext4_fill_super\t[ext4]\n"
        "ffffffff81001800 t out_of_order\n")
    syms = host_kallsyms.KernelSymbols(str(table))
    assert syms.name(0xffffffff81000010) == "_stext"
    assert syms.name(0xffffffff81001004) == "__do_sys_vfork"
    assert syms.name(0xffffffff81001900) == "out_of_order"  # sorted, though listed last
    assert syms.name(0xffffffff81002abc) == "pipe_resize_ring"
    assert syms.name(0xffffffffc0201234) == "ext4_fill_super"
    assert syms.name(0xffffffff80000000) is None and syms.name(0) is None
    syms.forget()
    assert syms.name(0xffffffff81002000) == "pipe_resize_ring"  # read again


def test_kernel_symbols_of_an_unreadable_table_name_nothing(tmp_path):
    assert host_kallsyms.KernelSymbols(str(tmp_path / "none")).name(0xffffffff81000000) is None


# --------------------------------------------------------------------------- the OOM score


class ProcFile:
    """Stands in for /proc/self/oom_score_adj: a value, and whether writing is allowed."""

    def __init__(self, value: int, writable: bool = True):
        self.value = value
        self.writable = writable

    def read_text(self) -> str:
        return f"{self.value}\n"

    def write_text(self, text: str) -> int:
        if not self.writable:
            raise PermissionError(13, "Permission denied")
        self.value = int(text)
        return len(text)

    def __str__(self) -> str:
        return "/proc/self/oom_score_adj"


def test_oom_score_is_lowered():
    f = ProcFile(0)
    notes: list[str] = []
    assert host.lower_oom_score(-500, notes.append, proc_file=f) == -500  # type: ignore[arg-type]
    assert f.value == -500 and notes == []


def test_a_lower_oom_score_is_kept():
    f = ProcFile(-900)  # e.g. a service manager's OOMScoreAdjust
    assert host.lower_oom_score(-500, None, proc_file=f) == -900  # type: ignore[arg-type]
    assert f.value == -900


def test_an_oom_score_that_cannot_be_lowered_is_one_note():
    f = ProcFile(0, writable=False)  # root without CAP_SYS_RESOURCE, e.g. in a container
    notes: list[str] = []
    assert host.lower_oom_score(-500, notes.append, proc_file=f) is None  # type: ignore[arg-type]
    assert notes == ["memtrace: note: cannot lower its OOM score to -500 (Permission denied); "
                     "it stays at oom_score_adj 0"]


def test_oom_score_out_of_range_is_refused():
    with pytest.raises(ValueError):
        host.lower_oom_score(-1001)


class Recorded:
    """Stands in for LiveSource in the CLI: remembers its keyword arguments."""

    kwargs: dict[str, Any] = {}

    def __new__(cls, filt: Any = None, **kwargs: Any) -> Any:  # type: ignore[misc]
        Recorded.kwargs = kwargs
        return FakeSource(READY, batches=[], snapshots=[SNAPSHOT])


@pytest.mark.parametrize("args, env, expected", [
    ((), {}, -500),
    (("--oom-score-adj", "-700"), {}, -700),
    ((), {"MEMTRACE_OOM_SCORE_ADJ": "-42"}, -42),
    (("--oom-score-adj", "0"), {"MEMTRACE_OOM_SCORE_ADJ": "-42"}, 0),
])
def test_oom_score_option_reaches_the_source(monkeypatch, tmp_path, args, env, expected):
    monkeypatch.setattr(live, "LiveSource", Recorded)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for command in (["watch", "--json"], ["top"], ["export", "--listen", f"127.0.0.1:{port}"],
                    ["record", "-o", str(tmp_path / "r.jsonl")]):
        Recorded.kwargs = {}
        r = CliRunner().invoke(cli.main, [*command, "--duration", "0", *args], env=env)
        assert Recorded.kwargs.get("oom_score_adj") == expected, (command, r.output)


def test_oom_score_option_out_of_range_is_a_usage_error():
    r = CliRunner().invoke(cli.main, ["watch", "--oom-score-adj", "-1001"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "--oom-score-adj" in r.output


def test_help_names_the_oom_score_default():
    r = CliRunner().invoke(cli.main, ["watch", "--help"])
    assert "--oom-score-adj" in r.output and "-500" in r.output
    assert "MEMTRACE_OOM_SCORE_ADJ" in r.output


# --------------------------------------------------------------------------- shared headers


def _split_headers(root: Path, entries: int) -> Path:
    """A Debian-style split header tree (arch part + -common part) with `entries` files in
    directories both parts have, so merging them takes a while."""
    modules = root / "modules"
    build, common = root / "src" / "6.1.0-9-amd64", root / "src" / "6.1.0-9-common"
    (build / "include" / "generated").mkdir(parents=True)
    (build / "include" / "generated" / "autoconf.h").write_text("")
    for part in (build, common):
        for i in range(entries):
            d = part / "include" / f"dir{i % 40}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{part.name}-{i}.h").write_text("")
    (modules / "6.1.0-9-amd64").mkdir(parents=True)
    (modules / "6.1.0-9-amd64" / "build").symlink_to(build)
    (modules / "6.1.0-9-amd64" / "source").symlink_to(common)
    return modules


def _prepare(modules: str, cache: str, start: Any, results: Any) -> None:
    start.wait()
    try:
        h = host.find_headers("6.18.1", Path(modules), Path(cache))
        results.put(("ok", str(h.path)))
    except BaseException as e:  # noqa: BLE001 (reported to the test)
        results.put(("error", f"{type(e).__name__}: {e}"))


def test_several_memtraces_preparing_headers_at_once_agree_on_one_complete_tree(tmp_path):
    """Two memtraces starting together (the exporter service and a `watch`) merge the
    generic headers into /run/memtrace at the same moment: none may fail, and none may
    compile against half a tree."""
    entries = 1500
    modules = _split_headers(tmp_path, entries)
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_prepare, args=(str(modules), str(cache), start, results))
             for _ in range(6)]
    for p in procs:
        p.start()
    start.set()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [status for status, _ in got] == ["ok"] * len(procs), got
    paths = {path for _, path in got}
    assert paths == {str(cache / "6.1.0-9-amd64")}
    tree = Path(paths.pop())
    assert (tree / ".memtrace-merged").is_file()
    assert (tree / "include" / "generated" / "autoconf.h").is_file()
    headers = [f for f in (tree / "include").rglob("*.h") if f.parent.name.startswith("dir")]
    assert len(headers) == 2 * entries
    assert sorted(p.name for p in cache.iterdir()) == [".lock", "6.1.0-9-amd64"]


def test_an_unfinished_tree_left_by_a_killed_memtrace_is_rebuilt(tmp_path):
    modules = _split_headers(tmp_path, 10)
    cache = tmp_path / "cache"
    half = cache / "6.1.0-9-amd64"
    (half / "include").mkdir(parents=True)  # no stamp: its builder died
    (cache / ".6.1.0-9-amd64.building").mkdir()
    h = host.find_headers("6.18.1", modules, cache)
    assert (h.path / ".memtrace-merged").is_file()
    assert (h.path / "include" / "generated" / "autoconf.h").is_file()
    assert not (cache / ".6.1.0-9-amd64.building").exists()


def test_headers_that_cannot_be_prepared_are_a_host_error(tmp_path):
    modules = _split_headers(tmp_path, 2)
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(host.HostError, match="cannot prepare the generic kernel headers"):
        host.find_headers("6.18.1", modules, blocked / "cache")
