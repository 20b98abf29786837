"""Helpers of the VM tier's tests: cgroup v2 groups, the C programs, the kernel's memory numbers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

HERE = Path(__file__).resolve().parent
CGROUP2 = Path("/sys/fs/cgroup")


def build(tmp: Path, name: str, comm: Optional[str] = None) -> Path:
    """Compile tests/vm/NAME.c into tmp (named `comm`, which becomes its command name)."""
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to build the VM tier's programs"
    out = tmp / (comm or name)
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(out), str(HERE / f"{name}.c")], check=True)
    return out


# -- cgroup v2 ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Group:
    """A cgroup v2 directory and its path as memtrace reports it ("/a/b")."""

    dir: Path
    path: str

    def write(self, name: str, value: str) -> None:
        (self.dir / name).write_text(value)

    def events(self) -> dict[str, int]:
        out = {}
        for line in (self.dir / "memory.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            out[key] = int(value)
        return out

    @property
    def procs(self) -> Path:
        return self.dir / "cgroup.procs"


def _remove(d: Path) -> None:
    """Kill what is left in a test cgroup (only processes the test started live there),
    then remove it and its children, deepest first."""
    if not d.exists():
        return
    for child in sorted((p for p in d.iterdir() if p.is_dir()), reverse=True):
        _remove(child)
    deadline = time.monotonic() + 10
    while d.exists() and time.monotonic() < deadline:
        try:
            for pid in (d / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            d.rmdir()
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


@contextlib.contextmanager
def group(*settings: tuple[str, str], parent: Optional[Group] = None,
          name: Optional[str] = None) -> Iterator[Group]:
    """A new cgroup v2 (under `parent`, else the root) with the memory controller, its files
    set as given; removed afterwards (its leftover test processes killed first)."""
    base = parent.dir if parent else CGROUP2
    assert (CGROUP2 / "cgroup.controllers").is_file(), "the guest has no cgroup v2 at /sys/fs/cgroup"
    name = name or f"mt-vm-{uuid.uuid4().hex[:8]}"
    d = base / name
    d.mkdir()
    g = Group(d, ((parent.path if parent else "") + "/" + name))
    try:
        for key, value in settings:
            if key == "memory.swap.max" and not (d / key).exists():
                continue  # no swap accounting in this kernel: nothing to turn off
            g.write(key, value)
        yield g
    finally:
        _remove(d)


def enable_memory_for_children(g: Group) -> None:
    """Needed before a cgroup v2 can have children with memory limits of their own."""
    g.write("cgroup.subtree_control", "+memory")


# -- the kernel's memory numbers ------------------------------------------------------------

def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def watermarks() -> dict[str, dict[str, int]]:
    """Per zone ("node 0 zone DMA32"): min, low, high watermarks and managed pages."""
    zones: dict[str, dict[str, int]] = {}
    zone = None
    for line in Path("/proc/zoneinfo").read_text().splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) >= 4 and parts[0] == "Node" and parts[2] == "zone":
            zone = f"node {parts[1]} zone {parts[3]}"
            zones[zone] = {}
        elif zone and len(parts) == 2 and parts[0] in ("min", "low", "high", "managed"):
            zones[zone].setdefault(parts[0], int(parts[1]))
    return {z: v for z, v in zones.items() if v.get("managed")}


def parse_buddyinfo(text: str) -> dict[str, list[int]]:
    out = {}
    for line in text.splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) > 4 and parts[0] == "Node" and parts[2] == "zone":
            out[f"node {parts[1]} zone {parts[3]}"] = [int(x) for x in parts[4:]]
    return out
