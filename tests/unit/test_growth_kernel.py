"""The kernel side of growth tracking without a kernel: tracer/kernel/growth.py turning growth
events (struct lk_event) into LeakProfile calls, the one decoder LeakSource and LiveSource
share, and what the build passes the growth probes (their live behaviour:
tests/bpf/test_leaks.py and tests/bpf/test_growth.py)."""

from __future__ import annotations

import ctypes as ct
from typing import Optional

import pytest

from tracer.kernel import abi
from tracer.kernel import growth as growth_kernel
from tracer.kernel.build import BuildOptions, Layout, cflags
from tracer.kernel.growth import GrowthDecoder, leak_event
from tracer.model.leaks import GROWTH, LeakProfile

pytestmark = pytest.mark.unit

PID = 4242
PAGE = 4096


class ScriptedUnwinder:
    """Frames from a table instead of a binary: unwind() gives the addresses it was told,
    symbolize() names them. Counts refreshes (a frame outside every known mapping)."""

    def __init__(self, addrs: list[int], names: dict[int, str]):
        self.addrs = addrs
        self.names = names
        self.unwound: list[tuple[int, int, int, bytes]] = []

    def unwind(self, ip: int, sp: int, bp: int, stack: bytes) -> list[int]:
        self.unwound.append((ip, sp, bp, stack))
        return list(self.addrs)

    def symbolize(self, addr: int, first: bool = False, with_source: bool = True
                  ) -> tuple[str, str, Optional[str]]:
        name = self.names.get(addr if first else addr - 1)
        if name is None:
            return f"0x{addr:x}", "[unknown]", None
        return name, "grower", f"grower.c:{addr & 0xff}" if with_source else None


def event(kind: int, *, pid: int = PID, addr: int = 0, length: int = 0, weight: int = 0,
          ts_ns: int = 1_000_000_000, cgroup_id: int = 0, comm: bytes = b"grower",
          stack: bytes = b"", ip: int = 0, old_addr: int = 0, old_len: int = 0) -> abi.LeakEvent:
    e = abi.LeakEvent()
    e.kind, e.pid, e.tid, e.ts_ns = kind, pid, pid, ts_ns
    e.addr, e.len, e.weight, e.cgroup_id = addr, length, weight, cgroup_id
    e.old_addr, e.old_len, e.ip = old_addr, old_len, ip
    e.comm = comm
    ct.memmove(ct.addressof(e.stack), stack, len(stack))
    e.stack_len = len(stack)
    return e


def decoder(unwinder=None, cgroups: Optional[dict[int, str]] = None, with_sources: bool = True
            ) -> tuple[GrowthDecoder, LeakProfile, list[tuple[int, bool]]]:
    profile = LeakProfile(GROWTH, (), all_processes=True, sample_bytes=PAGE, started=0.0)
    asked: list[tuple[int, bool]] = []
    u = unwinder or ScriptedUnwinder([], {})

    def unwinder_for(pid: int, refresh: bool):
        asked.append((pid, refresh))
        return u

    names = cgroups or {}
    return (GrowthDecoder(profile, unwinder_for, names.get, clock_offset=100.0,
                          with_sources=with_sources), profile, asked)


def test_a_record_too_short_is_refused_and_a_stack_never_read_past_the_record():
    e = event(abi.LK_EV_FAULT, stack=b"\1" * 64)
    base = ct.addressof(e)
    assert leak_event(base, abi.LeakEvent.stack.offset - 1) is None
    whole = leak_event(base, ct.sizeof(abi.LeakEvent))
    assert whole is not None and whole.stack_len == 64
    e.stack_len = 4096  # says more than the record that arrived holds
    cut = leak_event(base, abi.LeakEvent.stack.offset + 100)
    assert cut is not None and cut.stack_len == 0


def test_a_sampled_first_touch_is_resident_growth_with_its_frames_and_owner():
    u = ScriptedUnwinder([0x1010, 0x2021], {0x1010: "leak_here", 0x2020: "main"})
    dec, profile, asked = decoder(u, {77: "/jobs/a"})
    e = event(abi.LK_EV_FAULT, addr=0x7000, length=PAGE, weight=3 * PAGE, cgroup_id=77,
              stack=b"\0" * 128, ip=0x1010)
    assert dec.handle(e)
    proc = profile.processes[PID]
    assert (proc.comm, proc.cgroup, proc.cgroup_id) == ("grower", "/jobs/a", 77)
    assert proc.resident.weight() == 3 * PAGE
    frames = ("leak_here (grower)", "main (grower)")
    assert profile.stacks[(PID, frames)].bytes == 3 * PAGE
    assert profile.sources[frames] == ("grower.c:16", "grower.c:33")
    assert u.unwound[0][3] == b"\0" * 128  # the stack copy as the kernel sent it
    assert asked[0] == (PID, False)
    [grew] = profile.grew(PID, 100.0 + 1.0 + 1)
    assert (grew.pid, grew.bytes, grew.frames) == (PID, 3 * PAGE, frames)


def test_always_on_tracking_names_frames_without_reading_line_tables():
    u = ScriptedUnwinder([0x1010], {0x1010: "leak_here"})
    dec, profile, _ = decoder(u, with_sources=False)
    dec.handle(event(abi.LK_EV_FAULT, addr=0x7000, length=PAGE, weight=PAGE, stack=b"\0" * 8))
    assert profile.top()[0].frames == ("leak_here (grower)",)
    assert profile.sources == {}


def test_an_unknown_first_frame_asks_for_a_refreshed_unwinder():
    u = ScriptedUnwinder([0x9999], {})
    dec, profile, asked = decoder(u)
    dec.handle(event(abi.LK_EV_FAULT, addr=0x7000, length=PAGE, weight=PAGE, stack=b"\0" * 8))
    assert (PID, True) in asked  # a library mapped since the unwinder last looked
    assert profile.top()[0].frames == ("0x9999 ([unknown])",)


def test_without_a_stack_copy_the_frame_is_the_instruction():
    dec, profile, _ = decoder()
    dec.handle(event(abi.LK_EV_FAULT, addr=0x7000, length=PAGE, weight=PAGE, ip=0xabc))
    dec.handle(event(abi.LK_EV_FAULT, pid=7, addr=0x7000, length=PAGE, weight=PAGE))
    assert {s.frames for s in profile.top()} == {("0xabc",), ("[no stack]",)}


def test_releases_moves_exec_and_exit_shape_the_process_growth():
    dec, profile, asked = decoder()
    for i in range(4):
        dec.handle(event(abi.LK_EV_FAULT, addr=0x10000 + i * PAGE, length=PAGE, weight=PAGE))
    proc = profile.processes[PID]
    assert proc.resident.weight() == 4 * PAGE
    dec.handle(event(abi.LK_EV_MUNMAP, addr=0x10000, length=PAGE))
    assert proc.resident.weight() == 3 * PAGE
    dec.handle(event(abi.LK_EV_MADVISE, addr=0x11000, length=PAGE))  # pages given back
    assert proc.resident.weight() == 2 * PAGE
    # mremap moves what is left to 0x90000
    dec.handle(event(abi.LK_EV_MREMAP, old_addr=0x12000, old_len=2 * PAGE, addr=0x90000,
                     length=2 * PAGE))
    assert proc.resident.owner_of(0x90000, 2 * PAGE) and not proc.resident.owner_of(0x12000, 2 * PAGE)
    dec.handle(event(abi.LK_EV_BRK_SHRINK, addr=0x90000, length=PAGE))
    assert proc.resident.weight() == PAGE
    dec.handle(event(abi.LK_EV_EXEC))  # a new image: nothing of the old one is resident
    assert proc.resident.weight() == 0 and (PID, True) in asked
    dec.handle(event(abi.LK_EV_EXIT, ts_ns=2_000_000_000))
    assert proc.exited_at == 102.0 and PID in profile.exited


def test_batched_touches_released_within_their_read_are_never_unwound():
    u = ScriptedUnwinder([0x1010], {0x1010: "churn"})
    dec, profile, _ = decoder(u)
    dec.batched = True
    # an allocator's churn: map, touch, unmap, three times, all in one read
    for i in range(3):
        base = 0x100000 + i * 0x10000
        dec.handle(event(abi.LK_EV_FAULT, addr=base, length=PAGE, weight=PAGE,
                         stack=b"\1" * 64, ip=0x1010))
        dec.handle(event(abi.LK_EV_MUNMAP, addr=base, length=16 * PAGE))
    # and one that stays, next to a released neighbour of another process
    dec.handle(event(abi.LK_EV_FAULT, addr=0x200000, length=PAGE, weight=5 * PAGE,
                     stack=b"\2" * 64, ip=0x1010))
    dec.handle(event(abi.LK_EV_MADVISE, pid=PID + 1, addr=0x200000, length=PAGE))
    assert dec.waiting == 1 and dec.released_unread == 3 and not u.unwound
    assert PID not in profile.processes  # nothing recorded before the read ends
    dec.flush()
    assert len(u.unwound) == 1 and u.unwound[0][3] == b"\2" * 64  # its copy, not the ring's
    assert profile.processes[PID].resident.weight() == 5 * PAGE
    assert profile.stacks[(PID, ("churn (grower)",))].count == 1


def test_a_batched_huge_page_partly_released_is_recorded_then_shrunk():
    dec, profile, _ = decoder()
    dec.batched = True
    huge = 512 * PAGE
    dec.handle(event(abi.LK_EV_FAULT, addr=0x40000000, length=huge, weight=huge))
    dec.handle(event(abi.LK_EV_MADVISE, addr=0x40000000, length=huge // 2))
    assert dec.waiting == 0 and dec.released_unread == 0
    assert profile.processes[PID].resident.weight() == huge // 2


@pytest.mark.parametrize("kind", [abi.LK_EV_EXIT, abi.LK_EV_EXEC, abi.LK_EV_MREMAP,
                                  abi.LK_EV_MMAP])
def test_batched_touches_are_named_before_an_event_that_moves_or_ends_them(kind: int):
    u = ScriptedUnwinder([0x1010], {0x1010: "grow"})
    dec, profile, _ = decoder(u)
    dec.batched = True
    dec.handle(event(abi.LK_EV_FAULT, addr=0x300000, length=PAGE, weight=PAGE,
                     stack=b"\3" * 64, ip=0x1010))
    assert dec.waiting == 1
    dec.handle(event(kind, old_addr=0x300000, old_len=PAGE, addr=0x500000, length=PAGE,
                     ts_ns=2_000_000_000))
    assert dec.waiting == 0 and len(u.unwound) == 1
    assert profile.stacks[(PID, ("grow (grower)",))].count == 1


class BrokenOnce(ScriptedUnwinder):
    """Fails to unwind the first stack it is given (a binary gone, a corrupt table)."""

    def unwind(self, ip: int, sp: int, bp: int, stack: bytes) -> list[int]:
        if not self.unwound:
            self.unwound.append((ip, sp, bp, stack))
            raise ValueError("truncated .eh_frame")
        return super().unwind(ip, sp, bp, stack)


def test_one_touch_that_cannot_be_named_does_not_lose_the_others():
    u = BrokenOnce([0x1010], {0x1010: "grow"})
    dec, profile, _ = decoder(u)
    dec.batched = True
    for i in range(3):
        dec.handle(event(abi.LK_EV_FAULT, addr=0x400000 + i * PAGE, length=PAGE, weight=PAGE,
                         stack=b"\4" * 64, ip=0x1010))
    errors: list[Exception] = []
    dec.flush(on_error=errors.append)
    assert [str(e) for e in errors] == ["truncated .eh_frame"]
    assert profile.processes[PID].resident.weight() == 2 * PAGE and dec.waiting == 0
    dec.handle(event(abi.LK_EV_FAULT, addr=0x500000, length=PAGE, weight=PAGE,
                     stack=b"\4" * 64, ip=0x1010))
    u.unwound.clear()
    with pytest.raises(ValueError):  # without a handler the error is the caller's
        dec.flush()
    # the decoder's own handler also serves the flushes events make (an exit here)
    dec.on_error = errors.append
    for i in range(2):
        dec.handle(event(abi.LK_EV_FAULT, addr=0x600000 + i * PAGE, length=PAGE, weight=PAGE,
                         stack=b"\4" * 64, ip=0x1010))
    u.unwound.clear()
    dec.handle(event(abi.LK_EV_EXIT, ts_ns=3_000_000_000))
    assert len(errors) == 2 and dec.waiting == 0
    assert profile.stacks[(PID, ("grow (grower)",))].count == 3  # 2 before, 1 after


def test_batched_waiting_is_bounded_and_can_be_dropped():
    dec, profile, _ = decoder()
    dec.batched = True
    for i in range(growth_kernel.MAX_WAITING + 3):
        dec.handle(event(abi.LK_EV_FAULT, addr=0x1000000 + i * PAGE, length=PAGE, weight=PAGE))
    assert dec.waiting == 3  # flushed once at the bound
    assert profile.processes[PID].resident.weight() == growth_kernel.MAX_WAITING * PAGE
    dec.drop_waiting()
    dec.flush()
    assert profile.processes[PID].resident.weight() == growth_kernel.MAX_WAITING * PAGE


def test_mapped_growth_and_kinds_that_are_not_growth():
    dec, profile, _ = decoder()
    assert dec.handle(event(abi.LK_EV_MMAP, addr=0x40000, length=16 * PAGE, weight=8 * PAGE))
    assert profile.processes[PID].mapped.weight() == 8 * PAGE
    assert profile.total_mapped_bytes() == 8 * PAGE and profile.total_bytes() == 0
    for kind in (abi.LK_EV_FORK, abi.LK_EV_STACK, abi.LK_EV_ALLOC_FAIL, 99):
        assert not dec.handle(event(kind))


def test_hostile_names_are_decoded_not_raised_on():
    dec, profile, _ = decoder()
    dec.handle(event(abi.LK_EV_FAULT, addr=0x7000, length=PAGE, weight=PAGE,
                     comm=b"\xff\xfe\x1b[2Jx"))
    assert profile.processes[PID].comm == "\ufffd\ufffd\x1b[2Jx"  # views make it inert


def test_lost_samples_count_what_grew_since_the_last_reading():
    dec, profile, _ = decoder()
    resident, mapped = PID << 1, (PID << 1) | 1
    dec.read_lost([(resident, 10 * PAGE), (mapped, 4 * PAGE)], now=5.0)
    proc = profile.processes[PID]
    assert proc.resident.weight() == 0  # no address: counted under the lost frames
    lost = [s for s in profile.stacks.values() if s.pid == PID]
    assert [(s.bytes, s.mapped_bytes) for s in lost] == [(10 * PAGE, 4 * PAGE)]
    dec.read_lost([(resident, 12 * PAGE), (mapped, 4 * PAGE)], now=6.0)
    assert lost[0].bytes == 12 * PAGE  # only the 2 pages more
    dec.read_lost([], now=7.0)  # the key went (evicted): it starts again from 0
    dec.read_lost([(resident, PAGE)], now=8.0)
    assert lost[0].bytes == 13 * PAGE
    assert sum(g.bytes for g in profile.grew(PID, 9.0)) == 13 * PAGE


def test_the_build_names_user_pages_for_the_page_allocators_sampler():
    layout = Layout({}, frozenset({"MT_HAVE_GROWTH"}),
                    {"___GFP_HARDWALL_BIT": 20, "___GFP_MOVABLE_BIT": 3})
    flags = cflags(layout, BuildOptions(frozenset({"KMEM", "SYSCALLS", "GROWTH"})))
    assert f"-DMT_GFP_USER_MOVABLE={(1 << 20) | (1 << 3)}" in flags
    assert "-DMT_PROBE_GROWTH=1" in flags and "-DMT_HAVE_GROWTH=1" in flags
    assert "-DMT_NR_MUNMAP=11" in flags and "-DMT_NR_MREMAP=25" in flags
