"""What this host offers memtrace: root, BPF, BTF, tracefs, and kernel headers for bcc."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import HostError

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
TRACEFS = Path("/sys/kernel/tracing")
HEADERS_CACHE = Path("/run/memtrace/kernel-headers")


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


def ensure_tracefs(log=None) -> bool:
    """Mount tracefs at /sys/kernel/tracing if it is not there; True when it is usable."""
    if tracefs_mounted():
        return True
    if not is_root():
        return False
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
    stamp = merged / ".memtrace-merged"
    if not stamp.exists():
        _merge_tree(parts, merged)
        stamp.write_text("\n".join(str(p) for p in parts) + "\n")
    return Headers(merged, best.name, generic=True)


def prepare_headers(log=None) -> Headers:
    """Find headers and point bcc at them (BCC_KERNEL_SOURCE) when they are generic."""
    headers = find_headers()
    if headers.generic:
        os.environ["BCC_KERNEL_SOURCE"] = str(headers.path)
        if log:
            log(f"memtrace: warning: no headers for kernel {kernel_release()}; using the "
                f"generic {headers.release} headers (memtrace reads struct layouts from BTF)")
    return headers


def bpf_syscall_works() -> tuple[bool, str]:
    """Whether this process may load BPF programs at all."""
    if not is_root():
        return False, "not root"
    if not Path("/sys/fs/bpf").exists() and not Path("/proc/sys/kernel/bpf_stats_enabled").exists():
        return False, "kernel built without BPF"
    return True, "ok"
