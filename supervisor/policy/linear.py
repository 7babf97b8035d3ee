"""Linear-time matching: every rule pattern and glob runs on RE2.

A backtracking engine (Python's `re`) can take exponential time on a crafted
target: strict's old `rm -rf /` regex stalled the supervisor's loop for
seconds on one long command line, and `(a+)+$` for ever.  RE2 (google-re2)
matches in time linear in the target, whatever the pattern.

Rule patterns are written as Python regexes (DESIGN.md 1.3).  `to_re2`
rewrites the few Python spellings RE2 reads differently (`\\Z`, `{,n}`,
`\\uXXXX`, octal escapes, `(?#...)`) and refuses, with the position, the
features RE2 lacks: lookaround, backreferences, atomic groups, possessive
quantifiers, conditionals, and inline flags other than `i`, `m` and `s`.
`$` (without the `m` flag) is RE2's, only the very end, unless the caller
asks for Python's (the end, or just before a final newline): rules that do
not allow do (`Re2Translation`).  Known differences that remain (documented
for policy authors): `\\d`, `\\w`, `\\s` and `\\b` are ASCII classes.

Targets are encoded with `encode_target`: UTF-8, where a lone surrogate (an
undecodable byte that `os.fsdecode` kept) stays one character; RE2 would
otherwise let `.` skip over it, and `**/*.pem` would miss such a name.

Pure: no I/O (but `engine_identity`'s stat).  Errors are `PatternError(message, index)`.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

import re2  # type: ignore[import-untyped]  # google-re2 ships no type hints

# Room for a few hundred rules in one set.  RE2 takes memory as it needs it,
# and the DFA's cache is bounded by the same figure.
_MAX_MEM = 32 << 20


class PatternError(ValueError):
    """A bad glob or regex; `index` is where in the text the problem is."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.message = message
        self.index = index


def _options() -> Any:
    options = re2.Options()
    options.max_mem = _MAX_MEM
    options.log_errors = False  # errors come back as exceptions; stderr stays clean
    return options


_OPTIONS = _options()


def encode_target(target: str) -> bytes:
    """The bytes RE2 matches: UTF-8, a lone surrogate kept as one character."""
    return target.encode("utf-8", "surrogatepass")


def _escape_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for code in range(128):
        char = chr(code)
        if not (char.isalnum() or char == "_"):
            table[code] = "\\" + char if char.isprintable() else f"\\x{{{code:x}}}"
    return table


_ESCAPES = _escape_table()


def escape(text: str) -> str:
    """`text` as an RE2 literal (also valid inside a character class)."""
    return text.translate(_ESCAPES)


def re2_problem(regex: str) -> str | None:
    """RE2's complaint about `regex`, or None when it compiles."""
    try:
        re2.compile(encode_target(regex), _OPTIONS)
    except re2.error as exc:
        return str(exc) or "RE2 cannot compile it"
    return None


class LinearRegex:
    """One RE2 regex with search semantics, over `encode_target` bytes.

    `checked=True` says the text is known to compile (the policy cache stored
    it after it did, with this RE2): it is compiled when first searched.
    Most of a policy's regexes are only searched one by one when a set gives
    up, or to explain a decision.
    """

    __slots__ = ("_search", "text")

    def __init__(self, text: str, *, checked: bool = False) -> None:
        self.text = text
        self._search: Callable[[bytes], object] = (
            self._first_search if checked else _compiled(text).search
        )

    def _first_search(self, data: bytes) -> object:
        self._search = _compiled(self.text).search
        return self._search(data)

    def search(self, data: bytes) -> bool:
        return self._search(data) is not None


def _compiled(text: str) -> Any:
    try:
        return re2.compile(encode_target(text), _OPTIONS)
    except re2.error as exc:
        raise PatternError(f"RE2 cannot compile the regex: {exc}", 0) from None


def match_range(text: str) -> tuple[bytes, bytes] | None:
    """(low, high): every target in which regex `text` finds a match at the
    target's start lies between them in byte order, so for a regex anchored
    at the start (`^`, `\\A`) every target it matches at all; None where RE2
    cannot bound it.

    RE2's PossibleMatchRange bounds the text a match spans, not the target
    it is found in: `^/home/u/vault/` spans only that, and matches every name
    below it (red team 32).  So the range asked for is that of the regex
    followed by anything.  It is wrong for a word boundary (`vault\\b` gave
    `vault0` to `vaultz`, red team 34) and is not asked where the regex has
    one or a multi-line flag.
    """
    if _EMPTY_WIDTH.search(text):
        return None
    try:
        found = _compiled(f"(?:{text})(?s:.*)").possiblematchrange(_RANGE_LENGTH)
    except (PatternError, re2.error, ValueError):
        return None
    if not isinstance(found, tuple) or len(found) != 2 or not all(found):
        return None
    low, high = found
    return (low, high) if isinstance(low, bytes) and isinstance(high, bytes) else None


def match_ranges(text: str, limit: int = 512) -> list[tuple[bytes, bytes]] | None:
    """`match_range` of each of `alternatives(text)`: tighter than one range for
    all.  `^{home}/\\.(?:azure|pulumi)/` is `{home}/.azure/` and
    `{home}/.pulumi/`, where one range is everything from `{home}/.azure` to
    `{home}/.pulumi`, `~/.pyenv` included.  None where one cannot be bounded.
    """
    ranges = []
    for alternative in alternatives(text, limit):
        bounds = match_range(alternative)
        if bounds is None:
            return None
        ranges.append(bounds)
    return ranges


def alternatives(text: str, limit: int = 512) -> list[str]:
    """RE2 regexes, at most `limit`, that together match what `text` matches:
    its alternations (`a|b`, and the groups without a quantifier or with `?`)
    multiplied out; `[text]` where that is not done.

    Groups and flag groups (`(?s:a|b)` is `(?s:a)|(?s:b)`) are taken apart;
    a regex with flags that reach across a group's `|` (`(?i)`), a named
    group or `\\Q...\\E` stays whole.
    """
    if "\\Q" in text or re.search(r"(?<!\\)(?:\\\\)*\(\?(?![a-zA-Z-]*:)", text):
        return [text]
    try:
        expanded = _sequence(text, 0, len(text), limit)
    except _NotExpanded:
        return [text]
    return expanded if expanded else [text]


class _NotExpanded(Exception):
    """The regex text is not multiplied out: past the limit, or not understood."""


def _sequence(text: str, start: int, end: int, limit: int) -> list[str]:
    """The alternatives of `text[start:end]`, split at its own top-level `|`."""
    branches: list[list[str]] = []
    pieces: list[list[str]] = [[""]]
    index = start
    while index < end:
        char = text[index]
        if char == "|":
            branches.append(_product(pieces, limit))
            pieces = [[""]]
            index += 1
        elif char == "(":
            close = _group_end(text, index, end)
            after, quantified = _quantifier(text, close + 1, end)
            flags = _FLAG_GROUP.match(text, index, close)
            inner = flags.end() if flags else index + 1
            if quantified not in ("", "?", "??"):
                pieces.append([text[index:after]])  # repeated: kept whole
            else:
                inside = _sequence(text, inner, close, limit)
                if flags and flags.group(1):  # the flags go with each alternative
                    inside = [f"{flags.group()}{alternative})" for alternative in inside]
                pieces.append(inside + ([""] if quantified else []))
            index = after
        else:
            after = _atom_end(text, index, end)
            pieces.append([text[index:after]])
            index = after
    branches.append(_product(pieces, limit))
    merged = [alternative for branch in branches for alternative in branch]
    if len(merged) > limit:
        raise _NotExpanded
    return merged


def _product(pieces: list[list[str]], limit: int) -> list[str]:
    result = [""]
    for choices in pieces:
        result = [head + choice for head in result for choice in choices]
        if len(result) > limit:
            raise _NotExpanded
    return result


def _atom_end(text: str, index: int, end: int) -> int:
    """Where the atom at `index` ends (an escape, a class, one character) with
    its quantifier: a quantified atom is kept with it."""
    char = text[index]
    if char == "\\":
        after = index + 2
        if text[index + 1 : index + 2] in ("x", "p", "P") and text[after : after + 1] == "{":
            after = text.find("}", after)
            if after < 0:
                raise _NotExpanded
            after += 1
    elif char == "[":
        after = _class_end(text, index, end) + 1
    elif char == ")":
        raise _NotExpanded
    else:
        after = index + 1
    if after > end:
        raise _NotExpanded
    return _quantifier(text, after, end)[0]


def _quantifier(text: str, index: int, end: int) -> tuple[int, str]:
    """(where it ends, the quantifier) of what follows an atom or group at `index`."""
    match = _QUANTIFIER.match(text, index, end)
    return (match.end(), match.group()) if match else (index, "")


_FLAG_GROUP = re.compile(r"\(\?([a-zA-Z-]*):")
_QUANTIFIER = re.compile(r"(?:[*+?]|\{\d*(?:,\d*)?\})\??")


def _class_end(text: str, index: int, end: int) -> int:
    """The index of the `]` closing the class that opens at `index`."""
    index += 1
    if text[index : index + 1] == "^":
        index += 1
    if text[index : index + 1] == "]":
        index += 1  # a `]` first is a literal
    while index < end:
        char = text[index]
        if char == "\\":
            index += 2
        elif text.startswith("[:", index):
            close = text.find(":]", index + 2)
            if close < 0:
                raise _NotExpanded
            index = close + 2
        elif char == "]":
            return index
        else:
            index += 1
    raise _NotExpanded


def _group_end(text: str, index: int, end: int) -> int:
    """The index of the `)` closing the group that opens at `index`."""
    depth = 0
    while index < end:
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "[":
            index = _class_end(text, index, end)
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    raise _NotExpanded


_RANGE_LENGTH = 256  # longer bounds only make the range tighter
# `\b` or `\B` (not an escaped backslash and a `b`), or a group's flags with `m`.
_EMPTY_WIDTH = re.compile(r"(?<!\\)(?:\\\\)*\\[bB]|\(\?[a-zA-Z]*m")


def engine_identity() -> str:
    """Which RE2 this is (its compiled module's path, size and time): part of the
    policy cache's key, so a regex it stored compiles here as it did there."""
    native = getattr(re2, "_re2", None)
    where = getattr(native, "__file__", None) or getattr(re2, "__file__", None) or "re2"
    try:
        info = os.stat(where)
    except OSError:
        return where
    return f"{where}:{info.st_size}:{info.st_mtime_ns}"


class PatternSet:
    """Many regexes matched in one linear pass (RE2::Set, search semantics).

    `raw_match(data)` returns the indices of every pattern that matches, in
    no particular order.  The set holds one extra pattern that matches
    everything, at index `len(patterns)`: a successful pass always reports
    it, so an empty answer (an empty list, or None) means RE2's DFA gave up
    (out of memory) and the caller must decide another way.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        built = re2.Set.SearchSet(_OPTIONS)
        try:
            for pattern in patterns:
                built.Add(encode_target(pattern))
            built.Add(b"")
            built.Compile()
        except re2.error as exc:
            message = f"RE2 cannot compile {len(patterns)} patterns as one: {exc}"
            raise PatternError(message, 0) from None
        self.size = len(patterns)
        # The compiled set's own Match where the wrapper exposes it: the
        # wrapper's is one more Python call per decision.
        native = getattr(built, "_set", None)
        match = getattr(native, "Match", None)
        self.raw_match: Callable[[bytes], list[int] | None] = (
            match if callable(match) else built.Match
        )


# --- Python regex syntax -> RE2 ---------------------------------------------------

_WHY = (
    "is not supported: rule patterns are matched in linear time by RE2, which has no "
    "lookaround, backreferences, atomic groups or possessive quantifiers"
)
_GROUP_PREFIXES = (
    ("(?<=", "a lookbehind '(?<='"),
    ("(?<!", "a lookbehind '(?<!'"),
    ("(?=", "a lookahead '(?='"),
    ("(?!", "a lookahead '(?!'"),
    ("(?P=", "a backreference '(?P=name)'"),
    ("(?>", "an atomic group '(?>'"),
    ("(?(", "a conditional '(?('"),
)
_RE2_FLAGS = frozenset("ims")
_PYTHON_FLAGS = frozenset("aiLmsux")
_OCTAL = frozenset("01234567")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")


def _unsupported(what: str, index: int) -> PatternError:
    return PatternError(f"{what} {_WHY}", index)


def _code_point(code: int) -> str:
    return f"\\x{{{code:x}}}"


def _escape_to_re2(text: str, index: int, in_class: bool) -> tuple[str, int]:
    """Translate the escape at `index`; returns the RE2 text and the index after it."""
    if index + 1 >= len(text):
        return "\\\\", index + 1  # a fragment ending in a backslash: keep it literal
    char = text[index + 1]
    if char == "Z" and not in_class:
        return "\\z", index + 2
    if char in _DIGITS:
        return _digits_to_re2(text, index, in_class)
    if char in "uU":
        width = 4 if char == "u" else 8
        digits = text[index + 2 : index + 2 + width]
        if len(digits) == width and all(d in _HEX for d in digits):
            return _code_point(int(digits, 16)), index + 2 + width
    if char == "N" and text.startswith("{", index + 2):
        end = text.find("}", index + 3)
        if end > 0:
            try:
                return _code_point(ord(unicodedata.lookup(text[index + 3 : end]))), end + 1
            except KeyError:
                pass
    if char == "b" and in_class:
        return _code_point(8), index + 2  # backspace in a Python class
    if not char.isascii():
        return escape(char), index + 2  # Python reads `\é` as `é`; RE2 refuses it
    return text[index : index + 2], index + 2


def _digits_to_re2(text: str, index: int, in_class: bool) -> tuple[str, int]:
    """Python's octal escapes and backreferences, by sre_parse's rules."""
    start = index + 1
    first = text[start]
    if in_class or first == "0":
        if first not in _OCTAL:
            return text[index : start + 1], start + 1  # Python refuses `[\\8]` before this
        end = start + 1
        while end < min(start + 3, len(text)) and text[end] in _OCTAL:
            end += 1
        return _code_point(int(text[start:end], 8) & 0xFF), end
    octal = text[start : start + 3]
    if len(octal) == 3 and all(digit in _OCTAL for digit in octal):
        return _code_point(int(octal, 8) & 0xFF), start + 3
    raise _unsupported(f"a backreference '\\{first}'", index)


def _repeat_at(text: str, index: int) -> tuple[str, int] | None:
    """A Python repeat at `index` as RE2 text, and the index after it; None if `{` is literal.

    Python reads `{,n}` as `{0,n}` and `{,}` as `*`; RE2 reads both as literal text.
    """
    end = index + 1
    while end < len(text) and text[end] in _DIGITS:
        end += 1
    low = text[index + 1 : end]
    if not text.startswith(",", end):
        return ("{" + low + "}", end + 1) if low and text.startswith("}", end) else None
    comma = end + 1
    end = comma
    while end < len(text) and text[end] in _DIGITS:
        end += 1
    if not text.startswith("}", end):
        return None
    return "{" + (low or "0") + "," + text[comma:end] + "}", end + 1


def _group_to_re2(text: str, index: int) -> tuple[str, int]:
    """Translate `(?...` at `index`; returns the RE2 text and the index after the prefix."""
    for prefix, what in _GROUP_PREFIXES:
        if text.startswith(prefix, index):
            raise _unsupported(what, index)
    if text.startswith("(?#", index):
        end = text.find(")", index)
        return "", (end + 1 if end > 0 else len(text))  # a comment: Python ends it at ')'
    if text.startswith(("(?P<", "(?:"), index):
        return text[index : index + 3], index + 3
    end = index + 2
    while end < len(text) and (text[end] in _PYTHON_FLAGS or text[end] == "-"):
        end += 1
    for flag in text[index + 2 : end]:
        if flag != "-" and flag not in _RE2_FLAGS:
            raise _unsupported(f"the inline flag '{flag}'", index)
    return text[index:end], end


# What a Python `$` (no `m` flag) means: the very end, or just before a final
# newline.  RE2's `$` is only the very end.  Consuming the newline is fine:
# a match is only ever yes or no, and Python refuses a quantified `$`.
PYTHON_DOLLAR = "(?:\\n?\\z)"


def _m_flag(flags: str, current: bool) -> bool:
    """The `m` state after the inline flags `flags` (`im`, `-m`, `i-m`)."""
    on, _, off = flags.partition("-")
    if "m" in off:
        return False
    return True if "m" in on else current


class Re2Translation:
    """Python regex text to RE2 text, piece by piece (the text between placeholders).

    The state of the pattern (open groups, the `m` flag, a character class)
    carries from one piece to the next, so `(?m:{home}/x$)` reads as Python
    reads it.  With `python_dollar`, a `$` outside a class and not under an
    active `m` flag means what it means to Python (`PYTHON_DOLLAR`); without
    it, RE2's own `$`.  Under `m`, both engines read `$` as the end of a line.
    """

    def __init__(self, *, python_dollar: bool = False) -> None:
        self.python_dollar = python_dollar
        self._multiline = False
        self._outer: list[bool] = []  # the `m` state outside each open group
        self._in_class = False

    def piece(self, text: str) -> str:
        """Translate the next piece; raises PatternError (index within this piece)."""
        out: list[str] = []
        index = 0
        in_class = self._in_class
        # A ']' right at the start of a class body is literal; a class the last
        # piece left open already holds a placeholder's value.
        class_body = -1
        quantified = False  # the previous item was a quantifier (for possessive `*+`)
        while index < len(text):
            char = text[index]
            if char == "\\":
                piece, index = _escape_to_re2(text, index, in_class)
                out.append(piece)
                quantified = False
                continue
            if in_class:
                if char == "]" and index > class_body:
                    in_class = False
                out.append(char)
                index += 1
                continue
            if char == "+" and quantified:
                raise _unsupported("a possessive quantifier", index)
            if char == "[":
                in_class = True
                class_body = index + (2 if text.startswith("^", index + 1) else 1)
                out.append(text[index:class_body])
                index = class_body
                quantified = False
                continue
            if char == "(" and text.startswith("?", index + 1):
                piece, index = _group_to_re2(text, index)
                out.append(piece)
                if piece not in ("", "(?P<", "(?:"):  # inline flags
                    multiline = _m_flag(piece[2:], self._multiline)
                    if text.startswith(":", index):  # scoped: `(?m:...)`
                        self._outer.append(self._multiline)
                    else:  # `(?m)`: Python allows it only at the very start
                        out.append(text[index : index + 1])
                        index += 1
                    self._multiline = multiline
                elif piece:
                    self._outer.append(self._multiline)
                quantified = False
                continue
            if char == "(":
                self._outer.append(self._multiline)
            elif char == ")" and self._outer:
                self._multiline = self._outer.pop()
            elif char == "$" and self.python_dollar and not self._multiline:
                out.append(PYTHON_DOLLAR)
                index += 1
                quantified = False
                continue
            if char == "{" and (repeat := _repeat_at(text, index)) is not None:
                piece, index = repeat
                out.append(piece)
                quantified = True
                continue
            quantified = char in "*+?"
            out.append(char)
            index += 1
        self._in_class = in_class
        return "".join(out)


def to_re2(text: str, *, python_dollar: bool = False) -> str:
    """Python regex text as RE2 text with the same meaning; raises PatternError.

    `$` keeps RE2's meaning (only the very end) unless `python_dollar`: see
    `Re2Translation`.  For a pattern split by placeholders, translate its
    pieces in order with one `Re2Translation`.
    """
    return Re2Translation(python_dollar=python_dollar).piece(text)
