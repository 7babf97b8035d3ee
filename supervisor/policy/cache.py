"""Compiled policies cached in the state directory, so a run skips YAML and validation.

Loading `strict` means importing PyYAML, composing every file along
`extends` and checking every glob and regex with Python's `re` and RE2;
compiling it for a run translates each one to RE2 text.  That was a good
part of `agentsup run`'s start-up.

The effective `Policy` is a pure function of the answers to the policy-file
lookups the loader made (`loader.Lookup`: which file each `--policy` or
`extends` value names, and its text) and of agentsup's code.  A policy entry
records those lookups; a hit asks each of them again, in order, and is used
only when every answer is the same file with the same bytes (SHA-256).  So
an edited, added or removed policy file, another agentsup or another Python
is a miss, and the policy is loaded as usual: the cache never changes a
decision.  A compiled entry, keyed on the policy entry and the placeholder
values of the run, keeps each rule's RE2 text; the RE2 objects themselves
cannot be stored and are built again, each when first used: the entry was
written once they compiled, and the key names the RE2 library too
(`linear.engine_identity`), so they compile again.  Rules that refuse also
match where their literal roots really are (`matchers.Respelling`): a
compiled entry records each root it resolved and the answer, and is used
only when every root still resolves the same (a symlink made, changed or
removed since is a miss).

Entries are files of `cachefiles.py` (private, checksummed JSON).  This and
`cachefiles.py` are the only modules of `policy/` that write files.
"""

from __future__ import annotations

import enum
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import __version__
from .cachefiles import BadEntry, cache_dir, digest, read_entry, write_entry
from .engine import CompiledPolicy, RuleMatchers, RunContext
from .linear import LinearRegex, engine_identity
from .matchers import GlobMatcher, Matcher, RegexMatcher, Respelling
from .model import Policy
from .sources import PolicySource, find_policy

if TYPE_CHECKING:
    from .loader import Lookup

_FORMAT = 1

# The code that turns policy files into a `CompiledPolicy`: any change is another cache.
_CODE_FILES = (
    "policy/cache.py",
    "policy/cachefiles.py",
    "policy/engine.py",
    "policy/loader.py",
    "policy/yaml_file.py",
    "policy/model.py",
    "policy/matchers.py",
    "policy/linear.py",
    "policy/sources.py",
    "events.py",
)
_PACKAGE = Path(__file__).resolve().parent.parent


def _code_fingerprint() -> str:
    """agentsup's version, Python's, and the bytes of the policy code."""
    parts: list[str | bytes] = [str(_FORMAT), __version__, sys.version, engine_identity()]
    for name in _CODE_FILES:
        parts += [name, (_PACKAGE / name).read_bytes()]
    return digest(*parts)


def _lookup_record(lookup: Lookup) -> list[str | None]:
    return _record(lookup.reference, lookup.relative_to, lookup.from_key, lookup.source)


def _record(
    reference: str, relative_to: Path | None, from_key: str | None, source: PolicySource
) -> list[str | None]:
    """One lookup as the cache keeps it: what was asked, and what answered."""
    return [
        reference,
        None if relative_to is None else str(relative_to),
        from_key,
        source.key,
        source.path,
        digest(source.text),
    ]


def _resolve(name_or_path: str, policy_dir: Path) -> tuple[Policy, tuple[Lookup, ...]]:
    """The loader's answer, read from the files (and YAML): on a miss only."""
    from .loader import resolve_policy_lookups

    return resolve_policy_lookups(name_or_path, policy_dir)


# -- the codec: every field of the frozen model, checked against its declared type -------


def _is_record(kind: Any) -> bool:
    """A named tuple class: the model's values (model.py)."""
    return isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields")


def encode(value: Any) -> Any:
    """A model value as JSON data; raises BadEntry for anything it cannot represent."""
    if _is_record(type(value)):
        return {name: encode(getattr(value, name)) for name in type(value)._fields}
    if isinstance(value, enum.Enum):
        return encode(value.value)
    if isinstance(value, tuple | frozenset):
        items = [encode(item) for item in value]
        return sorted(items, key=json.dumps) if isinstance(value, frozenset) else items
    if value is None or isinstance(value, str | int | float):  # bool is an int
        return value
    raise BadEntry(f"cannot encode {type(value).__name__}")


Decoder = Callable[[Any], Any]
_DECODERS: dict[Any, Decoder] = {}


def decode(kind: Any, data: Any) -> Any:
    """JSON data back into a value of type `kind`; raises BadEntry when it does not fit."""
    return _decoder(kind)(data)


def _decoder(kind: Any) -> Decoder:
    """The function that decodes values of type `kind`, made once per type."""
    if kind not in _DECODERS:
        _DECODERS[kind] = _make_decoder(kind)
    return _DECODERS[kind]


def _make_decoder(kind: Any) -> Decoder:
    origin = typing.get_origin(kind)
    if origin is typing.Union or origin is types.UnionType:
        optional = type(None) in typing.get_args(kind)
        options = [_decoder(arg) for arg in typing.get_args(kind) if arg is not type(None)]

        def union(data: Any) -> Any:
            if data is None and optional:
                return None
            for option in options:
                try:
                    return option(data)
                except BadEntry:
                    continue
            raise BadEntry(f"{data!r} fits none of {kind}")

        return union
    if origin is typing.Literal:
        allowed = typing.get_args(kind)

        def literal(data: Any) -> Any:
            if isinstance(data, str) and data in allowed:
                return data
            raise BadEntry(f"{data!r} is not one of {kind}")

        return literal
    if origin in (tuple, frozenset):
        return _sequence_decoder(origin, typing.get_args(kind))
    if _is_record(kind):
        return _record_decoder(kind)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        members = {member.value: member for member in kind}

        def member(data: Any) -> Any:
            if isinstance(data, str | int) and data in members:
                return members[data]
            raise BadEntry(f"{data!r} is no {kind.__name__}")

        return member
    if kind in (str, int, float):

        def scalar(data: Any) -> Any:
            if type(data) is kind:
                return data
            if kind is float and type(data) is int:
                return float(data)
            raise BadEntry(f"{data!r} is no {kind.__name__}")

        return scalar
    raise BadEntry(f"no decoder for {kind}")


def _sequence_decoder(origin: Any, args: tuple[Any, ...]) -> Decoder:
    if origin is frozenset or (len(args) == 2 and args[1] is Ellipsis):
        item = _decoder(args[0])
        build: Callable[[Any], Any] = frozenset if origin is frozenset else tuple

        def homogeneous(data: Any) -> Any:
            if not isinstance(data, list):
                raise BadEntry("expected a list")
            return build(item(value) for value in data)

        return homogeneous
    items = [_decoder(arg) for arg in args]

    def fixed(data: Any) -> Any:
        if not isinstance(data, list) or len(data) != len(items):
            raise BadEntry(f"expected a list of {len(items)}")
        return tuple(decode_item(value) for decode_item, value in zip(items, data, strict=True))

    return fixed


def _record_decoder(kind: Any) -> Decoder:
    hints = typing.get_type_hints(kind)
    fields = [(name, _decoder(hints[name])) for name in kind._fields]
    names = {name for name, _ in fields}

    def instance(data: Any) -> Any:
        if not isinstance(data, dict) or data.keys() != names:
            raise BadEntry(f"expected the fields of {kind.__name__}")
        return kind(**{name: field(data[name]) for name, field in fields})

    return instance


# -- policies ------------------------------------------------------------------------


class Resolved(NamedTuple):
    """The effective policy; `identity` names exactly it (None: not cacheable);
    `files`, the real path of every file it was read from (built-ins aside)."""

    policy: Policy
    cached: bool = False
    identity: str | None = None
    files: tuple[str, ...] = ()


def _files(keys: Iterable[object]) -> tuple[str, ...]:
    """The policy files among lookup answers' keys (`<builtin>/NAME` are not files)."""
    return tuple(dict.fromkeys(k for k in keys if isinstance(k, str) and k.startswith("/")))


def resolve_policy_cached(name_or_path: str, policy_dir: Path, state_dir: Path | None) -> Resolved:
    """`loader.resolve_policy`, from the cache in `state_dir` when nothing it read has changed.

    Raises what `resolve_policy` raises (PolicyError); a failed load is never cached.
    """
    if state_dir is None:
        return _uncached(name_or_path, policy_dir)
    try:
        fingerprint = _code_fingerprint()
        root = find_policy(name_or_path, policy_dir, None, None)
    except (OSError, ValueError):  # PolicyError too: the loader says it properly below
        root = None
    if root is None:
        return _uncached(name_or_path, policy_dir)
    first = _record(name_or_path, None, None, root)
    name = "policy-" + digest(fingerprint, str(policy_dir), json.dumps(first))[:40]
    directory = cache_dir(state_dir)
    if directory is not None:
        try:
            document = read_entry(directory / name)
            policy = _from_entry(document, first, policy_dir)
            records = document["lookups"]
            return Resolved(
                policy,
                True,
                _identity(fingerprint, policy_dir, records),
                _files(record[3] for record in records),
            )
        except BadEntry:
            pass
    policy, lookups = _resolve(name_or_path, policy_dir)
    records = [_lookup_record(lookup) for lookup in lookups]
    files = _files(lookup.source.key for lookup in lookups)
    if records[0] != first:
        return Resolved(policy, files=files)  # the file changed while we read it: no entry
    try:
        document = {"format": _FORMAT, "lookups": records, "policy": encode(policy)}
        if decode(Policy, document["policy"]) != policy:
            return Resolved(policy, files=files)  # the codec lost something: never cache that
    except BadEntry:
        return Resolved(policy, files=files)
    directory = cache_dir(state_dir, create=True)
    if directory is not None:
        write_entry(directory, name, document)
    return Resolved(policy, False, _identity(fingerprint, policy_dir, records), files)


def _uncached(name_or_path: str, policy_dir: Path) -> Resolved:
    policy, lookups = _resolve(name_or_path, policy_dir)
    return Resolved(policy, files=_files(lookup.source.key for lookup in lookups))


def _identity(fingerprint: str, policy_dir: Path, records: list[Any]) -> str:
    return digest(fingerprint, str(policy_dir), json.dumps(records))


def _from_entry(document: Any, first: list[str | None], policy_dir: Path) -> Policy:
    """The cached policy, once every lookup recorded in `document` answers the same."""
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise BadEntry("another format")
    records = document.get("lookups")
    if not isinstance(records, list) or not records or records[0] != first:
        raise BadEntry("lookups differ")
    for record in records[1:]:
        if not isinstance(record, list) or len(record) != 6:
            raise BadEntry("a malformed lookup")
        reference, relative_to, from_key = record[:3]
        if not isinstance(reference, str) or not all(
            value is None or isinstance(value, str) for value in (relative_to, from_key)
        ):
            raise BadEntry("a malformed lookup")
        anchor = None if relative_to is None else Path(relative_to)
        try:
            source = find_policy(reference, policy_dir, anchor, from_key)
        except (OSError, ValueError):
            raise BadEntry("a lookup fails now") from None
        if not _same_answer(record, source):
            raise BadEntry(f"{reference} changed")
    policy: Policy = decode(Policy, document.get("policy"))
    return policy


def _same_answer(record: list[Any], source: PolicySource | None) -> bool:
    if source is None:
        return False
    return record[3:] == [source.key, source.path, digest(source.text)]


# -- compiled policies ------------------------------------------------------------------


def compile_policy_cached(
    resolved: Resolved,
    ctx: RunContext,
    state_dir: Path | None,
    *,
    realpath: Callable[[str], str] = os.path.realpath,
) -> CompiledPolicy:
    """`compile_policy(resolved.policy, ctx)`, with the rules' RE2 text from the cache."""
    policy = resolved.policy
    if state_dir is None or resolved.identity is None:
        return CompiledPolicy(policy, ctx, realpath=realpath)
    values = ctx.placeholder_values()
    if not _uses_agent_id(policy):
        values.pop("agent_id")  # `agents:` scoping is decided afresh for each run
    name = "compiled-" + digest(resolved.identity, json.dumps(values, sort_keys=True))[:40]
    directory = cache_dir(state_dir)
    if directory is not None:
        try:
            document = read_entry(directory / name)
            _check_real_roots(document, realpath)
            built = _built_from(document, len(policy.rules))
            compiled = CompiledPolicy(policy, ctx, built, checked=True)
            compiled.cache_name = name
            return compiled
        except BadEntry:
            pass
    asked: dict[str, str] = {}  # every root the matchers resolved, and its real path

    def real(path: str) -> str:
        answer = asked[path] = realpath(path)
        return answer

    compiled = CompiledPolicy(policy, ctx, realpath=real)
    compiled.cache_name = name
    built = [(rule.matcher, rule.excepts) for rule in compiled.rules]
    records = [_rule_record(matcher, excepts) for matcher, excepts in built]
    directory = cache_dir(state_dir, create=True)
    if directory is not None:
        document = {"format": _FORMAT, "rules": records, "real_roots": sorted(asked.items())}
        write_entry(directory, name, document)
    return compiled


def _check_real_roots(document: Any, realpath: Callable[[str], str]) -> None:
    """BadEntry unless every root the entry's matchers resolved resolves the same now."""
    pairs = document.get("real_roots") if isinstance(document, dict) else None
    if not isinstance(pairs, list):
        raise BadEntry("no real roots")
    for pair in pairs:
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        ):
            raise BadEntry("a malformed real root")
        root, real = pair
        try:
            now = realpath(root)
        except (OSError, ValueError):
            raise BadEntry(f"{root} cannot be resolved now") from None
        if now != real:
            raise BadEntry(f"{root} resolves elsewhere now")


def _uses_agent_id(policy: Policy) -> bool:
    for rule in policy.rules:
        for text in (rule.target, rule.pattern, *rule.except_globs):
            if text is not None and "{agent_id}" in text:
                return True
    return False


def _matcher_record(matcher: Matcher) -> list[Any]:
    respelled = encode(matcher.respelled)
    if isinstance(matcher, GlobMatcher):
        return ["glob", matcher.glob, matcher.regex, matcher.roots, respelled]
    return ["regex", matcher.pattern, matcher.regex, matcher.roots, respelled]


def _rule_record(matcher: Matcher, excepts: tuple[GlobMatcher, ...]) -> list[Any]:
    return [_matcher_record(matcher), [_matcher_record(excepted) for excepted in excepts]]


def _matcher_from(record: Any) -> Matcher:
    if not isinstance(record, list) or len(record) != 5:
        raise BadEntry("a malformed matcher")
    kind, shown, regex, roots, respelled = record
    roots = decode(tuple[str, ...] | None, roots)
    respelled = decode(tuple[Respelling, ...], respelled)
    if not isinstance(shown, str) or not isinstance(regex, str):
        raise BadEntry("a malformed matcher")
    compiled = LinearRegex(regex, checked=True)  # the entry was stored once it compiled
    if kind == "glob":
        return GlobMatcher(shown, regex, compiled, roots, respelled)
    if kind == "regex":
        return RegexMatcher(shown, regex, compiled, roots, respelled)
    raise BadEntry(f"no matcher kind {kind!r}")


def _built_from(document: Any, count: int) -> list[RuleMatchers]:
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise BadEntry("another format")
    records = document.get("rules")
    if not isinstance(records, list) or len(records) != count:
        raise BadEntry("another number of rules")
    built: list[RuleMatchers] = []
    for record in records:
        if not isinstance(record, list) or len(record) != 2 or not isinstance(record[1], list):
            raise BadEntry("a malformed rule")
        excepts = tuple(_matcher_from(item) for item in record[1])
        if not all(isinstance(excepted, GlobMatcher) for excepted in excepts):
            raise BadEntry("an except that is no glob")
        built.append((_matcher_from(record[0]), typing.cast(tuple[GlobMatcher, ...], excepts)))
    return built
