"""`memtrace report FILE`: a recording's totals, causes and findings as plain tables or one JSON object."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any, Optional, Sequence, TextIO

from ..diagnose.growth import what_grew
from ..model.decode import format_bytes, order_to_bytes
from ..model.failures import Failure
from ..recording import format as jsonout
from ..recording.report import Report
from ..recording.writer import SIZE_LIMIT_DROP
from .dashboard import Row, ascii_table
from .terminal import inert_ascii

MAX_FINDINGS = 50  # rows of the findings table (the JSON has them all)
MAX_PROBLEMS = 10  # skipped lines named in the text (the JSON and stderr name them all)

FROM_SUMMARY = "counts: from the summary line: the exact in-kernel totals"
FROM_LINES = ("counts: from the failure lines: the recording has no summary line (it was cut "
              "short, e.g. killed), so attempts that had a fallback and events lost before "
              "they were written are not in them")


def _table(title: str, columns: Sequence[tuple[str, str]], rows: Sequence[Row],
           cap: Optional[int] = None) -> list[str]:
    return ["", *ascii_table(title, columns, rows, cap)]


def _largest(d: dict[Any, int]) -> list[tuple[Any, int]]:
    return sorted(d.items(), key=lambda t: (-t[1], str(t[0])))


def _kinds(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in d.items() if n)


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _order_size(order: str) -> str:
    return format_bytes(order_to_bytes(int(order)))


def _tables(r: Report) -> list[str]:
    c = r.counts
    procs = sorted(((int(pid), v["comm"], v["failures"]) for pid, v in c["by_process"].items()),
                   key=lambda t: (-t[2], t[0]))
    calls = sorted(((name, err, n) for name, errs in c["by_syscall"].items()
                    for err, n in errs.items()), key=lambda t: (-t[2], t[0], t[1]))
    pages = sorted(((int(o), _order_size(o), gfp, n) for o, gfps in
                    c["page_alloc_by_order"].items() for gfp, n in gfps.items()),
                   key=lambda t: (t[0], -t[3], t[2]))
    opp = sorted((int(o), _order_size(o), n) for o, n in
                 c["opportunistic_page_alloc_by_order"].items() if n)
    memcg = sorted(((cg, ev, n) for cg, evs in c["memcg_events"].items()
                    for ev, n in evs.items()), key=lambda t: (-t[2], t[0], t[1]))
    findings = [(who, f.cause or "", f.confidence or "", f.explanation or "")
                for who, f in r.findings]
    out: list[str] = []
    for title, cols, rows, cap in (
        ("Failures by process", [("pid", "right"), ("comm", "left"), ("count", "right")],
         procs, None),
        ("Failures by cgroup", [("cgroup", "left"), ("count", "right")],
         _largest(c["by_cgroup"]), None),
        ("Failures by syscall", [("syscall", "left"), ("errno", "left"), ("count", "right")],
         calls, None),
        ("Page allocation failures by order x GFP",
         [("order", "right"), ("size", "right"), ("gfp", "left"), ("failures", "right")],
         pages, None),
        ("Opportunistic page allocations (had a fallback; not failures)",
         [("order", "right"), ("size", "right"), ("attempts", "right")], opp, None),
        ("Memory cgroup limit hits", [("cgroup", "left"), ("event", "left"),
                                      ("count", "right")], memcg, None),
        ("Failures by cause (failure lines)", [("cause", "left"), ("events", "right")],
         _largest(r.by_cause), None),
        ("Findings: the latest per process / cgroup",
         [("who", "left"), ("cause", "left"), ("confidence", "left"), ("why", "left")],
         findings, MAX_FINDINGS),
    ):
        if rows:
            out += _table(title, cols, rows, cap)
    return out


def report_text(r: Report) -> str:
    """The report as plain ASCII text; everything the recording says is made inert (a
    recording is a file anyone may have written)."""
    c = r.counts
    lines = [f"memtrace report of {r.path}"]
    what = (f"recorded by memtrace {r.ready.version} on kernel {r.ready.kernel}"
            if r.ready is not None else "no ready line: memtrace version and kernel unknown")
    span = ""
    if r.first is not None and r.last is not None:
        span = f", {_when(r.first)} to {_when(r.last)}"
    lines.append(f"{what}; {r.failure_lines} failure line"
                 f"{'' if r.failure_lines == 1 else 's'}{span}")
    lines.append(FROM_SUMMARY if r.counts_from == "summary" else FROM_LINES)
    kinds = {k: n for k, n in c["by_kind"].items() if k != "memcg"}
    lines.append(f"failures: {c['total']}" + (f" ({_kinds(kinds)})" if _kinds(kinds) else ""))
    hits = c["by_kind"].get("memcg", 0)
    if hits:
        lines.append(f"memory cgroup limit hits: {hits}")
    opp = c["opportunistic"]
    if any(opp.values()):
        lines.append(f"opportunistic (not failures): {sum(opp.values())} ({_kinds(opp)})")
    if not c["total"] and not hits:
        lines.append("no allocation failures recorded")
    lines += _tables(r)
    if r.oom_kills:
        lines += ["", f"What grew before the OOM kills (the latest {len(r.oom_kills)}, newest "
                      "first)"]
        lines += [f"{_when(f.time)} pid {f.pid} ({f.comm}) killed: {what_grew(f.grew, f.pid)}"
                  for f in r.oom_kills]
    lines.append("")
    if r.dropped is None:
        lines.append("dropped: unknown (no summary line)")
    else:
        lines.append("dropped: " + (", ".join(f"{k} {n}" for k, n in r.dropped.items())
                                    or "none"))
        unwritten = r.dropped.get(SIZE_LIMIT_DROP, 0)
        if unwritten:
            lines.append(f"{unwritten} failure{'' if unwritten == 1 else 's'} not written "
                         "(the recording reached its --max-size): the causes and findings "
                         "leave them out, the counts do not")
    if r.problems:
        named = ", ".join(f"line {n} ({why})" for n, why in r.problems[:MAX_PROBLEMS])
        more = len(r.problems) - MAX_PROBLEMS
        lines.append(f"skipped {len(r.problems)} unreadable line"
                     f"{'' if len(r.problems) == 1 else 's'}: {named}"
                     + (f", +{more} more" if more > 0 else ""))
    return "\n".join(inert_ascii(x) for x in lines) + "\n"


def _grew(f: Failure) -> dict[str, Any]:
    """An OOM kill's `grew`, as in its failure line; nothing for other failures."""
    return {"grew": [g.to_json() for g in f.grew]} if f.kind == "oom_kill" else {}


def report_obj(r: Report) -> dict[str, Any]:
    """The report as one JSON object (type "report")."""

    def iso(t: Optional[float]) -> Optional[str]:
        return None if t is None else jsonout.iso_time(t)

    return {
        "type": "report",
        "file": r.path,
        "version": r.ready.version if r.ready is not None else None,
        "kernel": r.ready.kernel if r.ready is not None else None,
        "counts_from": r.counts_from,
        "failure_lines": r.failure_lines,
        "first": iso(r.first),
        "last": iso(r.last),
        "counts": r.counts,
        "dropped": r.dropped,
        "by_cause": r.by_cause,
        "findings": [{"who": who, "time": jsonout.iso_time(f.time), "kind": f.kind,
                      "pid": f.pid, "comm": f.comm, "cgroup": f.cgroup, "syscall": f.syscall,
                      "errno": f.errno, "size": f.size, "cause": f.cause,
                      "explanation": f.explanation, "confidence": f.confidence,
                      "evidence": dict(f.evidence), **_grew(f)} for who, f in r.findings],
        "oom_kills": [{"time": jsonout.iso_time(f.time), "pid": f.pid, "comm": f.comm,
                       "cgroup": f.cgroup, "grew": [g.to_json() for g in f.grew]}
                      for f in r.oom_kills],
        "problems": [{"line": n, "problem": why} for n, why in r.problems],
    }


def run_report(r: Report, *, as_json: bool, out: Optional[TextIO] = None) -> None:
    out = out or sys.stdout
    out.write(jsonout.dumps(report_obj(r)) + "\n" if as_json else report_text(r))
    out.flush()
