"""Kernel decision points turn an inferred cause into a confirmed one; kprobe detection."""

from __future__ import annotations

import dataclasses

import pytest

from tests.unit.fixtures import MMAP_FAIL
from tracer.diagnose.evidence import Evidence
from tracer.diagnose.rules import CONFIRMED, INFERRED, confirm, diagnose
from tracer.host.state import HostState
from tracer.kernel.probes import kprobe_check
from tracer.model.failures import TaskState

pytestmark = pytest.mark.unit

TASK = TaskState(total_vm=90 << 20, data_vm=10 << 20, locked_vm=0, pinned_vm=0, map_count=40,
                 rlim_as=100 << 20, rlim_data=None, rlim_memlock=None, cap_ipc_lock=False,
                 mlock_future=False)
AS_FAIL = dataclasses.replace(MMAP_FAIL, size=64 << 20, task=TASK,
                              args={"addr": 0, "length": 64 << 20, "prot": "PROT_READ",
                                    "flags": "MAP_PRIVATE|MAP_ANONYMOUS", "fd": -1})


@pytest.mark.parametrize("decisions, confidence", [
    ((), INFERRED),
    (("vm_limit",), CONFIRMED),
    (("overcommit",), INFERRED),  # the kernel refused something else: no confirmation
])
def test_decision_confirms_only_its_own_cause(decisions, confidence):
    f = dataclasses.replace(AS_FAIL, detail={"kernel_decisions": list(decisions)})
    found = diagnose(f, Evidence(HostState()))
    assert found.cause == "rlimit_as"
    assert found.confidence == confidence
    if confidence == CONFIRMED:
        assert found.evidence["kernel_decision"] == "vm_limit"


def test_confirm_leaves_findings_without_decisions_alone():
    found = diagnose(AS_FAIL, Evidence(HostState()))
    assert confirm(AS_FAIL, found) is found


def test_kprobe_check(tmp_path):
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("ffffffff815bbc50 T __vm_enough_memory\nffffffff815f5050 T may_expand_vm\n")
    pmu = tmp_path / "kprobe"
    no = kprobe_check(str(kallsyms), str(pmu))
    assert "no kprobes" in (no("may_expand_vm") or "")
    pmu.mkdir()
    yes = kprobe_check(str(kallsyms), str(pmu))
    assert yes("may_expand_vm") is None
    assert yes("try_charge_memcg") == "no try_charge_memcg in this kernel"
