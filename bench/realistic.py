#!/usr/bin/env python3
"""A realistic allocation-heavy job: build a few hundred MB of Python objects and
serialise them, the way a batch/ETL step does.

It builds ROWS records (dicts of ints, floats, strings and a small list), keeps them
all alive (a few hundred MB of heap: many brk/mmap calls and page faults, so
mm_page_alloc fires hundreds of thousands of times), serialises them with json and
pickle to /dev/null, then frees them. Work is fixed; it prints its own elapsed time:

    realistic total_s=<s> build_s=<s> serialise_s=<s> rows=<n> peak_rss_mib=<MiB>

Usage: python bench/realistic.py [--rows N]
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import sys
import time

DEFAULT_ROWS = 500_000


def build(rows: int) -> list[dict]:
    out = []
    for i in range(rows):
        out.append({
            "id": i,
            "name": f"user-{i:08d}",
            "email": f"user{i}@example.org",
            "score": i * 0.5,
            "tags": [f"t{i % 7}", f"g{i % 13}", str(i % 101)],
            "active": i % 3 == 0,
        })
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    data = build(args.rows)
    t1 = time.monotonic()
    with open("/dev/null", "w") as null:
        null.write(json.dumps(data))
    with open("/dev/null", "wb") as bnull:
        blob = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        bnull.write(blob)
        del blob
    del data
    t2 = time.monotonic()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"realistic total_s={t2 - t0:.6f} build_s={t1 - t0:.6f} serialise_s={t2 - t1:.6f} "
          f"rows={args.rows} peak_rss_mib={peak_mib:.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
