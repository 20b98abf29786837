"""The leak model: the byte sampler's estimates, address-range ledgers, attribution by process
and stack, windows and rates, the growth queries (growing processes, what a process grew),
JSON and the view."""

from __future__ import annotations

import math
import random

import pytest
from rich.console import Console

from tracer.kernel import abi
from tracer.model.leaks import (
    DEFAULT_SAMPLE_BYTES,
    GROWTH,
    LN2_Q16,
    LOG_FRACTION_BITS,
    MALLOC,
    AllocFailure,
    Growth,
    LeakProfile,
    PoissonSampler,
    RangeLedger,
    exponential_gap,
    neg_log2_fixed,
)
from tracer.views.leaks import export_stacks, grew_line, program_frames, render, sparkline, summary

pytestmark = pytest.mark.unit

A = ("leak_here (app)", "main (app)")
B = ("churn (app)", "main (app)")
C = ("remap_it (app)", "main (app)")
MiB = 1 << 20


# ----------------------------------------------------------------------------- the sampler

def test_sampler_constants_are_the_headers():
    assert DEFAULT_SAMPLE_BYTES == abi.LK_SAMPLE_BYTES
    assert LOG_FRACTION_BITS == abi.LK_LOG_FRACTION_BITS
    assert LN2_Q16 == abi.LK_LN2_Q16 == round(math.log(2) * 65536)


@pytest.mark.parametrize("u", [1, 2, 3, 1000, 65535, 65536, 123456789, 1 << 31, (1 << 32) - 1])
def test_fixed_point_log_is_within_its_last_bit(u):
    exact = (32 - math.log2(u)) * (1 << LOG_FRACTION_BITS)
    assert abs(neg_log2_fixed(u) - exact) <= 1.0


def test_fixed_point_log_refuses_what_bpf_never_passes():
    with pytest.raises(ValueError):
        neg_log2_fixed(0)
    with pytest.raises(ValueError):
        neg_log2_fixed(1 << 32)


def _gaps(mean: int, points: int = 1 << 14) -> list[int]:
    """The BPF draw at evenly spaced u: the distribution of gaps a uniform u gives."""
    step = (1 << 32) // points
    return [exponential_gap(k * step + step // 2, mean) for k in range(points)]


def test_gaps_are_exponential_with_the_mean():
    mean = 512 * 1024
    gaps = _gaps(mean)
    assert sum(gaps) / len(gaps) == pytest.approx(mean, rel=0.002)
    # the median of an exponential distribution is mean * ln 2
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(mean * math.log(2), rel=0.002)


@pytest.mark.parametrize("n", [4096, 100_000, 512 * 1024, 3 << 20])
def test_one_event_is_estimated_without_bias(n):
    """E[weight] = n for an event of n bytes, whatever n: a countdown left by earlier bytes is
    exponential again (no memory), so a fresh draw is what an event meets."""
    mean = 512 * 1024
    gaps = _gaps(mean)
    expected = sum(mean + (n - g) for g in gaps if g <= n) / len(gaps)
    assert expected == pytest.approx(n, rel=0.005)


def test_a_stream_of_known_bytes_is_estimated_within_tolerance():
    """A synthetic stream mixing page faults, heap extensions, big mappings and tiny events,
    from two interleaved sources on one countdown (as threads share a CPU's): each source's
    estimate is within 6% (over 4 standard deviations at ~5,000 samples each)."""
    rng = random.Random(1234)
    sampler = PoissonSampler(256 * 1024, rand32=lambda: rng.getrandbits(32))
    truth = {"a": 0, "b": 0}
    estimate = {"a": 0, "b": 0}
    sizes = [4096] * 90 + [132 * 1024] * 6 + [1 << 22] * 1 + [1, 64, 1000]
    while truth["a"] < 1 << 30 or truth["b"] < 1 << 30:
        who = "a" if rng.random() < 0.5 else "b"
        n = rng.choice(sizes)
        truth[who] += n
        estimate[who] += sampler.sample(n)
    for who in truth:
        assert estimate[who] == pytest.approx(truth[who], rel=0.06)


def test_the_estimate_is_unbiased_over_many_runs():
    """The mean of many independent estimates of the same 16 MiB converges on it."""
    rng = random.Random(99)
    runs = []
    for _ in range(400):
        sampler = PoissonSampler(1 << 20, rand32=lambda: rng.getrandbits(32))
        runs.append(sum(sampler.sample(4096) for _ in range(4096)))
    # each run: ~16 samples, relative sd 25%; the mean of 400: 1.25%
    assert sum(runs) / len(runs) == pytest.approx(16 * MiB, rel=0.05)
    assert min(runs) < 16 * MiB < max(runs)  # and it is an estimate, not a constant


def test_a_large_event_costs_one_sample_and_is_nearly_exact():
    sampler = PoissonSampler(64 * 1024, rand32=lambda: 1 << 31)  # u = 2^31: gap = mean ln 2
    w = sampler.sample(1 << 30)
    assert w == 64 * 1024 + (1 << 30) - exponential_gap(1 << 31, 64 * 1024)
    assert w == pytest.approx(1 << 30, rel=0.001)


def test_sample_bytes_one_is_exact():
    sampler = PoissonSampler(1)
    assert [sampler.sample(n) for n in (4096, 10, 1 << 20)] == \
        [pytest.approx(n, abs=30) for n in (4096, 10, 1 << 20)]


# ----------------------------------------------------------------------------- ledgers

def test_ledger_partial_unmaps_split_ranges():
    led = RangeLedger()
    led.add(0x1000, 0x4000, A)
    assert led.remove(0x2000, 0x1000) == [(A, 0x1000)]  # a hole in the middle
    assert led.total() == 0x3000
    assert led.owner_of(0x1000, 0x5000) == [(A, 0x1000), (A, 0x2000)]
    assert led.remove(0x0, 0x10000) == [(A, 0x1000), (A, 0x2000)]
    assert led.total() == 0


def test_ledger_takes_back_a_share_of_a_sampled_weight():
    led = RangeLedger()
    led.add(0x10000, 0x4000, A, weight=100_000)  # 16 KiB sampled, standing for 100 KB
    assert led.remove(0x10000, 0x1000) == [(A, 25_000)]
    assert led.weight() == pytest.approx(75_000)


def test_ledger_map_fixed_replaces_the_old_owner():
    led = RangeLedger()
    led.add(0x1000, 0x2000, A)
    led.add(0x2000, 0x2000, B)
    assert led.owner_of(0x1000, 0x3000) == [(A, 0x1000), (B, 0x2000)]


# ----------------------------------------------------------------------------- attribution

def test_resident_and_mapped_growth_are_kept_apart():
    p = LeakProfile(GROWTH, [7])
    p.grow(7, 0x10000, MiB, A)                    # mapped, never touched
    p.touched(7, 0x900000, B, 64 * 4096, t=1.0)   # a sampled first touch
    got = {s.frames: (s.bytes, s.mapped_bytes) for s in p.top()}
    assert got == {A: (0, MiB), B: (64 * 4096, 0)}
    assert p.top()[0].frames == B  # ordered by resident growth
    assert p.total_bytes() == 64 * 4096 and p.total_mapped_bytes() == MiB


def test_unmapping_takes_back_both_measures():
    p = LeakProfile(GROWTH, [7])
    p.grow(7, 0x200000, MiB, A)
    p.touched(7, 0x200000, A, 500_000, t=1.0)
    p.shrink(7, 0x200000, MiB, t=2.0)
    assert p.top() == []


def test_madvise_releases_pages_but_keeps_the_mapping():
    p = LeakProfile(GROWTH, [7])
    p.grow(7, 0x200000, MiB, A)
    p.touched(7, 0x201000, A, 300_000, t=1.0)
    p.shrink(7, 0x200000, MiB, t=2.0, resident_only=True)
    s = p.top()[0]
    assert (s.bytes, s.mapped_bytes) == (0, MiB)


def test_mremap_moves_samples_and_charges_growth_to_the_caller():
    p = LeakProfile(GROWTH, [7])
    p.grow(7, 0x10000, 0x4000, A)
    p.touched(7, 0x12000, A, 8192, t=1.0)
    p.move(7, 0x10000, 0x4000, 0x900000, 0x10000, C, weight=0xC000, t=2.0)
    got = {s.frames: (s.bytes, s.mapped_bytes) for s in p.top()}
    assert got == {A: (8192, 0x4000), C: (0, 0xC000)}
    p.shrink(7, 0x902000, 0x1000, t=3.0)  # the moved page, at its new address
    assert {s.frames: s.bytes for s in p.top()}[A] == 0


def test_mremap_shrinking_releases_what_falls_off():
    p = LeakProfile(GROWTH, [7])
    p.touched(7, 0x13000, A, 4096, t=1.0)
    p.move(7, 0x10000, 0x4000, 0x10000, 0x2000, ("[no stack]",), weight=0, t=2.0)
    assert p.top() == []


def test_stacks_are_per_process_and_carry_its_name_and_cgroup():
    p = LeakProfile(GROWTH, [], all_processes=True)
    p.touched(7, 0x1000, A, 4096, t=1.0, comm="web", cgroup_id=42, cgroup="/system.slice/web")
    p.touched(8, 0x1000, A, 8192, t=1.0, comm="db", cgroup_id=43, cgroup="/db")
    got = [(s.pid, s.comm, s.cgroup, s.bytes) for s in p.top()]
    assert got == [(8, "db", "/db", 8192), (7, "web", "/system.slice/web", 4096)]
    obj = p.to_json(10.0)
    assert obj["all"] is True
    assert {k: obj["stacks"][0][k] for k in ("pid", "comm", "cgroup")} == \
        {"pid": 8, "comm": "db", "cgroup": "/db"}


def test_exec_forgets_the_old_image():
    p = LeakProfile(GROWTH, [7])
    p.touched(7, 0x1000, A, 4096, t=1.0)
    p.grow(7, 0x10000, MiB, A, t=1.0)
    p.exec(7, t=2.0)
    assert p.top() == []


# ----------------------------------------------------------------------------- windows, rates

def _leak(p: LeakProfile, pid: int, frames, rate: float, start: float, end: float,
          sampler: PoissonSampler, page_addr: int = 0x10000000, **who) -> int:
    """Touch pages at `rate` bytes/s from start to end through the sampler; the true bytes."""
    n_pages = int((end - start) * rate / 4096)
    for i in range(n_pages):
        w = sampler.sample(4096)
        if w:
            p.touched(pid, page_addr + i * 4096, frames, w, t=start + i * 4096 / rate, **who)
    return n_pages * 4096


def test_a_steady_leak_reports_its_rate_and_the_final_summary_keeps_it():
    rng = random.Random(7)
    p = LeakProfile(GROWTH, [7], started=0.0, rate_window=10.0)
    sampler = PoissonSampler(64 * 1024, rand32=lambda: rng.getrandbits(32))
    _leak(p, 7, A, 10 * MiB, 0.0, 30.0, sampler)
    p.tick(30.0)
    assert p.top()[0].bytes_per_second == pytest.approx(10 * MiB, rel=0.1)
    p.tick(30.0)  # the final tick, at the same moment: the rate stays
    assert p.top()[0].bytes_per_second == pytest.approx(10 * MiB, rel=0.1)
    assert p.to_json(30.0, final=True)["stacks"][0]["bytes_per_second"] > 9 * MiB


def test_rates_cover_only_the_window():
    p = LeakProfile(GROWTH, [7], started=0.0, rate_window=10.0)
    p.touched(7, 0x1000, A, 100 * MiB, t=1.0)   # long ago
    p.touched(7, 0x2000, A, 20 * MiB, t=55.0)
    p.tick(60.0)
    assert p.top()[0].bytes_per_second == pytest.approx(2 * MiB)


def test_a_young_process_rate_is_over_its_own_life():
    p = LeakProfile(GROWTH, [], all_processes=True, started=0.0, rate_window=10.0)
    p.touched(9, 0x1000, A, 8 * MiB, t=59.0, since=58.0)
    p.tick(60.0)
    assert p.top()[0].bytes_per_second == pytest.approx(4 * MiB)


def test_malloc_mode_rates_come_from_the_window_of_snapshots():
    p = LeakProfile(MALLOC, [7], rate_window=10.0)
    for t, nbytes in ((100.0, 1000), (101.0, 2000), (102.0, 3000)):
        p.reset_outstanding()
        p.set_outstanding(A, nbytes, nbytes // 1000, pid=7)
        p.tick(t)
    s = p.top()[0]
    assert s.bytes_per_second == pytest.approx(1000.0)
    assert list(s.history) == [1000, 2000, 3000]
    p.tick(102.0)  # the final tick at the same moment
    assert p.top()[0].bytes_per_second == pytest.approx(1000.0)
    assert p.growing(5)[0].frames == A


def test_processes_are_capped_and_the_coldest_dropped_and_counted():
    p = LeakProfile(GROWTH, [], all_processes=True, started=0.0, max_processes=3)
    for pid, t in ((1, 5.0), (2, 1.0), (3, 9.0)):
        p.touched(pid, 0x1000, A, 4096, t=t)
    p.touched(1, 0x2000, A, 4096, t=10.0)   # pid 2 is now the coldest
    p.touched(4, 0x1000, B, 4096, t=11.0)
    assert sorted(p.processes) == [1, 3, 4]
    assert {s.pid for s in p.stacks.values()} == {1, 3, 4}
    assert p.drops["processes_dropped"] == 1


def test_window_samples_are_capped_and_counted():
    p = LeakProfile(GROWTH, [7], started=0.0, max_window_samples=10, rate_window=100.0)
    for i in range(30):
        p.touched(7, 0x1000 * (i + 1), A, 1000, t=float(i))
    assert len(p.processes[7].samples) == 10
    assert p.drops["window_samples_dropped"] == 20
    p.tick(30.0)
    # the rate covers what was kept: 10 samples over the 11 s since the last one dropped
    assert p.top()[0].bytes_per_second == pytest.approx(10_000 / 11)
    assert p.top()[0].bytes == 30_000  # totals are not window detail: nothing lost


def test_exited_processes_stay_one_window_then_go():
    p = LeakProfile(GROWTH, [], all_processes=True, started=0.0, rate_window=10.0)
    p.touched(5, 0x1000, A, 4096, t=1.0)
    p.exit(5, 2.0)
    p.tick(5.0)
    assert p.top()[0].exited and p.grew(5, 5.0)
    p.tick(13.0)
    assert p.top() == [] and 5 not in p.processes
    p.touched(5, 0x1000, B, 4096, t=20.0)  # the pid, reused
    assert [s.frames for s in p.top()] == [B]


# ----------------------------------------------------------------------------- growth queries

def test_grew_names_the_victims_top_stacks_over_the_last_minutes():
    p = LeakProfile(GROWTH, [], all_processes=True, started=0.0, grew_window=300.0)
    who = {"comm": "hoarder", "cgroup": "/test/box", "cgroup_id": 5}
    p.touched(412, 0x1000, C, 50 * MiB, t=1.0, **who)        # before the window
    for i in range(5):
        p.touched(412, 0x100000 + i * 4096, A, 12 * MiB, t=400.0 + i, **who)
    p.touched(412, 0x900000, B, 2 * MiB, t=402.0, **who)
    p.shrink(412, 0x900000, 4096, t=403.0)                   # B gave it back
    grew = p.grew(412, now=405.0, seconds=60.0)
    assert grew == [Growth(412, "hoarder", "/test/box", 60 * MiB, A, 4.0)]
    assert grew[0].to_json() == {"pid": 412, "comm": "hoarder", "bytes": 60 * MiB,
                                 "frames": list(A), "seconds": 4.0, "cgroup": "/test/box"}
    assert [g.frames for g in p.grew(412, now=405.0, seconds=1000.0)] == [A, C]
    assert p.grew(999, now=405.0) == []


def test_grew_in_cgroup_finds_the_other_growers_below_it():
    p = LeakProfile(GROWTH, [], all_processes=True, started=0.0)
    p.touched(1, 0x1000, A, 9 * MiB, t=10.0, comm="victim", cgroup="/box")
    p.touched(2, 0x1000, B, 5 * MiB, t=10.0, comm="helper", cgroup="/box/inner")
    p.touched(3, 0x1000, C, 7 * MiB, t=10.0, comm="other", cgroup="/boxer")
    got = p.grew_in_cgroup("/box", now=12.0, exclude=[1])
    assert [(g.pid, g.comm, g.bytes) for g in got] == [(2, "helper", 5 * MiB)]
    assert [g.pid for g in p.grew_in_cgroup("/box/", now=12.0)] == [1, 2]


def test_growing_processes_fastest_first_with_their_top_stack():
    p = LeakProfile(GROWTH, [], all_processes=True, started=0.0, rate_window=10.0)
    p.touched(1, 0x1000, A, 10 * MiB, t=55.0, comm="slow")
    p.touched(2, 0x1000, B, 30 * MiB, t=55.0, comm="fast")
    p.touched(2, 0x2000, C, 10 * MiB, t=56.0, comm="fast")
    p.touched(3, 0x1000, A, 90 * MiB, t=56.0, comm="gone")
    p.exit(3, 57.0)
    got = p.growing_processes(60.0, 5)
    assert [(g.pid, g.comm) for g in got] == [(2, "fast"), (1, "slow")]
    assert got[0].bytes_per_second == pytest.approx(4 * MiB)
    assert got[0].top_frames == B and got[0].top_bytes_per_second == pytest.approx(3 * MiB)
    assert got[0].bytes == 40 * MiB
    assert p.to_json(60.0)["growing"][0]["pid"] == 2


def test_grew_line_reads_as_a_sentence_through_the_programs_frames():
    g = Growth(412, "hoarder", "/box", 61 * MiB,
               ("__memset_avx2_unaligned_erms (libc.so.6)", "hoard_buffers (hoarder)",
                "main (hoarder)", "__libc_start_call_main (libc.so.6)", "_start (hoarder)"), 4.2)
    assert grew_line(g) == "pid 412 (hoarder) grew 61 MiB in 4 s through hoard_buffers <- main"
    quick = Growth(9, "x\x1b[2J", None, 4096, ("malloc (libc.so.6)",), 0.0)
    assert grew_line(quick) == "pid 9 (x\\x1b[2J) grew 4 KiB in under a second through malloc"


def test_program_frames_keeps_everything_when_nothing_else_is_left():
    assert program_frames(("malloc (libc.so.6)",)) == ("malloc (libc.so.6)",)
    assert program_frames(("a (ld-linux-x86-64.so.2)", "f (app)", "_start (app)")) == ("f (app)",)


# ----------------------------------------------------------------------------- JSON and views

def test_json_intervals_and_failures():
    p = LeakProfile(MALLOC, [7, 3])
    p.set_outstanding(A, 2048, 2, pid=7)
    p.set_outstanding(B, 0, 0, pid=7)
    p.failed(AllocFailure(1_790_000_000.0, 7, "malloc", 1 << 46, ("ask (app)",)))
    obj = p.to_json(1_790_000_000.0, final=True)
    assert obj["type"] == "leaks" and obj["mode"] == "malloc" and obj["pids"] == [3, 7]
    assert obj["stacks"] == [{"pid": 7, "comm": "", "cgroup": None, "bytes": 2048,
                              "mapped_bytes": 0, "count": 2, "bytes_per_second": 0.0,
                              "frames": list(A), "trend": []}]
    assert obj["failures"] == 1 and obj["final"] is True
    assert p.failures[0].to_json()["type"] == "alloc_failure"


def test_growth_json_says_how_it_was_sampled():
    p = LeakProfile(GROWTH, [7], sample_bytes=65536, rate_window=5.0)
    obj = p.to_json(1.0)
    assert (obj["sample_bytes"], obj["rate_window_seconds"], obj["growing"]) == (65536, 5.0, [])


def test_exported_stacks_of_all_processes_end_in_their_process():
    p = LeakProfile(GROWTH, [], all_processes=True)
    p.touched(7, 0x1000, A, 4096, t=1.0, comm="web")
    p.sources[A] = ("leaky.c:3", None)
    (s,) = export_stacks(p)
    assert s["frames"] == [*A, "web [7]"] and s["sources"] == ["leaky.c:3", None, None]
    q = LeakProfile(GROWTH, [7])
    q.touched(7, 0x1000, A, 4096, t=1.0, comm="web")
    assert export_stacks(q)[0]["frames"] == list(A)


@pytest.mark.parametrize("values, expected", [
    ([], ""), ([5, 5], "▄▄"), ([0, 7], "▁█"), ([0, 1, 2, 3, 4, 5, 6, 7], "▁▂▃▄▅▆▇█")])
def test_sparkline(values, expected):
    assert sparkline(values) == expected


def test_live_view_and_summary():
    p = LeakProfile(GROWTH, [7], sample_bytes=4096)
    p.grow(7, 0x10000, 5 << 20, A)
    p.touched(7, 0x10000, A, 3 << 20, t=1.0)
    p.tick(1.0)
    c = Console(record=True, width=140)
    c.print(render(p, 140, 10, {7}, 3.0))
    text = c.export_text()
    assert "Top stacks by resident growth" in text and "leak_here (app)" in text
    assert "5 MiB" in text and "3 MiB" in text
    assert "leak_here (app)" in summary(p, 5) and "5 MiB mapped" in summary(p, 5)


def test_live_view_of_all_processes_shows_who_grows():
    p = LeakProfile(GROWTH, [], all_processes=True, cgroup="/box", started=0.0)
    p.touched(7, 0x10000, A, 3 << 20, t=1.0, comm="hoarder", cgroup="/box")
    p.tick(2.0)
    c = Console(record=True, width=160)
    c.print(render(p, 160, 10, set(), 3.0, now=2.0))
    text = c.export_text()
    assert "all processes in cgroup /box" in text and "Growing processes" in text
    assert "hoarder" in text and "1.5 MiB" in text  # 3 MiB over the 2 s since the start
    assert "all traced processes exited" not in text
