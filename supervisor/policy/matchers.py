"""Target matchers: globs and regexes with placeholders, and path normalisation.

Glob semantics, the same for every action type:
- `*` and `?` never cross `/`; `[...]` is a character class (`[!...]` negates,
  and a negated class never matches `/`).
- `**` crosses segments.  `**/` at the start, or `/**/` in the middle, matches
  zero or more whole segments; a trailing `/**` also matches the directory
  itself (`/w/**` matches `/w`, `/w/` and `/w/a/b`).
- A backslash makes the next character literal (`\\*` matches a `*`).
- Brackets holding two or more `:` are an IPv6 address written as in a
  network target, not a class: `[::1]:0` matches the text `[::1]:0`, and
  wildcards inside still work (`[fe80::*]:22`).
- A glob must match the whole target.  Wildcards match newlines too, so a
  target cannot dodge a rule by embedding one.

A regex (`pattern`) is a Python regex with `re.search` semantics, checked by
Python's `re` and run by RE2 in linear time (`linear.py` says what RE2 lacks).
Globs are translated to RE2 too: no target can make a rule backtrack.

Placeholders `{workspace}`, `{home}`, `{agent_id}` and `{python}` (the install
prefixes of the Python running agentsup, an extension beyond DESIGN.md) are
written `{name}`; a placeholder with several values matches any of them.
Values are inserted as literal text, escaped for the regex they end up in.

Everything here is pure.  Errors are `PatternError(message, index)`; the
loader turns the index into a file position.  Env globs (`env.pass` and
`env.deny`) follow fnmatch: `*` and `?` match any character, `/` included.
"""

from __future__ import annotations

import enum
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from . import linear
from .linear import LinearRegex, PatternError, encode_target

PLACEHOLDERS: tuple[str, ...] = ("workspace", "home", "agent_id", "python")
# Placeholders whose values are paths: they are normalised like path targets.
PATH_PLACEHOLDERS = frozenset({"workspace", "home", "python"})

_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A path needs lexical normalisation if it has an empty, `.` or `..` segment.
_DOT_SEGMENT_RE = re.compile(r"/\.\.?(?:/|\Z)")
_REGEX_QUANTIFIERS = frozenset("*+?{")
_REGEX_STOPS = frozenset(".^$*+?{}[]|()")

PlaceholderValues = Mapping[str, tuple[str, ...]]


class Wildcard(enum.Enum):
    STAR = "*"
    DOUBLE_STAR = "**"
    ANY_CHAR = "?"


class Literal(NamedTuple):
    """Text a glob matches as it is (in a regex: regex text)."""

    text: str


class Placeholder(NamedTuple):
    """`{name}`, filled in for each run."""

    name: str


class CharClass(NamedTuple):
    """A glob's `[...]`, as written and as RE2 text."""

    raw: str
    regex: str


GlobToken = Literal | Placeholder | Wildcard | CharClass
RegexToken = Literal | Placeholder  # Literal here is raw regex text


# --- paths -------------------------------------------------------------------


def needs_normalising(path: str) -> bool:
    """Cheap test for `//`, `/./`, `/../`, a trailing `/.`, `/..` or `/`."""
    if "//" in path or (len(path) > 1 and path.endswith("/")):
        return True
    return "/." in path and _DOT_SEGMENT_RE.search(path) is not None


def normalise_path(path: str) -> str:
    """Lexical normalisation, never touching the filesystem: `/a/b/../c` -> `/a/c`.

    Unlike `posixpath.normpath`, a leading `//` is folded too, so `//etc/x`
    cannot slip past a rule for `/etc/**`.
    """
    absolute = path.startswith("/")
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments and segments[-1] != "..":
                segments.pop()
            elif not absolute:
                segments.append("..")
            continue
        segments.append(segment)
    joined = "/".join(segments)
    if absolute:
        return "/" + joined
    return joined or "."


def placeholder_value(name: str, value: str) -> str:
    """Normalise a path placeholder's value so that `{workspace}/**` works for `/w/`."""
    if name in PATH_PLACEHOLDERS:
        return normalise_path(value)
    return value


# --- parsing -------------------------------------------------------------------


def _placeholder_at(text: str, index: int) -> Placeholder | None:
    found = _PLACEHOLDER_RE.match(text, index)
    if found is None:
        return None
    name = found.group(1)
    if name not in PLACEHOLDERS:
        expected = ", ".join("{" + known + "}" for known in PLACEHOLDERS)
        raise PatternError(f"unknown placeholder '{{{name}}}' (expected one of {expected})", index)
    return Placeholder(name)


def _class_end(text: str, start: int) -> int:
    """Index of the `]` closing the class opened at `start`, or -1."""
    index = start + 1
    if index < len(text) and text[index] in "!^":
        index += 1
    if index < len(text) and text[index] == "]":
        index += 1  # a `]` first in the class is literal
    return text.find("]", index)


def _class_regex(body: str, index: int, *, negation: str = "!^", slash: bool = False) -> str:
    """RE2 text for the class `[body]`; a negated glob class never matches `/` unless `slash`."""
    negated = body[:1] != "" and body[:1] in negation
    if negated:
        body = body[1:]
    chars = []
    for position, char in enumerate(body):
        if char == "-" and 0 < position < len(body) - 1:
            chars.append("-")  # a range
        else:
            chars.append(linear.escape(char))
    opening = "[" if not negated else ("[^" if slash else "[^/")
    regex = opening + "".join(chars) + "]"
    problem = linear.re2_problem(regex)
    if problem is not None:
        raise PatternError(f"bad character class in glob: {problem}", index)
    return regex


def _is_ipv6_brackets(body: str) -> bool:
    """`[::1]`, `[fe80::*]`: an address in a network target, not a character class."""
    return body.count(":") >= 2 and body[:1] not in ("!", "^")


def parse_glob(text: str) -> tuple[GlobToken, ...]:
    """Split a glob into tokens; raises PatternError for `[` without `]`."""
    tokens: list[GlobToken] = []
    literal: list[str] = []

    def flush() -> None:
        if literal:
            tokens.append(Literal("".join(literal)))
            literal.clear()

    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            literal.append(text[index + 1])  # `\*` is a literal `*`
            index += 2
            continue
        if char == "*":
            flush()
            if text.startswith("**", index):
                tokens.append(Wildcard.DOUBLE_STAR)
                index += 2
                while index < len(text) and text[index] == "*":
                    index += 1  # `***` is `**`
                continue
            tokens.append(Wildcard.STAR)
        elif char == "?":
            flush()
            tokens.append(Wildcard.ANY_CHAR)
        elif char == "[":
            end = _class_end(text, index)
            if end < 0:
                raise PatternError("unbalanced '[' in glob (expected a closing ']')", index)
            if _is_ipv6_brackets(text[index + 1 : end]):
                literal.append(char)  # its `]` is literal anyway
                index += 1
                continue
            flush()
            tokens.append(
                CharClass(text[index : end + 1], _class_regex(text[index + 1 : end], index))
            )
            index = end + 1
            continue
        elif char == "{" and (placeholder := _placeholder_at(text, index)) is not None:
            flush()
            tokens.append(placeholder)
            index += len(placeholder.name) + 2
            continue
        else:
            literal.append(char)
        index += 1
    flush()
    return tuple(tokens)


def parse_regex(text: str) -> tuple[RegexToken, ...]:
    """Split a regex into raw text and placeholders, and check that it compiles."""
    tokens: list[RegexToken] = []
    start = 0
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2  # an escaped `{` is not a placeholder
            continue
        if char == "{" and (placeholder := _placeholder_at(text, index)) is not None:
            if start < index:
                tokens.append(Literal(text[start:index]))
            tokens.append(placeholder)
            index += len(placeholder.name) + 2
            start = index
            continue
        index += 1
    if start < len(text):
        tokens.append(Literal(text[start:]))
    # Placeholders become same-length literals so error positions stay right.
    probe = "".join(
        token.text if isinstance(token, Literal) else "x" * (len(token.name) + 2)
        for token in tokens
    )
    try:
        _compile(probe)
    except re.error as exc:
        raise PatternError(f"bad regex: {exc.msg}", exc.pos or 0) from None
    except FutureWarning as exc:
        raise PatternError(f"bad regex: {exc}", 0) from None
    except (RecursionError, OverflowError, MemoryError) as exc:
        raise PatternError(f"bad regex: too big or nested too deeply ({exc})", 0) from None
    problem = linear.re2_problem(linear.to_re2(probe))
    if problem is not None:
        fragment = problem.rpartition(": ")[2]
        at = probe.find(fragment) if fragment else -1
        raise PatternError(
            f"the linear-time matcher (RE2) cannot run this regex: {problem}", max(at, 0)
        )
    return tuple(tokens)


def _compile(regex: str) -> re.Pattern[str]:
    """Check Python's reading of a pattern (the contract's syntax); RE2 runs it.

    FutureWarnings (e.g. "possible nested set") become errors: a policy that
    means something different in a later Python is not a policy we accept.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        return re.compile(regex)


# --- translation -----------------------------------------------------------------


def _alternatives(values: tuple[str, ...]) -> str:
    escaped = [linear.escape(value) for value in values]
    if len(escaped) == 1:
        return escaped[0]
    return "(?:" + "|".join(escaped) + ")"


def glob_to_regex(tokens: tuple[GlobToken, ...], values: PlaceholderValues) -> str:
    """RE2 text matching what the glob matches; the caller anchors it at both ends."""
    items = list(tokens)
    parts: list[str] = []
    index = 0
    while index < len(items):
        token = items[index]
        following = items[index + 1] if index + 1 < len(items) else None
        if isinstance(token, Literal):
            text = token.text
            if text.endswith("/") and following is Wildcard.DOUBLE_STAR and index + 2 == len(items):
                # A trailing `/**`: the directory itself, or anything beneath it.
                parts.append(linear.escape(text[:-1]) + "(?:/(?s:.*))?")
                index += 2
                continue
            parts.append(linear.escape(text))
        elif isinstance(token, Placeholder):
            parts.append(_alternatives(values[token.name]))
        elif isinstance(token, CharClass):
            parts.append(token.regex)
        elif token is Wildcard.STAR:
            parts.append("[^/]*")
        elif token is Wildcard.ANY_CHAR:
            parts.append("[^/]")
        else:
            previous = items[index - 1] if index > 0 else None
            after_slash = previous is None or (
                isinstance(previous, Literal) and previous.text.endswith("/")
            )
            if after_slash and isinstance(following, Literal) and following.text.startswith("/"):
                # `**/`: zero or more whole segments.
                parts.append("(?:(?s:.*)/)?")
                items[index + 1] = Literal(following.text[1:])
            else:
                parts.append("(?s:.*)")
        index += 1
    return "".join(parts)


def _shown(values: tuple[str, ...]) -> str:
    return values[0] if len(values) == 1 else "{" + ",".join(values) + "}"


def glob_display(tokens: tuple[GlobToken, ...], values: PlaceholderValues) -> str:
    """The glob with placeholders filled in, for audit lines and `explain`."""
    parts: list[str] = []
    for token in tokens:
        if isinstance(token, Literal):
            parts.append(token.text)
        elif isinstance(token, Placeholder):
            parts.append(_shown(values[token.name]))
        elif isinstance(token, CharClass):
            parts.append(token.raw)
        else:
            parts.append(token.value)
    return "".join(parts)


def regex_expand(
    tokens: tuple[RegexToken, ...], values: PlaceholderValues, *, python_dollar: bool = False
) -> str:
    """The regex as RE2 text, with the placeholders' values as literals.

    With `python_dollar`, `$` means what it does to Python (see `linear.Re2Translation`).
    """
    translation = linear.Re2Translation(python_dollar=python_dollar)
    return "".join(
        translation.piece(token.text)
        if isinstance(token, Literal)
        else _alternatives(values[token.name])
        for token in tokens
    )


def regex_display(tokens: tuple[RegexToken, ...], values: PlaceholderValues) -> str:
    return "".join(
        token.text if isinstance(token, Literal) else _shown(values[token.name]) for token in tokens
    )


# --- literal prefixes (for the Landlock floor) ----------------------------------------


def _cut_to_directory(prefix: str) -> str | None:
    slash = prefix.rfind("/")
    if slash < 0:
        return None
    return prefix[:slash] or "/"


def glob_root(tokens: tuple[GlobToken, ...], values: PlaceholderValues) -> tuple[str, ...] | None:
    """Paths such that everything the glob matches is one of them or beneath one.

    None when the glob may match a path outside any such root (e.g. `**/x`).
    """
    prefixes = [""]
    exact = True
    for token in tokens:
        if isinstance(token, Literal):
            prefixes = [prefix + token.text for prefix in prefixes]
        elif isinstance(token, Placeholder):
            prefixes = [prefix + value for prefix in prefixes for value in values[token.name]]
        else:
            exact = False
            break
    roots: list[str] = []
    for prefix in prefixes:
        root = (prefix or None) if exact else _cut_to_directory(prefix)
        if root is None or not root.startswith("/"):
            return None
        roots.append(normalise_path(root))
    return tuple(roots)


def _has_top_level_alternation(text: str) -> bool:
    depth = 0
    index = 0
    in_class = False
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if text[index + 1 : index + 2] == "]":
                index += 1
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            return True
        index += 1
    return False


def _scan_literal(text: str, start: int) -> tuple[str, int]:
    """Literal characters of regex text from `start`; returns them and where it stopped."""
    chars: list[str] = []
    index = start
    while index < len(text):
        char = text[index]
        if char == "\\":
            escaped = text[index + 1 : index + 2]
            if not escaped or escaped.isalnum() or escaped == "_":
                break  # \d, \w, \Z, ...: not a literal
            chars.append(escaped)
            index += 2
            continue
        if char in _REGEX_STOPS:
            break
        chars.append(char)
        index += 1
    return "".join(chars), index


def regex_root(tokens: tuple[RegexToken, ...], values: PlaceholderValues) -> tuple[str, ...] | None:
    """Like `glob_root` for a regex: only a `^`- or `\\A`-anchored literal prefix counts."""
    raw = "".join(token.text if isinstance(token, Literal) else "x" for token in tokens)
    if _has_top_level_alternation(raw) or not tokens:
        return None
    first = tokens[0]
    if not isinstance(first, Literal):
        return None
    if first.text.startswith("^"):
        skip = 1
    elif first.text.startswith("\\A"):
        skip = 2
    else:
        return None
    prefixes = [""]
    exact = False
    for position, token in enumerate(tokens):
        if isinstance(token, Placeholder):
            prefixes = [prefix + value for prefix in prefixes for value in values[token.name]]
            continue
        start = skip if position == 0 else 0
        literal, stop = _scan_literal(token.text, start)
        if stop == len(token.text):
            prefixes = [prefix + literal for prefix in prefixes]
            continue
        rest = token.text[stop:]
        if rest[0] in _REGEX_QUANTIFIERS:
            if not literal:
                return None  # a quantified placeholder; not worth the trouble
            literal = literal[:-1]
        exact = rest == "\\Z" and position == len(tokens) - 1
        prefixes = [prefix + literal for prefix in prefixes]
        break
    roots: list[str] = []
    for prefix in prefixes:
        root = prefix if exact else _cut_to_directory(prefix)
        if root is None or not root.startswith("/"):
            return None
        roots.append(normalise_path(root))
    return tuple(roots)


# --- matchers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GlobMatcher:
    """A glob with its placeholders filled in; `regex` is RE2 text anchored at both ends."""

    glob: str
    regex: str
    compiled: LinearRegex = field(compare=False, repr=False)
    roots: tuple[str, ...] | None = field(compare=False, repr=False, default=None)

    def __str__(self) -> str:
        return f"glob '{self.glob}'"

    def matches(self, target: str) -> bool:
        return self.compiled.search(encode_target(target))


@dataclass(frozen=True, slots=True)
class RegexMatcher:
    """A regex (search semantics) with its placeholders filled in; `regex` is RE2 text."""

    pattern: str
    regex: str
    compiled: LinearRegex = field(compare=False, repr=False)
    roots: tuple[str, ...] | None = field(compare=False, repr=False, default=None)

    def __str__(self) -> str:
        return f"regex '{self.pattern}'"

    def matches(self, target: str) -> bool:
        return self.compiled.search(encode_target(target))


Matcher = GlobMatcher | RegexMatcher


def compile_glob(tokens: tuple[GlobToken, ...], values: PlaceholderValues) -> GlobMatcher:
    """Raises PatternError when RE2 cannot take it (say, a placeholder value it refuses)."""
    regex = "\\A" + glob_to_regex(tokens, values) + "\\z"
    return GlobMatcher(
        glob=glob_display(tokens, values),
        regex=regex,
        compiled=LinearRegex(regex),
        roots=glob_root(tokens, values),
    )


def compile_regex(
    tokens: tuple[RegexToken, ...],
    values: PlaceholderValues,
    *,
    dot_all: bool = False,
    python_dollar: bool = False,
) -> RegexMatcher:
    """Raises PatternError when RE2 cannot take it.  With `dot_all`, `.` also
    matches a newline (Python's re.DOTALL), whatever the pattern says; with
    `python_dollar`, `$` also matches just before a final newline, as Python's
    does (RE2's matches only at the very end)."""
    regex = regex_expand(tokens, values, python_dollar=python_dollar)
    if dot_all:
        regex = f"(?s:{regex})"
    return RegexMatcher(
        pattern=regex_display(tokens, values),
        regex=regex,
        compiled=LinearRegex(regex),
        roots=regex_root(tokens, values),
    )


# --- env globs ------------------------------------------------------------------------


def env_glob_regex(pattern: str) -> str:
    """RE2 text (anchored) for an fnmatch-style glob over variable names.

    `*` and `?` match any character; `[...]` is a class (`[!...]` negates); an
    unclosed `[` is literal.  Raises PatternError for a bad class.
    """
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "*":
            parts.append("(?s:.*)")
        elif char == "?":
            parts.append("(?s:.)")
        elif char == "[" and (end := _class_end(pattern, index)) > 0:
            parts.append(_class_regex(pattern[index + 1 : end], index, negation="!", slash=True))
            index = end + 1
            continue
        else:
            parts.append(linear.escape(char))
        index += 1
    return "\\A" + "".join(parts) + "\\z"


def env_glob_matches(pattern: str, name: str) -> bool:
    """Whether `name` matches the env glob `pattern` (one-off checks, e.g. for warnings)."""
    return LinearRegex(env_glob_regex(pattern)).search(encode_target(name))
