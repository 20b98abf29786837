"""Table-driven tests for tracer.decoders: errno, sizes, syscalls, GFP flags, migrate types."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import pytest

from tracer.model.decode import (
    GFP_BITS_6_18,
    MEMORY_SYSCALLS,
    MIGRATE_TYPES,
    GfpDecoder,
    decode_mmap_flags,
    decode_prot,
    describe_syscall_args,
    errno_name,
    format_bytes,
    gfp_bits_for_config,
    migrate_types,
    migratetype_name,
    order_to_bytes,
    parse_gfp_bits,
    size_from_syscall,
    syscall_name,
    syscall_number,
)

pytestmark = pytest.mark.unit

GFP = GfpDecoder.default()


def gfp(*names: str, decoder: GfpDecoder = GFP) -> int:
    """OR together the masks of ``names``."""
    value = 0
    for name in names:
        value |= decoder.mask(name)
    return value


# --------------------------------------------------------------------------- errno


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (-12, "ENOMEM"),
        (12, "ENOMEM"),
        (-11, "EAGAIN"),
        (1, "EPERM"),
        (-14, "EFAULT"),
        (-22, "EINVAL"),
        (-28, "ENOSPC"),
        (-35, "EDEADLK"),
        (-95, "EOPNOTSUPP"),
        (-512, "ERESTARTSYS"),
        (-524, "ENOTSUPP"),
        (0, None),
        (999, "errno 999"),
        (-4000, "errno 4000"),
    ],
)
def test_errno_name(err: int, expected: Optional[str]) -> None:
    assert errno_name(err) == expected


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("order", "page_size", "expected"),
    [
        (0, 4096, 4096),
        (1, 4096, 8192),
        (3, 4096, 32768),
        (9, 4096, 2 << 20),
        (10, 4096, 4 << 20),
        (18, 4096, 1 << 30),
        (0, 65536, 65536),
        (2, 16384, 65536),
    ],
)
def test_order_to_bytes(order: int, page_size: int, expected: int) -> None:
    assert order_to_bytes(order, page_size) == expected


def test_order_to_bytes_default_page_size() -> None:
    assert order_to_bytes(4) == 65536


@pytest.mark.parametrize(("order", "page_size"), [(-1, 4096), (0, 0), (1, -4096)])
def test_order_to_bytes_rejects_nonsense(order: int, page_size: int) -> None:
    with pytest.raises(ValueError):
        order_to_bytes(order, page_size)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (4096, "4 KiB"),
        (1 << 20, "1 MiB"),
        ((1 << 20) - 1, "1 MiB"),
        (2 << 20, "2 MiB"),
        (3 << 29, "1.5 GiB"),
        (1 << 30, "1 GiB"),
        (5 << 40, "5 TiB"),
        (1 << 60, "1 EiB"),
        (1 << 70, "1024 EiB"),
        (-8192, "-8 KiB"),
    ],
)
def test_format_bytes(n: int, expected: str) -> None:
    assert format_bytes(n) == expected


# --------------------------------------------------------------------------- syscalls


@pytest.mark.parametrize(
    ("nr", "name"),
    [
        (0, "read"),
        (1, "write"),
        (9, "mmap"),
        (10, "mprotect"),
        (11, "munmap"),
        (12, "brk"),
        (25, "mremap"),
        (28, "madvise"),
        (29, "shmget"),
        (30, "shmat"),
        (56, "clone"),
        (57, "fork"),
        (58, "vfork"),
        (59, "execve"),
        (72, "fcntl"),
        (149, "mlock"),
        (151, "mlockall"),
        (216, "remap_file_pages"),
        (231, "exit_group"),
        (319, "memfd_create"),
        (325, "mlock2"),
        (329, "pkey_mprotect"),
        (334, "rseq"),
        (335, "uretprobe"),
        (336, "uprobe"),
        (424, "pidfd_send_signal"),
        (435, "clone3"),
        (440, "process_madvise"),
        (450, "set_mempolicy_home_node"),
        (451, "cachestat"),
        (453, "map_shadow_stack"),
        (457, "statmount"),
        (461, "lsm_list_modules"),
        (462, "mseal"),
        (463, "setxattrat"),
        (466, "removexattrat"),
        (467, "open_tree_attr"),
        (468, "file_getattr"),
        (469, "file_setattr"),
    ],
)
def test_syscall_name_and_number(nr: int, name: str) -> None:
    assert syscall_name(nr) == name
    assert syscall_number(name) == nr


@pytest.mark.parametrize("nr", [337, 400, 423, 470, 512, 9999, -1])
def test_syscall_name_unknown(nr: int) -> None:
    assert syscall_name(nr) == f"syscall_{nr}"


@pytest.mark.parametrize("name", ["", "nosuchcall", "MMAP", "sys_mmap", "syscall_", "syscall_x"])
def test_syscall_number_unknown(name: str) -> None:
    with pytest.raises(ValueError):
        syscall_number(name)


@pytest.mark.parametrize(
    "name", ["read", "mmap", "brk", "clone3", "mseal", "setxattrat", "process_madvise"]
)
def test_syscall_round_trip_by_name(name: str) -> None:
    assert syscall_name(syscall_number(name)) == name


@pytest.mark.parametrize("nr", [0, 9, 334, 336, 424, 435, 469, 470, 9999])
def test_syscall_round_trip_by_number(nr: int) -> None:
    assert syscall_number(syscall_name(nr)) == nr


def test_syscall_table_is_complete() -> None:
    known = [nr for nr in range(1000) if syscall_name(nr) != f"syscall_{nr}"]
    assert known == list(range(0, 337)) + list(range(424, 470))
    names = [syscall_name(nr) for nr in known]
    assert len(set(names)) == len(names)


_UNISTD_64 = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


@pytest.mark.skipif(not _UNISTD_64.is_file(), reason="no x86_64 uapi headers installed")
def test_syscall_table_agrees_with_installed_headers() -> None:
    pairs = re.findall(r"#define __NR_(\w+)\s+(\d+)", _UNISTD_64.read_text())
    assert pairs
    for name, nr in pairs:
        assert syscall_name(int(nr)) == name


def test_memory_syscalls() -> None:
    assert MEMORY_SYSCALLS == {
        "mmap", "munmap", "mremap", "mprotect", "brk", "mlock", "mlock2", "mlockall",
        "munlock", "madvise", "shmget", "shmat", "clone", "clone3", "fork", "vfork",
        "mincore", "msync", "remap_file_pages", "mbind", "set_mempolicy", "migrate_pages",
        "move_pages", "pkey_mprotect", "process_madvise", "memfd_create",
    }  # fmt: skip
    assert isinstance(MEMORY_SYSCALLS, frozenset)
    for name in MEMORY_SYSCALLS:
        syscall_number(name)  # every one is in the table


# --------------------------------------------------------------------------- syscall arguments


@pytest.mark.parametrize(
    ("prot", "expected"),
    [
        (0, "PROT_NONE"),
        (1, "PROT_READ"),
        (3, "PROT_READ|PROT_WRITE"),
        (7, "PROT_READ|PROT_WRITE|PROT_EXEC"),
        (0x01000003, "PROT_READ|PROT_WRITE|PROT_GROWSDOWN"),
        (0x11, "PROT_READ|0x10"),
    ],
)
def test_decode_prot(prot: int, expected: str) -> None:
    assert decode_prot(prot) == expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (0, "0"),
        (0x01, "MAP_SHARED"),
        (0x03, "MAP_SHARED_VALIDATE"),
        (0x22, "MAP_PRIVATE|MAP_ANONYMOUS"),
        (0x2022, "MAP_PRIVATE|MAP_ANONYMOUS|MAP_LOCKED"),
        (0x8002, "MAP_PRIVATE|MAP_POPULATE"),
        (0x100002, "MAP_PRIVATE|MAP_FIXED_NOREPLACE"),
        (0x20022 | 0x100, "MAP_PRIVATE|MAP_ANONYMOUS|MAP_GROWSDOWN|MAP_STACK"),
        (0x40022, "MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB"),
        (0x40022 | (21 << 26), "MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB|MAP_HUGE_2MB"),
        (0x40022 | (30 << 26), "MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB|MAP_HUGE_1GB"),
        (0x40022 | (16 << 26), "MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB|MAP_HUGE_64KB"),
        (0x4000022, "MAP_PRIVATE|MAP_ANONYMOUS|MAP_UNINITIALIZED"),
        (0x08, "MAP_DROPPABLE"),
        (0x4022, "MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE"),
        (0x8000002, "MAP_PRIVATE|0x8000000"),  # unknown bit kept as hex
        (0x05, "0x5"),  # unknown mapping type
        (0x200, "0x200"),
        (0x1_0000_0002, "MAP_PRIVATE|0x100000000"),
    ],
)
def test_decode_mmap_flags(flags: int, expected: str) -> None:
    assert decode_mmap_flags(flags) == expected


ArgsCase = Tuple[str, Sequence[int], Dict[str, Union[int, str]]]
_MINUS_ONE = (1 << 64) - 1

_ARGS_CASES: List[ArgsCase] = [
    (
        "mmap",
        [0, 1 << 20, 3, 0x2022, _MINUS_ONE, 0],
        {
            "addr": 0,
            "length": 1 << 20,
            "prot": "PROT_READ|PROT_WRITE",
            "flags": "MAP_PRIVATE|MAP_ANONYMOUS|MAP_LOCKED",
            "fd": -1,
        },
    ),
    (
        "mmap",
        [0x7F0000000000, 4096, 1, 0x8000001, 3, 0],
        {
            "addr": 0x7F0000000000,
            "length": 4096,
            "prot": "PROT_READ",
            "flags": "MAP_SHARED|0x8000000",
            "fd": 3,
        },
    ),
    ("mmap", [0, 4096, 0, 0x22, 0xFFFFFFFF, 0], {"addr": 0, "length": 4096, "prot": "PROT_NONE",
                                                 "flags": "MAP_PRIVATE|MAP_ANONYMOUS", "fd": -1}),
    ("munmap", [0x1000, 8192], {"addr": 0x1000, "length": 8192}),
    (
        "mremap",
        [0x1000, 4096, 1 << 21, 3, 0x200000],
        {
            "old_address": 0x1000,
            "old_size": 4096,
            "new_size": 1 << 21,
            "flags": "MREMAP_MAYMOVE|MREMAP_FIXED",
        },
    ),
    (
        "mremap",
        [0x1000, 4096, 4096, 5, 0],
        {"old_address": 0x1000, "old_size": 4096, "new_size": 4096,
         "flags": "MREMAP_MAYMOVE|MREMAP_DONTUNMAP"},
    ),
    ("mremap", [0x1000, 4096, 8192, 0], {"old_address": 0x1000, "old_size": 4096,
                                         "new_size": 8192, "flags": "0"}),
    ("mprotect", [0x1000, 4096, 5], {"addr": 0x1000, "length": 4096,
                                      "prot": "PROT_READ|PROT_EXEC"}),
    ("brk", [0x5555_0000_0000], {"brk": 0x5555_0000_0000}),
    ("brk", [], {"brk": 0}),
    ("mlock", [0x1000, 4096], {"addr": 0x1000, "length": 4096}),
    ("mlock2", [0x1000, 4096, 1], {"addr": 0x1000, "length": 4096, "flags": "MLOCK_ONFAULT"}),
    ("mlock2", [0x1000, 4096, 0], {"addr": 0x1000, "length": 4096, "flags": "0"}),
    ("mlockall", [3], {"flags": "MCL_CURRENT|MCL_FUTURE"}),
    ("mlockall", [7], {"flags": "MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT"}),
    ("mlockall", [9], {"flags": "MCL_CURRENT|0x8"}),
    ("madvise", [0x1000, 4096, 4], {"addr": 0x1000, "length": 4096, "advice": "MADV_DONTNEED"}),
    ("madvise", [0x1000, 1 << 21, 14], {"addr": 0x1000, "length": 1 << 21,
                                        "advice": "MADV_HUGEPAGE"}),
    ("madvise", [0x1000, 4096, 8], {"addr": 0x1000, "length": 4096, "advice": "MADV_FREE"}),
    ("madvise", [0x1000, 4096, 25], {"addr": 0x1000, "length": 4096,
                                     "advice": "MADV_COLLAPSE"}),
    ("madvise", [0x1000, 4096, 77], {"addr": 0x1000, "length": 4096, "advice": "77"}),
    ("shmget", [0, 1 << 20, 0o1600], {"key": 0, "size": 1 << 20, "shmflg": "IPC_CREAT|0600"}),
    (
        "shmget",
        [0x1234, 1 << 21, 0o3000 | 0o4000 | (21 << 26) | 0o644],
        {"key": 0x1234, "size": 1 << 21,
         "shmflg": "IPC_CREAT|IPC_EXCL|SHM_HUGETLB|SHM_HUGE_2MB|0644"},
    ),
    ("shmget", [0xFFFFFFFF, 4096, 0], {"key": -1, "size": 4096, "shmflg": "0"}),
    ("shmat", [7, 0, 0o10000], {"shmid": 7, "shmaddr": 0, "shmflg": "SHM_RDONLY"}),
    ("shmat", [7, 0x10000, 0o60000], {"shmid": 7, "shmaddr": 0x10000,
                                      "shmflg": "SHM_RND|SHM_REMAP"}),
    ("clone", [0x11], {"flags": "SIGCHLD"}),
    ("clone", [0x1200011], {"flags": "CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD"}),
    (
        "clone",
        [0x3D0F00],
        {"flags": "CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM"
                  "|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID"},
    ),
    ("clone", [0x4111], {"flags": "CLONE_VM|CLONE_VFORK|SIGCHLD"}),
    ("clone", [0], {"flags": "0"}),
    ("clone3", [0x7FFD0000, 88], {"args_ptr": 0x7FFD0000, "size": 88}),
    ("fcntl", [3, 1031, 1 << 20], {"fd": 3, "cmd": "F_SETPIPE_SZ", "arg": 1 << 20}),
    ("fcntl", [3, 1032, 0], {"fd": 3, "cmd": "F_GETPIPE_SZ", "arg": 0}),
    ("fcntl", [4, 1033, 8], {"fd": 4, "cmd": "F_ADD_SEALS", "arg": 8}),
    ("fcntl", [0, 1030, 10], {"fd": 0, "cmd": "F_DUPFD_CLOEXEC", "arg": 10}),
    ("fcntl", [_MINUS_ONE, 4242, 0], {"fd": -1, "cmd": "4242", "arg": 0}),
    ("read", [0, 0x1000, 10], {}),
    ("munlock", [0x1000, 4096], {"addr": 0x1000, "length": 4096}),
    ("no_such_syscall", [1, 2, 3], {}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "args", "expected"), _ARGS_CASES)
def test_describe_syscall_args(
    name: str, args: Sequence[int], expected: Dict[str, Union[int, str]]
) -> None:
    assert describe_syscall_args(name, args) == expected


def test_describe_syscall_args_accepts_signed_registers() -> None:
    described = describe_syscall_args("mmap", (0, 4096, 3, 0x22, -1, 0))
    assert described["fd"] == -1
    assert described["addr"] == 0


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("mmap", [0, 1 << 20, 3, 0x22, -1, 0], 1 << 20),
        ("munmap", [0x1000, 8192], 8192),
        ("mprotect", [0x1000, 4096, 1], 4096),
        ("mlock", [0x1000, 12288], 12288),
        ("mlock2", [0x1000, 16384, 1], 16384),
        ("madvise", [0x1000, 1 << 21, 14], 1 << 21),
        ("mremap", [0x1000, 4096, 1 << 30, 1], 1 << 30),
        ("shmget", [0, 1 << 22, 0o1600], 1 << 22),
        ("brk", [0x5555_0000_0000], None),
        ("clone", [0x11], None),
        ("mlockall", [3], None),
        ("read", [0, 0x1000, 10], None),
        ("mmap", [0], None),
    ],
)
def test_size_from_syscall(name: str, args: Sequence[int], expected: Optional[int]) -> None:
    assert size_from_syscall(name, args) == expected


# --------------------------------------------------------------------------- GFP flags


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("__GFP_DMA", 0x1),
        ("__GFP_HIGHMEM", 0x2),
        ("__GFP_MOVABLE", 0x8),
        ("__GFP_IO", 0x40),
        ("__GFP_FS", 0x80),
        ("__GFP_ZERO", 0x100),
        ("__GFP_DIRECT_RECLAIM", 0x400),
        ("__GFP_KSWAPD_RECLAIM", 0x800),
        ("__GFP_NOWARN", 0x2000),
        ("__GFP_RETRY_MAYFAIL", 0x4000),
        ("__GFP_NOFAIL", 0x8000),
        ("__GFP_NORETRY", 0x10000),
        ("__GFP_COMP", 0x40000),
        ("__GFP_THISNODE", 0x200000),
        ("__GFP_ACCOUNT", 0x400000),
        ("__GFP_ZEROTAGS", 0x800000),
        ("__GFP_NO_OBJ_EXT", 0x1000000),
        ("__GFP_RECLAIM", 0xC00),
        ("GFP_KERNEL", 0xCC0),
        ("GFP_KERNEL_ACCOUNT", 0x400CC0),
        ("GFP_NOFS", 0xC40),
        ("GFP_NOIO", 0xC00),
        ("GFP_ATOMIC", 0x820),
        ("GFP_NOWAIT", 0x2800),
        ("GFP_USER", 0x100CC0),
        ("GFP_DMA", 0x1),
        ("GFP_DMA32", 0x4),
        ("GFP_HIGHUSER", 0x100CC2),
        ("GFP_HIGHUSER_MOVABLE", 0x100CCA),
        ("GFP_TRANSHUGE_LIGHT", 0x1C20CA),
        ("GFP_TRANSHUGE", 0x1C24CA),
        # not built into a default x86_64 kernel
        ("__GFP_SKIP_KASAN", 0),
        ("__GFP_SKIP_ZERO", 0),
        ("__GFP_NOLOCKDEP", 0),
        ("__GFP_NO_SUCH_FLAG", 0),
        # not flags
        ("__GFP_UNUSED", 0),
        ("__GFP_LAST", 0),
    ],
)
def test_gfp_mask(flag: str, expected: int) -> None:
    assert GFP.mask(flag) == expected


@pytest.mark.parametrize("flag", ["GFP_NOSUCH", "NOWARN", "", "gfp_kernel"])
def test_gfp_mask_unknown_composite(flag: str) -> None:
    with pytest.raises(ValueError):
        GFP.mask(flag)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("GFP_KERNEL_ACCOUNT", "__GFP_NOWARN"), "GFP_KERNEL_ACCOUNT|__GFP_NOWARN"),
        # the kernel prints single flags in bit order: NOWARN(13), NORETRY(16), COMP(18)
        (
            ("GFP_KERNEL", "__GFP_COMP", "__GFP_NOWARN", "__GFP_NORETRY"),
            "GFP_KERNEL|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP",
        ),
        (("GFP_KERNEL",), "GFP_KERNEL"),
        (("GFP_KERNEL", "__GFP_ZERO"), "GFP_KERNEL|__GFP_ZERO"),
        (("GFP_KERNEL_ACCOUNT", "__GFP_ZERO", "__GFP_COMP"),
         "GFP_KERNEL_ACCOUNT|__GFP_ZERO|__GFP_COMP"),
        (("GFP_HIGHUSER_MOVABLE", "__GFP_COMP"), "GFP_HIGHUSER_MOVABLE|__GFP_COMP"),
        (("GFP_HIGHUSER_MOVABLE", "__GFP_ZERO", "__GFP_COMP"),
         "GFP_HIGHUSER_MOVABLE|__GFP_ZERO|__GFP_COMP"),
        (("GFP_TRANSHUGE_LIGHT",), "GFP_TRANSHUGE_LIGHT"),
        (("GFP_TRANSHUGE_LIGHT", "__GFP_THISNODE"), "GFP_TRANSHUGE_LIGHT|__GFP_THISNODE"),
        (("GFP_TRANSHUGE", "__GFP_THISNODE"), "GFP_TRANSHUGE|__GFP_THISNODE"),
        (("GFP_TRANSHUGE_LIGHT", "__GFP_KSWAPD_RECLAIM"),
         "GFP_TRANSHUGE_LIGHT|__GFP_KSWAPD_RECLAIM"),
        (("GFP_TRANSHUGE", "__GFP_NORETRY"), "GFP_TRANSHUGE|__GFP_NORETRY"),
        (("GFP_TRANSHUGE", "__GFP_KSWAPD_RECLAIM"), "GFP_TRANSHUGE|__GFP_KSWAPD_RECLAIM"),
        (("GFP_NOWAIT",), "GFP_NOWAIT"),
        (("GFP_NOWAIT", "__GFP_ZERO"), "GFP_NOWAIT|__GFP_ZERO"),
        (("GFP_ATOMIC",), "GFP_ATOMIC"),
        (("GFP_ATOMIC", "__GFP_NOWARN"), "GFP_ATOMIC|__GFP_NOWARN"),
        (("GFP_ATOMIC", "__GFP_NOWARN", "__GFP_COMP"), "GFP_ATOMIC|__GFP_NOWARN|__GFP_COMP"),
        (("GFP_NOIO",), "GFP_NOIO"),
        (("GFP_NOFS", "__GFP_NOFAIL"), "GFP_NOFS|__GFP_NOFAIL"),
        (
            ("GFP_NOFS", "__GFP_HIGHMEM", "__GFP_MOVABLE", "__GFP_NOWARN", "__GFP_NORETRY",
             "__GFP_COMP", "__GFP_HARDWALL"),
            "GFP_NOFS|__GFP_HIGHMEM|__GFP_MOVABLE|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP"
            "|__GFP_HARDWALL",
        ),
        (("GFP_USER",), "GFP_USER"),
        (("GFP_HIGHUSER",), "GFP_HIGHUSER"),
        (("GFP_KERNEL", "__GFP_DMA"), "GFP_KERNEL|GFP_DMA"),
        (("GFP_KERNEL", "__GFP_DMA32"), "GFP_KERNEL|GFP_DMA32"),
        (("GFP_KERNEL", "__GFP_RETRY_MAYFAIL"), "GFP_KERNEL|__GFP_RETRY_MAYFAIL"),
        (("GFP_KERNEL", "__GFP_NO_OBJ_EXT"), "GFP_KERNEL|__GFP_NO_OBJ_EXT"),
        (("GFP_KERNEL", "__GFP_NOMEMALLOC", "__GFP_MEMALLOC"),
         "GFP_KERNEL|__GFP_MEMALLOC|__GFP_NOMEMALLOC"),
        (("__GFP_DIRECT_RECLAIM",), "__GFP_DIRECT_RECLAIM"),
        (("__GFP_KSWAPD_RECLAIM",), "__GFP_KSWAPD_RECLAIM"),
        (("__GFP_HIGH",), "__GFP_HIGH"),
        (("__GFP_NOWARN",), "__GFP_NOWARN"),
        (("__GFP_IO", "__GFP_FS", "__GFP_WRITE"), "__GFP_IO|__GFP_FS|__GFP_WRITE"),
        ((), "none"),
    ],
)  # fmt: skip
def test_gfp_decode(flags: Tuple[str, ...], expected: str) -> None:
    assert GFP.decode(gfp(*flags)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "none"),
        (0x200, "0x200"),  # ___GFP_UNUSED_BIT: never named
        (0xCC0 | 0x200, "GFP_KERNEL|0x200"),
        (0xCC0 | (1 << 25), "GFP_KERNEL|0x2000000"),  # past ___GFP_LAST_BIT
        (1 << 31, "0x80000000"),
        (0xCC0 | (1 << 40), "GFP_KERNEL|0x10000000000"),
    ],
)
def test_gfp_decode_unknown_bits(value: int, expected: str) -> None:
    assert GFP.decode(value) == expected


def test_gfp_decode_accepts_a_signed_gfp_t() -> None:
    assert GFP.decode(-(1 << 31) | 0xCC0) == "GFP_KERNEL|0x80000000"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("GFP_KERNEL", "__GFP_NOWARN"), True),
        (("GFP_KERNEL", "__GFP_NORETRY"), True),
        (("GFP_TRANSHUGE_LIGHT",), True),  # includes __GFP_NOWARN
        (("GFP_NOWAIT",), True),  # includes __GFP_NOWARN since 6.18
        (("GFP_KERNEL",), False),
        (("GFP_KERNEL_ACCOUNT",), False),
        (("GFP_ATOMIC",), False),
        (("GFP_KERNEL", "__GFP_RETRY_MAYFAIL"), False),
        (("GFP_KERNEL", "__GFP_NOFAIL"), False),
        ((), False),
    ],
)
def test_gfp_is_opportunistic(flags: Tuple[str, ...], expected: bool) -> None:
    assert GFP.is_opportunistic(gfp(*flags)) is expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("GFP_KERNEL",), "GFP_KERNEL"),
        (("GFP_KERNEL", "__GFP_NOWARN", "__GFP_COMP"), "GFP_KERNEL"),
        (("GFP_KERNEL_ACCOUNT", "__GFP_ZERO"), "GFP_KERNEL_ACCOUNT"),
        (("GFP_TRANSHUGE", "__GFP_THISNODE"), "GFP_TRANSHUGE"),
        (("GFP_TRANSHUGE_LIGHT",), "GFP_TRANSHUGE_LIGHT"),
        (("GFP_HIGHUSER_MOVABLE", "__GFP_ZERO"), "GFP_HIGHUSER_MOVABLE"),
        (("GFP_ATOMIC", "__GFP_NOWARN"), "GFP_ATOMIC"),
        (("GFP_NOWAIT",), "GFP_NOWAIT"),
        (("GFP_NOFS",), "GFP_NOFS"),
        (("GFP_NOIO",), "GFP_NOIO"),
        (("__GFP_DMA", "__GFP_HIGH"), "GFP_DMA"),
        (("__GFP_NOWARN",), "other"),
        (("__GFP_HIGH",), "other"),
        ((), "other"),
    ],
)
def test_gfp_class(flags: Tuple[str, ...], expected: str) -> None:
    assert GFP.gfp_class(gfp(*flags)) == expected


def test_default_gfp_table() -> None:
    expected_order = [
        "DMA", "HIGHMEM", "DMA32", "MOVABLE", "RECLAIMABLE", "HIGH", "IO", "FS", "ZERO",
        "UNUSED", "DIRECT_RECLAIM", "KSWAPD_RECLAIM", "WRITE", "NOWARN", "RETRY_MAYFAIL",
        "NOFAIL", "NORETRY", "MEMALLOC", "COMP", "NOMEMALLOC", "HARDWALL", "THISNODE",
        "ACCOUNT", "ZEROTAGS", "NO_OBJ_EXT", "LAST",
    ]  # fmt: skip
    assert dict(GFP_BITS_6_18) == {
        f"___GFP_{name}_BIT": bit for bit, name in enumerate(expected_order)
    }
    assert GfpDecoder.default().bits == GFP_BITS_6_18


def test_gfp_flag_table_order() -> None:
    names = [name for name, _ in GFP.flag_table]
    assert names[:14] == [
        "GFP_TRANSHUGE", "GFP_TRANSHUGE_LIGHT", "GFP_HIGHUSER_MOVABLE", "GFP_HIGHUSER",
        "GFP_USER", "GFP_KERNEL_ACCOUNT", "GFP_KERNEL", "GFP_NOFS", "GFP_ATOMIC", "GFP_NOIO",
        "GFP_NOWAIT", "GFP_DMA", "GFP_DMA32", "__GFP_RECLAIM",
    ]  # fmt: skip
    singles = [mask for _, mask in GFP.flag_table[14:]]
    assert singles == sorted(singles)
    assert "__GFP_UNUSED" not in names and "__GFP_LAST" not in names


@pytest.mark.parametrize(
    ("config", "flag", "bit"),
    [
        ({"kasan_hw_tags": True}, "__GFP_SKIP_ZERO", 24),
        ({"kasan_hw_tags": True}, "__GFP_SKIP_KASAN", 25),
        ({"kasan_hw_tags": True}, "__GFP_NO_OBJ_EXT", 26),
        ({"lockdep": True}, "__GFP_NOLOCKDEP", 24),
        ({"lockdep": True}, "__GFP_NO_OBJ_EXT", 25),
        ({"kasan_hw_tags": True, "lockdep": True}, "__GFP_NOLOCKDEP", 26),
        ({"kasan_hw_tags": True, "lockdep": True}, "__GFP_NO_OBJ_EXT", 27),
        ({"slab_obj_ext": False}, "__GFP_NO_OBJ_EXT", None),
        ({"slab_obj_ext": False}, "__GFP_ZEROTAGS", 23),
    ],
)
def test_gfp_config_dependent_bits(config: Dict[str, bool], flag: str, bit: Optional[int]) -> None:
    decoder = GfpDecoder(gfp_bits_for_config(**config))
    assert decoder.mask(flag) == (0 if bit is None else 1 << bit)


def test_gfp_kasan_config_changes_highuser_movable() -> None:
    decoder = GfpDecoder(gfp_bits_for_config(kasan_hw_tags=True))
    skip_kasan = decoder.mask("__GFP_SKIP_KASAN")
    assert skip_kasan == 1 << 25
    assert decoder.mask("GFP_HIGHUSER_MOVABLE") == 0x100CCA | skip_kasan
    # without __GFP_SKIP_KASAN the composite no longer matches
    assert decoder.decode(0x100CCA) == "GFP_HIGHUSER|__GFP_MOVABLE"
    assert decoder.decode(0x100CCA | skip_kasan | 0x40000) == "GFP_HIGHUSER_MOVABLE|__GFP_COMP"
    assert decoder.decode(0xCC0 | (1 << 24)) == "GFP_KERNEL|__GFP_SKIP_ZERO"


def test_gfp_decoder_with_shifted_bits() -> None:
    # An older-style layout where the bits sit elsewhere: decoding follows the table.
    bits = {
        "___GFP_IO_BIT": 0,
        "___GFP_FS_BIT": 1,
        "___GFP_DIRECT_RECLAIM_BIT": 2,
        "___GFP_KSWAPD_RECLAIM_BIT": 3,
        "___GFP_NOWARN_BIT": 4,
        "___GFP_LAST_BIT": 5,
    }
    decoder = GfpDecoder(bits)
    assert decoder.mask("GFP_KERNEL") == 0xF
    assert decoder.mask("__GFP_ACCOUNT") == 0
    assert decoder.decode(0x1F) == "GFP_KERNEL|__GFP_NOWARN"
    assert decoder.decode(0x18) == "GFP_NOWAIT"
    assert decoder.decode(0x20) == "0x20"
    # composites needing flags this table lacks are unavailable, not partial
    assert decoder.mask("GFP_ATOMIC") == 0
    assert decoder.mask("GFP_KERNEL_ACCOUNT") == 0
    assert decoder.mask("GFP_TRANSHUGE") == 0
    assert decoder.gfp_class(0x8) == "other"


@pytest.mark.parametrize(
    "bits",
    [{"GFP_IO_BIT": 6}, {"___GFP_IO": 6}, {"___GFP_IO_BIT": -1}, {"___GFP_IO_BIT": 64}],
)
def test_gfp_decoder_rejects_bad_tables(bits: Dict[str, int]) -> None:
    with pytest.raises(ValueError):
        GfpDecoder(bits)


def test_parse_gfp_bits() -> None:
    text = """
enum {
\t___GFP_DMA_BIT = 0,
\t___GFP_HIGHMEM_BIT = 1,
\t___GFP_NO_OBJ_EXT_BIT = 24,
\t___GFP_LAST_BIT = 25,
};

enum node_states {
\tN_POSSIBLE = 0,
};
"""
    assert parse_gfp_bits(text) == {
        "___GFP_DMA_BIT": 0,
        "___GFP_HIGHMEM_BIT": 1,
        "___GFP_NO_OBJ_EXT_BIT": 24,
        "___GFP_LAST_BIT": 25,
    }


# --------------------------------------------------------------------------- migrate types


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "UNMOVABLE"),
        (1, "MOVABLE"),
        (2, "RECLAIMABLE"),
        (3, "HIGHATOMIC"),
        (4, "CMA"),
        (5, "ISOLATE"),
        (6, "migratetype_6"),
        (-1, "migratetype_-1"),
    ],
)
def test_migratetype_name(n: int, expected: str) -> None:
    assert migratetype_name(n) == expected


@pytest.mark.parametrize(
    ("cma", "isolation", "expected"),
    [
        (True, True, ("UNMOVABLE", "MOVABLE", "RECLAIMABLE", "HIGHATOMIC", "CMA", "ISOLATE")),
        (False, True, ("UNMOVABLE", "MOVABLE", "RECLAIMABLE", "HIGHATOMIC", "ISOLATE")),
        (True, False, ("UNMOVABLE", "MOVABLE", "RECLAIMABLE", "HIGHATOMIC", "CMA")),
        (False, False, ("UNMOVABLE", "MOVABLE", "RECLAIMABLE", "HIGHATOMIC")),
    ],
)
def test_migrate_types(cma: bool, isolation: bool, expected: Tuple[str, ...]) -> None:
    assert migrate_types(cma=cma, memory_isolation=isolation) == expected


def test_migratetype_name_for_another_layout() -> None:
    no_cma = migrate_types(cma=False)
    assert migratetype_name(4, no_cma) == "ISOLATE"
    assert migratetype_name(5, no_cma) == "migratetype_5"
    assert MIGRATE_TYPES == migrate_types()


# --------------------------------------------------------------------------- running kernel

_VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
_PAGE_ALLOC_FORMAT = Path("/sys/kernel/tracing/events/kmem/mm_page_alloc/format")


def _bpftool() -> Optional[str]:
    found = shutil.which("bpftool")
    if found is None and Path("/usr/sbin/bpftool").is_file():
        found = "/usr/sbin/bpftool"
    return found


@pytest.fixture(scope="module")
def vmlinux_c() -> str:
    """The running kernel's types as C, from its BTF."""
    bpftool = _bpftool()
    if not _VMLINUX_BTF.exists():
        pytest.skip(f"{_VMLINUX_BTF} missing: kernel without BTF")
    if bpftool is None:
        pytest.skip("bpftool not installed")
    result = subprocess.run(
        [bpftool, "btf", "dump", "file", str(_VMLINUX_BTF), "format", "c"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"bpftool btf dump failed: {result.stderr.strip()[:200]}")
    return result.stdout


@pytest.mark.bpf
def test_default_gfp_bits_match_running_kernel(vmlinux_c: str) -> None:
    kernel_bits = parse_gfp_bits(vmlinux_c)
    assert kernel_bits, "no ___GFP_*_BIT enumerators in the kernel BTF"
    assert kernel_bits == dict(GFP_BITS_6_18), (
        "the running kernel's GFP bit layout differs from GFP_BITS_6_18: "
        "build the decoder with GfpDecoder(parse_gfp_bits(...)) on this kernel"
    )


@pytest.mark.bpf
def test_migrate_types_match_running_kernel(vmlinux_c: str) -> None:
    body = re.search(r"enum migratetype \{(.*?)\};", vmlinux_c, re.S)
    assert body is not None
    values = {name: int(v) for name, v in re.findall(r"MIGRATE_(\w+) = (\d+)", body.group(1))}
    layout = migrate_types(cma="CMA" in values, memory_isolation="ISOLATE" in values)
    for number, name in enumerate(layout):
        assert values[name] == number
    assert values["TYPES"] == len(layout)


def _eval_c_mask(expr: str) -> int:
    """Evaluate a tracepoint's constant mask expression (ints, |, &, ~, <<, casts)."""
    cleaned = re.sub(r"\(\s*(?:unsigned long|gfp_t)\s*\)", "", expr)
    cleaned = re.sub(r"(\d+)UL\b", r"\1", cleaned)
    tree = ast.parse(cleaned.strip(), mode="eval")
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.BitOr, ast.BitAnd,
               ast.LShift, ast.Invert)  # fmt: skip
    for node in ast.walk(tree):
        assert isinstance(node, allowed), f"unexpected {type(node).__name__} in {expr!r}"
    value = eval(compile(tree, "<mask>", "eval"), {"__builtins__": {}})
    assert isinstance(value, int)
    return value & 0xFFFFFFFF


@pytest.mark.bpf
def test_gfp_flag_table_matches_tracepoint_format() -> None:
    """decode() tries the same masks, in the same order, as the kernel's show_gfp_flags()."""
    try:
        fmt = _PAGE_ALLOC_FORMAT.read_text()
    except OSError as exc:
        pytest.skip(f"cannot read {_PAGE_ALLOC_FORMAT}: {exc}")
    entries = re.findall(r'\{\( unsigned long\)(.+?), "(\w+)"\}', fmt)
    assert entries, "no __print_flags table in the mm_page_alloc format"
    kernel_table = [(name, _eval_c_mask(expr)) for expr, name in entries]
    assert list(GFP.flag_table) == kernel_table
