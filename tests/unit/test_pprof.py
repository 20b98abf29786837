"""The pprof writer: profile.proto's messages as encoded, read back field by field (`go tool
pprof` reads what `memtrace leaks --pprof` writes in tests/e2e/test_leaks_cli.py)."""

from __future__ import annotations

import gzip

import pytest

from tracer.views.pprof import _read_varint, _varint, decode_fields, encode_profile, write_pprof

pytestmark = pytest.mark.unit

STACKS = [
    {"frames": ["__memset_avx2 (libc.so.6)", "leak_here (leaky)", "main (leaky)"],
     "sources": [None, "leaky.c:30", "leaky.c:99"], "bytes": 4 << 20, "count": 8, "pid": 42,
     "comm": "leaky", "cgroup": "/box"},
    {"frames": ["churn (leaky)", "main (leaky)"], "bytes": 1 << 20, "count": 2, "pid": 42,
     "comm": "leaky"},
]


def _messages(data: bytes, field: int) -> list[list]:
    return [decode_fields(v) for f, v in decode_fields(data) if f == field]


def _packed(payload: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(payload):
        v, pos = _read_varint(payload, pos)
        out.append(v)
    return out


@pytest.mark.parametrize("value, encoded", [
    (0, b"\x00"), (1, b"\x01"), (300, b"\xac\x02"), (-1, b"\xff" * 9 + b"\x01")])
def test_varints(value, encoded):
    assert _varint(value) == encoded


def test_the_profile_reads_back():
    data = encode_profile(STACKS, time_ns=5, duration_ns=7, period=("space", "bytes", 4096),
                          comments=["memtrace leaks"])
    top = decode_fields(data)
    strings = [v.decode() for f, v in top if f == 6]
    assert strings[0] == ""
    types = [(strings[dict(m)[1]], strings[dict(m)[2]]) for m in _messages(data, 1)]
    assert types == [("samples", "count"), ("space", "bytes")]
    functions = {dict(m)[1]: dict(m) for m in _messages(data, 5)}
    names = {fid: strings[f[2]] for fid, f in functions.items()}
    assert sorted(names.values()) == ["__memset_avx2", "churn", "leak_here", "main"]
    locations = {dict(m)[1]: m for m in _messages(data, 4)}
    samples = _messages(data, 2)
    assert len(samples) == 2
    first = dict((f, v) for f, v in samples[0] if f in (1, 2))
    loc_ids = _packed(first[1])
    assert _packed(first[2]) == [8, 4 << 20]
    # innermost first, each location's line naming its function (and line where known)
    lines = [decode_fields(dict(locations[i])[4]) for i in loc_ids]
    assert [names[dict(line)[1]] for line in lines] == ["__memset_avx2", "leak_here", "main"]
    assert [dict(line).get(2, 0) for line in lines] == [0, 30, 99]
    labels = [decode_fields(v) for f, v in samples[0] if f == 3]
    got = {strings[dict(lab)[1]]: (strings[dict(lab)[2]] if 2 in dict(lab) else dict(lab)[3])
           for lab in labels}
    assert got == {"comm": "leaky", "cgroup": "/box", "pid": 42}
    rest = dict((f, v) for f, v in top if f in (9, 10, 12, 14))
    assert (rest[9], rest[10], rest[12], strings[rest[14]]) == (5, 7, 4096, "space")
    assert "memtrace leaks" in strings
    # "main (leaky)" is one function, shared by both samples (at two locations: one has a line)
    second = dict((f, v) for f, v in samples[1] if f in (1, 2))
    last = decode_fields(dict(locations[_packed(second[1])[-1]])[4])
    assert dict(last)[1] == dict(lines[-1])[1]


def test_the_file_is_gzipped(tmp_path):
    path = tmp_path / "leaks.pb.gz"
    write_pprof(path, STACKS)
    assert gzip.decompress(path.read_bytes()) == encode_profile(STACKS)


def test_hostile_text_is_only_data():
    stacks = [{"frames": ["\x1b[2J (evil\udcff)"], "bytes": 1, "count": 1, "comm": "a\nb"}]
    data = encode_profile(stacks)
    strings = [v for f, v in decode_fields(data) if f == 6]
    assert b"\x1b[2J (evil\xff)" in strings and b"a\nb" in strings


def test_decoder_refuses_truncated_input():
    with pytest.raises(ValueError):
        decode_fields(b"\x0a\x05ab")
    with pytest.raises(ValueError):
        decode_fields(b"\x08\xff")
