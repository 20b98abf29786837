"""Fixtures of the bpf tier: one live tracer per module, and a way to wait for its events."""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterator

import pytest

from tracer.kernel.failures import LiveSource
from tracer.model.failures import Failure, Filter


class Recorder:
    """Keeps every failure a live source reported, so tests can pick theirs by pid."""

    def __init__(self, src: LiveSource):
        self.src = src
        self.failures: list[Failure] = []

    def pump(self, seconds: float = 0.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            self.failures.extend(self.src.poll(0.05))
            if time.monotonic() >= deadline:
                break

    def wait(self, pred: Callable[[list[Failure]], bool], pid: int,
             timeout: float = 10.0) -> list[Failure]:
        deadline = time.monotonic() + timeout
        while True:
            self.pump(0.1)
            mine = [f for f in self.failures if f.pid == pid]
            if pred(mine) or time.monotonic() >= deadline:
                return mine


@pytest.fixture(scope="module")
def live() -> Iterator[Recorder]:
    # Full depth: these tests check every kind a failure shows, slab hooks included (the
    # adaptive default is tested on its own in test_depth.py).
    src = LiveSource(Filter(), log=lambda m: print(m, file=sys.stderr), slab_hooks="always")
    src.start()
    try:
        yield Recorder(src)
    finally:
        src.close()
