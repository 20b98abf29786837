"""The leak flame graph page in a real headless Chromium: drawn by its script, interactive, visible."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from tests import needs
from tracer.views.flamegraph import flamegraph_html, write_flamegraph

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
TIMEOUT = 60
MIB = 1 << 20
EVIL = "</script><b>x (evil)"

STACKS = [
    {"bytes": 50 * MIB, "count": 500, "bytes_per_second": 100_000.0,
     "frames": ["leak_here (leaky)", "grow_cache (leaky)", "handle_request (server)",
                "serve_forever (socketserver)", "main (app)"]},
    {"bytes": 12 * MIB, "count": 100, "bytes_per_second": 20_000.0,
     "frames": ["malloc (libc.so.6)", "parse_json (json)", "handle_request (server)",
                "serve_forever (socketserver)", "main (app)"]},
    {"bytes": 8 * MIB, "count": 80, "bytes_per_second": 10_000.0,
     "frames": ["PyList_Append (python3.11)", "build_index (indexer)", "main (app)"]},
    {"bytes": 3 * MIB, "count": 8, "bytes_per_second": 1_000.0,
     "frames": [EVIL, "weird;name (x)", "main (app)"]},
    {"bytes": 1 * MIB, "count": 8, "bytes_per_second": 1_000.0,
     "frames": ["tiny (mod)", "other (mod2)", "main (app)"]},
]  # 74 MiB in all; the "leaky" module holds 50 MiB (67.6%)

def _chromium(tmp_path: Path, page: Path, *extra: str) -> str:
    """Run headless Chromium on `page` with `extra` flags; its stdout. Killed whole on timeout."""
    chromium = needs.program(CHROMIUM, "chromium")
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=2000",
            *extra, page.resolve().as_uri()]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "HOME": str(tmp_path)})
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {TIMEOUT} s: {argv}")
    finally:
        try:  # helpers (zygote, renderers) that outlived the browser
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode("utf-8", errors="replace")


class _Frames(HTMLParser):
    """The frame elements (class "fr") the page's script created, and every element id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.frames: List[Dict[str, str]] = []
        self.ids: List[str] = []
        self._open: Optional[Dict[str, str]] = None

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "div" and "fr" in a.get("class", "").split():
            a["text"] = ""
            self.frames.append(a)
            self._open = a

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open["text"] += data


def _frames(dom: str) -> _Frames:
    parser = _Frames()
    parser.feed(dom)
    parser.close()
    return parser


def test_script_draws_a_frame_per_stack_frame(tmp_path: Path):
    page = tmp_path / "leaks.html"
    write_flamegraph(page, STACKS, "memtrace leaks: pid 4242")
    dom = _chromium(tmp_path, page, "--dump-dom")
    parsed = _frames(dom)
    by_name = {f["data-name"]: f for f in parsed.frames}
    expected = {"all", "main (app)", "serve_forever (socketserver)", "handle_request (server)",
                "grow_cache (leaky)", "leak_here (leaky)", "parse_json (json)",
                "malloc (libc.so.6)", "build_index (indexer)", "PyList_Append (python3.11)",
                "weird;name (x)", EVIL, "other (mod2)", "tiny (mod)"}
    assert set(by_name) == expected, "one element per frame, drawn by the script"
    assert len(parsed.frames) == len(expected)

    leak = by_name["leak_here (leaky)"]
    assert leak["title"] == "leak_here (leaky): 50 MiB (67.6%)"
    assert leak["text"].startswith("leak_")  # a label, truncated at most
    assert "background" in leak["style"] and "width" in leak["style"]
    assert by_name["all"]["title"] == "all: 74 MiB (100.0%)"
    assert by_name[EVIL]["title"].startswith(EVIL + ": 3 MiB")

    def px(frame: Dict[str, str], prop: str) -> float:
        match = re.search(rf"(?<![-\w]){prop}:\s*([\d.]+)px", frame["style"])
        assert match, frame["style"]
        return float(match.group(1))

    # widths follow bytes; the root is at the bottom, callees stacked above their callers
    assert px(by_name["all"], "width") == pytest.approx(px(by_name["main (app)"], "width"), abs=1)
    ratio = px(by_name["leak_here (leaky)"], "width") / px(by_name["all"], "width")
    assert ratio == pytest.approx(50 / 74, abs=0.01)
    assert px(by_name["all"], "top") > px(by_name["main (app)"], "top") > px(leak, "top")
    # same module, same colour; the colour comes from the module's name
    assert by_name["grow_cache (leaky)"]["style"].split("background")[1] == \
        leak["style"].split("background")[1]
    for control in ("fg-reset", "fg-search", "fg-match", "fg-status", "fg-chart", "fg-data"):
        assert control in parsed.ids


PROBE = """
<script>
(function () {
  function frame(name) {
    return Array.prototype.filter.call(document.querySelectorAll("#fg-chart .fr"),
      function (el) { return el.getAttribute("data-name") === name; })[0] || null;
  }
  function width(name) { var el = frame(name); return el ? parseFloat(el.style.width) : null; }
  function fire(el, type) { el.dispatchEvent(new MouseEvent(type, {bubbles: true})); }
  var reset = document.getElementById("fg-reset"), search = document.getElementById("fg-search");
  var out = {chart: document.getElementById("fg-chart").clientWidth};
  out.before = {grow: width("grow_cache (leaky)"), malloc: !!frame("malloc (libc.so.6)"),
                resetDisabled: reset.disabled};
  fire(frame("leak_here (leaky)"), "mouseover");
  out.hover = document.getElementById("fg-status").textContent;
  fire(frame("grow_cache (leaky)"), "click");
  out.zoomed = {grow: width("grow_cache (leaky)"), leak: width("leak_here (leaky)"),
                malloc: !!frame("malloc (libc.so.6)"), main: width("main (app)"),
                mainIsAncestor: frame("main (app)").classList.contains("anc"),
                resetDisabled: reset.disabled};
  fire(reset, "click");
  out.reset = {grow: width("grow_cache (leaky)"), malloc: !!frame("malloc (libc.so.6)"),
               resetDisabled: reset.disabled};
  search.value = "LEAKY";
  search.dispatchEvent(new Event("input", {bubbles: true}));
  out.search = {info: document.getElementById("fg-match").textContent,
                matched: Array.prototype.map.call(document.querySelectorAll(".fr.match"),
                  function (el) { return el.getAttribute("data-name"); }).sort(),
                dimmed: document.querySelectorAll(".fr.dim").length};
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>
"""


def test_hover_zoom_reset_and_search(tmp_path: Path):
    """Real DOM events, fired by a probe script appended to the page (the page's own content
    security policy, which admits only its own script, is taken out for this)."""
    page = flamegraph_html(STACKS, "memtrace leaks: pid 4242")
    page, csp = re.subn(r'<meta http-equiv="Content-Security-Policy"[^>]*>\n', "", page)
    assert csp == 1
    assert page.count("</body>") == 1
    path = tmp_path / "probe.html"
    path.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _chromium(tmp_path, path, "--dump-dom")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not run"
    out = json.loads(html.unescape(found.group(1)))

    chart = out["chart"]
    assert chart > 100
    assert out["before"]["resetDisabled"] is True and out["before"]["malloc"] is True
    assert out["before"]["grow"] == pytest.approx(chart * 50 / 74, abs=2)
    assert out["hover"].startswith("leak_here (leaky): 50 MiB (67.6%)")
    # zoomed into grow_cache: its subtree fills the width, callers stay as full-width bars
    zoomed = out["zoomed"]
    assert zoomed["grow"] == pytest.approx(chart, abs=2)
    assert zoomed["leak"] == pytest.approx(chart, abs=2)
    assert zoomed["main"] == pytest.approx(chart, abs=2) and zoomed["mainIsAncestor"] is True
    assert zoomed["malloc"] is False and zoomed["resetDisabled"] is False
    assert out["reset"] == out["before"]
    # search is a case-insensitive substring; nested matches count once
    assert out["search"]["matched"] == ["grow_cache (leaky)", "leak_here (leaky)"]
    assert out["search"]["info"] == "Matched: 50 MiB (67.6%)"
    assert out["search"]["dimmed"] == 12


def test_screenshot_looks_like_something(tmp_path: Path):
    page = tmp_path / "leaks.html"
    write_flamegraph(page, STACKS, "memtrace leaks: pid 4242")
    png = tmp_path / "fg.png"
    _chromium(tmp_path, page, f"--screenshot={png}", "--window-size=1200,800")
    assert png.is_file()
    blob = png.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", blob[16:24])
    assert (width, height) == (1200, 800)
    assert len(blob) > 8 * 1024, "a blank page compresses to almost nothing"
