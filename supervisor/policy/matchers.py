"""Target matchers: globs and regexes with placeholders, and path normalisation.

Glob semantics, the same for every action type:
- `*` and `?` never cross `/`; `[...]` is a character class (`[!...]` negates,
  and a negated class never matches `/`).
- `**` crosses segments.  `**/` at the start, or `/**/` in the middle, matches
  zero or more whole segments; a trailing `/**` also matches the directory
  itself (`/w/**` matches `/w`, `/w/` and `/w/a/b`).
- A backslash makes the next character literal (`\\*` matches a `*`).
- A glob must match the whole target.  Wildcards match newlines too, so a
  target cannot dodge a rule by embedding one.

A regex (`pattern`) is a Python regex with `re.search` semantics.

Placeholders `{workspace}`, `{home}`, `{agent_id}` and `{python}` (the install
prefixes of the Python running agentsup, an extension beyond DESIGN.md) are
written `{name}`; a placeholder with several values matches any of them.
Values are inserted as literal text, escaped for the regex they end up in.

Everything here is pure.  Errors are `PatternError(message, index)`; the
loader turns the index into a file position.
"""

from __future__ import annotations

import enum
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

PLACEHOLDERS: tuple[str, ...] = ("workspace", "home", "agent_id", "python")
# Placeholders whose values are paths: they are normalised like path targets.
PATH_PLACEHOLDERS = frozenset({"workspace", "home", "python"})

_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A path needs lexical normalisation if it has an empty, `.` or `..` segment.
_DOT_SEGMENT_RE = re.compile(r"/\.\.?(?:/|\Z)")
# Regex features that break when the regex is one alternative of a bigger one:
# numbered or named backreferences, named groups and global inline flags.
_NOT_COMBINABLE_RE = re.compile(r"\\[1-9]|\(\?P[<=]|\(\?[aiLmsux]+\)")
_REGEX_QUANTIFIERS = frozenset("*+?{")
_REGEX_STOPS = frozenset(".^$*+?{}[]|()")

PlaceholderValues = Mapping[str, tuple[str, ...]]


class PatternError(ValueError):
    """A bad glob or regex; `index` is where in the text the problem is."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.message = message
        self.index = index


class Wildcard(enum.Enum):
    STAR = "*"
    DOUBLE_STAR = "**"
    ANY_CHAR = "?"


@dataclass(frozen=True, slots=True)
class Literal:
    text: str


@dataclass(frozen=True, slots=True)
class Placeholder:
    name: str


@dataclass(frozen=True, slots=True)
class CharClass:
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


def _class_regex(body: str, index: int) -> str:
    negated = body[:1] in ("!", "^")
    if negated:
        body = body[1:]
    chars = []
    for position, char in enumerate(body):
        if char == "-" and 0 < position < len(body) - 1:
            chars.append("-")  # a range
        else:
            chars.append(re.escape(char))
    regex = ("[^/" if negated else "[") + "".join(chars) + "]"
    try:
        _compile(regex)
    except re.error as exc:
        raise PatternError(f"bad character class in glob: {exc.msg}", index) from None
    return regex


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
    return tuple(tokens)


def _compile(regex: str) -> re.Pattern[str]:
    # FutureWarnings (e.g. "possible nested set") become errors: a policy that
    # means something different in a later Python is not a policy we accept.
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        return re.compile(regex)


# --- translation -----------------------------------------------------------------


def _alternatives(values: tuple[str, ...]) -> str:
    escaped = [re.escape(value) for value in values]
    if len(escaped) == 1:
        return escaped[0]
    return "(?:" + "|".join(escaped) + ")"


def glob_to_regex(tokens: tuple[GlobToken, ...], values: PlaceholderValues) -> str:
    """Regex text matching what the glob matches; the caller anchors it with `\\Z`."""
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
                parts.append(re.escape(text[:-1]) + "(?:/(?s:.*))?")
                index += 2
                continue
            parts.append(re.escape(text))
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
    return _prefilter(items) + "".join(parts)


def _prefilter(items: list[GlobToken]) -> str:
    """A cheap lookahead for globs that start with a wildcard, such as `**/*.pem`.

    Without it, `re` tries the rest of the glob after every `/` of every
    target; a greedy scan for a required literal rejects most targets in a
    few nanoseconds.  It is a necessary condition only, so meaning is unchanged.
    """
    if not items or isinstance(items[0], Literal | Placeholder):
        return ""  # a literal first character already fails fast
    last = items[-1]
    if isinstance(last, Literal) and last.text:
        # A possessive `.*+` jumps straight to the end (no backtracking) and
        # the fixed-width lookbehind checks the suffix: O(1) per target.
        return "(?=(?s:.*+)(?<=" + re.escape(last.text) + "))"
    literals = [item.text for item in items if isinstance(item, Literal)]
    longest = max(literals, key=len, default="")
    if not longest:
        return ""
    return "(?=(?s:.*)" + re.escape(longest) + ")"


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


def regex_expand(tokens: tuple[RegexToken, ...], values: PlaceholderValues) -> str:
    return "".join(
        token.text if isinstance(token, Literal) else _alternatives(values[token.name])
        for token in tokens
    )


def regex_display(tokens: tuple[RegexToken, ...], values: PlaceholderValues) -> str:
    return "".join(
        token.text if isinstance(token, Literal) else _shown(values[token.name]) for token in tokens
    )


def regex_combinable(text: str) -> bool:
    """False for regexes that would change meaning as one alternative of many."""
    return _NOT_COMBINABLE_RE.search(text) is None


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
    """A glob with its placeholders filled in; `regex` is unanchored regex text."""

    glob: str
    regex: str
    compiled: re.Pattern[str] = field(compare=False, repr=False)
    roots: tuple[str, ...] | None = field(compare=False, repr=False, default=None)

    def __str__(self) -> str:
        return f"glob '{self.glob}'"

    def matches(self, target: str) -> bool:
        return self.compiled.match(target) is not None

    def branch(self) -> str:
        """This matcher as one alternative of a combined `re.match` regex."""
        return self.regex + r"\Z"

    @property
    def combinable(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class RegexMatcher:
    """A regex (search semantics) with its placeholders filled in."""

    pattern: str
    regex: str
    compiled: re.Pattern[str] = field(compare=False, repr=False)
    combinable: bool = True
    roots: tuple[str, ...] | None = field(compare=False, repr=False, default=None)

    def __str__(self) -> str:
        return f"regex '{self.pattern}'"

    def matches(self, target: str) -> bool:
        return self.compiled.search(target) is not None

    def branch(self) -> str:
        if self.regex.startswith(("^", "\\A")):
            return "(?:" + self.regex + ")"  # anchored: no need to try every position
        return "(?s:.*?)(?:" + self.regex + ")"


Matcher = GlobMatcher | RegexMatcher


def compile_glob(tokens: tuple[GlobToken, ...], values: PlaceholderValues) -> GlobMatcher:
    regex = glob_to_regex(tokens, values)
    return GlobMatcher(
        glob=glob_display(tokens, values),
        regex=regex,
        compiled=_compile(regex + r"\Z"),
        roots=glob_root(tokens, values),
    )


def compile_regex(tokens: tuple[RegexToken, ...], values: PlaceholderValues) -> RegexMatcher:
    regex = regex_expand(tokens, values)
    raw = "".join(token.text for token in tokens if isinstance(token, Literal))
    return RegexMatcher(
        pattern=regex_display(tokens, values),
        regex=regex,
        compiled=_compile(regex),
        combinable=regex_combinable(raw),
        roots=regex_root(tokens, values),
    )
