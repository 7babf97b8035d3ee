"""Text an agent controls, made safe to print on the operator's terminal.

File names, command lines, URLs, SQL, reasons and the like come from the
agent (or from whatever it read).  Printed raw, an ESC or a CR in them would
be obeyed by the operator's terminal: retitle it, write its clipboard, clear
the screen, or overwrite `rm -rf ...` with `ls -la` on the line the operator
approves.  Every human-readable line agentsup prints passes such text
through `visible` (and a table cell through `visible_cut`); JSON output is
escaped by the JSON encoder and does not use this.

Pure and free of imports beyond `re`, so the CLI and the supervision layer
can both use it.
"""

from __future__ import annotations

import re

ELLIPSIS = "…"

# C0 controls (newline and tab too: one field is one line), DEL, C1 controls,
# the bidi marks, embeddings, overrides and isolates that reorder what follows,
# the line and paragraph separators, and surrogates (a lone one, or a byte
# that was not UTF-8, decoded with surrogateescape).
_HIDDEN = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_HIDDEN_CHAR = re.compile(f"[{_HIDDEN}]")
# A backslash is doubled where it would otherwise read as an escape's start.
_NEEDS_WORK = re.compile(rf"[{_HIDDEN}]|\\(?=[\\xuU{_HIDDEN}])")


def _render(char: str) -> str:
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _pieces(text: str) -> list[str]:
    """What each character of `text` is shown as, in order."""
    return [
        _render(char) if _NEEDS_WORK.match(text, index) else char for index, char in enumerate(text)
    ]


def visible(text: str) -> str:
    """`text` with every character a terminal would obey or hide written out.

    The scheme, Python's own spelling:

    - a C0 control (U+0000-U+001F, newline and tab included), DEL and a C1
      control (U+0080-U+009F) become `\\xNN` (ESC is `\\x1b`, CR `\\x0d`);
    - a bidi mark, embedding, override or isolate (U+061C, U+200E, U+200F,
      U+202A-U+202E, U+2066-U+2069), the line and paragraph separators
      (U+2028, U+2029) and a surrogate become `\\uNNNN`; a byte that was not
      UTF-8 (decoded with surrogateescape, U+DC80-U+DCFF) thus shows as
      `\\udcNN`, e.g. `\\udcff` for 0xFF;
    - a backslash becomes `\\\\` only where it would otherwise be read as the
      start of one of these: before `\\`, `x`, `u`, `U` or a character that is
      itself escaped.  Elsewhere (`a\\ b`, `C:\\dir`) it is left alone.

    So reading left to right, `\\\\` is a backslash, `\\x`/`\\u` plus hex is
    the character escaped, and any other backslash is itself: the original
    is always recoverable.  Everything else, other scripts included, is kept.
    """
    if _NEEDS_WORK.search(text) is None:
        return text
    return _NEEDS_WORK.sub(lambda match: _render(match.group()), text)


def visible_cut(text: str, width: int, mark: str = ELLIPSIS) -> str:
    """`visible(text)`, cut to at most `width` characters ending in `mark` if it
    was longer.  The cut falls between escapes, never inside one."""
    shown = visible(text)
    if len(shown) <= width:
        return shown
    room = max(width - len(mark), 0)
    kept: list[str] = []
    for piece in _pieces(text):
        room -= len(piece)
        if room < 0:
            break
        kept.append(piece)
    return "".join(kept) + mark


def visible_lines(text: str) -> str:
    """`text` of several lines, each made `visible`: only the newlines between
    them stay newlines (a CR, even one before a newline, is shown)."""
    return "\n".join(visible(line) for line in text.split("\n"))


def visible_output(line: str) -> str:
    """A line a program printed (an agent's log), made `visible` but for its
    tabs, which a terminal only moves over: a test runner keeps its columns."""
    return "\t".join(visible(part) for part in line.split("\t"))


def hides(text: str) -> bool:
    """Whether `text` holds a character `visible` writes out (a backslash aside)."""
    return _HIDDEN_CHAR.search(text) is not None


def cut_text(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how many were left out: what an
    agent wrote into an audit record (a note's target, a URL), kept to size."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more)"
