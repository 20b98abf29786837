"""Leak flame graphs: collapsed-stack text and one self-contained interactive HTML page."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Tuple, Union

from ..model.decode import format_bytes

Stack = Mapping[str, Any]
PathLike = Union[str, "os.PathLike[str]"]

ROOT_NAME = "all"
UNKNOWN_FRAME = "[unknown]"
NOSCRIPT_TOP = 25


# --------------------------------------------------------------------------- frames and merging

def _frame_text(frame: Any) -> str:
    """One frame as a single line of text; an empty frame becomes ``[unknown]``."""
    text = " ".join(str(frame).splitlines()).strip()
    return text or UNKNOWN_FRAME


def _folded_frame(frame: Any) -> str:
    """A frame safe for collapsed-stack text: no ';' (the separator) and no newline."""
    return _frame_text(frame).replace(";", ":")


def _root_first(stack: Stack, clean: Callable[[Any], str]) -> Tuple[str, ...]:
    """The stack's frames, outermost (root) first (`frames` arrive innermost first).

    A stack without frames is one ``[unknown]`` frame, so its bytes still show."""
    frames = stack.get("frames") or ()
    return tuple(clean(f) for f in reversed(list(frames))) or (UNKNOWN_FRAME,)


def _weight(stack: Stack) -> int:
    return int(stack.get("bytes") or 0)


def _merge(stacks: Iterable[Stack], clean: Callable[[Any], str]) -> Dict[Tuple[str, ...], int]:
    """Identical root-first stacks merged, weights (bytes) summed; non-positive weights dropped."""
    merged: Dict[Tuple[str, ...], int] = {}
    for stack in stacks:
        weight = _weight(stack)
        if weight <= 0:
            continue
        key = _root_first(stack, clean)
        merged[key] = merged.get(key, 0) + weight
    return merged


# --------------------------------------------------------------------------- collapsed stacks

def folded(stacks: Iterable[Stack]) -> str:
    """Collapsed-stack text (flamegraph.pl, speedscope): ``root;...;leaf BYTES`` per line, sorted."""
    lines = sorted((";".join(key), weight) for key, weight in _merge(stacks, _folded_frame).items())
    return "".join(f"{text} {weight}\n" for text, weight in lines)


def write_folded(path: PathLike, stacks: Iterable[Stack]) -> None:
    """Write `folded(stacks)` to `path` (UTF-8, '\\n' line ends)."""
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(folded(stacks))


# --------------------------------------------------------------------------- the merged tree

class _Node:
    __slots__ = ("name", "value", "count", "rate", "children")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0
        self.count = 0
        self.rate = 0.0
        self.children: Dict[str, _Node] = {}


def _tree(stacks: Iterable[Stack]) -> _Node:
    """The stacks merged into one tree under a root called "all", root-first."""
    root = _Node(ROOT_NAME)
    for stack in stacks:
        weight = _weight(stack)
        if weight <= 0:
            continue
        count = int(stack.get("count") or 0)
        rate = float(stack.get("bytes_per_second") or 0.0)
        node = root
        path = [root]
        for frame in _root_first(stack, _frame_text):
            child = node.children.get(frame)
            if child is None:
                child = node.children[frame] = _Node(frame)
            path.append(child)
            node = child
        for each in path:
            each.value += weight
            each.count += count
            each.rate += rate
    return root


def _flatten(root: _Node) -> Tuple[List[str], List[List[Any]]]:
    """Pre-order rows ``[name index, parent index, bytes, count, bytes/s]``; children by size.

    Flat (not nested) so that neither json nor the page's script recurses on deep stacks, and
    a parent always comes before its children."""
    names: List[str] = []
    index: Dict[str, int] = {}
    rows: List[List[Any]] = []
    todo: List[Tuple[_Node, int]] = [(root, -1)]
    while todo:
        node, parent = todo.pop()
        if node.name not in index:
            index[node.name] = len(names)
            names.append(node.name)
        me = len(rows)
        rows.append([index[node.name], parent, node.value, node.count, round(node.rate, 3)])
        kids = sorted(node.children.values(), key=lambda n: (-n.value, n.name))
        todo.extend((kid, me) for kid in reversed(kids))
    return names, rows


def _script_json(data: Any) -> str:
    """JSON that is inert inside a <script> element: no '<', '>' or '&' survive literally."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _format_value(value: float, unit: str) -> str:
    if unit == "bytes":
        return format_bytes(int(value))
    return f"{value:,.0f} {unit}"


def _percent(value: float, total: float) -> str:
    return f"{100.0 * value / total:.1f}%" if total > 0 else "0.0%"


def _noscript(stacks: Iterable[Stack], unit: str) -> str:
    merged = _merge(stacks, _frame_text)
    total = sum(merged.values())
    top = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:NOSCRIPT_TOP]
    items = []
    for key, weight in top:
        amount = html.escape(f"{_format_value(weight, unit)} ({_percent(weight, total)})")
        where = html.escape(" \u2190 ".join(reversed(key)))  # innermost first, like a traceback
        items.append(f"<li><b>{amount}</b> <code>{where}</code></li>")
    if not items:
        return "<noscript><p>No stacks.</p></noscript>"
    shown = f"top {len(items)} of {len(merged)}" if len(merged) > len(items) else "all"
    return ("<noscript><p>JavaScript is off, so there is no flame graph; "
            f"the {shown} stacks by {html.escape(unit)}, innermost frame first:</p><ol>"
            + "".join(items) + "</ol></noscript>")


# --------------------------------------------------------------------------- the page

_CSS = """
* { box-sizing: border-box; }
body { margin: 0; padding: 12px 16px; font: 13px system-ui, sans-serif; color: #222;
       background: #fafafa; }
h1 { font-size: 18px; margin: 0 0 2px; }
#fg-sub { color: #666; margin-bottom: 8px; }
#fg-controls { display: flex; flex-wrap: wrap; gap: 10px; align-items: center;
               margin-bottom: 8px; }
#fg-controls input[type=search] { width: 18em; padding: 3px 6px; }
#fg-match { color: #a0168c; font-weight: 600; }
#fg-chart { position: relative; width: 100%; overflow: hidden; background: #fff;
            border: 1px solid #ddd; }
.fr { position: absolute; overflow: hidden; white-space: nowrap; cursor: pointer;
      font: 12px monospace; line-height: 17px; padding: 0 3px; color: #111;
      border-radius: 2px; }
.fr:hover { outline: 1px solid #000; z-index: 1; }
.fr.anc { opacity: 0.55; }
.fr.dim { opacity: 0.3; }
.fr.match { outline: 2px solid #a0168c; outline-offset: -2px; font-weight: 700; }
#fg-status { min-height: 1.5em; margin-top: 6px; font-family: monospace; white-space: pre; }
#fg-empty { padding: 16px; color: #666; }
"""

# The page's behaviour, written for this project.  Data rows are
# [name index, parent index, bytes, count, bytes/s], parents before children.
_JS = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("fg-data").textContent);
  var ROW = 18, MIN_WIDTH = 0.5;
  var UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  var chart = document.getElementById("fg-chart");
  var status = document.getElementById("fg-status");
  var search = document.getElementById("fg-search");
  var matchInfo = document.getElementById("fg-match");
  var resetBtn = document.getElementById("fg-reset");
  var icicle = document.getElementById("fg-icicle");

  var nodes = [], maxDepth = 0;
  DATA.nodes.forEach(function (row, i) {
    var parent = row[1] < 0 ? null : nodes[row[1]];
    var node = {i: i, name: DATA.names[row[0]], parent: parent, value: row[2],
                count: row[3], rate: row[4], kids: [], depth: parent ? parent.depth + 1 : 0};
    if (parent) { parent.kids.push(node); }
    if (node.depth > maxDepth) { maxDepth = node.depth; }
    nodes.push(node);
  });
  var root = nodes[0], total = root ? root.value : 0;
  var zoom = root, term = "";

  function bytes(n) {
    var sign = n < 0 ? "-" : "", size = Math.abs(Math.round(n));
    if (size < 1024) { return sign + size + " B"; }
    var unit = 0, value = size;
    while (value >= 1024 && unit < UNITS.length - 1) { value /= 1024; unit += 1; }
    var text = value.toFixed(1);
    if (parseFloat(text) >= 1024 && unit < UNITS.length - 1) {
      value /= 1024; unit += 1; text = value.toFixed(1);
    }
    if (text.slice(-2) === ".0") { text = text.slice(0, -2); }
    return sign + text + " " + UNITS[unit];
  }
  function amount(n) {
    if (DATA.unit === "bytes") { return bytes(n); }
    return Math.round(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",") + " " + DATA.unit;
  }
  function percent(n) { return total > 0 ? (100 * n / total).toFixed(1) + "%" : "0.0%"; }
  function tip(node) { return node.name + ": " + amount(node.value) + " (" + percent(node.value) + ")"; }

  function moduleOf(name) {
    var m = /\(([^()]*)\)\s*$/.exec(name);
    return m ? m[1] : name;
  }
  function hash(text) {  // 32-bit FNV-1a over UTF-16 code units
    var h = 0x811c9dc5;
    for (var k = 0; k < text.length; k++) {
      h ^= text.charCodeAt(k);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    return h >>> 0;
  }
  function colour(node) {
    if (!node.parent) { return "hsl(0, 0%, 80%)"; }
    var h = hash(moduleOf(node.name));
    return "hsl(" + (h % 360) + ", " + (55 + (h >>> 12) % 25) + "%, " + (62 + (h >>> 20) % 14) + "%)";
  }

  var charWidth = 7.2;
  (function () {
    var ctx = document.createElement("canvas").getContext("2d");
    if (ctx) { ctx.font = "12px monospace"; charWidth = ctx.measureText("mmmmmmmmmm").width / 10 || 7.2; }
  })();
  function label(name, width) {
    var fit = Math.floor((width - 6) / charWidth);
    if (fit >= name.length) { return name; }
    if (fit < 3) { return ""; }
    return name.slice(0, fit - 1) + "\u2026";
  }

  function matches(node) {
    return term !== "" && node.parent !== null && node.name.toLowerCase().indexOf(term) >= 0;
  }

  function place(into, node, x, width, extra) {
    var el = document.createElement("div");
    el.className = "fr" + extra + (term === "" ? "" : matches(node) ? " match" : " dim");
    el.setAttribute("data-name", node.name);
    el.setAttribute("data-i", String(node.i));
    el.title = tip(node);
    var depthFromBase = icicle.checked ? node.depth : maxDepth - node.depth;
    el.style.left = x + "px";
    el.style.top = depthFromBase * ROW + "px";
    el.style.width = (width > 2 ? width - 1 : width) + "px";
    el.style.height = ROW - 1 + "px";
    el.style.background = colour(node);
    el.textContent = label(node.name, width);
    into.appendChild(el);
  }

  function render() {
    chart.textContent = "";
    resetBtn.disabled = zoom === root;
    if (!root || total <= 0) {
      var empty = document.createElement("div");
      empty.id = "fg-empty";
      empty.textContent = "No stacks to show.";
      chart.appendChild(empty);
      return;
    }
    var width = chart.clientWidth || 1000;
    chart.style.height = (maxDepth + 1) * ROW + "px";
    var frag = document.createDocumentFragment();
    for (var a = zoom.parent; a; a = a.parent) { place(frag, a, 0, width, " anc"); }
    var scale = zoom.value > 0 ? width / zoom.value : 0;
    var todo = [[zoom, 0]];
    while (todo.length) {
      var item = todo.pop(), node = item[0], x = item[1], w = node.value * scale;
      if (w < MIN_WIDTH) { continue; }
      place(frag, node, x, w, "");
      var cx = x;
      for (var k = 0; k < node.kids.length; k++) {
        todo.push([node.kids[k], cx]);
        cx += node.kids[k].value * scale;
      }
    }
    chart.appendChild(frag);
    showMatch();
  }

  function showMatch() {
    if (term === "") { matchInfo.textContent = ""; return; }
    var sum = 0, todo = root ? [root] : [];
    while (todo.length) {
      var node = todo.pop();
      if (matches(node)) { sum += node.value; continue; }  // nested matches count once
      for (var k = 0; k < node.kids.length; k++) { todo.push(node.kids[k]); }
    }
    matchInfo.textContent = "Matched: " + amount(sum) + " (" + percent(sum) + ")";
  }

  function frameOf(event) {
    var el = event.target && event.target.closest ? event.target.closest(".fr") : null;
    return el ? nodes[Number(el.getAttribute("data-i"))] : null;
  }
  function describe(node) {
    var more = [];
    if (node.count) { more.push("count " + node.count); }
    if (node.rate) { more.push(bytes(node.rate) + "/s"); }
    return tip(node) + (more.length ? "  [" + more.join(", ") + "]" : "");
  }
  function idle() {
    return zoom === root ? "Hover a frame for details; click to zoom."
                         : "Zoomed into " + tip(zoom) + ". Reset zoom or press Esc.";
  }

  chart.addEventListener("mouseover", function (event) {
    var node = frameOf(event);
    status.textContent = node ? describe(node) : idle();
  });
  chart.addEventListener("mouseleave", function () { status.textContent = idle(); });
  chart.addEventListener("click", function (event) {
    var node = frameOf(event);
    if (node) { zoom = node; render(); status.textContent = idle(); }
  });
  resetBtn.addEventListener("click", function () { zoom = root; render(); status.textContent = idle(); });
  search.addEventListener("input", function () { term = search.value.toLowerCase(); render(); });
  icicle.addEventListener("change", render);
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") { return; }
    if (document.activeElement === search && search.value !== "") {
      search.value = ""; term = ""; render();
    } else if (zoom !== root) {
      zoom = root; render(); status.textContent = idle();
    }
  });
  var pending = false;
  window.addEventListener("resize", function () {
    if (pending) { return; }
    pending = true;
    window.requestAnimationFrame(function () { pending = false; render(); });
  });

  render();
  status.textContent = idle();
})();
"""


def flamegraph_html(stacks: Iterable[Stack], title: str, unit: str = "bytes") -> str:
    """One self-contained HTML page (no network) with an interactive flame graph of `stacks`.

    Widths are bytes; `unit` only names them ("bytes" is shown as KiB/MiB/...)."""
    stacks = list(stacks)
    root = _tree(stacks)
    names, rows = _flatten(root)
    data = {"title": title, "unit": unit, "total": root.value, "names": names, "nodes": rows}
    script = _JS
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    safe_title = html.escape(title)
    merged_count = len(_merge(stacks, _frame_text))
    subtitle = html.escape(
        f"{_format_value(root.value, unit)} in {merged_count} stack"
        f"{'' if merged_count == 1 else 's'}; width is {unit}."
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{safe_title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f'<h1 id="fg-title">{safe_title}</h1>\n<div id="fg-sub">{subtitle}</div>\n'
        '<div id="fg-controls">\n'
        '<button type="button" id="fg-reset" disabled>Reset zoom</button>\n'
        '<input type="search" id="fg-search" placeholder="Search frames (substring)"'
        ' aria-label="Search frames">\n'
        '<span id="fg-match"></span>\n'
        '<label><input type="checkbox" id="fg-icicle"> icicle (root at top)</label>\n'
        "</div>\n"
        '<div id="fg-chart" role="img" aria-label="flame graph"></div>\n'
        '<div id="fg-status"></div>\n'
        f"{_noscript(stacks, unit)}\n"
        f'<script type="application/json" id="fg-data">{_script_json(data)}</script>\n'
        f"<script>{script}</script>\n"
        "</body>\n</html>\n"
    )


def write_flamegraph(path: PathLike, stacks: Iterable[Stack], title: str,
                     unit: str = "bytes") -> None:
    """Write `flamegraph_html(stacks, title, unit)` to `path` (UTF-8)."""
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(flamegraph_html(stacks, title, unit))
