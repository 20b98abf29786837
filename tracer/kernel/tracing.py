"""BTF-typed tracepoints (tp_btf): a program bcc compiled, loaded and attached by hand.

bcc 0.26 loads raw tracepoint programs but not tp_btf ones (its loader looks the target up
as a kernel function, not as the tracepoint's btf_trace_<name> typedef). A tp_btf program
sees its arguments as typed kernel pointers: reading a field is one load checked by the
verifier, where a raw tracepoint program needs a helper call (bpf_probe_read_kernel). For
sys_exit, which runs on every syscall, that is most of the program's cost.

So: the instructions bcc compiled (map descriptors already in them) go to BPF_PROG_LOAD as
BPF_PROG_TYPE_TRACING with expected attach type BPF_TRACE_RAW_TP and the tracepoint's BTF
id, and BPF_RAW_TRACEPOINT_OPEN with no name attaches it (the kernel takes the target from
the program). The fds are handed to the bcc object, whose cleanup closes them as its own.
The bpf(2) attribute layouts are the kernel's stable UAPI (include/uapi/linux/bpf.h)."""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Any, Callable, Optional

_NR_BPF = {"x86_64": 321, "aarch64": 280, "s390x": 351, "ppc64le": 361}.get(platform.machine())
_BPF_PROG_LOAD = 5
_BPF_RAW_TRACEPOINT_OPEN = 17
_BPF_PROG_TYPE_TRACING = 26
_BPF_TRACE_RAW_TP = 23
_LOG_SIZE = 1 << 16

# `MEMTRACE_TP_BTF=0` keeps memtrace on raw tracepoints (the path kernels without tp_btf
# take; tests run both)
ENV = "MEMTRACE_TP_BTF"


class _ProgLoad(ctypes.Structure):
    """union bpf_attr, the BPF_PROG_LOAD command's part (up to attach_btf_id)."""

    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
                ("prog_ifindex", ctypes.c_uint32), ("expected_attach_type", ctypes.c_uint32),
                ("prog_btf_fd", ctypes.c_uint32), ("func_info_rec_size", ctypes.c_uint32),
                ("func_info", ctypes.c_uint64), ("func_info_cnt", ctypes.c_uint32),
                ("line_info_rec_size", ctypes.c_uint32), ("line_info", ctypes.c_uint64),
                ("line_info_cnt", ctypes.c_uint32), ("attach_btf_id", ctypes.c_uint32)]


class _RawTracepointOpen(ctypes.Structure):
    """union bpf_attr, the BPF_RAW_TRACEPOINT_OPEN command's part."""

    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32)]


_libc: Optional[ctypes.CDLL] = None


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(cmd, attr): the fd it returns, or OSError."""
    global _libc
    if _NR_BPF is None:
        raise OSError(0, f"no bpf syscall number known for {platform.machine()}")
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    fd = _libc.syscall(ctypes.c_long(_NR_BPF), ctypes.c_long(cmd), ctypes.byref(attr),
                       ctypes.c_uint(ctypes.sizeof(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


def load(insns: bytes, name: str, btf_id: int) -> int:
    """Load `insns` as a tp_btf program on the tracepoint whose btf_trace_ typedef is `btf_id`;
    its fd, or OSError whose message ends with the verifier's last words."""
    code = ctypes.create_string_buffer(insns, len(insns))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(_LOG_SIZE)
    attr = _ProgLoad(prog_type=_BPF_PROG_TYPE_TRACING, insn_cnt=len(insns) // 8,
                     insns=ctypes.addressof(code), license=ctypes.addressof(license),
                     prog_name=name.encode()[:15], expected_attach_type=_BPF_TRACE_RAW_TP,
                     attach_btf_id=btf_id)
    try:
        return _bpf(_BPF_PROG_LOAD, attr)
    except OSError:
        pass
    # again with the verifier's log, only to say why
    attr.log_level, attr.log_size, attr.log_buf = 1, _LOG_SIZE, ctypes.addressof(log)
    try:
        return _bpf(_BPF_PROG_LOAD, attr)
    except OSError as e:
        # the verifier ends with its statistics ("processed N insns ..."): the reason is the
        # line before them
        lines = [line for line in log.value.decode("utf-8", "replace").strip().splitlines()
                 if line and not line.startswith(("processed ", "verification time"))]
        why = f": {lines[-1]}" if lines else ""
        raise OSError(e.errno, f"{name} did not load as tp_btf ({e.strerror}){why}") from None


def attach(prog_fd: int) -> int:
    """Attach a loaded tp_btf program to its tracepoint; the link's fd (closing it detaches)."""
    return _bpf(_BPF_RAW_TRACEPOINT_OPEN, _RawTracepointOpen(name=0, prog_fd=prog_fd))


_TRIVIAL = bytes([0xb7, 0, 0, 0, 0, 0, 0, 0,  # r0 = 0
                  0x95, 0, 0, 0, 0, 0, 0, 0])  # exit


def checker(type_id: Callable[[str], Optional[int]],
            environ: Optional[dict[str, str]] = None) -> Callable[[str], Optional[str]]:
    """A checker saying why a tp_btf program cannot run on a tracepoint here (None: it can):
    type_id(name) is the tracepoint's btf_trace_ typedef id in vmlinux BTF, or None."""
    env = os.environ if environ is None else environ
    answers: dict[str, Optional[str]] = {}  # asked again for the notes: one trial load each

    def trial(target: str) -> Optional[str]:
        if env.get(ENV, "1") == "0":
            return f"tp_btf turned off ({ENV}=0)"
        tid = type_id(target)
        if tid is None:
            return f"no btf_trace_{target} in this kernel's BTF"
        try:
            os.close(load(_TRIVIAL, "mt_probe_tp_btf", tid))
        except OSError as e:
            return f"this kernel refuses tp_btf programs ({e.strerror})"
        return None

    def check(target: str) -> Optional[str]:
        if target not in answers:
            answers[target] = trial(target)
        return answers[target]

    return check


def load_and_attach(bpf: Any, fn_name: str, target: str, btf_id: int) -> None:
    """Load bcc object `bpf`'s compiled function `fn_name` as tp_btf on `target` and attach
    it; the bcc object owns both fds from then on (its cleanup detaches and closes them, and
    cost.py finds the program among its functions). OSError if it did not."""
    fd = load_fd(bpf, fn_name, btf_id)
    try:
        link = attach(fd)
    except OSError as e:
        raise OSError(e.errno, f"{fn_name} did not attach to {target} ({e.strerror})") from None
    bpf.raw_tracepoint_fds[target.encode()] = link


def load_fd(bpf: Any, fn_name: str, btf_id: int) -> int:
    """Load (not attach) bcc object `bpf`'s function `fn_name` as tp_btf, e.g. to be
    tail-called by one that is; the bcc object owns the fd."""
    key = fn_name.encode()
    fn = bpf.funcs.get(key)
    if fn is not None:
        return int(fn.fd)
    fd = load(bpf.dump_func(key), fn_name, btf_id)
    bpf.funcs[key] = bpf.Function(bpf, key, fd)
    return fd
