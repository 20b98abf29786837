"""Leak profiles as pprof files: gzipped profile.proto (Go's pprof, Pyroscope, Parca), written
by a small protobuf encoder of the few message types the format has."""

from __future__ import annotations

import gzip
import os
import re
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]
Stack = Mapping[str, Any]

# "function (module)" as tracer/unwind formats a frame; "file.c:42" as it gives sources.
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<module>[^()]*)\)$")
_SOURCE = re.compile(r"^(?P<file>.*):(?P<line>\d+)$")


# ----------------------------------------------------------------------------- protobuf wire

def _varint(value: int) -> bytes:
    """A base-128 varint; negative int64 values as their two's complement (10 bytes)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _int(field: int, value: int) -> bytes:
    """An int64/uint64 field (wire type 0); zero is the default and is left out."""
    return _key(field, 0) + _varint(value) if value else b""


def _bytes(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): a string, a message or a packed array."""
    return _key(field, 2) + _varint(len(payload)) + payload


def _packed(field: int, values: Sequence[int]) -> bytes:
    return _bytes(field, b"".join(_varint(v) for v in values)) if values else b""


# ----------------------------------------------------------------------------- profile.proto

class _Strings:
    """The profile's string table: index 0 is the empty string."""

    def __init__(self) -> None:
        self.table: list[str] = [""]
        self._index: dict[str, int] = {"": 0}

    def __call__(self, text: str) -> int:
        found = self._index.get(text)
        if found is None:
            found = self._index[text] = len(self.table)
            self.table.append(text)
        return found


def _split_frame(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame)
    return (m.group("name"), m.group("module")) if m else (frame, "")


def _split_source(source: Optional[str]) -> tuple[str, int]:
    if not source:
        return "", 0
    m = _SOURCE.match(source)
    return (m.group("file"), int(m.group("line"))) if m else (source, 0)


def encode_profile(stacks: Iterable[Stack], *, sample_types: Sequence[tuple[str, str]] =
                   (("samples", "count"), ("space", "bytes")),
                   value_keys: Sequence[str] = ("count", "bytes"),
                   time_ns: int = 0, duration_ns: int = 0,
                   period: Optional[tuple[str, str, int]] = None,
                   comments: Sequence[str] = ()) -> bytes:
    """The uncompressed profile.proto of `stacks` (dicts with "frames" innermost first,
    optional "sources" per frame, the values named by `value_keys`, and "pid", "comm" and
    "cgroup" that become labels). A frame at a source line is one Location; functions (by
    frame) and mappings (by module) are shared."""
    strings = _Strings()
    functions: dict[str, tuple[int, str, str]] = {}  # frame -> (id, name, source file)
    mappings: dict[str, int] = {}
    mapping_msgs: list[bytes] = []
    locations: dict[tuple[str, str], int] = {}
    location_msgs: list[bytes] = []
    samples: list[bytes] = []

    def mapping_id(module: str) -> int:
        if module not in mappings:
            mappings[module] = len(mappings) + 1
            mapping_msgs.append(_int(1, mappings[module]) + _int(5, strings(module))
                                + _int(7, 1))  # has_functions: symbols are resolved
        return mappings[module]

    def location_id(frame: str, source: Optional[str]) -> int:
        key = (frame, source or "")
        found = locations.get(key)
        if found is not None:
            return found
        name, module = _split_frame(frame)
        filename, line = _split_source(source)
        fid, _name, known_file = functions.get(frame, (len(functions) + 1, name, ""))
        functions[frame] = (fid, name, known_file or filename)
        line_msg = _int(1, fid) + _int(2, line)
        loc = locations[key] = len(locations) + 1
        msg = _int(1, loc) + (_int(2, mapping_id(module)) if module else b"")
        location_msgs.append(msg + _bytes(4, line_msg))
        return loc

    for stack in stacks:
        frames = [str(f) for f in (stack.get("frames") or ["[unknown]"])]
        sources = list(stack.get("sources") or [])
        sources += [None] * (len(frames) - len(sources))
        ids = [location_id(f, s) for f, s in zip(frames, sources)]
        values = [int(stack.get(k) or 0) for k in value_keys]
        labels = b""
        for key in ("comm", "cgroup"):
            if stack.get(key):
                labels += _bytes(3, _int(1, strings(key)) + _int(2, strings(str(stack[key]))))
        if stack.get("pid"):
            labels += _bytes(3, _int(1, strings("pid")) + _int(3, int(stack["pid"])))
        samples.append(_packed(1, ids) + _packed(2, values) + labels)

    out = bytearray()
    for kind, unit in sample_types:
        out += _bytes(1, _int(1, strings(kind)) + _int(2, strings(unit)))
    for sample in samples:
        out += _bytes(2, sample)
    for msg in mapping_msgs:
        out += _bytes(3, msg)
    for msg in location_msgs:
        out += _bytes(4, msg)
    for frame, (fid, name, filename) in functions.items():
        out += _bytes(5, _int(1, fid) + _int(2, strings(name)) + _int(3, strings(frame))
                      + _int(4, strings(filename)))
    comment_ids = [strings(c) for c in comments]
    period_msg = b""
    if period is not None:
        period_msg = _bytes(11, _int(1, strings(period[0])) + _int(2, strings(period[1])))
        period_msg += _int(12, period[2])
    default_type = strings(sample_types[-1][0]) if sample_types else 0
    # Every string is in the table now: write it (index 0, "", included).
    for text in strings.table:
        out += _bytes(6, text.encode("utf-8", "surrogateescape"))
    out += _int(9, time_ns) + _int(10, duration_ns) + period_msg
    out += _packed(13, comment_ids) + _int(14, default_type)
    return bytes(out)


def write_pprof(path: PathLike, stacks: Iterable[Stack], **kw: Any) -> None:
    """Write the gzipped profile.proto of `stacks` to `path` (see encode_profile)."""
    data = gzip.compress(encode_profile(stacks, **kw), mtime=0)
    with open(path, "wb") as out:
        out.write(data)


# ----------------------------------------------------------------------------- reading back

def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def decode_fields(data: bytes) -> list[tuple[int, Union[int, bytes]]]:
    """(field, value) of one message: an int for varints, bytes for length-delimited ones
    (for tests and tools; other wire types are refused)."""
    out: list[tuple[int, Union[int, bytes]]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            out.append((field, value))
        elif wire == 2:
            n, pos = _read_varint(data, pos)
            if pos + n > len(data):
                raise ValueError("truncated field")
            out.append((field, data[pos:pos + n]))
            pos += n
        else:
            raise ValueError(f"wire type {wire} is not used by profile.proto")
    return out
