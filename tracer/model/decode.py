"""Pure helpers that turn raw kernel numbers (errno, syscalls, GFP masks, ...) into names."""

from __future__ import annotations

import errno as _errno
import re
import signal as _signal
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Iterable, List, Mapping, Sequence, Tuple, Union

__all__ = [
    "GFP_BITS_6_18",
    "MEMORY_SYSCALLS",
    "MIGRATE_TYPES",
    "GfpDecoder",
    "decode_mmap_flags",
    "decode_prot",
    "describe_syscall_args",
    "errno_name",
    "format_bytes",
    "gfp_bits_for_config",
    "migrate_types",
    "migratetype_name",
    "order_to_bytes",
    "parse_gfp_bits",
    "size_from_syscall",
    "syscall_name",
    "syscall_number",
]

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1


def _u64(value: int) -> int:
    """A raw register value as the kernel sees it: an unsigned 64-bit number."""
    return int(value) & _U64


def _s32(value: int) -> int:
    """The low 32 bits of a raw register value as a C ``int`` (fds, SysV keys and ids)."""
    low = int(value) & _U32
    return low - (1 << 32) if low & (1 << 31) else low


def _flag_string(
    value: int, table: Iterable[Tuple[int, str]], zero: str = "0", extra: Sequence[str] = ()
) -> str:
    """``A|B|...`` for every mask of ``table`` fully present in ``value``, then the hex rest.

    ``extra`` names (already decoded by the caller) go between the flags and the remainder.
    """
    parts: List[str] = []
    rest = value
    for mask, name in table:
        if mask and rest & mask == mask:
            parts.append(name)
            rest &= ~mask
    parts.extend(extra)
    if rest:
        parts.append(hex(rest))
    return "|".join(parts) if parts else zero


# --------------------------------------------------------------------------- errno

# Kernel-internal codes (include/linux/errno.h): never reach user space, but kernel
# functions traced with kretprobes do return them.
_KERNEL_ERRNOS: Dict[int, str] = {
    512: "ERESTARTSYS",
    513: "ERESTARTNOINTR",
    514: "ERESTARTNOHAND",
    515: "ENOIOCTLCMD",
    516: "ERESTART_RESTARTBLOCK",
    517: "EPROBE_DEFER",
    518: "EOPENSTALE",
    519: "ENOPARAM",
    521: "EBADHANDLE",
    522: "ENOTSYNC",
    523: "EBADCOOKIE",
    524: "ENOTSUPP",
    525: "ETOOSMALL",
    526: "ESERVERFAULT",
    527: "EBADTYPE",
    528: "EJUKEBOX",
    529: "EIOCBQUEUED",
    530: "ERECALLCONFLICT",
    531: "ENOGRACE",
}

# Where two names share a number, the errno module keeps the last alias it defined;
# prefer the kernel's own spelling (include/uapi/asm-generic/errno*.h).
_PREFERRED_ERRNOS: Dict[int, str] = {
    _errno.EAGAIN: "EAGAIN",
    _errno.EDEADLK: "EDEADLK",
    _errno.EOPNOTSUPP: "EOPNOTSUPP",
}


def errno_name(err: int) -> str | None:
    """``-12`` or ``12`` -> ``"ENOMEM"``; ``0`` -> ``None``; unknown -> ``"errno 999"``."""
    n = abs(int(err))
    if n == 0:
        return None
    name = _PREFERRED_ERRNOS.get(n) or _errno.errorcode.get(n) or _KERNEL_ERRNOS.get(n)
    return name if name is not None else f"errno {n}"


# --------------------------------------------------------------------------- sizes

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def order_to_bytes(order: int, page_size: int = 4096) -> int:
    """Bytes in a buddy-allocator block of ``2**order`` pages."""
    if order < 0:
        raise ValueError(f"negative allocation order: {order}")
    if page_size <= 0:
        raise ValueError(f"page size must be positive: {page_size}")
    return int(page_size) << int(order)


def format_bytes(n: int) -> str:
    """``512`` -> ``"512 B"``, ``4096`` -> ``"4 KiB"``, ``3 << 29`` -> ``"1.5 GiB"``."""
    sign = "-" if n < 0 else ""
    size = abs(int(n))
    if size < 1024:
        return f"{sign}{size} B"
    unit = 0
    value = float(size)
    while value >= 1024 and unit < len(_BYTE_UNITS) - 1:
        value /= 1024
        unit += 1
    text = f"{value:.1f}"
    if float(text) >= 1024 and unit < len(_BYTE_UNITS) - 1:  # 1023.96 KiB rounds up to 1 MiB
        value /= 1024
        unit += 1
        text = f"{value:.1f}"
    if text.endswith(".0"):
        text = text[:-2]
    return f"{sign}{text} {_BYTE_UNITS[unit]}"


# --------------------------------------------------------------------------- syscalls

# x86_64 system call numbers as of Linux 6.18 (arch/x86/entry/syscalls/syscall_64.tbl,
# "common" and "64" entries; 335-423 are unused apart from uretprobe/uprobe).
_SYSCALLS: Dict[int, str] = {
    0: "read", 1: "write", 2: "open", 3: "close", 4: "stat", 5: "fstat", 6: "lstat", 7: "poll",
    8: "lseek", 9: "mmap", 10: "mprotect", 11: "munmap", 12: "brk", 13: "rt_sigaction",
    14: "rt_sigprocmask", 15: "rt_sigreturn", 16: "ioctl", 17: "pread64", 18: "pwrite64",
    19: "readv", 20: "writev", 21: "access", 22: "pipe", 23: "select", 24: "sched_yield",
    25: "mremap", 26: "msync", 27: "mincore", 28: "madvise", 29: "shmget", 30: "shmat",
    31: "shmctl", 32: "dup", 33: "dup2", 34: "pause", 35: "nanosleep", 36: "getitimer",
    37: "alarm", 38: "setitimer", 39: "getpid", 40: "sendfile", 41: "socket", 42: "connect",
    43: "accept", 44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 48: "shutdown",
    49: "bind", 50: "listen", 51: "getsockname", 52: "getpeername", 53: "socketpair",
    54: "setsockopt", 55: "getsockopt", 56: "clone", 57: "fork", 58: "vfork", 59: "execve",
    60: "exit", 61: "wait4", 62: "kill", 63: "uname", 64: "semget", 65: "semop", 66: "semctl",
    67: "shmdt", 68: "msgget", 69: "msgsnd", 70: "msgrcv", 71: "msgctl", 72: "fcntl", 73: "flock",
    74: "fsync", 75: "fdatasync", 76: "truncate", 77: "ftruncate", 78: "getdents", 79: "getcwd",
    80: "chdir", 81: "fchdir", 82: "rename", 83: "mkdir", 84: "rmdir", 85: "creat", 86: "link",
    87: "unlink", 88: "symlink", 89: "readlink", 90: "chmod", 91: "fchmod", 92: "chown",
    93: "fchown", 94: "lchown", 95: "umask", 96: "gettimeofday", 97: "getrlimit", 98: "getrusage",
    99: "sysinfo", 100: "times", 101: "ptrace", 102: "getuid", 103: "syslog", 104: "getgid",
    105: "setuid", 106: "setgid", 107: "geteuid", 108: "getegid", 109: "setpgid", 110: "getppid",
    111: "getpgrp", 112: "setsid", 113: "setreuid", 114: "setregid", 115: "getgroups",
    116: "setgroups", 117: "setresuid", 118: "getresuid", 119: "setresgid", 120: "getresgid",
    121: "getpgid", 122: "setfsuid", 123: "setfsgid", 124: "getsid", 125: "capget", 126: "capset",
    127: "rt_sigpending", 128: "rt_sigtimedwait", 129: "rt_sigqueueinfo", 130: "rt_sigsuspend",
    131: "sigaltstack", 132: "utime", 133: "mknod", 134: "uselib", 135: "personality",
    136: "ustat", 137: "statfs", 138: "fstatfs", 139: "sysfs", 140: "getpriority",
    141: "setpriority", 142: "sched_setparam", 143: "sched_getparam", 144: "sched_setscheduler",
    145: "sched_getscheduler", 146: "sched_get_priority_max", 147: "sched_get_priority_min",
    148: "sched_rr_get_interval", 149: "mlock", 150: "munlock", 151: "mlockall", 152: "munlockall",
    153: "vhangup", 154: "modify_ldt", 155: "pivot_root", 156: "_sysctl", 157: "prctl",
    158: "arch_prctl", 159: "adjtimex", 160: "setrlimit", 161: "chroot", 162: "sync", 163: "acct",
    164: "settimeofday", 165: "mount", 166: "umount2", 167: "swapon", 168: "swapoff",
    169: "reboot", 170: "sethostname", 171: "setdomainname", 172: "iopl", 173: "ioperm",
    174: "create_module", 175: "init_module", 176: "delete_module", 177: "get_kernel_syms",
    178: "query_module", 179: "quotactl", 180: "nfsservctl", 181: "getpmsg", 182: "putpmsg",
    183: "afs_syscall", 184: "tuxcall", 185: "security", 186: "gettid", 187: "readahead",
    188: "setxattr", 189: "lsetxattr", 190: "fsetxattr", 191: "getxattr", 192: "lgetxattr",
    193: "fgetxattr", 194: "listxattr", 195: "llistxattr", 196: "flistxattr", 197: "removexattr",
    198: "lremovexattr", 199: "fremovexattr", 200: "tkill", 201: "time", 202: "futex",
    203: "sched_setaffinity", 204: "sched_getaffinity", 205: "set_thread_area", 206: "io_setup",
    207: "io_destroy", 208: "io_getevents", 209: "io_submit", 210: "io_cancel",
    211: "get_thread_area", 212: "lookup_dcookie", 213: "epoll_create", 214: "epoll_ctl_old",
    215: "epoll_wait_old", 216: "remap_file_pages", 217: "getdents64", 218: "set_tid_address",
    219: "restart_syscall", 220: "semtimedop", 221: "fadvise64", 222: "timer_create",
    223: "timer_settime", 224: "timer_gettime", 225: "timer_getoverrun", 226: "timer_delete",
    227: "clock_settime", 228: "clock_gettime", 229: "clock_getres", 230: "clock_nanosleep",
    231: "exit_group", 232: "epoll_wait", 233: "epoll_ctl", 234: "tgkill", 235: "utimes",
    236: "vserver", 237: "mbind", 238: "set_mempolicy", 239: "get_mempolicy", 240: "mq_open",
    241: "mq_unlink", 242: "mq_timedsend", 243: "mq_timedreceive", 244: "mq_notify",
    245: "mq_getsetattr", 246: "kexec_load", 247: "waitid", 248: "add_key", 249: "request_key",
    250: "keyctl", 251: "ioprio_set", 252: "ioprio_get", 253: "inotify_init",
    254: "inotify_add_watch", 255: "inotify_rm_watch", 256: "migrate_pages", 257: "openat",
    258: "mkdirat", 259: "mknodat", 260: "fchownat", 261: "futimesat", 262: "newfstatat",
    263: "unlinkat", 264: "renameat", 265: "linkat", 266: "symlinkat", 267: "readlinkat",
    268: "fchmodat", 269: "faccessat", 270: "pselect6", 271: "ppoll", 272: "unshare",
    273: "set_robust_list", 274: "get_robust_list", 275: "splice", 276: "tee",
    277: "sync_file_range", 278: "vmsplice", 279: "move_pages", 280: "utimensat",
    281: "epoll_pwait", 282: "signalfd", 283: "timerfd_create", 284: "eventfd", 285: "fallocate",
    286: "timerfd_settime", 287: "timerfd_gettime", 288: "accept4", 289: "signalfd4",
    290: "eventfd2", 291: "epoll_create1", 292: "dup3", 293: "pipe2", 294: "inotify_init1",
    295: "preadv", 296: "pwritev", 297: "rt_tgsigqueueinfo", 298: "perf_event_open",
    299: "recvmmsg", 300: "fanotify_init", 301: "fanotify_mark", 302: "prlimit64",
    303: "name_to_handle_at", 304: "open_by_handle_at", 305: "clock_adjtime", 306: "syncfs",
    307: "sendmmsg", 308: "setns", 309: "getcpu", 310: "process_vm_readv",
    311: "process_vm_writev", 312: "kcmp", 313: "finit_module", 314: "sched_setattr",
    315: "sched_getattr", 316: "renameat2", 317: "seccomp", 318: "getrandom", 319: "memfd_create",
    320: "kexec_file_load", 321: "bpf", 322: "execveat", 323: "userfaultfd", 324: "membarrier",
    325: "mlock2", 326: "copy_file_range", 327: "preadv2", 328: "pwritev2", 329: "pkey_mprotect",
    330: "pkey_alloc", 331: "pkey_free", 332: "statx", 333: "io_pgetevents", 334: "rseq",
    335: "uretprobe", 336: "uprobe", 424: "pidfd_send_signal", 425: "io_uring_setup",
    426: "io_uring_enter", 427: "io_uring_register", 428: "open_tree", 429: "move_mount",
    430: "fsopen", 431: "fsconfig", 432: "fsmount", 433: "fspick", 434: "pidfd_open",
    435: "clone3", 436: "close_range", 437: "openat2", 438: "pidfd_getfd", 439: "faccessat2",
    440: "process_madvise", 441: "epoll_pwait2", 442: "mount_setattr", 443: "quotactl_fd",
    444: "landlock_create_ruleset", 445: "landlock_add_rule", 446: "landlock_restrict_self",
    447: "memfd_secret", 448: "process_mrelease", 449: "futex_waitv",
    450: "set_mempolicy_home_node", 451: "cachestat", 452: "fchmodat2", 453: "map_shadow_stack",
    454: "futex_wake", 455: "futex_wait", 456: "futex_requeue", 457: "statmount", 458: "listmount",
    459: "lsm_get_self_attr", 460: "lsm_set_self_attr", 461: "lsm_list_modules", 462: "mseal",
    463: "setxattrat", 464: "getxattrat", 465: "listxattrat", 466: "removexattrat",
    467: "open_tree_attr", 468: "file_getattr", 469: "file_setattr",
}  # fmt: skip

_SYSCALL_NUMBERS: Dict[str, int] = {name: nr for nr, name in _SYSCALLS.items()}
_UNKNOWN_SYSCALL_RE = re.compile(r"syscall_(\d+)")


def syscall_name(nr: int) -> str:
    """x86_64 syscall number -> name; unknown -> ``"syscall_<nr>"``."""
    return _SYSCALLS.get(nr, f"syscall_{nr}")


def syscall_number(name: str) -> int:
    """x86_64 syscall name -> number; also inverts ``"syscall_<nr>"``. ValueError if unknown."""
    nr = _SYSCALL_NUMBERS.get(name)
    if nr is not None:
        return nr
    match = _UNKNOWN_SYSCALL_RE.fullmatch(name)
    if match is not None:
        return int(match.group(1))
    raise ValueError(f"unknown x86_64 syscall: {name!r}")


MEMORY_SYSCALLS: frozenset[str] = frozenset(
    {
        "mmap", "munmap", "mremap", "mprotect", "brk", "mlock", "mlock2", "mlockall",
        "munlock", "madvise", "shmget", "shmat", "clone", "clone3", "fork", "vfork",
        "mincore", "msync", "remap_file_pages", "mbind", "set_mempolicy", "migrate_pages",
        "move_pages", "pkey_mprotect", "process_madvise", "memfd_create",
    }
)  # fmt: skip

# ---- x86_64 uapi constants (asm-generic/mman-common.h, linux/mman.h, linux/shm.h, ...)

_PROT_FLAGS: Tuple[Tuple[int, str], ...] = (
    (0x1, "PROT_READ"),
    (0x2, "PROT_WRITE"),
    (0x4, "PROT_EXEC"),
    (0x8, "PROT_SEM"),
    (0x01000000, "PROT_GROWSDOWN"),
    (0x02000000, "PROT_GROWSUP"),
)

_MAP_TYPE_MASK = 0x0F
_MAP_TYPES: Dict[int, str] = {
    0x01: "MAP_SHARED",
    0x02: "MAP_PRIVATE",
    0x03: "MAP_SHARED_VALIDATE",
    0x08: "MAP_DROPPABLE",
}
_MAP_HUGETLB = 0x40000
_MAP_FLAGS: Tuple[Tuple[int, str], ...] = (
    (0x10, "MAP_FIXED"),
    (0x20, "MAP_ANONYMOUS"),
    (0x40, "MAP_32BIT"),
    (0x100, "MAP_GROWSDOWN"),
    (0x800, "MAP_DENYWRITE"),
    (0x1000, "MAP_EXECUTABLE"),
    (0x2000, "MAP_LOCKED"),
    (0x4000, "MAP_NORESERVE"),
    (0x8000, "MAP_POPULATE"),
    (0x10000, "MAP_NONBLOCK"),
    (0x20000, "MAP_STACK"),
    (_MAP_HUGETLB, "MAP_HUGETLB"),
    (0x80000, "MAP_SYNC"),
    (0x100000, "MAP_FIXED_NOREPLACE"),
)
_MAP_UNINITIALIZED = 0x4000000
# With MAP_HUGETLB / SHM_HUGETLB, bits 26..31 hold log2 of the huge page size.
_HUGE_SHIFT = 26
_HUGE_FIELD = 0x3F << _HUGE_SHIFT

_MREMAP_FLAGS: Tuple[Tuple[int, str], ...] = (
    (0x1, "MREMAP_MAYMOVE"),
    (0x2, "MREMAP_FIXED"),
    (0x4, "MREMAP_DONTUNMAP"),
)
_MLOCK_FLAGS: Tuple[Tuple[int, str], ...] = ((0x1, "MLOCK_ONFAULT"),)
_MCL_FLAGS: Tuple[Tuple[int, str], ...] = (
    (0x1, "MCL_CURRENT"),
    (0x2, "MCL_FUTURE"),
    (0x4, "MCL_ONFAULT"),
)

_MADVICE: Dict[int, str] = {
    0: "MADV_NORMAL",
    1: "MADV_RANDOM",
    2: "MADV_SEQUENTIAL",
    3: "MADV_WILLNEED",
    4: "MADV_DONTNEED",
    8: "MADV_FREE",
    9: "MADV_REMOVE",
    10: "MADV_DONTFORK",
    11: "MADV_DOFORK",
    12: "MADV_MERGEABLE",
    13: "MADV_UNMERGEABLE",
    14: "MADV_HUGEPAGE",
    15: "MADV_NOHUGEPAGE",
    16: "MADV_DONTDUMP",
    17: "MADV_DODUMP",
    18: "MADV_WIPEONFORK",
    19: "MADV_KEEPONFORK",
    20: "MADV_COLD",
    21: "MADV_PAGEOUT",
    22: "MADV_POPULATE_READ",
    23: "MADV_POPULATE_WRITE",
    24: "MADV_DONTNEED_LOCKED",
    25: "MADV_COLLAPSE",
    100: "MADV_HWPOISON",
    101: "MADV_SOFT_OFFLINE",
    102: "MADV_GUARD_INSTALL",
    103: "MADV_GUARD_REMOVE",
}

_SHM_MODE_MASK = 0o777
_SHMGET_FLAGS: Tuple[Tuple[int, str], ...] = (
    (0o1000, "IPC_CREAT"),
    (0o2000, "IPC_EXCL"),
    (0o4000, "SHM_HUGETLB"),
    (0o10000, "SHM_NORESERVE"),
)
_SHM_HUGETLB = 0o4000
_SHMAT_FLAGS: Tuple[Tuple[int, str], ...] = (
    (0o10000, "SHM_RDONLY"),
    (0o20000, "SHM_RND"),
    (0o40000, "SHM_REMAP"),
    (0o100000, "SHM_EXEC"),
)

_CSIGNAL = 0xFF
_CLONE_FLAGS: Tuple[Tuple[int, str], ...] = (
    (0x00000100, "CLONE_VM"),
    (0x00000200, "CLONE_FS"),
    (0x00000400, "CLONE_FILES"),
    (0x00000800, "CLONE_SIGHAND"),
    (0x00001000, "CLONE_PIDFD"),
    (0x00002000, "CLONE_PTRACE"),
    (0x00004000, "CLONE_VFORK"),
    (0x00008000, "CLONE_PARENT"),
    (0x00010000, "CLONE_THREAD"),
    (0x00020000, "CLONE_NEWNS"),
    (0x00040000, "CLONE_SYSVSEM"),
    (0x00080000, "CLONE_SETTLS"),
    (0x00100000, "CLONE_PARENT_SETTID"),
    (0x00200000, "CLONE_CHILD_CLEARTID"),
    (0x00400000, "CLONE_DETACHED"),
    (0x00800000, "CLONE_UNTRACED"),
    (0x01000000, "CLONE_CHILD_SETTID"),
    (0x02000000, "CLONE_NEWCGROUP"),
    (0x04000000, "CLONE_NEWUTS"),
    (0x08000000, "CLONE_NEWIPC"),
    (0x10000000, "CLONE_NEWUSER"),
    (0x20000000, "CLONE_NEWPID"),
    (0x40000000, "CLONE_NEWNET"),
    (0x80000000, "CLONE_IO"),
)

_FCNTL_CMDS: Dict[int, str] = {
    0: "F_DUPFD",
    1: "F_GETFD",
    2: "F_SETFD",
    3: "F_GETFL",
    4: "F_SETFL",
    5: "F_GETLK",
    6: "F_SETLK",
    7: "F_SETLKW",
    8: "F_SETOWN",
    9: "F_GETOWN",
    10: "F_SETSIG",
    11: "F_GETSIG",
    15: "F_SETOWN_EX",
    16: "F_GETOWN_EX",
    17: "F_GETOWNER_UIDS",
    36: "F_OFD_GETLK",
    37: "F_OFD_SETLK",
    38: "F_OFD_SETLKW",
    1024: "F_SETLEASE",
    1025: "F_GETLEASE",
    1026: "F_NOTIFY",
    1027: "F_DUPFD_QUERY",
    1028: "F_CREATED_QUERY",
    1029: "F_CANCELLK",
    1030: "F_DUPFD_CLOEXEC",
    1031: "F_SETPIPE_SZ",
    1032: "F_GETPIPE_SZ",
    1033: "F_ADD_SEALS",
    1034: "F_GET_SEALS",
    1035: "F_GET_RW_HINT",
    1036: "F_SET_RW_HINT",
    1037: "F_GET_FILE_RW_HINT",
    1038: "F_SET_FILE_RW_HINT",
}


def _huge_size_name(prefix: str, shift: int) -> str:
    """``("MAP_HUGE_", 21)`` -> ``"MAP_HUGE_2MB"``, as spelled in linux/mman.h."""
    for unit_shift, unit in ((30, "GB"), (20, "MB"), (10, "KB")):
        if shift >= unit_shift:
            return f"{prefix}{1 << (shift - unit_shift)}{unit}"
    return f"{prefix}{1 << shift}B"


def _signal_name(signo: int) -> str:
    try:
        return _signal.Signals(signo).name
    except ValueError:
        return str(signo)


def decode_prot(prot: int) -> str:
    """mmap/mprotect protection bits: ``3`` -> ``"PROT_READ|PROT_WRITE"``, ``0`` -> ``"PROT_NONE"``."""
    return _flag_string(_u64(prot), _PROT_FLAGS, zero="PROT_NONE")


def decode_mmap_flags(flags: int) -> str:
    """mmap flags: ``0x22`` -> ``"MAP_PRIVATE|MAP_ANONYMOUS"``; unknown bits as a hex rest."""
    value = _u64(flags)
    names: List[str] = []
    map_type = value & _MAP_TYPE_MASK
    if map_type in _MAP_TYPES:
        names.append(_MAP_TYPES[map_type])
        value &= ~_MAP_TYPE_MASK
    extra: List[str] = []
    huge_shift = (value & _HUGE_FIELD) >> _HUGE_SHIFT
    if value & _MAP_HUGETLB and huge_shift:
        extra.append(_huge_size_name("MAP_HUGE_", huge_shift))
        value &= ~_HUGE_FIELD
    elif value & _MAP_UNINITIALIZED:
        extra.append("MAP_UNINITIALIZED")
        value &= ~_MAP_UNINITIALIZED
    rest = _flag_string(value, _MAP_FLAGS, zero="", extra=extra)
    return "|".join(part for part in (*names, rest) if part) or "0"


def _decode_shmget_flags(shmflg: int) -> str:
    value = _u64(shmflg)
    extra: List[str] = []
    huge_shift = (value & _HUGE_FIELD) >> _HUGE_SHIFT
    if value & _SHM_HUGETLB and huge_shift:
        extra.append(_huge_size_name("SHM_HUGE_", huge_shift))
        value &= ~_HUGE_FIELD
    mode = value & _SHM_MODE_MASK
    if mode:
        extra.append(f"0{mode:o}")
        value &= ~_SHM_MODE_MASK
    return _flag_string(value, _SHMGET_FLAGS, extra=extra)


def _decode_clone_flags(flags: int) -> str:
    value = _u64(flags)
    signo = value & _CSIGNAL
    extra = [_signal_name(signo)] if signo else []
    return _flag_string(value & ~_CSIGNAL, _CLONE_FLAGS, extra=extra)


def _arg(args: Sequence[int], index: int) -> int:
    return _u64(args[index]) if index < len(args) else 0


_ArgValues = Dict[str, Union[int, str]]
_ArgDecoder = Callable[[Sequence[int]], _ArgValues]


def _mmap_args(a: Sequence[int]) -> _ArgValues:
    return {
        "addr": _arg(a, 0),
        "length": _arg(a, 1),
        "prot": decode_prot(_arg(a, 2)),
        "flags": decode_mmap_flags(_arg(a, 3)),
        "fd": _s32(_arg(a, 4)),
    }


def _range_args(a: Sequence[int]) -> _ArgValues:
    return {"addr": _arg(a, 0), "length": _arg(a, 1)}


_ARG_DECODERS: Dict[str, _ArgDecoder] = {
    "mmap": _mmap_args,
    "munmap": _range_args,
    "mlock": _range_args,
    "munlock": _range_args,
    "mincore": lambda a: {**_range_args(a), "vec": _arg(a, 2)},
    "msync": lambda a: {**_range_args(a), "flags": _arg(a, 2)},
    "pkey_mprotect": lambda a: {**_range_args(a), "prot": decode_prot(_arg(a, 2)),
                                "pkey": _s32(_arg(a, 3))},
    "mremap": lambda a: {
        "old_address": _arg(a, 0),
        "old_size": _arg(a, 1),
        "new_size": _arg(a, 2),
        "flags": _flag_string(_arg(a, 3), _MREMAP_FLAGS),
    },
    "mprotect": lambda a: {**_range_args(a), "prot": decode_prot(_arg(a, 2))},
    "brk": lambda a: {"brk": _arg(a, 0)},
    "mlock2": lambda a: {**_range_args(a), "flags": _flag_string(_arg(a, 2), _MLOCK_FLAGS)},
    "mlockall": lambda a: {"flags": _flag_string(_arg(a, 0), _MCL_FLAGS)},
    "madvise": lambda a: {
        **_range_args(a),
        "advice": _MADVICE.get(_arg(a, 2), str(_s32(_arg(a, 2)))),
    },
    "shmget": lambda a: {
        "key": _s32(_arg(a, 0)),
        "size": _arg(a, 1),
        "shmflg": _decode_shmget_flags(_arg(a, 2)),
    },
    "shmat": lambda a: {
        "shmid": _s32(_arg(a, 0)),
        "shmaddr": _arg(a, 1),
        "shmflg": _flag_string(_arg(a, 2), _SHMAT_FLAGS),
    },
    "clone": lambda a: {"flags": _decode_clone_flags(_arg(a, 0))},
    "clone3": lambda a: {"args_ptr": _arg(a, 0), "size": _arg(a, 1)},
    "fcntl": lambda a: {
        "fd": _s32(_arg(a, 0)),
        "cmd": _FCNTL_CMDS.get(_arg(a, 1) & _U32, str(_s32(_arg(a, 1)))),
        "arg": _arg(a, 2),
    },
}


def describe_syscall_args(name: str, args: Sequence[int]) -> dict[str, int | str]:
    """The arguments that matter for a memory syscall, with flags decoded to names.

    ``args`` are the raw register values (missing ones read as 0); syscalls without a
    decoder give ``{}``.
    """
    decoder = _ARG_DECODERS.get(name)
    if decoder is None:
        return {}
    return decoder(args)


# Which argument holds the number of bytes the call asks for.
_SIZE_ARG: Dict[str, int] = {
    "mmap": 1,
    "munmap": 1,
    "mprotect": 1,
    "mlock": 1,
    "mlock2": 1,
    "madvise": 1,
    "munlock": 1,
    "mincore": 1,
    "msync": 1,
    "pkey_mprotect": 1,
    "mremap": 2,
    "shmget": 1,
}


def size_from_syscall(name: str, args: Sequence[int]) -> int | None:
    """Bytes a memory syscall asks for (length, new_size, shm size), else ``None``."""
    index = _SIZE_ARG.get(name)
    if index is None or index >= len(args):
        return None
    return _u64(args[index])


# --------------------------------------------------------------------------- GFP flags

# enum in include/linux/gfp_types.h: these bits always exist, in this order ...
_GFP_GENERAL_BITS: Tuple[str, ...] = (
    "DMA", "HIGHMEM", "DMA32", "MOVABLE", "RECLAIMABLE", "HIGH", "IO", "FS", "ZERO",
    "UNUSED", "DIRECT_RECLAIM", "KSWAPD_RECLAIM", "WRITE", "NOWARN", "RETRY_MAYFAIL",
    "NOFAIL", "NORETRY", "MEMALLOC", "COMP", "NOMEMALLOC", "HARDWALL", "THISNODE",
    "ACCOUNT", "ZEROTAGS",
)  # fmt: skip
# ... and these follow only with CONFIG_KASAN_HW_TAGS, CONFIG_LOCKDEP, CONFIG_SLAB_OBJ_EXT.
_GFP_KASAN_BITS: Tuple[str, ...] = ("SKIP_ZERO", "SKIP_KASAN")
_GFP_LOCKDEP_BITS: Tuple[str, ...] = ("NOLOCKDEP",)
_GFP_SLAB_OBJ_EXT_BITS: Tuple[str, ...] = ("NO_OBJ_EXT",)
_GFP_NOT_FLAGS = frozenset({"UNUSED", "LAST"})
# Flags that are 0 in kernels built without their option: composites just lose them.
_GFP_OPTIONAL_FLAGS = frozenset(
    f"__GFP_{name}" for name in (*_GFP_KASAN_BITS, *_GFP_LOCKDEP_BITS, *_GFP_SLAB_OBJ_EXT_BITS)
)
_GFP_BIT_KEY_RE = re.compile(r"___GFP_([A-Z0-9_]+)_BIT")
_GFP_ENUM_RE = re.compile(r"\b(___GFP_[A-Z0-9_]+_BIT)\s*=\s*(\d+)")


def gfp_bits_for_config(
    *, kasan_hw_tags: bool = False, lockdep: bool = False, slab_obj_ext: bool = True
) -> dict[str, int]:
    """The ``___GFP_*_BIT`` enum of a 6.18 kernel built with the given options."""
    names = list(_GFP_GENERAL_BITS)
    if kasan_hw_tags:
        names.extend(_GFP_KASAN_BITS)
    if lockdep:
        names.extend(_GFP_LOCKDEP_BITS)
    if slab_obj_ext:
        names.extend(_GFP_SLAB_OBJ_EXT_BITS)
    names.append("LAST")
    return {f"___GFP_{name}_BIT": bit for bit, name in enumerate(names)}


# x86_64 distribution kernels: no KASAN_HW_TAGS (arm64 only), no LOCKDEP, SLAB_OBJ_EXT
# selected by MEMCG. So __GFP_NO_OBJ_EXT is bit 24 and ___GFP_LAST_BIT is 25.
GFP_BITS_6_18: Mapping[str, int] = gfp_bits_for_config()


def parse_gfp_bits(c_source: str) -> dict[str, int]:
    """The ``___GFP_*_BIT = N`` enumerators found in C text (``bpftool btf dump ... format c``)."""
    return {name: int(value) for name, value in _GFP_ENUM_RE.findall(c_source)}


# Composite masks (include/linux/gfp_types.h, 6.18): name -> (ORed parts, parts removed).
_GFP_COMPOSITES: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "__GFP_RECLAIM": (("__GFP_DIRECT_RECLAIM", "__GFP_KSWAPD_RECLAIM"), ()),
    "GFP_ATOMIC": (("__GFP_HIGH", "__GFP_KSWAPD_RECLAIM"), ()),
    "GFP_KERNEL": (("__GFP_RECLAIM", "__GFP_IO", "__GFP_FS"), ()),
    "GFP_KERNEL_ACCOUNT": (("GFP_KERNEL", "__GFP_ACCOUNT"), ()),
    "GFP_NOWAIT": (("__GFP_KSWAPD_RECLAIM", "__GFP_NOWARN"), ()),
    "GFP_NOIO": (("__GFP_RECLAIM",), ()),
    "GFP_NOFS": (("__GFP_RECLAIM", "__GFP_IO"), ()),
    "GFP_USER": (("__GFP_RECLAIM", "__GFP_IO", "__GFP_FS", "__GFP_HARDWALL"), ()),
    "GFP_DMA": (("__GFP_DMA",), ()),
    "GFP_DMA32": (("__GFP_DMA32",), ()),
    "GFP_HIGHUSER": (("GFP_USER", "__GFP_HIGHMEM"), ()),
    "GFP_HIGHUSER_MOVABLE": (("GFP_HIGHUSER", "__GFP_MOVABLE", "__GFP_SKIP_KASAN"), ()),
    "GFP_TRANSHUGE_LIGHT": (
        ("GFP_HIGHUSER_MOVABLE", "__GFP_COMP", "__GFP_NOMEMALLOC", "__GFP_NOWARN"),
        ("__GFP_RECLAIM",),
    ),
    "GFP_TRANSHUGE": (("GFP_TRANSHUGE_LIGHT", "__GFP_DIRECT_RECLAIM"), ()),
}

# show_gfp_flags() in include/trace/events/mmflags.h: these first, then every single flag
# in bit order; a mask is printed when all its bits are still set, and then removed.
_GFP_SHOW_COMPOSITES: Tuple[str, ...] = (
    "GFP_TRANSHUGE",
    "GFP_TRANSHUGE_LIGHT",
    "GFP_HIGHUSER_MOVABLE",
    "GFP_HIGHUSER",
    "GFP_USER",
    "GFP_KERNEL_ACCOUNT",
    "GFP_KERNEL",
    "GFP_NOFS",
    "GFP_ATOMIC",
    "GFP_NOIO",
    "GFP_NOWAIT",
    "GFP_DMA",
    "GFP_DMA32",
    "__GFP_RECLAIM",
)


@dataclass(frozen=True)
class Gfp:
    """The GFP flags of one allocation: the kernel's mask, decoded once by the running
    kernel's table. Later stages ask it questions instead of parsing its text again."""

    mask: int
    names: Tuple[str, ...]  # as show_gfp_flags() prints them: composites first; () for 0
    flags: FrozenSet[str] = frozenset()  # every single __GFP_* flag set in mask
    label: str = "other"  # the first composite (GFP_KERNEL, ...): a bounded metrics label

    def __str__(self) -> str:
        return "|".join(self.names) if self.names else "none"

    def __contains__(self, name: object) -> bool:
        """`"__GFP_ACCOUNT" in gfp`, `"GFP_KERNEL_ACCOUNT" in gfp`: a flag set or a name shown."""
        return name in self.flags or name in self.names

    @property
    def accounted(self) -> bool:
        """Charged to the memory cgroup (__GFP_ACCOUNT)."""
        return "__GFP_ACCOUNT" in self.flags


class GfpDecoder:
    """Names for gfp_t values of one kernel, whose ``___GFP_*_BIT`` enum is ``bits``."""

    def __init__(self, bits: Mapping[str, int]) -> None:
        self._bits: Dict[str, int] = {}
        singles: List[Tuple[int, str]] = []
        for key, bit in bits.items():
            match = _GFP_BIT_KEY_RE.fullmatch(key)
            if match is None:
                raise ValueError(f"not a ___GFP_*_BIT enumerator: {key!r}")
            if not 0 <= int(bit) < 64:
                raise ValueError(f"{key} = {bit} is not a valid bit number")
            self._bits[key] = int(bit)
            if match.group(1) not in _GFP_NOT_FLAGS:
                singles.append((int(bit), f"__GFP_{match.group(1)}"))
        singles.sort()
        self._masks: Dict[str, int] = {name: 1 << bit for bit, name in singles}
        for name, (parts, removed) in _GFP_COMPOSITES.items():  # each uses only earlier ones
            mask = 0
            for part in parts:
                value = self._masks.get(part, 0)
                if not value and part not in _GFP_OPTIONAL_FLAGS:
                    mask = 0  # a table lacking this part cannot express the composite
                    break
                mask |= value
            else:
                for part in removed:
                    mask &= ~self._masks.get(part, 0)
            self._masks[name] = mask
        self._composites: Tuple[Tuple[int, str], ...] = tuple(
            (self._masks[name], name) for name in _GFP_SHOW_COMPOSITES if self._masks[name]
        )
        self._show: Tuple[Tuple[int, str], ...] = self._composites + tuple(
            (1 << bit, name) for bit, name in singles
        )

    @classmethod
    def default(cls) -> GfpDecoder:
        """The decoder for a typical x86_64 6.18 kernel (:data:`GFP_BITS_6_18`)."""
        return cls(GFP_BITS_6_18)

    @property
    def bits(self) -> Mapping[str, int]:
        """The ``___GFP_*_BIT`` table this decoder was built from."""
        return dict(self._bits)

    @property
    def flag_table(self) -> tuple[tuple[str, int], ...]:
        """``(name, mask)`` pairs in the order decode() tries them (show_gfp_flags order)."""
        return tuple((name, mask) for mask, name in self._show)

    def mask(self, flag: str) -> int:
        """``"__GFP_NOWARN"`` or ``"GFP_KERNEL"`` -> its value; 0 if this kernel lacks it."""
        value = self._masks.get(flag)
        if value is not None:
            return value
        if flag.startswith("__GFP_"):
            return 0  # e.g. __GFP_SKIP_KASAN without CONFIG_KASAN_HW_TAGS
        raise ValueError(f"unknown GFP flag: {flag!r}")

    def decode(self, gfp: int) -> str:
        """Like the kernel's show_gfp_flags(): ``"GFP_KERNEL|__GFP_NOWARN"``; 0 -> ``"none"``."""
        rest = int(gfp) & _U32 if gfp < 0 else int(gfp)
        if rest == 0:
            return "none"
        parts: List[str] = []
        for mask, name in self._show:
            if not rest:
                break
            if rest & mask == mask:
                parts.append(name)
                rest &= ~mask
        if rest:
            parts.append(hex(rest))
        return "|".join(parts)

    def value(self, gfp: int) -> Gfp:
        """The model's value for a raw gfp_t: mask, names, single flags and label."""
        mask = int(gfp) & _U32 if gfp < 0 else int(gfp)
        text = self.decode(mask)
        flags = frozenset(name for name, m in self._masks.items()
                          if name.startswith("__GFP_") and m and mask & m == m)
        return Gfp(mask, tuple(text.split("|")) if mask else (), flags, self.gfp_class(mask))

    def parse(self, text: str) -> Gfp:
        """The value for flags written as text (a recording's "GFP_KERNEL|__GFP_NOWARN"),
        its names kept as written; names this table does not know add nothing to the mask."""
        names = tuple(n for n in (part.strip() for part in text.split("|")) if n and n != "none")
        mask = 0
        for name in names:
            if name.startswith("0x"):
                try:
                    mask |= int(name, 16)
                except ValueError:
                    pass
            else:
                mask |= self._masks.get(name, 0)
        known = self.value(mask)
        return Gfp(mask, names, known.flags, known.label)

    def is_opportunistic(self, gfp: int) -> bool:
        """True if the caller allows the allocation to fail (``__GFP_NOWARN``/``__GFP_NORETRY``)."""
        return bool(int(gfp) & (self.mask("__GFP_NOWARN") | self.mask("__GFP_NORETRY")))

    def gfp_class(self, gfp: int) -> str:
        """A short metrics label: the first composite decode() would print, else ``"other"``."""
        value = int(gfp) & _U32 if gfp < 0 else int(gfp)
        for mask, name in self._composites:
            if value & mask == mask:
                return name
        return "other"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._bits!r})"


# --------------------------------------------------------------------------- migrate types


def migrate_types(*, cma: bool = True, memory_isolation: bool = True) -> tuple[str, ...]:
    """``enum migratetype`` names by number (include/linux/mmzone.h, 6.18) for a config."""
    names = ["UNMOVABLE", "MOVABLE", "RECLAIMABLE", "HIGHATOMIC"]
    if cma:
        names.append("CMA")
    if memory_isolation:
        names.append("ISOLATE")
    return tuple(names)


# With CONFIG_CMA and CONFIG_MEMORY_ISOLATION, as distribution kernels build it. Numbers
# 0..3 are the same in every config, and they are the ones allocations ask for.
MIGRATE_TYPES: tuple[str, ...] = migrate_types()


def migratetype_name(n: int, types: Sequence[str] = MIGRATE_TYPES) -> str:
    """``1`` -> ``"MOVABLE"``; out of range -> ``"migratetype_<n>"``."""
    if 0 <= n < len(types):
        return types[n]
    return f"migratetype_{n}"


def parse_gfp(text: str) -> Gfp:
    """GFP flags written as text, by the typical table (a recording's flags, a test's)."""
    return _DEFAULT_GFP.parse(text)


_DEFAULT_GFP = GfpDecoder.default()


# -- a page failure that was a slab allocation's ---------------------------------------------

# The slab allocator's own functions as they appear on kernel stacks (6.1 to 6.18 names:
# kmalloc_large, __kmalloc_node, __kmalloc_noprof, kmem_cache_alloc_lru, allocate_slab ...).
_SLAB_FRAME = re.compile(r"^_*(kmalloc|kmem_cache_alloc|k?mem_cache_alloc|slab_alloc|"
                         r"allocate_slab|new_slab|kmalloc_large|kmalloc_order|"
                         r"kmem_cache_alloc_node|alloc_slab_page)")
_NEW_SLAB = re.compile(r"^_*(allocate_slab|new_slab|alloc_slab_page|_*slab_alloc)")
_LARGE_KMALLOC = re.compile(r"kmalloc_large|kmalloc_order")


@dataclass(frozen=True)
class SlabVia:
    """A page allocation failure that was a slab allocation's: what the page hook saw
    while the slab hooks were not attached."""

    allocator: str  # "kmalloc (page-backed)" for a kmalloc too large for a slab, else "new slab"
    function: str  # the slab allocator's entry point seen on the stack (kmalloc, kmem_cache_alloc)
    caller: str | None  # the kernel function that asked for the memory

    def to_json(self) -> dict[str, str | None]:
        return {"allocator": self.allocator, "function": self.function, "caller": self.caller}


def slab_via_page(kernel_stack: Sequence[str]) -> SlabVia | None:
    """Whether a page failure's kernel stack (innermost first) runs through the slab
    allocator, and for whom: the page allocator's frames, then the slab's, then its caller."""
    first = next((i for i, f in enumerate(kernel_stack) if _SLAB_FRAME.match(f)), None)
    if first is None:
        return None
    last = first
    while last + 1 < len(kernel_stack) and _SLAB_FRAME.match(kernel_stack[last + 1]):
        last += 1
    frames = kernel_stack[first:last + 1]
    large = any(_LARGE_KMALLOC.search(f) for f in frames)
    fresh = any(_NEW_SLAB.match(f) for f in frames)
    entry = re.sub(r"(_noprof|_node|_lru|_trace)+$", "", frames[-1].lstrip("_")) or frames[-1]
    caller = kernel_stack[last + 1] if last + 1 < len(kernel_stack) else None
    return SlabVia("kmalloc (page-backed)" if large or not fresh else "new slab", entry, caller)
