"""What a failed syscall asked for, and which syscalls can fail in which ways (the sets the
rules and the evidence sampler share)."""

from __future__ import annotations

from ..model.failures import Failure

# Syscalls that return ENOMEM when their range is not fully mapped.
RANGE_SYSCALLS = {"mprotect", "pkey_mprotect", "madvise", "mlock", "mlock2", "munlock",
                  "mincore", "msync", "process_madvise"}
# Syscalls that only ever say ENOMEM for an unmapped range (munlock is not one: it may
# split a mapping).
ONLY_RANGE_SYSCALLS = {"mincore", "msync"}
# Syscalls that can split a mapping or add one (and so hit vm.max_map_count). Not mlockall:
# apply_mlockall_flags ignores what fails after its limit check.
SPLITTING_SYSCALLS = {"mmap", "munmap", "mprotect", "pkey_mprotect", "mremap", "mlock", "mlock2",
                      "munlock", "madvise", "brk", "shmat", "process_madvise"}
# Syscalls that add to the address space (may_expand_vm).
GROWING_SYSCALLS = {"mmap", "mremap", "brk", "shmat"}
# Syscalls whose path reaches __vm_enough_memory. Not shmat: it maps the segment shared, and
# the segment was charged when shmget created it (shmem_acct_size).
COMMIT_SYSCALLS = {"mmap", "mremap", "brk", "mprotect", "pkey_mprotect", "fork", "vfork",
                   "clone", "clone3", "shmget"}


def request_bytes(f: Failure) -> int:
    """How much the syscall asked to add (0 when it asked for nothing new)."""
    a = f.args
    if f.syscall == "mremap":
        return max(int(a.get("new_size", 0)) - int(a.get("old_size", 0)), 0)
    if f.syscall == "brk":
        return int(f.size or 0)
    for key in ("length", "size"):
        if key in a:
            return int(a[key])
    return int(f.size or 0)
