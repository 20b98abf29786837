"""The JSON-lines contract of `memtrace watch --json`: ready, failure and summary objects."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Mapping

from .model import Failure, KernelFailure, Ready, Snapshot, summary_counts


def iso_time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def ready_obj(r: Ready) -> dict[str, Any]:
    return {"type": "ready", "version": r.version, "kernel": r.kernel,
            "probes": [p.to_json() for p in r.probes], "notes": list(r.notes)}


def _kernel_failure_obj(k: KernelFailure) -> dict[str, Any]:
    return {"kind": k.kind, "size": k.size, "order": k.order, "gfp": k.gfp,
            "opportunistic": k.opportunistic, "cache": k.cache,
            "kernel_stack": list(k.kernel_stack)}


def failure_obj(f: Failure) -> dict[str, Any]:
    return {
        "type": "failure",
        "time": iso_time(f.time),
        "kind": f.kind,
        "pid": f.pid,
        "tid": f.tid,
        "comm": f.comm,
        "cgroup": f.cgroup,
        "cgroup_id": f.cgroup_id,
        "syscall": f.syscall,
        "errno": f.errno,
        "size": f.size,
        "order": f.order,
        "gfp": f.gfp,
        "cause": f.cause,
        "explanation": f.explanation,
        "evidence": dict(f.evidence),
        "confidence": f.confidence,
        "user_stack": list(f.user_stack),
        "kernel_stack": list(f.kernel_stack),
        "args": dict(f.args),
        "opportunistic": f.opportunistic,
        "linked": [_kernel_failure_obj(k) for k in f.linked],
        "detail": dict(f.detail),
    }


def summary_obj(s: Snapshot, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"type": "summary", "counts": summary_counts(s), "dropped": dict(s.drops)}
    if extra:
        obj.update(extra)
    return obj


def dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False, default=str)
