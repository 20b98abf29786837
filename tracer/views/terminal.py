"""The terminal side of every human view: the one maker of rich Consoles, and `inert`, which
makes text that comes from the traced system safe to print to an administrator's terminal."""

from __future__ import annotations

import io
import unicodedata
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # rich is imported lazily: `memtrace watch` and `--help` never load it
    from rich.console import Console
    from rich.text import Text

# Characters a terminal acts on or hides instead of drawing:
#   Cc  C0 controls (ESC starts CSI/OSC sequences, BEL ends OSC, CR/LF/TAB move the cursor), DEL
#       and the C1 controls U+0080-U+009F (U+009B is a one-character CSI on some terminals);
#   Cf  format characters: bidi embeddings, overrides and isolates (U+202A-U+202E,
#       U+2066-U+2069) that reorder the rest of the line, zero-width spaces and joiners, the
#       soft hyphen, the BOM, Unicode tags;
#   Zl, Zp  the line and paragraph separators, which some terminals treat as newlines;
#   Cs  lone surrogates (a file or cgroup name that is not UTF-8, decoded with
#       surrogateescape): they cannot even be encoded for a UTF-8 terminal;
#   Cn  code points unassigned in this Python's Unicode tables: the terminal may know them
#       as something newer, so they are not trusted to be harmless.
# Kept as they are: printable characters of every script, combining marks, private-use
# characters (drawn as glyphs) and non-ASCII spaces. A backslash is not doubled, so that
# systemd's own escapes in cgroup names (`\x2d`) read as they do in /sys/fs/cgroup; the JSON
# output is the exact, unambiguous form.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SURROGATE_ESCAPED_BYTES = range(0xDC80, 0xDD00)  # bytes 0x80-0xff under surrogateescape

TABLE_WIDTH = 120  # `doctor` and `explain`: the same layout on a terminal, in a pipe, in a file


def _escape(ch: str) -> str:
    named = _NAMED_ESCAPES.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code in _SURROGATE_ESCAPED_BYTES:
        return f"\\x{code - 0xDC00:02x}"  # the byte the file name really holds
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def inert(value: object) -> str:
    """`value` as text that draws as itself on a terminal: every control, format, separator,
    surrogate and unassigned character becomes a visible escape (ESC -> `\\x1b`, newline ->
    `\\n`, U+202E -> `\\u202e`). Apply it to every byte that comes from the traced system
    (process and cgroup names, paths, symbols, kernel text) before a human view shows it."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case, in C: nothing to escape
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch
                   for ch in text)


def inert_ascii(value: object) -> str:
    """`inert(value)` in plain ASCII, for the reports written to pipes and files: the other
    non-ASCII characters are escaped too (`é` -> `\\xe9`)."""
    return inert(value).encode("ascii", "backslashreplace").decode("ascii")


def cell(value: object, style: str = "") -> Text:
    """`inert(value)` as a rich Text: a Text is never parsed for markup (`[bold]`) or emoji
    codes (`:smile:`), so a hostile name prints literally."""
    from rich.text import Text

    return Text(inert(value), style=style)


def _console(file: TextIO, **options: Any) -> Console:
    from rich.console import Console

    # markup and emoji codes off: a plain str handed to rich is printed as written, never
    # interpreted, so a name like "[bold]x" or "[/x]" can neither style nor break a view.
    return Console(file=file, markup=False, emoji=False, **options)


def live_console(out: TextIO, is_tty: bool) -> Console:
    """The console of a live view (`top`, `leaks`), sized like the terminal it writes to."""
    return _console(out, force_terminal=is_tty, no_color=not is_tty)


def table_console(out: TextIO, width: int = TABLE_WIDTH) -> Console:
    """A console of fixed width for one-shot tables (`doctor`, `explain`)."""
    return _console(out, width=width)


def measuring_console(width: int) -> Console:
    """A console that writes nowhere, to measure how many lines a renderable takes."""
    return _console(io.StringIO(), width=width, color_system=None, legacy_windows=False)
