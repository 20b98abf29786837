"""The VM tier's host side: how the guest is laid out (memory nodes, KVM or not)."""

from __future__ import annotations

import pytest

from tests.vm import run_vm

pytestmark = pytest.mark.unit


def test_memory_is_split_evenly_over_nodes_with_contiguous_cpus():
    assert run_vm.numa_options("1536M", 2, 2) == ["--numa", "768M,cpus=0", "--numa", "768M,cpus=1"]
    assert run_vm.numa_options("2G", 4, 2) == ["--numa", "1024M,cpus=0-1",
                                               "--numa", "1024M,cpus=2-3"]
    assert run_vm.numa_options("1536M", 1, 2) == ["--numa", "768M", "--numa", "768M,cpus=0"]
    assert run_vm.numa_options("1536M", 2, 1) == []


def test_memory_that_does_not_split_is_refused():
    with pytest.raises(run_vm.VMError, match="does not split evenly"):
        run_vm.numa_options("1537M", 2, 2)


def test_the_nodes_come_before_the_guest_command(tmp_path):
    guest = run_vm.Guest(vng=tmp_path / "vng", kernel=tmp_path / "vmlinuz", release="6.1", kvm=False)
    cmd = run_vm.vng_command(guest, tmp_path, ["-k", "x"])
    assert cmd[-2] == "-e" and "--numa" in cmd and "--disable-kvm" in cmd
    assert cmd.index("--numa") < cmd.index("-e")


def test_kvm_only_with_hardware_virtualisation(tmp_path, monkeypatch):
    monkeypatch.delenv("MEMTRACE_VM_KVM", raising=False)
    dev = tmp_path / "kvm"
    dev.write_text("")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu vme sse2\n")
    assert run_vm.kvm_usable(str(cpuinfo), str(dev)) is False
    cpuinfo.write_text("flags\t\t: fpu vmx sse2\n")
    assert run_vm.kvm_usable(str(cpuinfo), str(dev)) is True
    assert run_vm.kvm_usable(str(cpuinfo), str(tmp_path / "none")) is False
