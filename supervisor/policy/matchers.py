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
Three more stand for facts of the run (`engine.RunContext`), and may have no
value at all: `{private_tmp}` (the agent's private /tmp and /var/tmp),
`{own_tmp}` (the same when nothing of the host's is bound back in beneath
them: all they hold is the agent's own making) and `{private_abstract}`
(`@`, when its abstract unix sockets are its own).  A
placeholder with no value matches nothing, so a rule built on one never
matches in a run without that fact.

Everything here is pure.  Errors are `PatternError(message, index)`; the
loader turns the index into a file position.  Env globs (`env.pass` and
`env.deny`) follow fnmatch: `*` and `?` match any character, `/` included.
"""

from __future__ import annotations

import enum
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from . import linear
from .linear import LinearRegex, PatternError, encode_target

PLACEHOLDERS: tuple[str, ...] = (
    "workspace",
    "home",
    "agent_id",
    "python",
    "private_tmp",
    "own_tmp",
    "private_abstract",
)
# Placeholders whose values are paths: they are normalised like path targets.
PATH_PLACEHOLDERS = frozenset({"workspace", "home", "python", "private_tmp", "own_tmp"})
# RE2 text that matches nowhere, for a placeholder with no value: `\b` and
# `\B` contradict each other at every position.  A group, so that a
# quantifier after the placeholder applies to all of it.
NEVER = "(?:\\b\\B)"

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
    if not escaped:
        return NEVER  # a placeholder with no value in this run matches nothing
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


def _shown(name: str, values: tuple[str, ...]) -> str:
    if not values:
        return "{" + name + ": no value}"
    return values[0] if len(values) == 1 else "{" + ",".join(values) + "}"


def glob_display(tokens: tuple[GlobToken, ...], values: PlaceholderValues) -> str:
    """The glob with placeholders filled in, for audit lines and `explain`."""
    parts: list[str] = []
    for token in tokens:
        if isinstance(token, Literal):
            parts.append(token.text)
        elif isinstance(token, Placeholder):
            parts.append(_shown(token.name, values[token.name]))
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
        token.text if isinstance(token, Literal) else _shown(token.name, values[token.name])
        for token in tokens
    )


# --- literal prefixes (for the Landlock floor) ----------------------------------------


def _cut_to_directory(prefix: str) -> str | None:
    slash = prefix.rfind("/")
    if slash < 0:
        return None
    return prefix[:slash] or "/"


def _glob_prefix(
    tokens: tuple[GlobToken, ...], values: PlaceholderValues
) -> tuple[list[str], bool, int]:
    """The glob's literal prefix (once for each value of the placeholders in it),
    whether it is the whole glob, and the index of its first wildcard token."""
    prefixes = [""]
    for index, token in enumerate(tokens):
        if isinstance(token, Literal):
            prefixes = [prefix + token.text for prefix in prefixes]
        elif isinstance(token, Placeholder):
            prefixes = [prefix + value for prefix in prefixes for value in values[token.name]]
        else:
            return prefixes, False, index
    return prefixes, True, len(tokens)


def glob_root(tokens: tuple[GlobToken, ...], values: PlaceholderValues) -> tuple[str, ...] | None:
    """Paths such that everything the glob matches is one of them or beneath one.

    None when the glob may match a path outside any such root (e.g. `**/x`).
    """
    prefixes, exact, _ = _glob_prefix(tokens, values)
    roots: list[str] = []
    for prefix in prefixes:
        root = (prefix or None) if exact else _cut_to_directory(prefix)
        if root is None or not root.startswith("/"):
            return None
        roots.append(normalise_path(root))
    return tuple(roots)


def has_top_level_alternation(text: str) -> bool:
    """Whether regex `text` has a `|` outside every group (and class)."""
    return _has_top_level_alternation(text)


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
            if text[index + 1 : index + 2] == "^":
                index += 1
            if text[index + 1 : index + 2] == "]":
                index += 1  # `[]...]`, `[^]...]`: a `]` first is a literal (red team 38)
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            return True
        index += 1
    return False


def _scan_literal(text: str, start: int) -> tuple[str, int, int]:
    """Literal characters of regex text from `start`: them, where the scan
    stopped, and where the last of them starts (for a quantified one)."""
    chars: list[str] = []
    index = start
    last = start
    while index < len(text):
        char = text[index]
        if char == "\\":
            escaped = text[index + 1 : index + 2]
            if not escaped or escaped.isalnum() or escaped == "_":
                break  # \d, \w, \Z, ...: not a literal
            chars.append(escaped)
            last = index
            index += 2
            continue
        if char in _REGEX_STOPS:
            break
        chars.append(char)
        last = index
        index += 1
    return "".join(chars), index, last


class _RegexPrefix(NamedTuple):
    """A regex's `^`-anchored literal prefix (see `regex_root`)."""

    anchor: str  # `^` or `\A`, as written
    prefixes: list[str]  # the prefix, once for each value of the placeholders in it
    exact: bool  # nothing follows the prefix but `\Z`
    rest: tuple[RegexToken, ...]  # the regex after the prefix


def _regex_prefix(tokens: tuple[RegexToken, ...], values: PlaceholderValues) -> _RegexPrefix | None:
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
    rest: tuple[RegexToken, ...] = ()
    for position, token in enumerate(tokens):
        if isinstance(token, Placeholder):
            prefixes = [prefix + value for prefix in prefixes for value in values[token.name]]
            continue
        start = skip if position == 0 else 0
        literal, stop, last = _scan_literal(token.text, start)
        if stop == len(token.text):
            prefixes = [prefix + literal for prefix in prefixes]
            continue
        remainder = token.text[stop:]
        if remainder[0] in _REGEX_QUANTIFIERS:
            if not literal:
                return None  # a quantified placeholder; not worth the trouble
            literal = literal[:-1]
            stop = last  # the quantified character belongs to the rest
        exact = remainder == "\\Z" and position == len(tokens) - 1
        prefixes = [prefix + literal for prefix in prefixes]
        rest = (Literal(token.text[stop:]), *tokens[position + 1 :])
        break
    return _RegexPrefix(first.text[:skip], prefixes, exact, rest)


def regex_root(tokens: tuple[RegexToken, ...], values: PlaceholderValues) -> tuple[str, ...] | None:
    """Like `glob_root` for a regex: only a `^`- or `\\A`-anchored literal prefix counts."""
    found = _regex_prefix(tokens, values)
    if found is None:
        return None
    roots: list[str] = []
    for prefix in found.prefixes:
        root = prefix if found.exact else _cut_to_directory(prefix)
        if root is None or not root.startswith("/"):
            return None
        roots.append(normalise_path(root))
    return tuple(roots)


# --- real paths of literal roots --------------------------------------------------------

# The placeholder a respelled regex holds its real prefix in: `{...}` cannot spell it.
_REAL_PREFIX = "real prefix"


class Respelling(NamedTuple):
    """A pattern with one of its literal roots spelled as that root's real path.

    File targets are real paths: with `~/.aws -> dotfiles/aws`, a rule for
    `{home}/.aws/**` never sees a target spelled `~/.aws/...`.  A rule that
    refuses also matches its pattern with the root replaced by the root's
    real path (`{home}/dotfiles/aws/**`).  Only the literal root is
    resolved: a symlink beneath it, in a part with wildcards, is not.
    """

    root: str  # the literal root as the rule spells it (placeholders filled in)
    real: str  # its real path (every symlink in it resolved)
    shown: str  # the respelled glob or regex, for audit lines and `explain`
    regex: str  # RE2 text of the respelled pattern alone, as the rule's own is


def _respellings(
    prefixes: list[str],
    exact: bool,
    roots: tuple[str, ...],
    realpath: Callable[[str], str],
    respell: Callable[[str], tuple[str, str]],
) -> tuple[Respelling, ...]:
    """A Respelling for each root (of `prefixes`) whose real path is not a root already.

    `respell(prefix)` is the pattern, shown and as RE2 text, with its
    literal prefix replaced by `prefix`.
    """
    known = set(roots)
    found: list[Respelling] = []
    for prefix in prefixes:
        spelled = prefix if exact else _cut_to_directory(prefix)
        if spelled is None:
            continue
        root = normalise_path(spelled)
        if root == "/":
            continue
        try:
            real = realpath(root)
        except (OSError, ValueError):  # (not in non-strict realpath; a NUL in a glob)
            continue
        if real in known:
            continue  # the root is real, or its real path is a root already (`{home}`)
        known.add(real)
        tail = prefix[len(spelled) :]
        shown, regex = respell(real.rstrip("/") + tail if tail else real)
        found.append(Respelling(root, real, shown, regex))
    return tuple(found)


def glob_respellings(
    tokens: tuple[GlobToken, ...],
    values: PlaceholderValues,
    realpath: Callable[[str], str],
) -> tuple[Respelling, ...]:
    """The glob once more for each literal root with another real path (see `Respelling`)."""
    roots = glob_root(tokens, values)
    if roots is None:
        return ()
    prefixes, exact, wild = _glob_prefix(tokens, values)

    def respell(prefix: str) -> tuple[str, str]:
        respelled = (Literal(prefix), *tokens[wild:])
        return glob_display(respelled, values), _anchored(glob_to_regex(respelled, values))

    return _respellings(prefixes, exact, roots, realpath, respell)


def regex_respellings(
    tokens: tuple[RegexToken, ...],
    values: PlaceholderValues,
    realpath: Callable[[str], str],
    *,
    dot_all: bool = False,
    python_dollar: bool = False,
) -> tuple[Respelling, ...]:
    """`glob_respellings` for a regex whose root is a `^`-anchored literal prefix.

    That is every regex `regex_root` finds roots for: the prefix is replaced
    by the real one, as a literal, and the rest of the regex is kept as written.
    """
    roots = regex_root(tokens, values)
    found = _regex_prefix(tokens, values)
    if roots is None or found is None:
        return ()
    respelled = (Literal(found.anchor), Placeholder(_REAL_PREFIX), *found.rest)

    def respell(prefix: str) -> tuple[str, str]:
        with_prefix = {**values, _REAL_PREFIX: (prefix,)}
        regex = regex_expand(respelled, with_prefix, python_dollar=python_dollar)
        shown = found.anchor + re.escape(prefix) + regex_display(found.rest, values)
        return shown, f"(?s:{regex})" if dot_all else regex

    return _respellings(found.prefixes, found.exact, roots, realpath, respell)


def _either(regex: str, respelled: tuple[Respelling, ...]) -> str:
    """RE2 text matching what `regex` or any respelling matches."""
    if not respelled:
        return regex
    return "|".join(f"(?:{text})" for text in (regex, *(r.regex for r in respelled)))


def _with_roots(
    roots: tuple[str, ...] | None, respelled: tuple[Respelling, ...]
) -> tuple[str, ...] | None:
    if roots is None:
        return None
    return tuple(dict.fromkeys((*roots, *(r.real for r in respelled))))


def _shown_with_real(text: str, respelled: tuple[Respelling, ...]) -> str:
    if not respelled:
        return text
    return text + " (by real path: " + ", ".join(f"'{r.shown}'" for r in respelled) + ")"


def _real_spelling(respelled: tuple[Respelling, ...], target: str) -> Respelling | None:
    data = encode_target(target)
    return next((r for r in respelled if LinearRegex(r.regex).search(data)), None)


# --- matchers ------------------------------------------------------------------------


def _anchored(regex: str) -> str:
    return "\\A" + regex + "\\z"


@dataclass(frozen=True, slots=True)
class GlobMatcher:
    """A glob with its placeholders filled in; `regex` is RE2 text anchored at both ends.

    `respelled`: the glob with a literal root spelled as its real path, which
    `regex` matches too, and whose real roots are among `roots` (`Respelling`).
    """

    glob: str
    regex: str
    compiled: LinearRegex = field(compare=False, repr=False)
    roots: tuple[str, ...] | None = field(compare=False, repr=False, default=None)
    respelled: tuple[Respelling, ...] = field(repr=False, default=())

    def __str__(self) -> str:
        return _shown_with_real(f"glob '{self.glob}'", self.respelled)

    def matches(self, target: str) -> bool:
        return self.compiled.search(encode_target(target))

    def real_spelling(self, target: str) -> Respelling | None:
        """The respelling that matches `target`, if one does (for `explain`)."""
        return _real_spelling(self.respelled, target)


@dataclass(frozen=True, slots=True)
class RegexMatcher:
    """A regex (search semantics) with its placeholders filled in; `regex` is RE2 text.

    `respelled` as for `GlobMatcher`.
    """

    pattern: str
    regex: str
    compiled: LinearRegex = field(compare=False, repr=False)
    roots: tuple[str, ...] | None = field(compare=False, repr=False, default=None)
    respelled: tuple[Respelling, ...] = field(repr=False, default=())

    def __str__(self) -> str:
        return _shown_with_real(f"regex '{self.pattern}'", self.respelled)

    def matches(self, target: str) -> bool:
        return self.compiled.search(encode_target(target))

    def real_spelling(self, target: str) -> Respelling | None:
        """The respelling that matches `target`, if one does (for `explain`)."""
        return _real_spelling(self.respelled, target)


Matcher = GlobMatcher | RegexMatcher


def compile_glob(
    tokens: tuple[GlobToken, ...],
    values: PlaceholderValues,
    realpath: Callable[[str], str] | None = None,
) -> GlobMatcher:
    """Raises PatternError when RE2 cannot take it (say, a placeholder value it refuses).

    With `realpath`, the glob also matches where its literal roots really
    are (`Respelling`): for rules that refuse, never for ones that allow.
    """
    respelled = () if realpath is None else glob_respellings(tokens, values, realpath)
    regex = _either(_anchored(glob_to_regex(tokens, values)), respelled)
    return GlobMatcher(
        glob=glob_display(tokens, values),
        regex=regex,
        compiled=LinearRegex(regex),
        roots=_with_roots(glob_root(tokens, values), respelled),
        respelled=respelled,
    )


def compile_regex(
    tokens: tuple[RegexToken, ...],
    values: PlaceholderValues,
    *,
    dot_all: bool = False,
    python_dollar: bool = False,
    realpath: Callable[[str], str] | None = None,
) -> RegexMatcher:
    """Raises PatternError when RE2 cannot take it.  With `dot_all`, `.` also
    matches a newline (Python's re.DOTALL), whatever the pattern says; with
    `python_dollar`, `$` also matches just before a final newline, as Python's
    does (RE2's matches only at the very end); with `realpath`, as for `compile_glob`."""
    regex = regex_expand(tokens, values, python_dollar=python_dollar)
    if dot_all:
        regex = f"(?s:{regex})"
    respelled = (
        ()
        if realpath is None
        else regex_respellings(
            tokens, values, realpath, dot_all=dot_all, python_dollar=python_dollar
        )
    )
    regex = _either(regex, respelled)
    return RegexMatcher(
        pattern=regex_display(tokens, values),
        regex=regex,
        compiled=LinearRegex(regex),
        roots=_with_roots(regex_root(tokens, values), respelled),
        respelled=respelled,
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
