"""What this host offers memtrace: root, BPF, BTF, tracefs, kernel headers for bcc, and
memtrace's own standing with the kernel's memory management (OOM score, free heap)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import platform
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..errors import HostError

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
TRACEFS = Path("/sys/kernel/tracing")
RUN_DIR = Path("/run/memtrace")  # shared by every memtrace on the host
HEADERS_CACHE = RUN_DIR / "kernel-headers"


def is_root() -> bool:
    return os.geteuid() == 0


def require_root(what: str = "tracing") -> None:
    if not is_root():
        raise HostError(f"{what} needs root (BPF programs): run it with sudo")


def kernel_release() -> str:
    return platform.release()


def btf_available() -> bool:
    return BTF_PATH.is_file() and os.access(BTF_PATH, os.R_OK)


def _mounts() -> list[tuple[str, str, str]]:
    out = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    out.append((parts[0], parts[1], parts[2]))
    except OSError:
        pass
    return out


def tracefs_mounted() -> bool:
    return any(fstype == "tracefs" and mnt == str(TRACEFS) for _, mnt, fstype in _mounts()) or (
        TRACEFS / "events").is_dir()


@contextlib.contextmanager
def host_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) against other memtrace processes
    preparing the same thing; released when the block ends or the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def ensure_tracefs(log=None) -> bool:
    """Mount tracefs at /sys/kernel/tracing if it is not there; True when it is usable.

    Two memtraces starting at once take turns (a lock in /run/memtrace), so only one of
    them mounts it."""
    if tracefs_mounted():
        return True
    if not is_root():
        return False
    try:
        with host_lock(RUN_DIR / "tracefs.lock"):
            return _mount_tracefs(log)
    except OSError:
        return _mount_tracefs(log)  # no /run to lock in: mount without taking turns


def _mount_tracefs(log) -> bool:
    if tracefs_mounted():  # the other memtrace mounted it while this one waited
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mount(b"nodev", str(TRACEFS).encode(), b"tracefs", 0, None)
    if rc != 0:
        err = ctypes.get_errno()
        if err == errno.EBUSY and (TRACEFS / "events").is_dir():
            return True
        return False
    if log:
        log(f"memtrace: mounted tracefs at {TRACEFS}")
    return True


@dataclass(frozen=True)
class Headers:
    """Kernel headers bcc will compile against."""

    path: Path
    release: str  # the release the headers were built for
    generic: bool  # True when they are not the running kernel's own


def _version_key(release: str) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.\-+~]", release))


def _has_headers(build: Path) -> bool:
    return (build / "include" / "generated" / "autoconf.h").is_file() or (
        build / "include" / "linux").is_dir()


def _merge_tree(sources: list[Path], dest: Path) -> None:
    """Overlay several header trees into dest with symlinks (Debian splits a kernel's
    headers into an arch part and a -common part, and bcc wants one tree)."""
    dest.mkdir(parents=True, exist_ok=True)
    names: dict[str, list[Path]] = {}
    for src in sources:
        for entry in sorted(src.iterdir()):
            names.setdefault(entry.name, []).append(entry)
    for name, paths in names.items():
        target = dest / name
        if len(paths) > 1 and all(p.is_dir() for p in paths):
            _merge_tree(paths, target)
        elif not target.exists() and not target.is_symlink():
            target.symlink_to(paths[0].resolve())


def find_headers(release: str | None = None, modules: Path = Path("/lib/modules"),
                 cache: Path = HEADERS_CACHE) -> Headers:
    """The running kernel's headers if present, else the newest generic ones installed.

    Generic headers are merged (build + source) into one tree under `cache`, which bcc
    is pointed at with BCC_KERNEL_SOURCE; nothing under /lib/modules is changed."""
    release = release or kernel_release()
    own = modules / release / "build"
    if _has_headers(own):
        return Headers(own, release, generic=False)
    candidates = []
    if modules.is_dir():
        for d in modules.iterdir():
            if d.name != release and _has_headers(d / "build"):
                candidates.append(d)
    if not candidates:
        raise HostError(
            f"no kernel headers for bcc: install linux-headers-{release} or, if your distro "
            "has none for this kernel, the generic ones (linux-headers-amd64 on Debian, "
            "linux-headers-generic on Ubuntu); `sudo make setup` does this")
    best = max(candidates, key=lambda d: _version_key(d.name))
    parts = [(best / "build").resolve()]
    source = best / "source"
    if source.is_dir() and source.resolve() != parts[0]:
        parts.append(source.resolve())
    if len(parts) == 1:
        return Headers(parts[0], best.name, generic=True)
    merged = cache / best.name
    if not (merged / _MERGED_STAMP).exists():
        try:
            with host_lock(cache / ".lock"):
                _merge_once(parts, merged)
        except OSError as e:
            raise HostError(f"cannot prepare the generic kernel headers in {cache}: "
                            f"{e.strerror or e}") from None
    return Headers(merged, best.name, generic=True)


_MERGED_STAMP = ".memtrace-merged"  # written last: a tree without it is not finished


def _merge_once(parts: list[Path], merged: Path) -> None:
    """Build the merged tree unless another memtrace did while this one waited for the lock.

    The tree is built beside its final name and renamed into place with its stamp, so a
    compile that reads it never sees half of it, and a memtrace killed while building
    leaves only a temporary directory behind, removed by the next one."""
    if (merged / _MERGED_STAMP).exists():
        return
    building = merged.with_name(f".{merged.name}.building")
    shutil.rmtree(building, ignore_errors=True)
    _merge_tree(parts, building)
    (building / _MERGED_STAMP).write_text("\n".join(str(p) for p in parts) + "\n")
    if merged.exists() or merged.is_symlink():  # an unfinished tree of an older memtrace
        if merged.is_dir() and not merged.is_symlink():
            shutil.rmtree(merged)
        else:
            merged.unlink()
    os.rename(building, merged)


def prepare_headers(log=None) -> Headers:
    """Find headers and point bcc at them (BCC_KERNEL_SOURCE) when they are generic."""
    headers = find_headers()
    if headers.generic:
        os.environ["BCC_KERNEL_SOURCE"] = str(headers.path)
        if log:
            log(f"memtrace: warning: no headers for kernel {kernel_release()}; using the "
                f"generic {headers.release} headers (memtrace reads struct layouts from BTF)")
    return headers


OOM_SCORE_ADJ_DEFAULT = -500  # less likely than other processes, never exempt (-1000)


def lower_oom_score(target: int, log: Optional[Callable[[str], None]] = None,
                    proc_file: Path = Path("/proc/self/oom_score_adj")) -> Optional[int]:
    """Make the OOM killer less likely to choose this process: set its oom_score_adj to
    `target` (-1000..1000) unless it is already lower (a service manager may have set
    one). The value in effect afterwards, or None, with a one-line note, when it could
    not be read or written."""
    if not -1000 <= target <= 1000:
        raise ValueError(f"oom_score_adj must be between -1000 and 1000, not {target}")
    try:
        current = int(proc_file.read_text().strip())
    except (OSError, ValueError) as e:
        if log:
            log(f"memtrace: note: cannot read its OOM score ({proc_file}: "
                f"{getattr(e, 'strerror', None) or e}); the OOM killer treats it like any process")
        return None
    if current <= target:
        return current
    try:
        proc_file.write_text(f"{target}\n")
    except OSError as e:
        if log:
            log(f"memtrace: note: cannot lower its OOM score to {target} ({e.strerror}); "
                f"it stays at oom_score_adj {current}")
        return None
    return target


_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_HEAP_THRESHOLD = 128 * 1024  # glibc's own default, before it adapts it upwards


def release_free_heap() -> None:
    """Give the C heap's free memory back to the system (glibc's malloc_trim), and keep
    glibc from holding on to it again: compiling the BPF programs frees tens of MiB and
    raises glibc's thresholds (large blocks then come from the heap and stay in RSS when
    freed); they are set back to glibc's defaults, fixed. Nothing happens on a C library
    without these calls."""
    try:
        libc = ctypes.CDLL(None)
        trim, mallopt = libc.malloc_trim, libc.mallopt
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(_M_MMAP_THRESHOLD, _HEAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _HEAP_THRESHOLD)
    trim(0)


def bpf_syscall_works() -> tuple[bool, str]:
    """Whether this process may load BPF programs at all."""
    if not is_root():
        return False, "not root"
    if not Path("/sys/fs/bpf").exists() and not Path("/proc/sys/kernel/bpf_stats_enabled").exists():
        return False, "kernel built without BPF"
    return True, "ok"
