"""What grew, in every output: an OOM kill's `grew` in the JSON lines and recordings, as the
end of its explanation and in watch's line, report and top; top's growing panel; the
exporter's growing gauge; filters; --no-growth. Hand-built values, no kernel."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from typing import Any, Optional

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from tests.unit.fixtures import MMAP_FAIL, READY, SNAPSHOT, T0
from tests.unit.test_terminal_safety import (
    HOSTILE_CGROUP,
    HOSTILE_COMM,
    HOSTILE_FRAME,
    SHOWN_CGROUP,
    SHOWN_COMM,
    SHOWN_FRAME,
    assert_inert,
    plain,
)
from tracer import cli
from tracer.diagnose import rules
from tracer.diagnose.evidence import Evidence
from tracer.diagnose.growth import function_name, grew_sentence, shown_growth, what_grew
from tracer.errors import ReplayError
from tracer.host.state import CgroupState, HostState
from tracer.model.failures import Failure, Filter, Snapshot
from tracer.model.leaks import GrowingProcess, Growth
from tracer.model.totals import Dashboard
from tracer.recording import format as jsonout
from tracer.recording.reader import RecordingReader, read_recording
from tracer.recording.report import MAX_OOM_KILLS, build_report
from tracer.run import FakeSource, SnapshotRequests
from tracer.views.dashboard import NOT_GROWING, render, render_plain
from tracer.views.leaks import grew_line
from tracer.views.lines import format_line
from tracer.views.prometheus import MemtraceCollector, MetricsState
from tracer.views.report import report_obj, report_text
from tracer.views.top import run_top
from tracer.views.watch import run_watch

pytestmark = pytest.mark.unit

MiB = 1 << 20
HOARD = ("__memset_avx2_unaligned_erms (libc.so.6)", "hoard_buffers (hoarder)",
         "main (hoarder)", "__libc_start_call_main (libc.so.6)", "_start (hoarder)")
VICTIM_GREW = (Growth(412, "hoarder", "/box", 61 * MiB, HOARD, 4.2),
               Growth(412, "hoarder", "/box", 3 * MiB, ("cache_fill (hoarder)", "main (hoarder)"),
                      30.0))
NEIGHBOUR = Growth(413, "sidecar", "/box", 2 * MiB, ("grow_log (sidecar)",), 0.5)
SENTENCE = "pid 412 (hoarder) grew 61 MiB in 4 s through hoard_buffers <- main"
OOM = Failure(time=T0 + 5, kind="oom_kill", pid=412, tid=412, comm="hoarder", cgroup="/box",
              cgroup_id=42, detail={"rss_bytes": 64 * MiB, "constraint": "CONSTRAINT_MEMCG"},
              grew=VICTIM_GREW + (NEIGHBOUR,))
HOSTILE_GREW = Growth(666, HOSTILE_COMM, HOSTILE_CGROUP, 5 * MiB,
                      (f"{HOSTILE_FRAME} (evil)", "main (evil)"), 2.0)
HOSTILE_OOM = dataclasses.replace(OOM, pid=666, tid=666, comm=HOSTILE_COMM,
                                  cgroup=HOSTILE_CGROUP, grew=(HOSTILE_GREW,))
GROWING = (GrowingProcess(412, "hoarder", "/box", 10 * MiB, 40 * MiB, HOARD, 9 * MiB),
           GrowingProcess(77, "slowpoke", "/user.slice", 64 * 1024, 3 * MiB,
                          ("append_row (db)", "flush (db)"), 60 * 1024))
HOSTILE_GROWING = GrowingProcess(666, HOSTILE_COMM, HOSTILE_CGROUP, 2 * MiB, 9 * MiB,
                                 (f"{HOSTILE_FRAME} (evil)", "main (evil)"), 2 * MiB)
HOST = HostState(mem_total=16 << 30, mem_free=8 << 30, mem_available=12 << 30,
                 swap_total=0, commit_limit=10 << 30, committed_as=4 << 30,
                 overcommit_memory=0, free_blocks={}, min_watermark={"node 0 zone Normal": 1})


def lines_of(*failures: Failure) -> list[str]:
    return [jsonout.dumps(jsonout.ready_obj(READY))] + \
        [jsonout.dumps(jsonout.failure_obj(f)) for f in failures]


# --------------------------------------------------------------------------- the sentence


def test_a_growth_reads_as_one_sentence_through_the_programs_functions():
    assert grew_sentence(VICTIM_GREW[0]) == SENTENCE
    assert grew_line(VICTIM_GREW[0]) == SENTENCE  # leaks' view words it the same way
    assert grew_sentence(NEIGHBOUR) == \
        "pid 413 (sidecar) grew 2 MiB in under a second through grow_log"


@pytest.mark.parametrize("frame, name", [
    ("hoard_buffers (hoarder)", "hoard_buffers"),
    ("std::vector<int>::push_back(int const&) (app)", "std::vector<int>::push_back(int const&)"),
    ("0x1a2b (hoarder)", "0x1a2b (hoarder)"),  # no symbol: the module says more
    ("[stack lost: ring buffer full]", "[stack lost: ring buffer full]"),
    ("f" * 100 + " (app)", "f" * 45 + "..."),
])
def test_frames_are_shortened_to_function_names(frame, name):
    assert function_name(frame) == name


def test_the_victims_growth_first_with_room_for_the_cgroups_other_growers():
    assert shown_growth(OOM.grew, 412) == [VICTIM_GREW[0], VICTIM_GREW[1], NEIGHBOUR]
    three_own = VICTIM_GREW + (dataclasses.replace(VICTIM_GREW[1], bytes=MiB),)
    assert shown_growth(three_own + (NEIGHBOUR,), 412) == [*VICTIM_GREW, NEIGHBOUR]
    assert shown_growth(three_own, 412) == list(three_own)
    assert what_grew(three_own + (NEIGHBOUR,), 412).endswith(" (+1 more)")
    assert what_grew((), 412) == ""


# --------------------------------------------------------------------------- the diagnosis


def test_an_oom_kills_explanation_ends_with_what_grew():
    ev = Evidence(HOST, CgroupState("/box", 2, 64 * MiB, 64 * MiB, None), None)
    found = rules.diagnose(OOM, ev)
    assert found.cause == "memcg_limit"
    before = rules.diagnose(dataclasses.replace(OOM, grew=()), ev).explanation
    assert found.explanation == (
        f"{before}. What grew before the kill: {SENTENCE}; pid 412 (hoarder) grew 3 MiB in "
        "30 s through cache_fill <- main; pid 413 (sidecar) grew 2 MiB in under a second "
        "through grow_log")
    global_oom = dataclasses.replace(OOM, detail={"constraint": "CONSTRAINT_NONE"})
    assert rules.diagnose(global_oom, ev).explanation.endswith(
        f"or find what grew. What grew before the kill: {SENTENCE}; pid 412 (hoarder) grew "
        "3 MiB in 30 s through cache_fill <- main; pid 413 (sidecar) grew 2 MiB in under a "
        "second through grow_log")


def test_watch_json_carries_grew_and_the_explanation_saying_it():
    out = io.StringIO()
    run_watch(FakeSource(READY, batches=[[OOM]]), duration=0.3, as_json=True, out=out)
    obj = next(json.loads(x) for x in out.getvalue().splitlines() if '"failure"' in x)
    assert obj["grew"][0] == {"pid": 412, "comm": "hoarder", "bytes": 61 * MiB,
                              "frames": list(HOARD), "seconds": 4.2, "cgroup": "/box"}
    assert len(obj["grew"]) == 3
    assert f"What grew before the kill: {SENTENCE}" in obj["explanation"]


# --------------------------------------------------------------------------- JSON lines


def test_grew_round_trips_through_a_recording():
    obj = json.loads(jsonout.dumps(jsonout.failure_obj(OOM)))
    assert [g["pid"] for g in obj["grew"]] == [412, 412, 413]
    _ready, (back,) = read_recording(lines_of(OOM))
    assert back == OOM


def test_an_oom_kill_without_growth_says_so_and_other_failures_carry_nothing():
    assert jsonout.failure_obj(dataclasses.replace(OOM, grew=()))["grew"] == []
    assert "grew" not in jsonout.failure_obj(MMAP_FAIL)


def test_a_recording_from_before_growth_still_loads():
    obj = jsonout.failure_obj(OOM)
    del obj["grew"]
    _ready, (back,) = read_recording([jsonout.dumps(jsonout.ready_obj(READY)),
                                      jsonout.dumps(obj)])
    assert back.grew == () and back.pid == 412


def test_hostile_names_in_grew_are_kept_exactly_in_json():
    text = jsonout.dumps(jsonout.failure_obj(HOSTILE_OOM))
    assert "\x1b" not in text and "\n" not in text  # JSON escapes them
    _ready, (back,) = read_recording(lines_of(HOSTILE_OOM))
    assert back.grew == HOSTILE_OOM.grew


GOOD = {"pid": 1, "comm": "x", "bytes": 4096, "frames": ["f (x)"], "seconds": 1.5,
        "cgroup": None}


@pytest.mark.parametrize("grew, why", [
    ("61 MiB", "grew is not a list"),
    ({"pid": 1}, "grew is not a list"),
    ([1], "not a growth"),
    ([{**GOOD, "pid": "412"}], "pid"),
    ([{**GOOD, "pid": True}], "pid"),
    ([{**GOOD, "pid": -1}], "pid"),
    ([{**GOOD, "bytes": 1.5}], "bytes"),
    ([{**GOOD, "bytes": -4096}], "bytes"),
    ([{**GOOD, "bytes": 1 << 70}], "bytes"),
    ([{k: v for k, v in GOOD.items() if k != "bytes"}], "bytes"),
    ([{**GOOD, "seconds": "4"}], "seconds"),
    ([{**GOOD, "seconds": -1}], "seconds"),
    ([{**GOOD, "seconds": float("nan")}], "seconds"),
    ([{**GOOD, "seconds": float("inf")}], "seconds"),
    ([{**GOOD, "comm": 7}], "comm"),
    ([{**GOOD, "cgroup": ["/box"]}], "cgroup"),
    ([{**GOOD, "frames": "f (x)"}], "frames"),
    ([{**GOOD, "frames": [1, 2]}], "frames"),
    ([{**GOOD, "frames": ["f"] * 100_000}], "too deep"),
    ([GOOD] * 65, "more than 64"),
])
def test_a_malformed_grew_is_one_line_error(grew: Any, why: str):
    obj = jsonout.failure_obj(OOM)
    obj["grew"] = grew
    with pytest.raises(ReplayError) as e:
        read_recording([jsonout.dumps(jsonout.ready_obj(READY)), jsonout.dumps(obj)])
    message = str(e.value)
    assert message.startswith("line 2: malformed failure record (") and why in message
    assert "\n" not in message


json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                        st.text(max_size=8))
json_values = st.recursive(json_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, st.lists(st.fixed_dictionaries(
    {k: st.one_of(st.just(v), json_values) for k, v in GOOD.items()}), max_size=3)))
def test_fuzz_any_grew_reads_back_or_is_a_line_error(grew: Any):
    obj = jsonout.failure_obj(OOM)
    obj["grew"] = grew
    try:
        text = json.dumps(obj)
    except ValueError:
        return
    try:
        _ready, (back,) = read_recording([jsonout.dumps(jsonout.ready_obj(READY)), text])
    except ReplayError as e:
        assert str(e).startswith("line 2: ")
        return
    for g in back.grew:  # what was read is what the views expect
        assert isinstance(g.pid, int) and isinstance(g.bytes, int) and g.bytes >= 0
        assert isinstance(g.seconds, float) and isinstance(g.comm, str)
        assert all(isinstance(f, str) for f in g.frames)
        format_line(back)


# --------------------------------------------------------------------------- watch, report


def test_watchs_line_says_what_grew_on_the_kills_own_line():
    line = format_line(dataclasses.replace(OOM, cause="memcg_limit"))
    assert "\n" not in line
    assert line.endswith(f"[cause: memcg_limit]  [what grew: {SENTENCE}; pid 412 (hoarder) "
                         "grew 3 MiB in 30 s through cache_fill <- main; pid 413 (sidecar) grew "
                         "2 MiB in under a second through grow_log]")
    assert "what grew" not in format_line(dataclasses.replace(OOM, grew=()))


def test_watchs_line_keeps_hostile_growth_inert_and_on_one_line():
    out = io.StringIO()
    run_watch(FakeSource(READY, batches=[[HOSTILE_OOM]]), duration=0.3, as_json=False, out=out)
    text = out.getvalue()
    assert_inert(text)
    kill = [x for x in text.splitlines() if "oom_kill" in x and "what grew" in x]
    assert len(kill) == 1
    assert f"[what grew: pid 666 ({SHOWN_COMM}) grew 5 MiB in 2 s through {SHOWN_FRAME} " \
           "<- main]" in kill[0]


def _report_of(*failures: Failure) -> Any:
    return build_report("r.jsonl", RecordingReader(lines_of(*failures)))


def test_report_names_what_grew_before_each_oom_kill():
    diagnosed = rules.apply(OOM, rules.diagnose(OOM, Evidence(HOST, None, None)))
    mmap = dataclasses.replace(MMAP_FAIL, cause="overcommit", explanation="ask for less")
    r = _report_of(mmap, diagnosed, dataclasses.replace(OOM, grew=()))
    text = report_text(r)
    assert "What grew before the OOM kills (the latest 1, newest first)" in text
    assert re.search(rf"^\S+ \S+ pid 412 \(hoarder\) killed: {re.escape(SENTENCE)}; ",
                     text, re.M)
    assert f"What grew before the kill: {SENTENCE}" in text  # the findings' explanation
    obj = report_obj(r)
    assert [k["pid"] for k in obj["oom_kills"]] == [412]
    assert obj["oom_kills"][0]["grew"][0]["frames"] == list(HOARD)
    finding = next(f for f in obj["findings"] if f["kind"] == "oom_kill")
    assert len(finding["grew"]) == 3
    assert "grew" not in next(f for f in obj["findings"] if f["kind"] == "syscall")


def test_report_keeps_the_latest_oom_kills_only():
    kills = [dataclasses.replace(OOM, time=T0 + i, pid=1000 + i) for i in range(MAX_OOM_KILLS + 5)]
    r = _report_of(*kills)
    assert [f.pid for f in r.oom_kills] == [1000 + i for i in range(MAX_OOM_KILLS + 4, 4, -1)]


def test_report_of_hostile_growth_is_inert():
    text = report_text(_report_of(HOSTILE_OOM))
    assert_inert(text)
    assert text.isascii()
    assert f"pid 666 ({SHOWN_COMM}) grew 5 MiB in 2 s through {SHOWN_FRAME} <- main" in text


# --------------------------------------------------------------------------- top


def board(growing: tuple[GrowingProcess, ...] = GROWING, growth: bool = True,
          failures: tuple[Failure, ...] = ()) -> Dashboard:
    d = Dashboard()
    d.started, d.ready, d.growth = T0, READY, growth
    d.update(dataclasses.replace(SNAPSHOT, growing=growing))
    d.add(failures)
    return d


def rendered(d: Dashboard, width: int = 120, height: int = 40) -> str:
    console = Console(record=True, width=width, force_terminal=True)
    console.print(render(d, width=width, height=height, now=T0 + 65))
    return console.export_text()


def test_the_growing_panel_lists_the_fastest_first_with_rate_bytes_and_stack():
    text = rendered(board())
    assert "Growing fastest (resident memory)" in text
    fast = re.search(r"^\s*412\s+hoarder\s+10 MiB/s\s+40 MiB\s+/box\s+hoard_buffers <- main\s*$",
                     text, re.M)
    slow = re.search(r"^\s*77\s+slowpoke\s+64 KiB/s\s+3 MiB\s+/user.slice\s+append_row <- flush",
                     text, re.M)
    assert fast and slow and fast.start() < slow.start()
    assert text.index("Growing fastest") < text.index("Failures by process")


def test_the_growing_panel_says_when_nothing_grows_and_hides_without_growth():
    assert f"Growing fastest (resident memory): {NOT_GROWING}" in rendered(board(()))
    assert "Growing fastest" not in rendered(board((), growth=False))
    assert NOT_GROWING in render_plain(board(()), now=T0)
    assert "Growing fastest" not in render_plain(board((), growth=False), now=T0)


def test_the_growing_panel_gives_up_rows_to_fit_the_terminal():
    many = tuple(dataclasses.replace(GROWING[0], pid=500 + i, bytes_per_second=(9 - i) * MiB)
                 for i in range(8))
    for height in (16, 20, 24, 30):
        text = rendered(board(many), height=height)
        assert len(text.rstrip("\n").split("\n")) <= height
        assert "Failures by process" in text  # the exact totals keep their room
    assert "Growing fastest (resident memory): pid 500 (hoarder) 9 MiB/s \u00b7 +7 more" in \
        rendered(board(many), height=16)  # one line
    assert re.search(r"^\+7 more", rendered(board(many), height=20), re.M)  # one row
    assert re.search(r"^\+5 more", rendered(board(many), height=24), re.M)  # three rows
    text = rendered(board(many), height=40)
    assert "+3 more" in text  # five rows at most
    assert len(re.findall(r"^\s*50\d\s+hoarder", text, re.M)) == 5


def test_the_plain_dashboard_has_the_growing_table():
    text = render_plain(board(), now=T0)
    assert text.isascii()
    assert re.search(r"\|\s+412 \| hoarder\s+\|\s+10 MiB/s \|\s+40 MiB \| /box\s+\| "
                     r"hoard_buffers <- main\s+\|", text)


def test_top_shows_an_oom_kills_growth_in_recent_events_and_findings():
    diagnosed = rules.apply(OOM, rules.diagnose(OOM, Evidence(HOST, None, None)))
    text = rendered(board(failures=(diagnosed,)), height=60)
    assert f"what grew: {SENTENCE}" in text


def test_top_hostile_growth_is_inert_live_and_plain():
    d = board((HOSTILE_GROWING,), failures=(HOSTILE_OOM,))
    for width in (60, 160):
        out = io.StringIO()
        console = Console(file=out, width=width, force_terminal=True, markup=False, emoji=False)
        console.print(render(d, width=width, height=60, now=T0 + 5))
        assert_inert(out.getvalue())
        if width == 160:
            shown = plain(out.getvalue())
            assert SHOWN_COMM in shown and SHOWN_FRAME in shown
    text = render_plain(d, now=T0)
    assert_inert(text)
    assert text.isascii() and SHOWN_FRAME in text and SHOWN_CGROUP in text


def _growing_source(growing: tuple[GrowingProcess, ...]) -> FakeSource:
    return FakeSource(READY, snapshots=[dataclasses.replace(SNAPSHOT, growing=growing)])


def test_run_top_draws_growth_from_the_sources_snapshots():
    out = io.StringIO()
    run_top(_growing_source(GROWING), duration=0.5, interval=0.1, out=out, terminal=False,
            growth=True)
    assert "hoard_buffers <- main" in out.getvalue()
    out = io.StringIO()
    run_top(_growing_source(()), duration=0.5, interval=0.1, out=out, terminal=False,
            growth=True)
    assert NOT_GROWING in out.getvalue()
    out = io.StringIO()
    run_top(_growing_source(()), duration=0.3, interval=0.1, out=out, terminal=False)
    assert "Growing fastest" not in out.getvalue()  # a FakeSource does not track growth


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize("filt, pids", [
    (Filter(), [412, 77]),
    (Filter(pids=frozenset({77})), [77]),
    (Filter(comm="hoarder"), [412]),
    (Filter(cgroup="/box"), [412]),
    (Filter(cgroup="/"), [412, 77]),
    (Filter(cgroup="/nowhere"), []),
])
def test_the_filter_passes_the_growing_processes_it_matches(filt: Filter, pids: list[int]):
    got = filt.snapshot(dataclasses.replace(SNAPSHOT, growing=GROWING))
    assert [g.pid for g in got.growing] == pids
    assert got.syscalls == filt.snapshot(SNAPSHOT).syscalls  # the rest as before


# --------------------------------------------------------------------------- the exporter


def scrape(growing: tuple[GrowingProcess, ...], per_process: bool = False) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    requests = SnapshotRequests()
    requests.close(Snapshot(growing=growing))
    state = MetricsState(requests, 50, per_process, 50)
    state.ready = READY
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MemtraceCollector(state))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def _growing_samples(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.startswith("memtrace_growing_bytes_per_second{")]


def test_the_growing_gauge_ranks_the_five_fastest_without_process_labels():
    many = tuple(dataclasses.replace(GROWING[1], pid=600 + i, bytes_per_second=1000.0 * i)
                 for i in range(8))
    samples = _growing_samples(scrape(many))
    assert samples[0] == \
        'memtrace_growing_bytes_per_second{cgroup="/user.slice",rank="1"} 7000.0'
    assert len(samples) == 5 and samples[-1].endswith('rank="5"} 3000.0')
    assert not any("pid=" in x or "comm=" in x for x in samples)


def test_the_growing_gauge_names_processes_with_per_process_inert():
    samples = _growing_samples(scrape(GROWING + (HOSTILE_GROWING,), per_process=True))
    assert samples[0] == ('memtrace_growing_bytes_per_second{cgroup="/box",comm="hoarder",'
                          'pid="412",rank="1"} 1.048576e+07')
    assert_inert("\n".join(samples))
    assert any('pid="666"' in x and 'comm="\\\\x1b[2J' in x for x in samples)


def test_no_growth_no_gauge_samples():
    assert _growing_samples(scrape(())) == []


# --------------------------------------------------------------------------- --no-growth


class Recorder:
    """Stands in for LiveSource: keeps what the command asked for, serves a FakeSource."""

    made: list[dict[str, Any]] = []

    def __init__(self, filt: Optional[Filter] = None, log: Any = None, options: Any = None,
                 symbolize: bool = True, oom_score_adj: Optional[int] = None,
                 probe_cost: bool = False, growth: bool = True, slab_hooks: str = "adaptive"):
        Recorder.made.append({"growth": growth, "probe_cost": probe_cost,
                              "slab_hooks": slab_hooks})
        self._fake = FakeSource(READY)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fake, name)


@pytest.mark.parametrize("args, growth", [
    (["watch", "--duration", "0.2"], True),
    (["watch", "--no-growth", "--duration", "0.2"], False),
    (["watch", "--json", "--no-growth", "--duration", "0.2"], False),
    (["top", "--no-growth", "--duration", "0.2"], False),
    (["top", "--duration", "0.2"], True),
    (["record", "-o", "REC", "--no-growth", "--duration", "0.2"], False),
])
def test_no_growth_reaches_the_live_source(monkeypatch, tmp_path, args: list[str],
                                           growth: bool):
    import tracer.kernel.failures as live

    monkeypatch.setattr(live, "LiveSource", Recorder)
    Recorder.made = []
    args = [str(tmp_path / "r.jsonl") if a == "REC" else a for a in args]
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 0, r.output
    assert Recorder.made == [{"growth": growth, "probe_cost": args[0] == "top",
                              "slab_hooks": "adaptive"}]


@pytest.mark.parametrize("args", [
    ["watch", "--slab-hooks", "always", "--duration", "0.2"],
    ["top", "--slab-hooks", "always", "--no-growth", "--duration", "0.2"],
    ["record", "-o", "REC", "--slab-hooks", "always", "--duration", "0.2"],
])
def test_slab_hooks_always_reaches_the_live_source(monkeypatch, tmp_path, args: list[str]):
    import tracer.kernel.failures as live

    monkeypatch.setattr(live, "LiveSource", Recorder)
    Recorder.made = []
    args = [str(tmp_path / "r.jsonl") if a == "REC" else a for a in args]
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 0, r.output
    assert [m["slab_hooks"] for m in Recorder.made] == ["always"]


@pytest.mark.parametrize("env, args, want", [
    ("always", [], "always"),  # MEMTRACE_SLAB_HOOKS in a unit file or a DaemonSet's env
    ("always", ["--slab-hooks", "adaptive"], "adaptive"),  # the command line wins
    ("", [], "adaptive"),
])
def test_slab_hooks_from_the_environment(monkeypatch, env: str, args: list[str], want: str):
    import tracer.kernel.failures as live

    monkeypatch.setattr(live, "LiveSource", Recorder)
    if env:
        monkeypatch.setenv("MEMTRACE_SLAB_HOOKS", env)
    else:
        monkeypatch.delenv("MEMTRACE_SLAB_HOOKS", raising=False)
    Recorder.made = []
    r = CliRunner().invoke(cli.main, ["watch", "--duration", "0.2", *args])
    assert r.exit_code == 0, r.output
    assert [m["slab_hooks"] for m in Recorder.made] == [want]


def test_a_bad_slab_hooks_environment_value_is_one_line():
    r = CliRunner(env={"MEMTRACE_SLAB_HOOKS": "sometimes"}).invoke(
        cli.main, ["watch", "--duration", "0.2"])
    assert r.exit_code == 2 and "sometimes" in r.output and "slab-hooks" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("command", ["watch", "top", "export", "record"])
def test_no_growth_is_documented_in_each_commands_help(command: str):
    r = CliRunner().invoke(cli.main, [command, "--help"])
    assert r.exit_code == 0 and "--no-growth" in r.output
