"""Leak flame graphs: collapsed-stack text and the self-contained HTML page."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from tracer.views.flamegraph import flamegraph_html, folded, write_flamegraph, write_folded

pytestmark = pytest.mark.unit

EVIL = "</script><b>x"

STACKS = [
    {"bytes": 300, "count": 3, "bytes_per_second": 1.5,
     "frames": ["leak_here (leaky)", "grow (leaky)", "main (app)"]},
    {"bytes": 100, "count": 1, "bytes_per_second": 0.5,
     "frames": ["malloc (libc.so.6)", "parse;json (json)", "main (app)"]},
    {"bytes": 200, "count": 2, "bytes_per_second": 1.0,  # same stack as the first: merged
     "frames": ["leak_here (leaky)", "grow (leaky)", "main (app)"]},
    {"bytes": 7, "count": 1, "bytes_per_second": 0.0, "frames": ["line\nbreak (m)", "main (app)"]},
    {"bytes": 0, "count": 4, "bytes_per_second": 0.0, "frames": ["nothing (m)"]},
]


class _Page(HTMLParser):
    """Tags with their attributes, and the text of each <script>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: List[Tuple[str, Dict[str, Optional[str]]]] = []
        self.scripts: List[Tuple[Dict[str, Optional[str]], str]] = []
        self._in_script: Optional[Dict[str, Optional[str]]] = None
        self._text: List[str] = []

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script, self._text = dict(attrs), []

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._in_script is not None:
            self.scripts.append((self._in_script, "".join(self._text)))
            self._in_script = None

    def handle_data(self, data: str) -> None:
        if self._in_script is not None:
            self._text.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def _data(parser: _Page) -> dict:
    blobs = [text for attrs, text in parser.scripts if attrs.get("type") == "application/json"]
    assert len(blobs) == 1
    return json.loads(blobs[0])


# --------------------------------------------------------------------------- folded

def test_folded_exact():
    assert folded(STACKS) == (
        "main (app);grow (leaky);leak_here (leaky) 500\n"
        "main (app);line break (m) 7\n"
        "main (app);parse:json (json);malloc (libc.so.6) 100\n"
    )


def test_folded_is_order_independent_and_empty_safe():
    assert folded(list(reversed(STACKS))) == folded(STACKS)
    assert folded(iter(STACKS)) == folded(STACKS)
    assert folded([]) == ""
    assert folded([{"bytes": 5, "count": 1, "bytes_per_second": 0.0, "frames": []}]) == "[unknown] 5\n"


def test_folded_lines_parse_back():
    for line in folded(STACKS + [{"bytes": 9, "frames": ["a;b\r\nc (x)", ""]}]).splitlines():
        stack, weight = line.rsplit(" ", 1)
        assert int(weight) > 0
        assert all(frame and "\n" not in frame and "\r" not in frame for frame in stack.split(";"))
    assert "[unknown];a:b c (x) 9" in folded([{"bytes": 9, "frames": ["a;b\r\nc (x)", ""]}])


def test_write_folded(tmp_path: Path):
    path = tmp_path / "leaks.folded"
    write_folded(path, STACKS)
    assert path.read_text(encoding="utf-8") == folded(STACKS)


# --------------------------------------------------------------------------- HTML

def test_html_parses_and_embeds_the_tree():
    page = flamegraph_html(STACKS, "leaks of pid 42")
    parser = _parse(page)
    data = _data(parser)
    assert data["unit"] == "bytes" and data["total"] == 607
    for name in ("all", "main (app)", "grow (leaky)", "leak_here (leaky)", "parse;json (json)",
                 "malloc (libc.so.6)", "line break (m)"):
        assert name in data["names"]
    assert "nothing (m)" not in data["names"]  # zero bytes: nothing to draw
    by_name = {data["names"][row[0]]: row for row in data["nodes"]}
    assert by_name["all"][1] == -1 and by_name["all"][2] == 607
    assert by_name["main (app)"][2] == 607
    assert by_name["leak_here (leaky)"][2:] == [500, 5, 2.5]
    # parents come first, so the page can build the tree in one pass
    assert all(row[1] < i for i, row in enumerate(data["nodes"]))
    leak_parent = data["nodes"][by_name["leak_here (leaky)"][1]]
    assert data["names"][leak_parent[0]] == "grow (leaky)"
    titles = [attrs for tag, attrs in parser.tags if tag == "title"]
    assert titles and "<title>leaks of pid 42</title>" in page


def test_html_is_self_contained():
    page = flamegraph_html(STACKS, "t")
    parser = _parse(page)
    assert "http://" not in page and "https://" not in page
    for tag, attrs in parser.tags:
        assert not (tag == "script" and attrs.get("src")), "external script"
        assert not (tag == "link" and attrs.get("href")), "external stylesheet or font"
        assert not (tag in ("img", "iframe", "embed", "object") and
                    (attrs.get("src") or attrs.get("data"))), tag
    assert not re.search(r"@import|url\(", page)
    scripts = [attrs for attrs, _ in parser.scripts]
    assert {"type": "application/json", "id": "fg-data"} in scripts
    assert any(not attrs for attrs in scripts), "the inline script that draws the graph"
    assert "<noscript>" in page


def test_html_escapes_hostile_frame_names():
    stacks = [{"bytes": 10, "count": 1, "bytes_per_second": 0.0,
               "frames": [EVIL, "<!--x (y)", "a&b (c)", "main (app)"]}]
    page = flamegraph_html(stacks, f"title {EVIL}")
    assert EVIL not in page
    assert "<b>x" not in page and "<!--" not in page
    assert page.count("</script>") == 2  # only the two real script elements close
    parser = _parse(page)
    tags = [tag for tag, _ in parser.tags]
    assert tags.count("b") == tags.count("li") == 1  # only the noscript list's own <b>
    assert len(parser.scripts) == 2
    data = _data(parser)
    assert EVIL in data["names"] and "<!--x (y)" in data["names"] and data["title"] == f"title {EVIL}"
    assert "&lt;/script&gt;&lt;b&gt;x" in page  # the noscript fallback, escaped as text


def test_html_noscript_lists_top_stacks():
    page = flamegraph_html(STACKS, "t")
    noscript = page[page.index("<noscript>"):page.index("</noscript>")]
    assert noscript.index("leak_here (leaky)") < noscript.index("malloc (libc.so.6)")
    assert "500 B (82.4%)" in noscript
    assert "leak_here (leaky) \u2190 grow (leaky) \u2190 main (app)" in noscript


def test_html_empty_and_other_units():
    data = _data(_parse(flamegraph_html([], "nothing")))
    assert data["total"] == 0 and data["names"] == ["all"]
    page = flamegraph_html(STACKS, "t", unit="pages")
    assert _data(_parse(page))["unit"] == "pages"
    assert "607 pages" in page


def test_html_is_deterministic(tmp_path: Path):
    assert flamegraph_html(STACKS, "t") == flamegraph_html(list(reversed(STACKS)), "t")
    path = tmp_path / "fg.html"
    write_flamegraph(path, STACKS, "t")
    assert path.read_text(encoding="utf-8") == flamegraph_html(STACKS, "t")
