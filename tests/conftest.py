"""Shared test helpers: tiers are pytest markers (unit, bpf, e2e); root-only tiers skip without root."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (real BPF probes)")
    for item in items:
        if item.get_closest_marker("bpf") or item.get_closest_marker("e2e"):
            item.add_marker(skip)
