"""What a failed syscall asked for, and which syscalls can fail in which ways (the sets the
rules and the evidence sampler share)."""

from __future__ import annotations

from ..model.failures import Failure

# Syscalls that return ENOMEM when their range is not fully mapped.
RANGE_SYSCALLS = {"mprotect", "pkey_mprotect", "madvise", "mlock", "mlock2", "munlock",
                  "mincore", "msync", "process_madvise"}
# Syscalls that only ever say ENOMEM for an unmapped range.
ONLY_RANGE_SYSCALLS = {"mincore", "msync", "munlock"}
# Syscalls that can split a mapping (and so hit vm.max_map_count).
SPLITTING_SYSCALLS = {"mmap", "munmap", "mprotect", "pkey_mprotect", "mremap", "mlock", "mlock2",
                      "munlock", "madvise", "brk", "shmat", "mlockall", "process_madvise"}
GROWING_SYSCALLS = {"mmap", "mremap", "brk", "shmat"}
COMMIT_SYSCALLS = {"mmap", "mremap", "brk", "mprotect", "pkey_mprotect", "fork", "vfork",
                   "clone", "clone3", "shmget", "shmat"}
MLOCK_SYSCALLS = {"mlock", "mlock2", "mlockall", "shmctl"}


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
