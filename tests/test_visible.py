"""`visible`: the agent's text, printed for a person, shows its control characters
instead of handing them to the operator's terminal.

- C0 controls (newline and tab too), DEL and C1 controls are written `\\xNN`;
  bidi marks, embeddings, overrides and isolates, the line and paragraph
  separators and surrogates (bytes that were not UTF-8) are written `\\uNNNN`.
- A backslash is doubled only where it would otherwise read as an escape, so
  the original can always be told back from what is shown.
- `visible_cut` cuts a table cell after escaping, between escapes.
"""

from __future__ import annotations

import re

import pytest

from agentsup.visible import hides, visible, visible_cut, visible_lines

# What a terminal would obey, or what would reorder or hide what follows.
HIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def read_back(shown: str) -> str:
    """The reader's side of the scheme: `\\\\` is a backslash, `\\xNN` and
    `\\uNNNN` the character, any other backslash itself."""

    def one(match: re.Match[str]) -> str:
        text = match.group()
        return "\\" if text == "\\\\" else chr(int(text[2:], 16))

    return re.sub(r"\\\\|\\x[0-9a-f]{2}|\\u[0-9a-f]{4}", one, shown)


def test_plain_text_is_left_alone() -> None:
    for text in ("ls -la", "/srv/ws/naïve café/日本.txt", "SELECT 1;", "a\\ b", r"C:\dir\file"):
        assert visible(text) == text


def test_controls_are_written_out() -> None:
    assert visible("x\x1b]52;c;ZWNobyBwd25lZAo=\x07.pem") == "x\\x1b]52;c;ZWNobyBwd25lZAo=\\x07.pem"
    assert visible("rm -rf ./precious #\r\x1b[2Kls -la") == "rm -rf ./precious #\\x0d\\x1b[2Kls -la"
    assert visible("\x00\x7f\x85\x9b") == "\\x00\\x7f\\x85\\x9b"  # NUL, DEL, NEL, CSI


def test_newline_and_tab_in_one_field_are_controls_too() -> None:
    assert visible("one\ntwo\tthree") == "one\\x0atwo\\x09three"


def test_bidi_overrides_and_isolates_are_written_out() -> None:
    assert visible("invoice\u202egpj.exe") == "invoice\\u202egpj.exe"
    assert visible("\u2066a\u2069\u200f") == "\\u2066a\\u2069\\u200f"


def test_bytes_that_were_not_utf8_show_as_their_surrogate() -> None:
    name = b"key\xff\x1b.pem".decode("utf-8", "surrogateescape")
    assert visible(name) == "key\\udcff\\x1b.pem"


def test_a_backslash_is_doubled_only_where_it_could_read_as_an_escape() -> None:
    assert visible("\\x1b") == "\\\\x1b"  # the four characters, not ESC
    assert visible("a\\\x1b") == "a\\\\\\x1b"  # a backslash, then ESC
    assert visible("a\\\\b") == "a\\\\\\b"  # two backslashes
    assert visible("a\\b\\") == "a\\b\\"


@pytest.mark.parametrize(
    "text",
    [
        "\\x1b",
        "\\\x1b",
        "\\\\x",
        "\\u202e\u202e",
        "end\\",
        "\\\\\\",
        "a\\ b\r\n",
        b"\xfe\\x".decode("utf-8", "surrogateescape"),
    ],
)
def test_the_original_can_be_told_back(text: str) -> None:
    assert read_back(visible(text)) == text


def test_nothing_hidden_gets_through_any_character() -> None:
    everything = "".join(chr(code) for code in range(0x3000))
    shown = visible(everything)
    assert not HIDDEN.search(shown)
    assert not re.search("[\ud800-\udfff]", visible("\ud800\udcff"))
    assert read_back(shown) == everything


def test_a_cut_falls_between_escapes() -> None:
    text = "\x1b\x1b\x1b\x1b"  # shown as 16 characters
    for width in range(1, 20):
        cell = visible_cut(text, width)
        assert len(cell) <= width and not HIDDEN.search(cell)
        kept = cell.removesuffix("…")
        assert kept == "\\x1b" * (len(kept) // 4)  # whole escapes only
    assert visible_cut(text, 16) == "\\x1b" * 4
    assert visible_cut("abcdef", 4, "...") == "a..."


def test_several_lines_keep_only_the_newlines_between_them() -> None:
    assert visible_lines("one\r\ntwo\x1b[2J") == "one\\x0d\ntwo\\x1b[2J"


def test_hides_says_whether_visible_has_work_beyond_backslashes() -> None:
    assert hides("a\u202eb") and hides("\x85")
    assert not hides("a\\x1b") and not hides("plain")
