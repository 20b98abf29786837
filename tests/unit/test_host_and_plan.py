"""Finding kernel headers, choosing probes by the kernel's BTF, building -D flags, cgroup paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracer.host import system as host
from tracer.host.cgroups import CgroupResolver, Hierarchy
from tracer.host.memcg import MemcgWatcher, read_counters
from tracer.kernel import probes
from tracer.kernel.build import BuildOptions, Layout, cflags
from tracer.model.failures import path_matches

pytestmark = pytest.mark.unit


def _headers(root: Path, name: str, common: str | None = None) -> None:
    build = root / "src" / name
    (build / "include" / "generated").mkdir(parents=True)
    (build / "include" / "generated" / "autoconf.h").write_text("")
    (build / "arch" / "x86" / "include" / "generated").mkdir(parents=True)
    mod = root / "modules" / name
    mod.mkdir(parents=True)
    (mod / "build").symlink_to(build)
    if common:
        c = root / "src" / common
        (c / "include" / "linux").mkdir(parents=True)
        (c / "include" / "linux" / "kconfig.h").write_text("")
        (c / "arch" / "x86" / "include" / "asm").mkdir(parents=True)
        (mod / "source").symlink_to(c)


def test_running_kernels_own_headers(tmp_path):
    _headers(tmp_path, "6.18.1")
    h = host.find_headers("6.18.1", tmp_path / "modules", tmp_path / "cache")
    assert not h.generic and h.path == tmp_path / "modules" / "6.18.1" / "build"


def test_newest_generic_headers_merged_from_debian_split(tmp_path):
    _headers(tmp_path, "6.1.0-9-amd64", "6.1.0-9-common")
    _headers(tmp_path, "6.1.0-56-amd64", "6.1.0-56-common")
    h = host.find_headers("6.18.1", tmp_path / "modules", tmp_path / "cache")
    assert h.generic and h.release == "6.1.0-56-amd64"
    # one tree with both halves: generated files from the arch part, the rest from -common
    assert (h.path / "include" / "generated" / "autoconf.h").is_file()
    assert (h.path / "include" / "linux" / "kconfig.h").is_file()
    assert (h.path / "arch" / "x86" / "include" / "generated").is_dir()
    assert (h.path / "arch" / "x86" / "include" / "asm").is_dir()
    again = host.find_headers("6.18.1", tmp_path / "modules", tmp_path / "cache")
    assert again == h


def test_no_headers_names_the_package(tmp_path):
    (tmp_path / "modules").mkdir()
    with pytest.raises(host.HostError, match="install linux-headers-6.18.1"):
        host.find_headers("6.18.1", tmp_path / "modules", tmp_path / "cache")


KMALLOC = ["long unsigned int", "const void *", "size_t", "size_t", "gfp_t", "int"]


def _params(name):
    table = {"sys_exit": ["struct pt_regs *", "long int"],
             "mm_page_alloc": ["struct page *", "unsigned int", "gfp_t", "int"],
             "kmalloc": KMALLOC,
             "kmem_cache_alloc": ["long unsigned int", "const void *", "struct kmem_cache *",
                                  "gfp_t", "int"]}
    return table.get(name)


def test_probe_plan_checks_argument_positions():
    chosen, statuses = probes.choose(_params)
    assert {"syscall_exit", "page_alloc", "kmalloc", "kmem_cache_alloc", "memcg_events"} <= set(
        chosen)
    assert statuses["percpu"].status == "unavailable"
    assert "no percpu_alloc_percpu_fail tracepoint" in statuses["percpu"].reason


def test_probe_plan_prefers_tp_btf_for_the_syscall_hook_where_the_kernel_takes_it():
    chosen, _ = probes.choose(_params, tp_btf_ok=lambda target: None)
    assert (chosen["syscall_exit"].via, chosen["syscall_exit"].fn) == ("tp_btf", "mt_sys_exit")
    assert chosen["page_alloc"].via == "raw_tp"  # the others read no typed pointer
    refused = []
    chosen, statuses = probes.choose(
        _params, tp_btf_ok=lambda target: refused.append(target) or "refused here")
    assert refused == ["sys_exit"]
    assert chosen["syscall_exit"].via == "raw_tp" and "syscall_exit" not in statuses
    # not asked: raw tracepoints, as before
    assert probes.choose(_params)[0]["syscall_exit"].via == "raw_tp"


def test_tp_btf_checker_says_why_not():
    from tracer.kernel import tracing

    off = tracing.checker(lambda name: 1, environ={tracing.ENV: "0"})
    assert off("sys_exit") == "tp_btf turned off (MEMTRACE_TP_BTF=0)"
    missing = tracing.checker(lambda name: None, environ={})
    assert missing("sys_exit") == "no btf_trace_sys_exit in this kernel's BTF"


def test_probe_plan_refuses_a_changed_tracepoint():
    def older(name):  # e.g. a kernel where kmem_cache_alloc had no cache argument
        if name == "kmem_cache_alloc":
            return ["long unsigned int", "const void *", "size_t", "size_t", "gfp_t", "int"]
        return _params(name)

    chosen, statuses = probes.choose(older)
    assert "kmem_cache_alloc" not in chosen
    assert "not what memtrace reads" in statuses["kmem_cache_alloc"].reason


def test_cflags_carry_layout_families_and_sizes(tmp_path):
    layout = Layout({"MT_OFF_REGS_ORIG_AX": 120}, frozenset({"MT_HAVE_MEMCG"}),
                    {"___GFP_NOWARN_BIT": 13, "___GFP_NORETRY_BIT": 16})
    flags = cflags(layout, BuildOptions(frozenset({"KMEM", "SYSCALLS"}), ringbuf_pages=8))
    assert "-DMT_OFF_REGS_ORIG_AX=120" in flags
    assert "-DMT_HAVE_MEMCG=1" in flags
    assert "-DMT_PROBE_KMEM=1" in flags and "-DMT_PROBE_SYSCALLS=1" in flags
    assert "-DMT_RINGBUF_PAGES=8" in flags
    assert f"-DMT_GFP_OPPORTUNISTIC_MASK={(1 << 13) | (1 << 16)}" in flags
    assert "-DMT_NR_BRK=12" in flags and "-DMT_NR_MMAP=9" in flags


def _tree(tmp_path: Path) -> Hierarchy:
    mount = tmp_path / "memory"
    (mount / "a" / "b").mkdir(parents=True)
    (mount / "c").mkdir()
    return Hierarchy(mount, 1, True)


def test_cgroup_resolver_maps_inodes_to_paths(tmp_path):
    h = _tree(tmp_path)
    r = CgroupResolver([h])
    assert r.path(os.stat(h.mount / "a" / "b").st_ino) == "/a/b"
    assert r.path(os.stat(h.mount).st_ino) == "/"
    assert r.path(0) is None
    (h.mount / "late").mkdir()
    assert r.path(os.stat(h.mount / "late").st_ino) == "/late"
    assert r.resolve_user_path("/a/b") == (h, "/a/b")
    assert r.resolve_user_path(str(h.mount / "c")) == (h, "/c")
    with pytest.raises(LookupError, match="no such cgroup: /nope"):
        r.resolve_user_path("/nope")


@pytest.mark.parametrize("path, wanted, ok", [
    ("/a/b", "/a", True), ("/a", "/a", True), ("/ab", "/a", False), ("/x", "/", True),
    (None, "/", False)])
def test_path_matches(path, wanted, ok):
    assert path_matches(path, wanted) is ok


def test_memcg_counters_v1_and_v2(tmp_path):
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "memory.failcnt").write_text("7\n")
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert read_counters(v1, 1) == {"failcnt": 7, "under_oom": 0, "oom_kill": 2}
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.events").write_text("low 0\nhigh 1\nmax 5\noom 1\noom_kill 1\n")
    assert read_counters(v2, 2) == {"high": 1, "max": 5, "oom": 1, "oom_kill": 1}
    assert read_counters(tmp_path / "gone", 2) == {}


def test_memcg_watcher_reports_increases_since_start(tmp_path):
    h = _tree(tmp_path)
    box = h.mount / "a"
    (box / "memory.failcnt").write_text("3\n")
    (box / "memory.oom_control").write_text("under_oom 0\noom_kill 0\n")
    w = MemcgWatcher(CgroupResolver([h]))
    (box / "memory.failcnt").write_text("10\n")  # hits before the cgroup showed a failure
    w.watch("/a")
    assert w.poll() == [("/a", "failcnt", 7, 7)]
    assert w.poll() == []
    (box / "memory.oom_control").write_text("under_oom 1\noom_kill 1\n")
    assert sorted(w.poll()) == [("/a", "oom_kill", 1, 1), ("/a", "under_oom", 1, 1)]
    assert sorted(w.totals()) == [("/a", "failcnt", 7), ("/a", "oom_kill", 1)]
